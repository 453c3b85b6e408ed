//! The HTTP listener: accepts connections, speaks TLS when given a certificate, serves HTTP/1.1
//! and HTTP/2 through hyper, and drains in-flight requests on shutdown.
//!
//! It exists instead of `axum::serve` for what a listener facing the internet needs and that
//! one lacks:
//! - HTTPS, with a certificate that can change while serving;
//! - a deadline for a client to send its request headers (and finish a TLS handshake): a
//!   client trickling header bytes would otherwise hold a connection forever;
//! - an idle timeout, closing connections that carried nothing for a while, and dropping
//!   those that stay stalled after that (a client that stopped reading its answer, an HTTP/2
//!   client that sent its preface and nothing more);
//! - a cap on open connections (more are answered 503 and closed);
//! - a cap on requests in flight (until their answers are sent), past which requests are shed
//!   at once with 503 and `Retry-After` rather than queued until everything is slow (health
//!   probes excepted);
//! - a deadline for a whole request, body included, and a floor on the pace of its body.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use driftkv_core::KvError;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::envelope::ApiError;

/// How the listener treats connections and requests.
#[derive(Clone)]
pub struct ServerOptions {
    /// Serve HTTPS with this configuration; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Longest a client may take to send a request's headers (and a TLS handshake).
    pub header_read_timeout: Duration,
    /// A connection that carries nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Most requests in flight at once; more are answered 503 with `Retry-After` at once.
    pub max_in_flight: usize,
    /// Longest a request may take, from its headers to its answer (its body included).
    pub request_timeout: Duration,
    /// Slowest a request body may arrive, in bytes a second on average once the header read
    /// timeout has passed (a client trickling a body would otherwise hold a connection and an
    /// in-flight slot until the request timeout); 0 for no such floor. Past it: 408.
    pub min_body_rate: u64,
    /// Longest shutdown waits for in-flight requests before closing their connections.
    pub drain_timeout: Duration,
    /// How the listener's own refusals (overloaded, timed out, too many connections) read.
    pub refusals: Refusals,
}

/// The protocol a listener's own refusals are written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refusals {
    /// Cloudflare's JSON envelope, with its error code (the REST API).
    #[default]
    Rest,
    /// A status whose reason phrase says what happened (the workerd binding: workerd shows
    /// the Worker only the status line).
    Binding,
}

impl Refusals {
    fn answer(self, error: KvError) -> Response {
        match self {
            Refusals::Rest => ApiError(error).into_response(),
            Refusals::Binding => crate::workerd::Refusal::from(error).into_response(),
        }
    }

    /// What a connection over the cap is told.
    fn over_capacity(self) -> &'static [u8] {
        match self {
            Refusals::Rest => OVER_CAPACITY,
            Refusals::Binding => OVER_CAPACITY_BINDING,
        }
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(300),
            min_body_rate: 1024,
            drain_timeout: Duration::from_secs(15),
            refusals: Refusals::Rest,
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("tls", &self.tls.is_some())
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_in_flight", &self.max_in_flight)
            .field("request_timeout", &self.request_timeout)
            .field("min_body_rate", &self.min_body_rate)
            .field("drain_timeout", &self.drain_timeout)
            .field("refusals", &self.refusals)
            .finish()
    }
}

/// How often the pace of a request body on its way is looked at.
const BODY_CHECK: Duration = Duration::from_secs(1);

