//! An edge's workerd KV binding listener (`[workerd] listen`): the protocol workerd's
//! `KVNamespace` binding speaks, served beside the REST API (with its tokens, and over HTTPS
//! when the node has a certificate) and stopped with it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use driftkv_core::KvService;
use driftkv_http::{Auth, Refusals, ServerOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::node::{Process, Shutdown};

/// A binding listener bound to its address, not serving yet.
pub struct BindingListener {
    listener: TcpListener,
    auth: Auth,
}

/// The authentication of a binding listener on `addr`: refused, naming the setting, when it
/// would be beyond loopback without API tokens. Callers check before they bind, so that a
/// refused address is never bound.
pub fn admit(process: &Process, addr: SocketAddr) -> anyhow::Result<Auth> {
    // One line, naming the setting: the refusal alone would not say which listener.
    process
        .auth_for(addr)
        .map_err(|e| anyhow::anyhow!("workerd.listen: {e}"))
}

/// Binds the binding's listener on `addr`, if there is one, after [`admit`] has let it: a
/// refused address is never bound.
pub async fn listen(
    process: &Process,
    addr: Option<SocketAddr>,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    admit(process, addr)?;
    Ok(Some(
        crate::node::listen(addr, "the workerd binding").await?,
    ))
}

impl BindingListener {
    /// The binding on `listener`, with the API's authentication: a non-loopback address
    /// without API tokens is refused.
    pub fn new(process: &Process, listener: TcpListener) -> anyhow::Result<Self> {
        let auth = admit(process, listener.local_addr()?)?;
        Ok(BindingListener { listener, auth })
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves the binding of `service` (its requests counted under the node label `node`)
    /// until `shutdown`, letting requests in flight finish.
    pub fn serve(
        self,
        service: Arc<dyn KvService>,
        node: &str,
        process: &Process,
        shutdown: Shutdown,
    ) -> JoinHandle<anyhow::Result<()>> {
        let router = driftkv_http::workerd_binding(service, self.auth, node, process.tracing);
        let options = ServerOptions {
            refusals: Refusals::Binding,
            ..process.server_options()
        };
        tokio::spawn(async move {
            driftkv_http::serve(self.listener, router, options, shutdown.wait())
                .await
                .context("workerd binding server failed")
        })
    }
}
