//! The HTTP listener: accepts connections, speaks TLS when given a certificate, serves HTTP/1.1
//! and HTTP/2 through hyper, and drains in-flight requests on shutdown.
//!
//! It exists instead of `axum::serve` for what a listener facing the internet needs and that
//! one lacks: HTTPS (with a certificate that can change while serving), a deadline for a
//! client to finish sending its request headers (a client trickling header bytes would
//! otherwise hold a connection forever), and a cap on open connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// How the listener treats connections.
#[derive(Clone)]
pub struct ServerOptions {
    /// Serve HTTPS with this configuration; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest a client may take to send a request's headers (and a TLS handshake).
    pub header_read_timeout: Duration,
    /// Most connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Longest shutdown waits for in-flight requests before closing their connections.
    pub drain_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(15),
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("tls", &self.tls.is_some())
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

/// What a connection over the cap is told before it is closed (plain HTTP only: a TLS client
/// would first need a handshake, which is what the cap saves).
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 131\r\nConnection: close\r\n\r\n{\"success\":false,\"errors\":[{\"code\":10050,\"message\":\"service unavailable: too many open connections\"}],\"messages\":[],\"result\":null}\n";

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to the drain timeout) and returns.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20));
    let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, acceptor.is_none()));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let hyper_service = TowerToHyperService::new(
            service
                .clone()
                .map_request(|request: hyper::Request<Incoming>| request.map(Body::new)),
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let handshake_deadline = options.header_read_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => {
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), hyper_service)
                        .into_owned();
                    finish(watcher.watch(connection).await, peer);
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(handshake_deadline, acceptor.accept(stream)).await;
                    let tls = match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), hyper_service)
                        .into_owned();
                    finish(watcher.watch(connection).await, peer);
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {} s; closing their connections",
            options.drain_timeout.as_secs()
        );
    }
    Ok(())
}

fn finish<E: std::fmt::Display>(outcome: Result<(), E>, peer: SocketAddr) {
    if let Err(e) = outcome {
        // Clients that go away, time out on their headers or send garbage end up here.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Answers a connection over the cap with a 503 (plain HTTP) and closes it.
async fn refuse(mut stream: TcpStream, plain: bool) {
    tracing::debug!("refusing a connection over the connection cap");
    if plain {
        let _ = tokio::time::timeout(Duration::from_secs(1), answer(&mut stream)).await;
    }
}

async fn answer<T: AsyncRead + AsyncWrite + Unpin>(stream: &mut T) -> std::io::Result<()> {
    stream.write_all(OVER_CAPACITY).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(envelope["errors"][0]["code"], 10050);
    }
}