/// Most HTTP/2 streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// What a connection over the cap is told before it is closed (plain HTTP only: a TLS client
/// would first need a handshake, which is what the cap saves).
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 131\r\nConnection: close\r\n\r\n{\"success\":false,\"errors\":[{\"code\":10050,\"message\":\"service unavailable: too many open connections\"}],\"messages\":[],\"result\":null}\n";

/// [`OVER_CAPACITY`] for the workerd binding.
const OVER_CAPACITY_BINDING: &[u8] = b"HTTP/1.1 503 Service unavailable: too many open connections\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 47\r\nConnection: close\r\n\r\nService unavailable: too many open connections\n";

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to the drain timeout) and returns.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    // The HTTP/1 timer (of the header read timeout) is set per connection: see `SpareTimer`.
    builder
        .http1()
        .header_read_timeout(options.header_read_timeout);
    // HTTP/2: a peer that stops answering pings is dropped, and one connection may not open
    // more streams at once than a client needs (each also takes an in-flight slot).
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let requests = Limits {
        in_flight: Arc::new(Semaphore::new(options.max_in_flight)),
        max_in_flight: options.max_in_flight,
        timeout: options.request_timeout,
        body_grace: options.header_read_timeout,
        min_body_rate: options.min_body_rate,
        refusals: options.refusals,
    };
    let (stopping, stop) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
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
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            let answer = acceptor.is_none().then(|| options.refusals.over_capacity());
            tokio::spawn(refuse(stream, answer));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let spare = SpareTimer::default();
        let service = limited(service.clone(), requests.clone(), spare.clone());
        let mut builder = builder.clone();
        builder.http1().timer(spare);
        let connection = Connection {
            builder,
            idle_timeout: options.idle_timeout,
            handshake_timeout: options.header_read_timeout,
            stop: stop.clone(),
            peer,
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => connection.serve(stream, service).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(connection.handshake_timeout, acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(tls)) => connection.serve(tls, service).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    stopping.send_replace(true);
    // Every connection holds a slot until it ends: all slots back means all drained.
    let all = u32::try_from(options.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.drain_timeout, connections.acquire_many(all))
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

/// One accepted connection and how to serve it.
struct Connection {
    builder: Builder<TokioExecutor>,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    /// Serves requests on `io` until the client closes it, it stays idle for the idle timeout,
    /// or the server stops (then after the request in flight, if any).
    async fn serve<I, S>(mut self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: tower::Service<Request, Response = Response, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let active = Arc::new(AtomicBool::new(false));
        let io = Watched {
            inner: io,
            active: active.clone(),
        };
        // Requests whose answer is still being worked out: the connection is quiet because of
        // the server then, not the client, and it is not idle.
        let working = Arc::new(AtomicUsize::new(0));
        let counted = {
            let working = working.clone();
            tower::service_fn(move |request: hyper::Request<Incoming>| {
                let busy = Busy::enter(&working);
                let answer = service.clone().oneshot(request.map(Body::new));
                async move {
                    let answered = answer.await;
                    drop(busy);
                    answered
                }
            })
        };
        let hyper_service = TowerToHyperService::new(counted);
        let mut connection = pin!(self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), hyper_service));
        let mut closing = false;
        // Idleness is judged in half-periods rather than from a clock read on every read and
        // write: a connection with no bytes either way for two half-periods in a row has been
        // idle for at least the timeout (and is closed within one and a half of it), and the
        // only cost on the request path is one atomic store.
        let half = self.idle_timeout / 2;
        let mut quiet_checks = 0;
        let mut check_at = Instant::now() + half;
        loop {
            tokio::select! {
                outcome = connection.as_mut() => {
                    if let Err(e) = outcome {
                        // Clients that go away, time out on their headers or send garbage end
                        // up here.
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(check_at) => {
                    check_at += half;
                    let busy = working.load(Ordering::Relaxed) > 0;
                    quiet_checks = if active.swap(false, Ordering::Relaxed) || busy { 0 } else { quiet_checks + 1 };
                    if quiet_checks >= 4 {
                        // A graceful close waits for the answer in flight to be sent: a client
                        // that stopped reading it (or sent an HTTP/2 preface and nothing more)
                        // would hold the connection for good. Still no bytes either way for
                        // another idle timeout: it goes.
                        tracing::debug!(peer = %self.peer, "dropping a connection that stays stalled");
                        return;
                    }
                    if quiet_checks >= 2 && !closing {
                        tracing::debug!(peer = %self.peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
                changed = self.stop.changed(), if !closing => {
                    if changed.is_err() || *self.stop.borrow() {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// A request being worked on, counted while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(working: &Arc<AtomicUsize>) -> Self {
        working.fetch_add(1, Ordering::Relaxed);
        Busy(working.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's stream, noting that it carried bytes since the idle check last looked.
struct Watched<I> {
    inner: I,
    active: Arc<AtomicBool>,
}

impl<I> Watched<I> {
    fn touch(&self) {
        self.active.store(true, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The per-request limits every connection shares.
#[derive(Clone)]
struct Limits {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    timeout: Duration,
    /// How long a body may take before [`Limits::min_body_rate`] applies.
    body_grace: Duration,
    min_body_rate: u64,
    refusals: Refusals,
}

/// How much of a request body has arrived, and whether all of it has.
#[derive(Default)]
struct BodyProgress {
    received: AtomicU64,
    done: AtomicBool,
}

/// A request body that reports its progress.
struct Tracked {
    inner: Body,
    progress: Arc<BodyProgress>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.progress
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => self.progress.done.store(true, Ordering::Relaxed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Limits {
    /// Whether a body of which `progress` has arrived `elapsed` after the request began is
    /// arriving slower than the floor allows.
    fn body_too_slow(&self, progress: &BodyProgress, elapsed: Duration) -> bool {
        if self.min_body_rate == 0 || progress.done.load(Ordering::Relaxed) {
            return false;
        }
        let received = progress.received.load(Ordering::Relaxed);
        let allowed =
            self.body_grace + Duration::from_secs_f64(received as f64 / self.min_body_rate as f64);
        elapsed > allowed
    }
}

/// `service` with the request limits: shed when too many are in flight, cut off when one takes
/// too long. Its deadlines are timed with the connection's `spare` timer when it is free.
fn limited<S>(
    service: S,
    limits: Limits,
    spare: SpareTimer,
) -> impl tower::Service<
    Request,
    Response = Response,
    Error = Infallible,
    Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
> + Clone
       + Send
       + 'static
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    tower::service_fn(move |request: Request| {
        let service = service.clone();
        let limits = limits.clone();
        let spare = spare.clone();
        let answer: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>> =
            Box::pin(async move {
                // Health probes are never shed: an orchestrator that reads a busy node's 503
                // as dead would restart it, or take it out just when it is needed. They cost
                // next to nothing.
                let probe = matches!(request.uri().path(), "/healthz" | "/readyz");
                let permit = limits.in_flight.clone().try_acquire_owned();
                if permit.is_err() && !probe {
                    return Ok(limits.refusals.answer(KvError::Overloaded {
                        limit: limits.max_in_flight,
                    }));
                }
                // The request stays in flight until the service's answer is sent: a streamed
                // answer (a bulk get's values) to a client that does not read it holds its
                // values. A refusal made here holds nothing.
                let mut permit = permit.ok();
                let started = Instant::now();
                // Only a request with a body to wait for has its progress followed (a GET
                // costs nothing more).
                let (request, progress) = if request.body().is_end_stream() {
                    (request, None)
                } else {
                    let progress = Arc::new(BodyProgress::default());
                    let tracked = progress.clone();
                    let request = request.map(|inner| {
                        Body::new(Tracked {
                            inner,
                            progress: tracked,
                        })
                    });
                    (request, Some(progress))
                };
                // Most answers (a cached read) are ready the first time they are polled; only
                // one that has to wait arms the deadline's timer.
                let mut answer = pin!(service.oneshot(request));
                if let Poll::Ready(answered) =
                    std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await
                {
                    return answered.map(|r| in_flight_until_sent(r, permit.take()));
                }
                let deadline = started + limits.timeout;
                // With a body on its way, its pace is looked at every second once it can be
                // too slow (before the grace has passed, it cannot be). Waiting for the grace
                // first also keeps the timer's deadlines moving forward from the header read
                // timeout's, which is what makes the connection's spare timer cheap to reset.
                let check_at = |now: Instant| match progress {
                    Some(_) if limits.min_body_rate > 0 => {
                        deadline.min((started + limits.body_grace).max(now + BODY_CHECK))
                    }
                    _ => deadline,
                };
                let mut timer = spare.lend(check_at(started));
                loop {
                    tokio::select! {
                        answered = answer.as_mut() => {
                            return answered.map(|r| in_flight_until_sent(r, permit.take()));
                        }
                        () = &mut timer => {}
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(limits.refusals.answer(KvError::RequestTimeout {
                            secs: limits.timeout.as_secs(),
                        }));
                    }
                    if let Some(progress) = &progress {
                        if limits.body_too_slow(progress, now - started) {
                            return Ok(limits.refusals.answer(KvError::BodyTooSlow {
                                received: progress.received.load(Ordering::Relaxed),
                                secs: (now - started).as_secs(),
                                min_rate: limits.min_body_rate,
                            }));
                        }
                    }
                    timer.reset(check_at(now));
                }
            });
        answer
    })
}

/// A connection's spare timer, which its timers (hyper's header read timeout, then the request
/// timeout of the request those headers began) take turns with.
///
/// A timer of its own for each would be registered with the runtime's timer wheel and removed
/// from it again on every request, each under the wheel's lock. A timer already registered
/// whose deadline only moves later is reset without either: the wheel finds the new deadline
/// when it reaches the old one. The deadlines of one connection do move later: each header read
/// is due a header read timeout after it began, each request's first check a header read
/// timeout (the body's grace) after its headers. A timer wanted while the spare is lent (HTTP/2
/// streams at once) is a timer of its own.
#[derive(Clone, Default)]
struct SpareTimer(Arc<std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>);

impl SpareTimer {
    /// A timer due at `deadline`: the spare if it is free, else a new one. It comes back when
    /// dropped.
    fn lend(&self, deadline: Instant) -> Lent {
        let spare = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Lent {
            sleep: Some(sleep),
            spare: self.clone(),
        }
    }
}

impl hyper::rt::Timer for SpareTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.lend(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.lend(deadline.into()))
    }

    /// The runtime's clock, as `TokioTimer`'s, so that deadlines hyper computes agree with
    /// those of tests that pause time.
    fn now(&self) -> std::time::Instant {
        Instant::now().into()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Lent>() {
            Some(lent) => lent.get_mut().reset(deadline.into()),
            None => *sleep = self.sleep_until(deadline),
        }
    }
}

/// A timer lent by a [`SpareTimer`], given back when dropped.
struct Lent {
    /// Always present until dropped.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    spare: SpareTimer,
}

impl Lent {
    /// Makes it due at `deadline`.
    fn reset(&mut self, deadline: Instant) {
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(deadline);
        }
    }
}

impl Future for Lent {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl hyper::rt::Sleep for Lent {}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut spare = self.spare.0.lock().unwrap_or_else(|e| e.into_inner());
            // The spare may be back already (another stream's timer): this one goes.
            spare.get_or_insert(sleep);
        }
    }
}

/// `response`, holding `permit` (its request's slot among those in flight) until its body has
/// been sent or dropped; at once if it has none.
fn in_flight_until_sent(response: Response, permit: Option<OwnedSemaphorePermit>) -> Response {
    match permit {
        Some(permit) if !response.body().is_end_stream() => response.map(|inner| {
            Body::new(Sending {
                inner,
                permit: Some(permit),
            })
        }),
        _ => response,
    }
}

/// An answer's body, with the slot of its request among those in flight, freed when the body
/// ends (or is dropped, the connection gone).
struct Sending {
    inner: Body,
    permit: Option<OwnedSemaphorePermit>,
}

impl HttpBody for Sending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Closes a connection over the cap, after answering it `answer` (a 503, plain HTTP only).
async fn refuse(mut stream: TcpStream, answer: Option<&'static [u8]>) {
    tracing::debug!("refusing a connection over the connection cap");
    if let Some(answer) = answer {
        let _ = tokio::time::timeout(Duration::from_secs(1), send(&mut stream, answer)).await;
    }
}

async fn send<T: AsyncRead + AsyncWrite + Unpin>(stream: &mut T, answer: &[u8]) -> io::Result<()> {
    stream.write_all(answer).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn the_binding_over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY_BINDING).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let status = head.lines().next().unwrap();
        assert_eq!(
            status,
            format!("HTTP/1.1 503 {}", body.trim_end()),
            "the reason phrase says it all"
        );
    }

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

    /// A service that answers after `delay`.
    fn slow(
        delay: Duration,
    ) -> impl tower::Service<
        Request,
        Response = Response,
        Error = Infallible,
        Future = impl Future<Output = Result<Response, Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |_: Request| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>("done".into_response())
        })
    }

    fn request() -> Request {
        Request::get("/").body(Body::empty()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_past_the_in_flight_cap_are_shed_at_once() {
        let limits = Limits {
            in_flight: Arc::new(Semaphore::new(2)),
            max_in_flight: 2,
            timeout: Duration::from_secs(60),
            body_grace: Duration::from_secs(10),
            min_body_rate: 1024,
            refusals: Refusals::Rest,
        };
        let service = limited(slow(Duration::from_secs(1)), limits, SpareTimer::default());
        let first = tokio::spawn(service.clone().oneshot(request()));
        let second = tokio::spawn(service.clone().oneshot(request()));
        tokio::task::yield_now().await;
        let shed = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()["retry-after"], "1");
        // Health probes still get through.
        for probe in ["/healthz", "/readyz"] {
            let request = Request::get(probe).body(Body::empty()).unwrap();
            let answer = service.clone().oneshot(request).await.unwrap();
            assert_eq!(answer.status(), 200, "{probe}");
        }
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        assert_eq!(second.await.unwrap().unwrap().status(), 200);
        // Room again once they are done.
        assert_eq!(service.oneshot(request()).await.unwrap().status(), 200);
    }

    /// Found by review: the slot was freed when the handler returned, so streamed answers to
    /// clients that did not read them were not counted.
    #[tokio::test]
    async fn a_request_stays_in_flight_until_its_answer_is_sent() {
        let limits = Limits {
            in_flight: Arc::new(Semaphore::new(1)),
            max_in_flight: 1,
            timeout: Duration::from_secs(60),
            body_grace: Duration::from_secs(10),
            min_body_rate: 1024,
            refusals: Refusals::Rest,
        };
        let streamed = tower::service_fn(|_: Request| async {
            let pieces = ["a", "b"].map(|piece| Ok::<_, Infallible>(Bytes::from(piece)));
            Ok::<_, Infallible>(Response::new(Body::from_stream(futures::stream::iter(
                pieces,
            ))))
        });
        let service = limited(streamed, limits.clone(), SpareTimer::default());
        let unread = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(
            limits.in_flight.available_permits(),
            0,
            "its answer is unsent"
        );
        let shed = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(shed.status(), 503);
        let sent = axum::body::to_bytes(unread.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&sent[..], b"ab");
        assert_eq!(
            limits.in_flight.available_permits(),
            1,
            "sent: its slot is free"
        );
        // An answer dropped unsent (the client gone) frees its slot too.
        let dropped = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(limits.in_flight.available_permits(), 0);
        drop(dropped);
        assert_eq!(limits.in_flight.available_permits(), 1);
        // An answer without a body frees it at once.
        let empty = limited(
            tower::service_fn(|_: Request| async {
                Ok::<_, Infallible>(StatusCode::NO_CONTENT.into_response())
            }),
            limits.clone(),
            SpareTimer::default(),
        );
        let answered = empty.oneshot(request()).await.unwrap();
        assert_eq!(answered.status(), 204);
        assert_eq!(limits.in_flight.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_takes_turns_with_its_spare_timer_and_every_deadline_holds() {
        let spare = SpareTimer::default();
        let at = |lent: &Lent| {
            lent.sleep
                .as_deref()
                .map(|s| s as *const tokio::time::Sleep)
        };
        let start = Instant::now();
        let first = spare.lend(start + Duration::from_secs(10));
        let spare_at = at(&first);
        // Wanted while lent: a timer of its own, dropped when given back after the spare.
        let second = spare.lend(start + Duration::from_secs(5));
        assert_ne!(at(&second), spare_at);
        drop(first);
        drop(second);
        let waits = |deadline: Instant| {
            let lent = spare.lend(deadline);
            assert_eq!(at(&lent), spare_at, "the spare is lent again");
            async move {
                lent.await;
                let waited = Instant::now() - start;
                assert!(
                    waited >= deadline - start
                        && waited < deadline - start + Duration::from_millis(5),
                    "{waited:?}"
                );
            }
        };
        // One deadline after another on the same timer: each holds.
        waits(start + Duration::from_secs(20)).await;
        waits(start + Duration::from_secs(21)).await;
        // Reset while lent, as hyper and the request deadline do.
        let mut lent = spare.lend(start + Duration::from_secs(60));
        lent.reset(start + Duration::from_secs(22));
        lent.await;
        assert!(Instant::now() - start < Duration::from_secs(23));
        // Through hyper's interface.
        let timer: &dyn hyper::rt::Timer = &spare;
        let before = Instant::now();
        timer.sleep(Duration::from_secs(3)).await;
        assert!(Instant::now() - before >= Duration::from_secs(3));
        let mut sleep = timer.sleep_until((Instant::now() + Duration::from_secs(100)).into());
        timer.reset(&mut sleep, (Instant::now() + Duration::from_secs(1)).into());
        let before = Instant::now();
        sleep.await;
        assert!(Instant::now() - before < Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_is_cut_off() {
        let limits = Limits {
            in_flight: Arc::new(Semaphore::new(8)),
            max_in_flight: 8,
            timeout: Duration::from_secs(5),
            body_grace: Duration::from_secs(10),
            min_body_rate: 1024,
            refusals: Refusals::Rest,
        };
        let answer = limited(
            slow(Duration::from_secs(10)),
            limits.clone(),
            SpareTimer::default(),
        )
        .oneshot(request())
        .await
        .unwrap();
        assert_eq!(answer.status(), 408);
        assert_eq!(limits.in_flight.available_permits(), 8, "its slot is free");
    }

    /// A service that reads the whole body, then answers.
    fn reading() -> impl tower::Service<
        Request,
        Response = Response,
        Error = Infallible,
        Future = impl Future<Output = Result<Response, Infallible>> + Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(|request: Request| async move {
            let body = axum::body::to_bytes(request.into_body(), usize::MAX).await;
            Ok::<_, Infallible>(match body {
                Ok(bytes) => format!("{} bytes", bytes.len()).into_response(),
                Err(_) => StatusCode::BAD_REQUEST.into_response(),
            })
        })
    }

    /// A request whose body is `chunks` bytes, one every `every`.
    fn trickled(chunks: usize, size: usize, every: Duration) -> Request {
        let stream = futures::stream::unfold(0, move |sent| async move {
            if sent == chunks {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok::<_, Infallible>(Bytes::from(vec![b'x'; size])), sent + 1))
        });
        Request::put("/").body(Body::from_stream(stream)).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_floor_is_cut_off_and_a_steady_one_is_not() {
        let limits = Limits {
            in_flight: Arc::new(Semaphore::new(8)),
            max_in_flight: 8,
            timeout: Duration::from_secs(300),
            body_grace: Duration::from_secs(10),
            min_body_rate: 1024,
            refusals: Refusals::Rest,
        };
        let service = limited(reading(), limits.clone(), SpareTimer::default());
        // A byte every 2 s: cut soon after the grace, long before the request timeout.
        let started = Instant::now();
        let answer = service
            .clone()
            .oneshot(trickled(1000, 1, Duration::from_secs(2)))
            .await
            .unwrap();
        assert_eq!(answer.status(), 408);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_secs(12),
            "{waited:?}"
        );
        assert_eq!(limits.in_flight.available_permits(), 8, "its slot is free");
        // 4 KiB a second for 30 s: above the floor all along, so it is read whole.
        let answer = service
            .oneshot(trickled(30, 4096, Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let body = axum::body::to_bytes(answer.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], format!("{} bytes", 30 * 4096).as_bytes());
    }

    #[tokio::test(start_paused = true)]
    async fn the_binding_listener_refuses_in_its_own_words() {
        let limits = Limits {
            in_flight: Arc::new(Semaphore::new(1)),
            max_in_flight: 1,
            timeout: Duration::from_secs(5),
            body_grace: Duration::from_secs(10),
            min_body_rate: 1024,
            refusals: Refusals::Binding,
        };
        let service = limited(slow(Duration::from_secs(10)), limits, SpareTimer::default());
        let first = tokio::spawn(service.clone().oneshot(request()));
        tokio::task::yield_now().await;
        let shed = service.oneshot(request()).await.unwrap();
        assert_eq!(shed.status(), 503);
        let phrase = shed.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert!(
            std::str::from_utf8(phrase.as_bytes())
                .unwrap()
                .starts_with("Service unavailable: overloaded"),
            "{phrase:?}"
        );
        let timed_out = first.await.unwrap().unwrap();
        assert_eq!(timed_out.status(), 408);
        let phrase = timed_out
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .unwrap();
        assert!(
            phrase.as_bytes().starts_with(b"Request timeout"),
            "{phrase:?}"
        );
    }
}
