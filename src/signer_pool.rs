//! The control daemon's asynchronous client of the signer socket: a small
//! pool of pipelined connections.
//!
//! * **Pipelining.** Each connection carries up to
//!   `max_in_flight_per_connection` requests at once. A writer task owns the
//!   write half and coalesces queued frames into one write; a reader task owns
//!   the read half and completes the caller whose id the answer echoes. The
//!   signer answers one connection in order, so several connections give
//!   parallelism and pipelining hides the round trip.
//! * **Choice of connection.** Least loaded, ties broken round-robin, so a
//!   request queued behind a slow CA key generation is the exception.
//! * **Reconnection.** Nothing is connected by [`SignerPool::new`]: the daemon
//!   starts, and serves everything read-only, while the signer is down. A
//!   connection that breaks fails what was pending on it and is replaced by
//!   the next call, so a restarted signer is used again without restarting
//!   the daemon.
//! * **Failing closed.** A connect is bounded by `connect_timeout`, and a
//!   failed connect is shared with every caller that was waiting for it, so
//!   while the signer is down every call fails with
//!   [`PoolError::Unavailable`] within about `connect_timeout`; it never
//!   hangs. A whole call is bounded by `request_timeout`.
//!
//! Nothing the signer sends can panic this module: headers are checked with
//! [`parse_header`] (which enforces `MAX_PAYLOAD`) before the payload is
//! allocated, and any malformed, unexpected or unsolicited frame closes that
//! one connection and fails what was pending on it.
//!
//! A request whose connection broke or timed out *may still have been carried
//! out* by the signer; the errors say so. The signer's journal records every
//! signature it made.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use castellan_proto::frame::{FrameError, HEADER_LEN, decode_payload, parse_header};
use castellan_proto::{ErrorKind, Request, RequestFrame, Response, ResponseFrame, SignerError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

/// Where the packaged signer listens.
pub const DEFAULT_SOCKET: &str = "/run/castellan-signer/signer.sock";
/// Most octets the writer task coalesces into one write.
const MAX_WRITE_BATCH: usize = 1024 * 1024;
/// Added to `connect_timeout` for the readiness probe's whole round trip.
const READY_EXTRA: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub socket: PathBuf,
    /// Connections kept open (at least 1).
    pub connections: usize,
    /// Bound of one connect; while the signer is down, calls fail this fast.
    pub connect_timeout: Duration,
    /// Bound of a whole call. Generous: CA key generation on a token can be
    /// slow.
    pub request_timeout: Duration,
    /// Requests pipelined on one connection at most (at least 1).
    pub max_in_flight_per_connection: usize,
}

impl PoolConfig {
    /// The defaults, for the signer at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> PoolConfig {
        PoolConfig {
            socket: socket.into(),
            connections: 4,
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            max_in_flight_per_connection: 64,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig::new(DEFAULT_SOCKET)
    }
}

/// A CRL for [`SignerPool::sign_crl`]: the entries are shared with the
/// caller, which keeps them for the next CRL; each chunk is copied as it
/// is sent.
#[derive(Debug, Clone)]
pub struct CrlToSign {
    pub issuer: String,
    pub crl_number: u64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: Arc<Vec<castellan_proto::CrlEntry>>,
}

/// Why a call did not get an answer — or got a refusal. Every message but
/// `Refused`'s is complete and names the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The signer is down or unreachable, or the connection broke. Issuance
    /// must fail closed.
    Unavailable(String),
    /// The signer answered with a refusal (bad request, policy, quorum,
    /// backend, internal).
    Refused(SignerError),
    /// No answer in time. The request may still be carried out.
    Timeout(String),
    /// The signer and this daemon do not understand each other (bad frame
    /// either way, an answer of the wrong kind).
    Protocol(String),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::Unavailable(m) | PoolError::Timeout(m) | PoolError::Protocol(m) => {
                f.write_str(m)
            }
            PoolError::Refused(e) => {
                write!(
                    f,
                    "the signer refused the request ({:?}): {}",
                    e.kind, e.message
                )
            }
        }
    }
}

impl std::error::Error for PoolError {}

