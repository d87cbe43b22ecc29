//! The public HTTP listener for relying parties (`[http]`): OCSP (RFC 6960
//! with the RFC 5019 profile) and CA certificates.
//!
//! - `POST /ocsp`, `POST /ocsp/{issuer}`: the DER request is the body (at
//!   most [`MAX_BODY`] octets; more is `malformedRequest`).
//! - `GET /ocsp/{base64}`, `GET /ocsp/{issuer}/{base64}`: the base64 may
//!   itself contain `/`, so the first segment is taken as an issuer only
//!   when it names a CA castellan holds.
//! - OCSP answers are always `application/ocsp-response`, errors included
//!   (an unsigned OCSPResponse with the error status), never HTML or JSON.
//!   Successful GET answers carry the RFC 5019 caching headers
//!   (`Cache-Control` with max-age at most `http.ocsp_max_age_secs` and
//!   never past nextUpdate, `Expires`, `Last-Modified`, `ETag`) and honour
//!   `If-None-Match` with 304. Error statuses, answers with a nonce and
//!   `unknown` answers carry `Cache-Control: no-store`. `HEAD` works
//!   wherever `GET` does; a 405 names the methods allowed in `Allow`.
//!   `/ocsp/{issuer}/` (an AIA URL ending in `/`) works like
//!   `/ocsp/{issuer}`. Single-CertID requests without nonce are
//!   answered from the pre-signed cache (see `daemon::revocation`), so the
//!   same request gets the same bytes until the status or the answer's
//!   half-life changes.
//! - `GET /crl/{issuer}.crl` (DER, application/pkix-crl) and
//!   `GET /crl/{issuer}.pem`: the current full CRL, with the same caching
//!   headers (max-age at most [`CRL_MAX_AGE`]: a CRL changes after every
//!   burst of revocations).
//! - `GET /ca/{issuer}.crt`: the CA certificate (DER, application/pkix-cert).
//! - Anything else: 404, plain text.
//!
//! Connections: a header read timeout (also closes idle keep-alive
//! connections), keep-alive, a write that makes no progress for
//! [`WRITE_TIMEOUT`] closes the connection (a client that pipelines requests
//! and never reads the answers), at most [`MAX_REQUESTS_PER_CONNECTION`]
//! requests and [`MAX_CONNECTION_LIFETIME`] per connection, and at most
//! [`MAX_CONNECTIONS`] at once: when all are taken, the idle keep-alive
//! connections are closed to make room, and a new connection waits up to
//! [`SLOT_WAIT`] for a slot before it is closed. No handler panics: every
//! failure becomes an answer.

use std::cell::Cell;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::daemon::{Daemon, OCSP_MALFORMED, OcspAnswer, now_ms, ocsp_error_der};
use crate::store::ReadView;

