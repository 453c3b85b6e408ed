//! The edge's connection to the write region.
//!
//! The address of central may be configured or learned from gossip, and may change (central
//! moved, or restarted elsewhere). [`CentralLink`] holds two clients for the current address:
//! one for writes and read-through, whose calls go through [`CentralLink::call`] with a
//! deadline so that a write fails fast when central cannot answer; and one for the long-lived
//! replication streams, which rely on HTTP/2 keepalives and central's heartbeats instead.

use std::sync::RwLock;
use std::time::Duration;

use driftkv_core::KvError;
use driftkv_proto::trace::{traced_client, TracedClient};
use driftkv_proto::{error_from_status, MAX_MESSAGE_BYTES};
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tracing::Instrument as _;

/// Timeouts of the link.
#[derive(Clone, Copy, Debug)]
pub struct LinkTimeouts {
    /// Longest wait for a connection to central.
    pub connect: Duration,
    /// Longest wait for central to answer a request (writes, namespace changes, reads).
    pub request: Duration,
}

/// The slowest transfer to central a request's deadline allows for, in bytes per second.
pub const MIN_THROUGHPUT: usize = 4 * 1024 * 1024;

#[derive(Clone)]
struct Clients {
    address: String,
    requests: TracedClient,
    streams: TracedClient,
}

/// The current connection to central, if its address is known.
pub struct CentralLink {
    timeouts: LinkTimeouts,
    clients: RwLock<Option<Clients>>,
    address: watch::Sender<Option<String>>,
}

fn client(endpoint: Endpoint) -> TracedClient {
    traced_client(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl CentralLink {
    /// A link with no address yet.
    pub fn new(timeouts: LinkTimeouts) -> Self {
        CentralLink {
            timeouts,
            clients: RwLock::new(None),
            address: watch::Sender::new(None),
        }
    }

    /// Points the link at `address` (`http://host:port`); does nothing if it already is.
    pub fn set_address(&self, address: &str) -> Result<(), KvError> {
        if self.address.borrow().as_deref() == Some(address) {
            return Ok(());
        }
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|e| KvError::Internal(format!("bad central address {address:?}: {e}")))?
            .connect_timeout(self.timeouts.connect)
            .tcp_nodelay(true);
        let clients = Clients {
            address: address.to_owned(),
            requests: client(endpoint.clone()),
            streams: client(
                endpoint
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(3))
                    .keep_alive_while_idle(true),
            ),
        };
        *self.clients.write().expect("link lock") = Some(clients);
        self.address.send_replace(Some(address.to_owned()));
        tracing::info!(central = address, "central address set");
        Ok(())
    }

    /// Runs a request to central with a deadline: the request timeout, plus time to move
    /// `payload_bytes` at no less than [`MIN_THROUGHPUT`] (a 25 MiB value must not fail for
    /// taking longer to send than a small one). Past the deadline, or without an address,
    /// the call fails with 503.
    pub async fn call<T, F>(
        &self,
        payload_bytes: usize,
        request: impl FnOnce(TracedClient) -> F,
    ) -> Result<T, KvError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.current()?.requests;
        let deadline = self.timeouts.request
            + Duration::from_secs_f64(payload_bytes as f64 / MIN_THROUGHPUT as f64);
        // The request carries this span's trace context to central (see `traced_client`).
        let span = tracing::info_span!("forward to central", payload_bytes);
        match tokio::time::timeout(deadline, request(client).instrument(span)).await {
            Ok(reply) => reply
                .map(tonic::Response::into_inner)
                .map_err(|status| error_from_status(&status)),
            Err(_) => Err(KvError::Unavailable(format!(
                "the write region did not answer within {} ms",
                deadline.as_millis()
            ))),
        }
    }

    /// The client for replication streams and its address, once an address is known.
    pub async fn streams(&self) -> (String, TracedClient) {
        let mut address = self.address.subscribe();
        loop {
            if let Ok(clients) = self.current() {
                return (clients.address, clients.streams);
            }
            if address.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn current(&self) -> Result<Clients, KvError> {
        self.clients
            .read()
            .expect("link lock")
            .clone()
            .ok_or_else(|| {
                KvError::Unavailable(
                    "the write region is not known yet (no central address configured or gossiped)"
                        .into(),
                )
            })
    }
}