/// Figures for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub connections_open: usize,
    /// Calls started and not yet finished.
    pub in_flight: usize,
    /// Calls started since the pool was made.
    pub calls: u64,
    /// Calls that got no answer (unavailable, timeout, protocol). Refusals
    /// are answers and are not counted.
    pub failures: u64,
    /// Exponentially weighted (1/8) mean of answered calls' latency.
    pub latency_ewma_micros: u64,
}

/// A pool of pipelined connections to the signer. Cloning is cheap and
/// shares the pool.
#[derive(Clone)]
pub struct SignerPool {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_in_flight: usize,
    slots: Vec<Slot>,
    /// Bounds the requests of the whole pool to `slots × max_in_flight`, so
    /// the least loaded slot always has room (see `pick`).
    permits: Semaphore,
    /// Makes "find the least loaded slot, then count on it" one step.
    picker: Mutex<()>,
    round_robin: AtomicUsize,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    connections_open: AtomicUsize,
    in_flight: AtomicUsize,
    calls: AtomicU64,
    failures: AtomicU64,
    latency_ewma_micros: AtomicU64,
}

struct Slot {
    /// Callers that chose this slot and have not finished.
    load: AtomicUsize,
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<Arc<Conn>>,
    /// The last failed connect: callers that waited for it fail with it
    /// instead of each trying again, so none waits longer than one connect.
    last_failure: Option<(Instant, PoolError)>,
}

impl SignerPool {
    /// Does not connect: the daemon must start while the signer is down.
    pub fn new(cfg: PoolConfig) -> SignerPool {
        let connections = cfg.connections.max(1);
        let max_in_flight = cfg.max_in_flight_per_connection.max(1);
        let permits = connections
            .saturating_mul(max_in_flight)
            .min(Semaphore::MAX_PERMITS);
        let slots = (0..connections)
            .map(|_| Slot {
                load: AtomicUsize::new(0),
                state: tokio::sync::Mutex::new(SlotState::default()),
            })
            .collect();
        SignerPool {
            inner: Arc::new(Inner {
                socket: cfg.socket,
                connect_timeout: cfg.connect_timeout,
                request_timeout: cfg.request_timeout,
                max_in_flight,
                slots,
                permits: Semaphore::new(permits),
                picker: Mutex::new(()),
                round_robin: AtomicUsize::new(0),
                counters: Arc::new(Counters::default()),
            }),
        }
    }