/// Largest POST body; a larger one is answered `malformedRequest`.
pub const MAX_BODY: usize = 64 * 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to send a request head (and an idle connection lives).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time one request may take (signing included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A write to a client that makes no progress for this long closes the
/// connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served on one connection; the last answer says
/// `Connection: close`.
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 100_000;
/// Longest life of one connection: after it, the request in progress is
/// answered and the connection closed.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a new connection waits for a slot while idle connections are
/// being closed to make room.
pub const SLOT_WAIT: Duration = Duration::from_secs(1);
/// New connections waiting for a slot at once; more are closed at once.
const SLOT_WAITERS: usize = 64;

const OCSP_RESPONSE: &str = "application/ocsp-response";

type Body = Full<Bytes>;

/// Longest `max-age` given for a CRL.
pub const CRL_MAX_AGE: i64 = 300;

/// The public listener's threads, started by [`start`].
pub struct PublicListener {
    /// Closed when every worker thread has ended.
    ended: tokio::sync::mpsc::Receiver<()>,
}

impl PublicListener {
    /// Waits (at most `bound`) for every worker to end after the shutdown
    /// signal.
    pub async fn wait(mut self, bound: Duration) {
        let _ = tokio::time::timeout(bound, self.ended.recv()).await;
    }
}

/// Serves `listener` on `workers` threads until `shutdown` turns true.
///
/// Each worker runs its own single-threaded event loop and accepts from the
/// shared listening socket, so a connection lives on one thread from accept
/// to close (as nginx's worker processes): no hand-over of ready
/// connections between threads, which on a busy machine cost throughput
/// and made the latency tail long. Work that must outlive a request (OCSP
/// signing on a cache miss, the signer's connections) runs on the daemon's
/// own runtime, not here. The connection limits are shared by all workers.
pub fn start(
    daemon: Arc<Daemon>,
    listener: std::net::TcpListener,
    workers: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<PublicListener, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("public listener: cannot make it non-blocking: {e}"))?;
    let limits = Arc::new(Limits::new());
    let (alive, ended) = tokio::sync::mpsc::channel::<()>(1);
    for i in 0..workers.max(1) {
        let socket = listener.try_clone().map_err(|e| {
            format!("public listener: cannot share the socket with worker {i}: {e}")
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("public listener: cannot start worker {i}: {e}"))?;
        let daemon = Arc::clone(&daemon);
        let limits = Arc::clone(&limits);
        let mut shutdown = shutdown.clone();
        let alive = alive.clone();
        std::thread::Builder::new()
            .name(format!("public-http-{i}"))
            .spawn(move || {
                let _alive = alive;
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(socket) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(worker = i, error = %e, "public HTTP worker cannot use the listener");
                            return;
                        }
                    };
                    serve(daemon, listener, &limits, async move {
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    })
                    .await;
                });
            })
            .map_err(|e| format!("public listener: cannot start worker thread {i}: {e}"))?;
    }
    Ok(PublicListener { ended })
}

