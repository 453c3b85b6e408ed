//! The edge's connection to the write region over gRPC: the [`Upstream`] an edge uses in a
//! real deployment.
//!
//! The address of central may be configured or learned from gossip, and may change (central
//! moved, or restarted elsewhere). [`CentralLink`] holds two clients for the current address:
//! one for writes and read-through, whose calls have a deadline so that a write fails fast when
//! central cannot answer; and one for the long-lived replication streams, which rely on HTTP/2
//! keepalives and central's heartbeats instead.
//!
//! With TLS the link dials `https://` and accepts only a certificate the cluster CA issued for
//! central (see [`driftkv_proto::tls`]), whatever the address. Without TLS it dials only
//! loopback addresses: plain-text gRPC never leaves the host.

use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use driftkv_core::upstream::{
    BatchOutcome, EventStream, ReplicationEvent, SnapshotChunk, SnapshotStream, Subscription,
    Upstream, WriteRequest,
};
use driftkv_core::{KvError, LiveValue, Namespace, NamespaceId, WriteResult};
use driftkv_proto::pb;
use driftkv_proto::trace::{traced_client, TracedClient};
use driftkv_proto::{error_from_status, MAX_REPLY_BYTES, MAX_REQUEST_BYTES};
use futures::StreamExt as _;
use tokio::sync::watch;
use tonic::transport::{ClientTlsConfig, Endpoint};
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
    requests: TracedClient,
    streams: TracedClient,
}

/// The current connection to central, if its address is known.
pub struct CentralLink {
    timeouts: LinkTimeouts,
    /// Mutual TLS towards central; `None`: plain text, loopback only.
    tls: Option<ClientTlsConfig>,
    clients: RwLock<Option<Clients>>,
    address: watch::Sender<Option<String>>,
}

fn client(endpoint: Endpoint) -> TracedClient {
    traced_client(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_REPLY_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES)
}