    /// Sends one request and waits for its answer. `Response::Error` becomes
    /// [`PoolError::Refused`]; an answer of another kind than the request
    /// asked for is a [`PoolError::Protocol`] error.
    pub async fn call(&self, request: Request) -> Result<Response, PoolError> {
        let started = Instant::now();
        let counters = &self.inner.counters;
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = Decrement(&counters.in_flight);
        let result = self.inner.call(request, started).await;
        match &result {
            Ok(_) | Err(PoolError::Refused(_)) => counters.record_latency(started.elapsed()),
            Err(_) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// For `/readyz`: a `Status` round trip bounded by `connect_timeout` plus
    /// one second.
    pub async fn is_reachable(&self) -> bool {
        let bound = self.inner.connect_timeout.saturating_add(READY_EXTRA);
        matches!(
            tokio::time::timeout(bound, self.call(Request::Status)).await,
            Ok(Ok(Response::Status(_)))
        )
    }

    /// Has the signer build, check, sign and journal a CRL, and returns its
    /// DER, of any size (up to [`castellan_proto::MAX_STAGED_CRL_ENTRIES`]
    /// entries) although one frame carries at most 16 MiB.
    ///
    /// * A CRL whose entries fit one frame (see
    ///   [`castellan_proto::crl_chunks`]: at most 200,000 entries and 8 MiB)
    ///   is one `SignCrl`. A larger one is staged in such chunks, in order
    ///   (`StageCrlEntries`, each naming how many entries precede it), and
    ///   signed by a final `SignStagedCrl` carrying the last chunk and the
    ///   staged count. The signer refuses a chunk or a signature that does
    ///   not line up with what it holds, so nothing else can be signed.
    /// * A DER too large for one frame is answered with its length and
    ///   SHA-256 and read back in parts of 8 MiB (`ReadCrl`); the reassembled
    ///   DER is checked against both before it is returned.
    ///
    /// **Callers must serialize CRL generation per issuer.** The signer
    /// keeps one staging area and one large signed CRL per issuer (any
    /// connection reaches them, so chunks may travel on any connection of
    /// the pool), and starting another CRL for the same issuer while one is
    /// being staged or read discards the first: it then fails with a
    /// refusal, never signs a mixture. A CRL number consumed by a CRL that
    /// could not be read back (the signer restarted in between) is not
    /// reused: sign again with a higher number.
    pub async fn sign_crl(&self, crl: CrlToSign) -> Result<(Vec<u8>, [u8; 32]), PoolError> {
        use castellan_proto::{
            CrlChunk, CrlEntryList, MAX_CRL_PART, StagedCrlRequest, crl_chunk_len,
        };
        let socket = self.inner.socket.display().to_string();
        let unexpected = |what: &str, r: &Response| {
            PoolError::Protocol(format!(
                "the signer at {socket} answered {what} with {}; run the same castellan release on both sides",
                response_kind(r)
            ))
        };
        let CrlToSign {
            issuer,
            crl_number,
            this_update,
            next_update,
            entries,
        } = crl;
        let started = Instant::now();
        let counters = &self.inner.counters;
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = Decrement(&counters.in_flight);
        // Each chunk names how many entries precede it. All of them and
        // the final request go down one connection back to back: the
        // signer stages one chunk while the next is encoded, and
        // a refusal of any stops the rest (a chunk that does not continue
        // the staging is refused).
        // Each chunk is cut just before it is encoded.
        let total = entries.len();
        let mut sizes: Vec<usize> = Vec::new();
        let mut offset = 0usize;
        let mut sent_last = false;
        let requests = std::iter::from_fn(|| {
            if sent_last {
                return None;
            }
            let size = crl_chunk_len(&entries[offset..]);
            sizes.push(size);
            let part = CrlEntryList::shared(Arc::clone(&entries), offset..offset + size);
            let at = offset as u64;
            offset += size;
            sent_last = offset >= total;
            Some(if sent_last && at == 0 {
                Request::SignCrl(castellan_proto::CrlRequest {
                    issuer: issuer.clone(),
                    crl_number,
                    this_update,
                    next_update,
                    entries: part,
                })
            } else if !sent_last {
                Request::StageCrlEntries(CrlChunk {
                    issuer: issuer.clone(),
                    crl_number,
                    offset: at,
                    entries: part,
                })
            } else {
                Request::SignStagedCrl(StagedCrlRequest {
                    crl: castellan_proto::CrlRequest {
                        issuer: issuer.clone(),
                        crl_number,
                        this_update,
                        next_update,
                        entries: part,
                    },
                    staged: at,
                })
            })
        });
        let mut answers = self.counted(self.inner.pipeline(requests, started).await)?;
        let answer = answers.pop();
        let mut staged = 0u64;
        for (r, size) in answers.into_iter().zip(&sizes) {
            let want = staged + *size as u64;
            match r {
                Response::CrlStaged {
                    crl_number: n,
                    staged: s,
                } if n == crl_number && s == want => staged = want,
                r => return Err(unexpected("a chunk of CRL entries", &r)),
            }
        }
        let hash = |der: Vec<u8>| async move {
            tokio::task::spawn_blocking(move || {
                let sha256 = crate::sha256(&der);
                (der, sha256)
            })
            .await
        };
        let (length, sha256) = match answer {
            Some(Response::Crl { der }) => {
                return hash(der).await.map_err(|e| {
                    PoolError::Protocol(format!("hashing CRL {crl_number} for {issuer:?}: {e}"))
                });
            }
            Some(Response::CrlStored {
                crl_number: n,
                length,
                sha256,
            }) if n == crl_number => (length, sha256),
            Some(r) => return Err(unexpected("a CRL signing request", &r)),
            None => {
                return Err(PoolError::Protocol(format!(
                    "the signer at {socket} gave no answer to CRL {crl_number} for {issuer:?}"
                )));
            }
        };
        let corrupt = |why: String| {
            PoolError::Protocol(format!(
                "CRL {crl_number} for {issuer:?} read back from the signer at {socket} {why}; it was signed and journaled but must not be published; sign a new CRL with a higher number"
            ))
        };
        let total =
            usize::try_from(length).map_err(|_| corrupt(format!("claims {length} octets")))?;
        let mut der = Vec::new();
        der.try_reserve_exact(total)
            .map_err(|_| corrupt(format!("of {length} octets does not fit in memory")))?;
        // Every part asked for at once, on one connection.
        let parts = (0..total.div_ceil(MAX_CRL_PART as usize)).map(|i| {
            let from = i * MAX_CRL_PART as usize;
            Request::ReadCrl {
                issuer: issuer.clone(),
                crl_number,
                offset: from as u64,
                length: (total - from).min(MAX_CRL_PART as usize) as u32,
            }
        });
        let started = Instant::now();
        counters.calls.fetch_add(1, Ordering::Relaxed);
        for r in self.counted(self.inner.pipeline(parts, started).await)? {
            let part = (total - der.len()).min(MAX_CRL_PART as usize);
            match r {
                Response::CrlPart { bytes } if bytes.len() == part => der.extend_from_slice(&bytes),
                Response::CrlPart { bytes } => {
                    return Err(corrupt(format!(
                        "came in a part of {} octets where {part} were asked for",
                        bytes.len()
                    )));
                }
                r => return Err(unexpected("a request to read a CRL", &r)),
            }
        }
        if der.len() != total {
            return Err(corrupt(format!(
                "came to {} octets, not the {total} announced",
                der.len()
            )));
        }
        // Tens of megabytes: hashed off the runtime's worker threads.
        let (der, got) = hash(der)
            .await
            .map_err(|e| corrupt(format!("could not be hashed ({e})")))?;
        if got != sha256 {
            return Err(corrupt(
                "does not match the SHA-256 the signer announced".into(),
            ));
        }
        Ok((der, sha256))
    }

    /// Counts a pipelined call's outcome as [`SignerPool::call`] does.
    fn counted<T>(&self, result: Result<T, PoolError>) -> Result<T, PoolError> {
        if let Err(e) = &result
            && !matches!(e, PoolError::Refused(_))
        {
            self.inner.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        PoolStats {
            connections_open: c.connections_open.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            calls: c.calls.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            latency_ewma_micros: c.latency_ewma_micros.load(Ordering::Relaxed),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }
}

impl std::fmt::Debug for SignerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerPool")
            .field("socket", &self.inner.socket)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Counters {
    fn record_latency(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let _ =
            self.latency_ewma_micros
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    Some(if old == 0 {
                        sample
                    } else {
                        old - old / 8 + sample / 8
                    })
                });
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether the answer is of the kind the request asks for. Exhaustive on
/// purpose: a new request kind must say what answers it.
#[cfg(test)]
fn answers(request: &Request, response: &Response) -> bool {
    answer_check(request)(response)
}

/// [`answers`] for `request`, kept without the request (whose payload may
/// be large).
fn answer_check(request: &Request) -> fn(&Response) -> bool {
    match request {
        Request::Status => |r| matches!(r, Response::Status(_)),
        Request::PublicKeys => |r| matches!(r, Response::PublicKeys(_)),
        Request::IssueCertificate(_) | Request::IssueCertificateForIntent(_) => {
            |r| matches!(r, Response::Certificate(_))
        }
        Request::FindIntents(_) => |r| matches!(r, Response::IntentsFound { .. }),
        Request::Ceremony { .. } | Request::CeremonyOutcome(_) => {
            |r| matches!(r, Response::Ceremony(_))
        }
        Request::SignCrl(_) | Request::SignStagedCrl(_) => {
            |r| matches!(r, Response::Crl { .. } | Response::CrlStored { .. })
        }
        Request::StageCrlEntries(_) => |r| matches!(r, Response::CrlStaged { .. }),
        Request::ReadCrl { .. } => |r| matches!(r, Response::CrlPart { .. }),
        Request::SignOcsp(_) => |r| matches!(r, Response::Ocsp { .. }),
        Request::RotateOcspResponder(_) => |r| matches!(r, Response::Responder(_)),
        Request::SignCheckpoint(_) => |r| matches!(r, Response::Checkpoint(_)),
        Request::ExportJournal(_) => |r| matches!(r, Response::Journal { .. }),
        Request::LastCheckpoint => |r| matches!(r, Response::LastCheckpoint(_)),
    }
}

impl Inner {
    fn unavailable(&self, why: &str) -> PoolError {
        unavailable(&self.socket, why)
    }

    fn timeout(&self, kind: &str) -> PoolError {
        PoolError::Timeout(format!(
            "the signer at {} did not answer a {kind} request within {:?}; it may still carry it out (its journal records every signature); the connection was closed",
            self.socket.display(),
            self.request_timeout
        ))
    }

    /// A permit to send, waiting at most until `started + request_timeout`.
    async fn permit(
        &self,
        kind: &str,
        started: Instant,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, PoolError> {
        let remaining = self.request_timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, self.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(self.unavailable("the pool is shut down")),
            Err(_) => Err(PoolError::Timeout(format!(
                "{} requests to the signer at {} were already in flight for {:?}; the {kind} request was not sent",
                self.slots.len() * self.max_in_flight,
                self.socket.display(),
                self.request_timeout
            ))),
        }
    }

    /// Sends `requests` in order on one connection without waiting between
    /// them (the signer answers a connection in order, so each is carried
    /// out after the one before it), then collects the answers in order.
    /// The first refusal or failure is the result; requests sent after it
    /// were still carried out or refused by the signer. One round trip for
    /// the lot, and the signer works on one request while the next is being
    /// encoded.
    async fn pipeline(
        &self,
        requests: impl Iterator<Item = Request>,
        started: Instant,
    ) -> Result<Vec<Response>, PoolError> {
        let _permit = self.permit("pipelined", started).await?;
        let (slot, _load) = self.pick();
        let mut conn = self.connection(slot, started).await?;
        let mut waiters = Vec::new();
        let mut retried = false;
        for request in requests {
            let kind = request.kind();
            let check = answer_check(&request);
            let mut request = request;
            let waiter = loop {
                match conn.send(request).await {
                    Ok((w, _)) => break w,
                    // Nothing of the sequence reached the signer yet: a new
                    // connection, once.
                    Err((Unsent::Closed(_), r)) if waiters.is_empty() && !retried => {
                        retried = true;
                        request = r;
                        conn = self.connection(slot, started).await?;
                    }
                    Err((Unsent::Closed(e) | Unsent::Fatal(e), _)) => return Err(e),
                }
            };
            waiters.push((kind, check, waiter));
        }
        let mut out = Vec::with_capacity(waiters.len());
        for (kind, check, waiter) in waiters {
            out.push(self.receive(&conn, waiter, kind, check, started).await?);
        }
        Ok(out)
    }

    /// Waits (until `started + request_timeout`) for the answer `waiter`
    /// stands for, on `conn`: a refusal is [`PoolError::Refused`]; an
    /// answer of another kind than `check` accepts closes the connection.
    async fn receive(
        &self,
        conn: &Conn,
        waiter: Waiter,
        kind: &str,
        check: fn(&Response) -> bool,
        started: Instant,
    ) -> Result<Response, PoolError> {
        let remaining = self.request_timeout.saturating_sub(started.elapsed());
        let answer = match tokio::time::timeout(remaining, waiter.rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(self.unavailable(
                "the connection was dropped before the answer came; the request may have been carried out",
            )),
            Err(_) => {
                let e = self.timeout(kind);
                conn.shared.close(e.clone());
                return Err(e);
            }
        };
        drop(waiter.guard);
        match answer? {
            Response::Error(e) => Err(PoolError::Refused(e)),
            r if check(&r) => Ok(r),
            r => {
                let e = PoolError::Protocol(format!(
                    "the signer at {} answered a {kind} request with {}; the connection was closed; run the same castellan release on both sides",
                    self.socket.display(),
                    response_kind(&r)
                ));
                conn.shared.close(e.clone());
                Err(e)
            }
        }
    }

    async fn call(&self, request: Request, started: Instant) -> Result<Response, PoolError> {
        let kind = request.kind();
        let check = answer_check(&request);
        let _permit = self.permit(kind, started).await?;
        let (slot, _load) = self.pick();
        // A connection found closed before anything was sent on it is
        // replaced once: nothing of this request reached the signer.
        let mut retried = false;
        let mut request = request;
        let (conn, waiter) = loop {
            let conn = self.connection(slot, started).await?;
            match conn.send(request).await {
                Ok((w, _)) => break (conn, w),
                Err((Unsent::Closed(_), r)) if !retried => {
                    retried = true;
                    request = r;
                }
                Err((Unsent::Closed(e) | Unsent::Fatal(e), _)) => return Err(e),
            }
        };
        self.receive(&conn, waiter, kind, check, started).await
    }

    /// The least loaded slot, ties broken round-robin; counts the caller on it
    /// until the returned guard drops.
    fn pick(&self) -> (&Slot, Decrement<'_>) {
        let n = self.slots.len();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed) % n;
        let _picking = lock(&self.picker);
        let mut best = &self.slots[start];
        let mut best_load = best.load.load(Ordering::Relaxed);
        for i in 1..n {
            let slot = &self.slots[(start + i) % n];
            let load = slot.load.load(Ordering::Relaxed);
            if load < best_load {
                best = slot;
                best_load = load;
            }
        }
        // Every counted caller holds a permit and this one is not counted yet,
        // so the total is below slots × max: the least loaded slot has room.
        best.load.fetch_add(1, Ordering::Relaxed);
        (best, Decrement(&best.load))
    }

    /// The slot's open connection, or a new one.
    async fn connection(&self, slot: &Slot, started: Instant) -> Result<Arc<Conn>, PoolError> {
        let mut state = slot.state.lock().await;
        if let Some(conn) = &state.conn
            && !conn.shared.is_closed()
        {
            return Ok(Arc::clone(conn));
        }
        state.conn = None;
        if let Some((at, e)) = &state.last_failure
            && *at >= started
        {
            return Err(e.clone());
        }
        match self.connect().await {
            Ok(conn) => {
                state.last_failure = None;
                state.conn = Some(Arc::clone(&conn));
                Ok(conn)
            }
            Err(e) => {
                state.last_failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Arc<Conn>, PoolError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, UnixStream::connect(&self.socket))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let why = match e.kind() {
                        std::io::ErrorKind::NotFound => "the socket does not exist".to_string(),
                        std::io::ErrorKind::ConnectionRefused => {
                            "nothing listens on the socket (connection refused)".to_string()
                        }
                        std::io::ErrorKind::PermissionDenied => {
                            "permission denied: the daemon's user must be in the socket's group"
                                .to_string()
                        }
                        _ => format!("cannot connect: {e}"),
                    };
                    return Err(self.unavailable(&why));
                }
                Err(_) => {
                    return Err(self
                        .unavailable(&format!("no connection within {:?}", self.connect_timeout)));
                }
            };
        let (read, write) = stream.into_split();
        let shared = Arc::new(ConnShared {
            socket: self.socket.clone(),
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
            counters: Arc::clone(&self.counters),
        });
        self.counters
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.max_in_flight);
        let reader = tokio::spawn(read_loop(Arc::clone(&shared), read));
        let writer = tokio::spawn(write_loop(Arc::clone(&shared), write, rx));
        shared.adopt_tasks([reader.abort_handle(), writer.abort_handle()]);
        Ok(Arc::new(Conn { shared, tx }))
    }
}

fn unavailable(socket: &Path, why: &str) -> PoolError {
    PoolError::Unavailable(format!(
        "signer unavailable at {}: {why}; is castellan-signer running? issuance is refused until it is back",
        socket.display()
    ))
}

fn response_kind(r: &Response) -> &'static str {
    match r {
        Response::Error(_) => "an error",
        Response::Status(_) => "a status",
        Response::PublicKeys(_) => "public keys",
        Response::Certificate(_) => "a certificate",
        Response::Ceremony(_) => "a ceremony outcome",
        Response::Crl { .. } => "a CRL",
        Response::Ocsp { .. } => "OCSP responses",
        Response::Responder(_) => "a responder certificate",
        Response::Checkpoint(_) => "a checkpoint",
        Response::Journal { .. } => "journal records",
        Response::CrlStaged { .. } => "a count of staged CRL entries",
        Response::CrlStored { .. } => "a stored CRL's length and digest",
        Response::CrlPart { .. } => "part of a CRL",
        Response::IntentsFound { .. } => "the intents found in the journal",
        Response::LastCheckpoint(_) => "the last signed checkpoint",
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here can panic half-way; a poisoned lock still
    // holds consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Answer = Result<Response, PoolError>;

/// One connection. Dropping it (the last caller and its slot let go) closes
/// the socket and stops both tasks.
struct Conn {
    shared: Arc<ConnShared>,
    tx: mpsc::Sender<Vec<u8>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.close(unavailable(
            &self.shared.socket,
            "the connection was dropped by the pool",
        ));
    }
}

/// What the reader and writer tasks share with callers.
struct ConnShared {
    socket: PathBuf,
    pending: Mutex<Pending>,
    /// Ids start at 1: 0 is the signer's "about the connection, not a
    /// request" id.
    next_id: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    /// Set once; afterwards nothing is registered, so nobody waits forever.
    closed: Option<PoolError>,
}

enum Unsent {
    /// The connection was already closed; nothing was sent.
    Closed(PoolError),
    Fatal(PoolError),
}

/// A registered request: its answer arrives on `rx`.
struct Waiter {
    rx: oneshot::Receiver<Answer>,
    guard: Registered,
}

/// Forgets a request whose caller went away, so the map does not grow.
struct Registered {
    shared: Arc<ConnShared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.shared.pending).waiting.remove(&self.id);
    }
}