/// Connection slots shared by all workers of the listener.
struct Limits {
    slots: Arc<Semaphore>,
    waiters: Arc<Semaphore>,
    /// Told when every slot is taken: idle keep-alive connections close.
    shed: Arc<Notify>,
    last_shed: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Limits {
    fn new() -> Limits {
        Limits {
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            waiters: Arc::new(Semaphore::new(SLOT_WAITERS)),
            shed: Arc::new(Notify::new()),
            last_shed: std::sync::Mutex::new(None),
        }
    }

    /// Asks idle connections to close, at most once per [`SLOT_WAIT`]: the
    /// connections opened since are given their chance.
    fn shed(&self) {
        let Ok(mut last) = self.last_shed.lock() else {
            self.shed.notify_waiters();
            return;
        };
        if last.is_none_or(|t| t.elapsed() >= SLOT_WAIT) {
            *last = Some(std::time::Instant::now());
            self.shed.notify_waiters();
        }
    }
}

/// One worker: serves `listener` until `shutdown` completes.
async fn serve(daemon: Arc<Daemon>, listener: TcpListener, limits: &Limits, shutdown: impl Future) {
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // An answer is written whole in one go; never hold its
                    // last segment back waiting for an acknowledgement.
                    let _ = stream.set_nodelay(true);
                    let daemon = Arc::clone(&daemon);
                    let shed_rx = Arc::clone(&limits.shed);
                    if let Ok(permit) = limits.slots.clone().try_acquire_owned() {
                        tasks.spawn(async move {
                            let _permit = permit;
                            connection(daemon, stream, &shed_rx).await;
                        });
                        continue;
                    }
                    limits.shed();
                    let Ok(waiting) = limits.waiters.clone().try_acquire_owned() else {
                        tracing::warn!(max = MAX_CONNECTIONS, "public HTTP: connection limit reached");
                        drop(stream);
                        continue;
                    };
                    let slots = Arc::clone(&limits.slots);
                    tasks.spawn(async move {
                        let permit = tokio::time::timeout(SLOT_WAIT, slots.acquire_owned()).await;
                        drop(waiting);
                        let Ok(Ok(permit)) = permit else {
                            tracing::warn!(max = MAX_CONNECTIONS, "public HTTP: connection limit reached");
                            return;
                        };
                        let _permit = permit;
                        connection(daemon, stream, &shed_rx).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "public HTTP: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tasks.abort_all();
}

/// A client socket whose writes must make progress: a write that makes none
/// for [`WRITE_TIMEOUT`] fails (and hyper closes the connection). The timer
/// is armed only when a write would block, so an answer written at once
/// costs nothing more; it is allocated once per connection, at its first
/// blocked write.
struct Guarded {
    io: tokio::net::TcpStream,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
}

impl Guarded {
    fn new(io: tokio::net::TcpStream) -> Guarded {
        Guarded {
            io,
            stall: None,
            stalled: false,
        }
    }

    /// After a write returned `Pending`: arms the timer on the first one,
    /// and fails once it has run out.
    fn poll_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        if !self.stalled {
            self.stalled = true;
            let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
            match &mut self.stall {
                Some(s) => s.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match self.stall.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            ))),
            _ => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => self.poll_stall(cx),
            ready => {
                self.stalled = false;
                ready
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.progress(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.progress(cx, r)
    }
}

async fn connection(daemon: Arc<Daemon>, stream: tokio::net::TcpStream, shed: &Notify) {
    let served = Cell::new(0u32);
    // Read once per connection, not per request.
    let max_age_cap = i64::from(daemon.config().http.ocsp_max_age_secs);
    let svc = service_fn(move |req| {
        let daemon = Arc::clone(&daemon);
        let n = served.get().saturating_add(1);
        served.set(n);
        async move {
            let handled = handle(&daemon, req, max_age_cap);
            let mut r = match tokio::time::timeout(REQUEST_TIMEOUT, handled).await {
                Ok(r) => r,
                Err(_) => ocsp_error(crate::daemon::OCSP_TRY_LATER),
            };
            if n >= MAX_REQUESTS_PER_CONNECTION {
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(r)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // half_close: otherwise, while a request without a body is being
    // answered, hyper reads ahead to notice the client leaving, and that
    // read needs a fresh 8 KiB buffer because the request head still
    // borrows the current one: an 8 KiB allocation and free per OCSP GET
    // (a POST's body is read first, by which time the buffer is free
    // again). A client that leaves early is still noticed when its answer
    // is written, and answers are bounded by REQUEST_TIMEOUT.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .half_close(true)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(Guarded::new(stream)), svc);
    let mut conn = std::pin::pin!(conn);
    let lifetime = tokio::time::sleep(MAX_CONNECTION_LIFETIME);
    let mut lifetime = std::pin::pin!(lifetime);
    let mut shed = std::pin::pin!(shed.notified());
    // Either way the connection ends gracefully: the request in progress
    // is answered (within the write timeout), an idle one closes at once.
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = &mut lifetime => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = &mut shed => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "public HTTP connection ended");
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn ocsp_response(der: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(der.into()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(OCSP_RESPONSE),
    );
    r
}

/// `Cache-Control: no-store`: an answer no HTTP cache may keep (an unsigned
/// error, an answer with a nonce, `unknown`).
fn no_store(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The unsigned OCSPResponse with error `status`, never cached.
fn ocsp_error(status: u8) -> Response<Body> {
    no_store(ocsp_response(ocsp_error_der(status)))
}

/// 405 naming the methods `allow`ed.
fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

async fn handle(daemon: &Arc<Daemon>, req: Request<Incoming>, max_age_cap: i64) -> Response<Body> {
    // The head is borrowed, never copied: this runs once per OCSP request.
    let (head, body) = req.into_parts();
    let path = head.uri.path();
    let if_none_match = head
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let method = &head.method;
    // hyper sends no body in an answer to HEAD (the headers stay as GET's).
    let get = method == Method::GET || method == Method::HEAD;
    if let Some(rest) = path.strip_prefix("/ca/") {
        if !get {
            return not_allowed("GET, HEAD");
        }
        return ca_certificate(daemon, rest);
    }
    if let Some(rest) = path.strip_prefix("/crl/") {
        if !get {
            return not_allowed("GET, HEAD");
        }
        return crl(daemon, rest, if_none_match);
    }
    let rest = if path == "/ocsp" {
        ""
    } else if let Some(rest) = path.strip_prefix("/ocsp/") {
        rest
    } else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    if get {
        // An AIA URL ending in `/` gives `/ocsp//{base64}` or
        // `/ocsp/{issuer}//{base64}`; a DER request's base64 never starts
        // with `/` (it starts with `M`), so one empty segment is dropped.
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        if rest.is_empty() {
            return ocsp_error(OCSP_MALFORMED);
        }
        let (issuer, segment) = split_issuer(daemon, rest);
        let der = match crate::ocsp::decode_get_path(segment) {
            Ok(d) => d,
            Err(e) => return ocsp_error(e.answer().code()),
        };
        let answer = daemon.ocsp(&der, issuer).await;
        return cached_get(answer, if_none_match, max_age_cap);
    }
    if method != Method::POST {
        return not_allowed("GET, HEAD, POST");
    }
    // `/ocsp/{issuer}/` as `/ocsp/{issuer}`.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let issuer = match rest {
        "" => None,
        s if s.contains('/') => return plain(StatusCode::NOT_FOUND, "not found\n"),
        s => Some(s),
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return ocsp_error(OCSP_MALFORMED),
    };
    let answer = daemon.ocsp(&body, issuer).await;
    match answer.caching {
        Some(_) => ocsp_response(answer.der),
        None => no_store(ocsp_response(answer.der)),
    }
}

/// `{issuer}/{base64}` or `{base64}` (which may contain `/`).
fn split_issuer<'a>(daemon: &Daemon, rest: &'a str) -> (Option<&'a str>, &'a str) {
    if let Some((first, tail)) = rest.split_once('/')
        && !tail.is_empty()
        && daemon.holds_ca(first)
    {
        let tail = match tail.strip_prefix('/') {
            Some(t) if !t.is_empty() => t,
            _ => tail,
        };
        return (Some(first), tail);
    }
    (None, rest)
}

/// A GET answer: the caching headers of a signed answer that may be
/// cached (max-age at most `max_age_cap`, never past nextUpdate), or
/// `no-store` (an error, a nonce, `unknown`: no caching headers made).
fn cached_get(answer: OcspAnswer, if_none_match: Option<&str>, max_age_cap: i64) -> Response<Body> {
    let Some(caching) = answer.caching else {
        return no_store(ocsp_response(answer.der));
    };
    let now = now_ms() / 1000;
    let max_age = (caching.next_update - now).clamp(0, max_age_cap);
    cacheable(ocsp_response(answer.der), &caching, if_none_match, max_age)
}

/// The RFC 5019 §6 caching headers of one signed answer (an OCSP response
/// or a CRL), except `Cache-Control`, whose max-age counts down to
/// `next_update` and is made per request. An OCSP answer's are made once,
/// when it is signed, and kept next to its DER in the daemon's cache: a
/// cached GET formats no dates and copies no strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachingHeaders {
    /// thisUpdate (Unix seconds), sent as `Last-Modified`.
    pub this_update: i64,
    /// nextUpdate (Unix seconds), sent as `Expires`; max-age never reaches
    /// past it.
    pub next_update: i64,
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    pub expires: HeaderValue,
}

impl CachingHeaders {
    /// `None` when `etag` is not a valid header value (the entity tags
    /// castellan makes, quoted hex, always are).
    pub fn new(etag: &str, this_update: i64, next_update: i64) -> Option<CachingHeaders> {
        Some(CachingHeaders {
            this_update,
            next_update,
            etag: HeaderValue::from_str(etag).ok()?,
            last_modified: HeaderValue::from_str(&http_date(this_update)).ok()?,
            expires: HeaderValue::from_str(&http_date(next_update)).ok()?,
        })
    }

    /// As [`CachingHeaders::new`], sharing `like`'s date values when the
    /// dates are the same (the answers of one signing round share theirs:
    /// a million cached answers then hold a few date strings, not two
    /// million).
    pub fn new_like(
        like: Option<&CachingHeaders>,
        etag: &str,
        this_update: i64,
        next_update: i64,
    ) -> Option<CachingHeaders> {
        match like {
            Some(l) if l.this_update == this_update && l.next_update == next_update => {
                Some(CachingHeaders {
                    etag: HeaderValue::from_str(etag).ok()?,
                    ..l.clone()
                })
            }
            _ => CachingHeaders::new(etag, this_update, next_update),
        }
    }
}

/// `Cache-Control` with `max_age` seconds, made without a `String`.
fn cache_control(max_age: i64) -> Option<HeaderValue> {
    use std::io::Write as _;
    let mut buf = [0u8; 96];
    let mut w = &mut buf[..];
    write!(
        w,
        "max-age={max_age}, public, no-transform, must-revalidate"
    )
    .ok()?;
    let n = 96 - w.len();
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// RFC 5019 §6 headers on `r`, or 304 when `If-None-Match` names the
/// entity tag.
fn cacheable(
    r: Response<Body>,
    caching: &CachingHeaders,
    if_none_match: Option<&str>,
    max_age: i64,
) -> Response<Body> {
    let etag = caching.etag.as_bytes();
    let not_modified = if_none_match.is_some_and(|v| {
        v.split(',').map(str::trim).any(|t| {
            t == "*"
                || t.as_bytes() == etag
                || t.strip_prefix("W/").map(str::as_bytes) == Some(etag)
        })
    });
    let mut r = if not_modified {
        let mut nm = Response::new(Full::new(Bytes::new()));
        *nm.status_mut() = StatusCode::NOT_MODIFIED;
        if let Some(ct) = r.headers().get(header::CONTENT_TYPE) {
            nm.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        nm
    } else {
        r
    };
    let h = r.headers_mut();
    if let Some(v) = cache_control(max_age) {
        h.insert(header::CACHE_CONTROL, v);
    }
    h.insert(header::EXPIRES, caching.expires.clone());
    h.insert(header::LAST_MODIFIED, caching.last_modified.clone());
    h.insert(header::ETAG, caching.etag.clone());
    r
}

/// `{issuer}.crl` (DER) or `{issuer}.pem`.
fn crl(daemon: &Daemon, rest: &str, if_none_match: Option<&str>) -> Response<Body> {
    let (issuer, pem) = if let Some(i) = rest.strip_suffix(".crl") {
        (i, false)
    } else if let Some(i) = rest.strip_suffix(".pem") {
        (i, true)
    } else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let Some(c) = daemon.published_crl(issuer) else {
        return plain(StatusCode::NOT_FOUND, "no CRL of this CA is published\n");
    };
    let (body, ctype, etag) = if pem {
        (
            // Made in the background as the CRL is published; made here, on
            // this worker's own loop, if asked for before that.
            c.pem_made().unwrap_or_else(|| c.pem()),
            "application/x-pem-file",
            format!("{}-pem\"", c.etag.trim_end_matches('"')),
        )
    } else {
        (c.der.clone(), "application/pkix-crl", c.etag.clone())
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    let Some(caching) = CachingHeaders::new(&etag, c.record.this_update, c.record.next_update)
    else {
        return r;
    };
    let now = now_ms() / 1000;
    let max_age = (c.record.next_update - now).clamp(0, CRL_MAX_AGE);
    cacheable(r, &caching, if_none_match, max_age)
}

fn ca_certificate(daemon: &Daemon, rest: &str) -> Response<Body> {
    let Some(id) = rest.strip_suffix(".crt") else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let ca = daemon.store().read().ok().and_then(|v| v.ca(id));
    let Some(ca) = ca else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let mut r = Response::new(Full::new(Bytes::from(ca.certificate_der)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pkix-cert"),
    );
    r
}

/// IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::http_date;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(1_709_208_000), "Thu, 29 Feb 2024 12:00:00 GMT");
    }
}