/// Whether `host` (of a URL) is a loopback name or address.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl CentralLink {
    /// A link with no address yet, dialling with `tls` (plain text to loopback only when
    /// `None`).
    pub fn new(timeouts: LinkTimeouts, tls: Option<ClientTlsConfig>) -> Self {
        CentralLink {
            timeouts,
            tls,
            clients: RwLock::new(None),
            address: watch::Sender::new(None),
        }
    }

    /// The endpoint for `address` (`http://host:port` or `https://host:port`, or just
    /// `host:port`): over TLS when the link has it, else only to loopback.
    fn endpoint(&self, address: &str) -> Result<Endpoint, KvError> {
        let bad =
            |why: String| KvError::Internal(format!("bad central address {address:?}: {why}"));
        let authority = address
            .strip_prefix("http://")
            .or_else(|| address.strip_prefix("https://"))
            .unwrap_or(address);
        let uri: tonic::codegen::http::uri::Authority =
            authority.parse().map_err(|e| bad(format!("{e}")))?;
        let endpoint = match &self.tls {
            Some(tls) => Endpoint::from_shared(format!("https://{authority}"))
                .map_err(|e| bad(e.to_string()))?
                .tls_config(tls.clone())
                .map_err(|e| bad(e.to_string()))?,
            None if is_loopback(uri.host()) => {
                Endpoint::from_shared(format!("http://{authority}")).map_err(|e| bad(e.to_string()))?
            }
            None => {
                return Err(KvError::Unavailable(format!(
                    "refusing plain-text gRPC to central at {address}: it is not on loopback; set tls.ca, tls.cert and tls.key (see `driftkv certs`)"
                )))
            }
        };
        Ok(endpoint
            .connect_timeout(self.timeouts.connect)
            .tcp_nodelay(true))
    }

    /// Whether a central answers at `address` and, with TLS, proves with its certificate that
    /// it is central: a TLS handshake (or, in plain text, a TCP connection) within the connect
    /// timeout.
    pub async fn probe(&self, address: &str) -> Result<(), KvError> {
        let endpoint = self.endpoint(address)?;
        match tokio::time::timeout(self.timeouts.connect, endpoint.connect()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(KvError::Unavailable(format!(
                "central at {address} is not usable: {}",
                error_chain(&e)
            ))),
            Err(_) => Err(KvError::Unavailable(format!(
                "central at {address} did not answer within {} ms",
                self.timeouts.connect.as_millis()
            ))),
        }
    }

    /// The address the link points at.
    pub fn address(&self) -> Option<String> {
        self.address.borrow().clone()
    }

    /// Points the link at `address`; does nothing if it already is.
    pub fn set_address(&self, address: &str) -> Result<(), KvError> {
        if self.address.borrow().as_deref() == Some(address) {
            return Ok(());
        }
        let endpoint = self.endpoint(address)?;
        let clients = Clients {
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
    async fn call<T, F>(
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

    /// The client for replication streams, once an address is known.
    async fn streams(&self) -> TracedClient {
        let mut address = self.address.subscribe();
        loop {
            if let Ok(clients) = self.current() {
                return clients.streams;
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

fn status_error(status: tonic::Status) -> KvError {
    error_from_status(&status)
}

fn namespace_reply(reply: pb::NamespaceReply) -> Result<Namespace, KvError> {
    reply
        .namespace
        .ok_or_else(|| KvError::Internal("central answered without the namespace".into()))?
        .try_into()
}

#[async_trait]
impl Upstream for CentralLink {
    async fn write_batch(
        &self,
        writer: Option<u64>,
        requests: Vec<WriteRequest>,
    ) -> Result<BatchOutcome, KvError> {
        let payload = requests.iter().map(WriteRequest::payload_bytes).sum();
        let counts: Vec<usize> = requests.iter().map(|r| r.writes.len()).collect();
        let request = pb::WriteBatchRequest {
            writes: requests.into_iter().map(Into::into).collect(),
            writer: writer.unwrap_or(0),
        };
        let reply = self
            .call(payload, |mut central| async move {
                central.write_batch(request).await
            })
            .await?;
        if reply.outcomes.len() != counts.len() {
            return Err(KvError::Internal(format!(
                "central answered {} outcomes for {} writers",
                reply.outcomes.len(),
                counts.len()
            )));
        }
        reply
            .outcomes
            .into_iter()
            .zip(counts)
            .map(|(outcome, count)| {
                let outcome = Result::<Vec<WriteResult>, KvError>::try_from(outcome)?;
                match &outcome {
                    Ok(results) if results.len() != count => Err(KvError::Internal(format!(
                        "central answered {} results for {count} writes",
                        results.len()
                    ))),
                    _ => Ok(outcome),
                }
            })
            .collect()
    }

    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError> {
        let request = pb::CreateNamespaceRequest {
            account_id: account_id.into(),
            title: title.into(),
        };
        let reply = self
            .call(0, |mut central| async move {
                central.create_namespace(request).await
            })
            .await?;
        namespace_reply(reply)
    }

    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError> {
        let request = pb::RenameNamespaceRequest {
            account_id: account_id.into(),
            namespace_id: id.0.to_vec(),
            title: title.into(),
        };
        let reply = self
            .call(0, |mut central| async move {
                central.rename_namespace(request).await
            })
            .await?;
        namespace_reply(reply)
    }

    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError> {
        let request = pb::DeleteNamespaceRequest {
            account_id: account_id.into(),
            namespace_id: id.0.to_vec(),
        };
        self.call(0, |mut central| async move {
            central.delete_namespace(request).await
        })
        .await?;
        Ok(())
    }

    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
    ) -> Result<Option<LiveValue>, KvError> {
        let request = pb::GetRequest {
            account_id: account_id.into(),
            namespace_id: id.0.to_vec(),
            key: key.into(),
        };
        let reply = self
            .call(0, |mut central| async move { central.get(request).await })
            .await?;
        Ok(reply.live.map(Into::into))
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<EventStream, KvError> {
        let mut client = self.streams().await;
        let stream = client
            .subscribe(pb::SubscribeRequest {
                from_sequence: subscription.from,
                node_id: subscription.node_id.to_string(),
                writer: subscription.writer.unwrap_or(0),
                full_through: subscription.full_through,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(Box::pin(stream.map(|reply| {
            reply
                .map_err(status_error)
                .and_then(ReplicationEvent::try_from)
        })))
    }

    async fn snapshot(&self, node_id: u64) -> Result<SnapshotStream, KvError> {
        let mut client = self.streams().await;
        let stream = client
            .snapshot(pb::SnapshotRequest {
                node_id: node_id.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(Box::pin(stream.map(|chunk| {
            chunk
                .map_err(status_error)
                .and_then(SnapshotChunk::try_from)
        })))
    }
}

/// An error with its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> LinkTimeouts {
        LinkTimeouts {
            connect: Duration::from_millis(200),
            request: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn without_tls_only_loopback_is_dialled() {
        let link = CentralLink::new(timeouts(), None);
        for address in [
            "http://127.0.0.1:7070",
            "127.0.0.1:7070",
            "http://localhost:1",
            "http://[::1]:7070",
        ] {
            link.set_address(address)
                .unwrap_or_else(|e| panic!("{address}: {e}"));
        }
        for address in [
            "http://central.invalid:7070",
            "http://central:7070",
            "https://edge.invalid:7070",
        ] {
            let refused = link.set_address(address).unwrap_err();
            assert!(
                refused.to_string().contains("refusing plain-text gRPC"),
                "{refused}"
            );
        }
        assert_eq!(link.address().as_deref(), Some("http://[::1]:7070"));
    }

    #[tokio::test]
    async fn a_probe_of_nothing_fails_fast() {
        let link = CentralLink::new(timeouts(), None);
        let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", nobody.local_addr().unwrap());
        drop(nobody);
        assert!(link.probe(&address).await.is_err());
    }
}