impl Conn {
    /// Registers and queues one request; hands the request back (it is
    /// encoded in place, never copied: a CRL chunk holds 200,000 entries).
    /// Cancel-safe: a caller dropped here leaves at most a whole frame
    /// queued, never half of one on the socket.
    async fn send(&self, request: Request) -> Result<(Waiter, Request), (Unsent, Request)> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = RequestFrame { id, request };
        let encoded = castellan_proto::encode_frame(&frame);
        let request = frame.request;
        let encoded = match encoded {
            Ok(f) => f,
            Err(e) => {
                let e = PoolError::Protocol(format!(
                    "the {} request cannot be sent to the signer: {e}",
                    request.kind()
                ));
                return Err((Unsent::Fatal(e), request));
            }
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if let Some(e) = &pending.closed {
                return Err((Unsent::Closed(e.clone()), request));
            }
            pending.waiting.insert(id, tx);
        }
        let guard = Registered {
            shared: Arc::clone(&self.shared),
            id,
        };
        if self.tx.send(encoded).await.is_err() {
            let e = lock(&self.shared.pending).closed.clone();
            let e = e.unwrap_or_else(|| {
                unavailable(&self.shared.socket, "the connection's writer stopped")
            });
            return Err((Unsent::Closed(e), request));
        }
        Ok((Waiter { rx, guard }, request))
    }
}

impl ConnShared {
    fn is_closed(&self) -> bool {
        lock(&self.pending).closed.is_some()
    }

    /// Marks the connection closed, fails everything pending on it with
    /// `error`, and stops both tasks (which drops, so closes, the socket).
    /// Only the first call has an effect.
    fn close(&self, error: PoolError) {
        let waiting = {
            let mut pending = lock(&self.pending);
            if pending.closed.is_some() {
                return;
            }
            pending.closed = Some(error.clone());
            std::mem::take(&mut pending.waiting)
        };
        self.counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        for (_, tx) in waiting {
            let _ = tx.send(Err(error.clone()));
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    fn adopt_tasks(&self, handles: [AbortHandle; 2]) {
        let mut tasks = lock(&self.tasks);
        tasks.extend(handles);
        // Closed before the tasks were recorded: stop them now.
        if self.is_closed() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }

    fn broken(&self, why: &str) -> PoolError {
        unavailable(
            &self.socket,
            &format!("{why}; a request in flight on it may have been carried out"),
        )
    }

    fn protocol(&self, why: &str) -> PoolError {
        PoolError::Protocol(format!(
            "the signer at {} {why}; the connection was closed; run the same castellan release on both sides",
            self.socket.display()
        ))
    }

    /// Hands one answer to its caller; an error closes the connection.
    fn deliver(&self, frame: ResponseFrame) -> Result<(), PoolError> {
        if frame.id == 0 {
            // About the connection itself: the signer closes it after this.
            return Err(match frame.response {
                Response::Error(e) if e.kind == ErrorKind::Protocol => {
                    self.protocol(&format!("rejected a frame from this daemon: {}", e.message))
                }
                Response::Error(e) => unavailable(
                    &self.socket,
                    &format!("the signer refused the connection: {}", e.message),
                ),
                r => self.protocol(&format!("sent {} with id 0", response_kind(&r))),
            });
        }
        let waiter = lock(&self.pending).waiting.remove(&frame.id);
        match waiter {
            Some(tx) => {
                // The caller may have gone away meanwhile; nothing to do then.
                let _ = tx.send(Ok(frame.response));
                Ok(())
            }
            // An id we sent whose caller went away (timeout, cancellation).
            None if frame.id < self.next_id.load(Ordering::Relaxed) => Ok(()),
            None => Err(self.protocol(&format!(
                "answered request {} which was never sent",
                frame.id
            ))),
        }
    }
}

async fn write_loop(
    shared: Arc<ConnShared>,
    mut write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(mut batch) = rx.recv().await {
        // Pipelined requests queued meanwhile share one write.
        while batch.len() < MAX_WRITE_BATCH {
            match rx.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(e) = write.write_all(&batch).await {
            shared.close(shared.broken(&format!("sending to the signer failed: {e}")));
            return;
        }
    }
}

async fn read_loop(shared: Arc<ConnShared>, read: OwnedReadHalf) {
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let error = loop {
        let frame = match read_response(&mut read).await {
            Ok(f) => f,
            Err(FrameError::Closed) => break shared.broken("the signer closed the connection"),
            Err(FrameError::Io(e)) => {
                break shared.broken(&format!("reading from the signer failed: {e}"));
            }
            Err(FrameError::Truncated) => {
                break shared.broken("the connection ended in the middle of an answer");
            }
            Err(e) => break shared.protocol(&format!("sent a bad frame ({e})")),
        };
        if let Err(e) = shared.deliver(frame) {
            break e;
        }
    };
    shared.close(error);
}

/// Reads one response frame: the header is checked (magic, version,
/// `MAX_PAYLOAD`) before the payload is allocated.
async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Result<ResponseFrame, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]).await {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e.to_string())),
        }
    }
    let len = parse_header(&header)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e.to_string()),
        })?;
    decode_payload(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_message_names_the_socket_and_what_to_do() {
        let e = unavailable(Path::new("/run/x.sock"), "the socket does not exist");
        assert_eq!(
            e.to_string(),
            "signer unavailable at /run/x.sock: the socket does not exist; is castellan-signer running? issuance is refused until it is back"
        );
    }

    #[test]
    fn every_request_kind_has_its_answer_kind() {
        assert!(!answers(
            &Request::Status,
            &Response::Crl { der: Vec::new() }
        ));
        assert!(answers(
            &Request::ExportJournal(castellan_proto::JournalWindow { since: 0, until: 1 }),
            &Response::Journal {
                records: Vec::new()
            }
        ));
    }

    #[tokio::test]
    async fn an_oversized_header_closes_before_allocating() {
        let mut header = Vec::from(castellan_proto::frame::MAGIC);
        header.extend_from_slice(&castellan_proto::frame::VERSION.to_le_bytes());
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = &header[..];
        assert_eq!(
            read_response(&mut r).await,
            Err(FrameError::TooLarge(u32::MAX))
        );
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_truncated_and_end_between_frames_is_closed() {
        let mut empty: &[u8] = &[];
        assert_eq!(read_response(&mut empty).await, Err(FrameError::Closed));
        let mut short: &[u8] = b"CSTL\x01";
        assert_eq!(read_response(&mut short).await, Err(FrameError::Truncated));
    }
}
