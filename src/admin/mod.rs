//! The admin API over a local Unix socket: HTTP/1.1 + JSON (hyper 1.x).
//!
//! # Who may do what
//!
//! The caller is the peer of the socket as the kernel reports it
//! (`SO_PEERCRED`), never anything the client says. The uid is looked up in
//! [`AdminSettings::roles`]; roles nest: auditor ⊂ operator ⊂ admin. The
//! socket's file mode is defence in depth only (a client may connect in the
//! instant between `bind` and `chmod`); the uid check is the authority.
//!
//! | method | path | least role |
//! |---|---|---|
//! | GET  | /healthz | any local peer |
//! | GET  | /readyz | any local peer |
//! | GET  | /metrics | auditor |
//! | GET  | /v1/status | auditor |
//! | GET  | /v1/ceremonies | auditor |
//! | POST | /v1/ceremonies | admin |
//! | GET  | /v1/ceremonies/{id} | auditor |
//! | POST | /v1/ceremonies/{id}/approvals | operator |
//! | POST | /v1/ceremonies/{id}/execute | admin |
//! | GET  | /v1/cas | auditor |
//! | GET  | /v1/cas/{id} | auditor |
//! | POST | /v1/certificates | operator |
//! | GET  | /v1/certificates?issuer=&state=&identity=&limit=&after= | auditor |
//! | GET  | /v1/certificates/{serial} | auditor |
//! | POST | /v1/certificates/{serial}/revoke | operator |
//! | GET  | /v1/audit/verify | auditor |
//! | GET  | /v1/audit/log?actor=&kind=&since=&until=&subject=&limit=&from_seq= | auditor |
//! | POST | /v1/audit/checkpoint | operator |
//! | GET  | /v1/crls/{issuer} | auditor |
//! | POST | /v1/crls/{issuer}/publish | operator |
//!
//! `/healthz` and `/readyz` answer any local peer, known uid or not: a
//! monitoring agent needs no role, and the answers say nothing but "up" and
//! "ready". Every other route refuses an unknown uid with 403 (logged once
//! per connection with the uid). The table is [`ROUTES`]; the role check
//! is done once, in [`handle`], from that table.
//!
//! # Reload
//!
//! The servers read their settings from a [`Shared`] that castellan's
//! SIGHUP handler replaces whole after a successful reload. The peer of a
//! connection is authenticated once (uid, client certificate), but its role
//! is looked up again at every request that needs one: a reload that
//! demotes a user applies to the next request, also on a connection that
//! was already open. Settings fixed at start (the socket, its mode, the
//! connection limit) are read once; a reload cannot change them.
//!
//! From the moment its body has been read until its operation ends, a
//! request holds the backend's reload gate ([`AdminBackend::request_gate`])
//! shared, and its role is checked (again) under it; a reload holds it
//! exclusively while it swaps the settings. So a request sees one
//! configuration throughout — its role, the mTLS role map, the domain's
//! profiles — never part of an old and part of a new one.
//!
//! # Robustness
//!
//! - Request headers must arrive within `header_timeout`. hyper arms that
//!   timer whenever it waits for a request head, so it also closes idle
//!   keep-alive connections. A client that takes none of an answer for
//!   `header_timeout` (it sends requests and never reads) is cut off too
//!   ([`WriteStall`]).
//! - The whole request (body and domain operation) is bounded by
//!   `request_timeout`. A domain operation, once started, runs to completion
//!   in its own task even if the client goes away or the timeout fires:
//!   operations such as issuance are not cancellation-safe (an intent
//!   without its result would be left behind), so they are never dropped
//!   half-way by the HTTP layer.
//! - Bodies are bounded by `max_body_bytes` (413); at most
//!   `max_connections` connections are served, further ones are closed at
//!   once. On the mTLS listener one client address holds at most a quarter
//!   of them, handshakes included.
//! - Every error is `{"error": {"kind", "message"}}` ([`ErrorBody`]) with
//!   the HTTP status of its [`ErrorKind`].
//!
//! The same routes are served over mutual TLS for remote automation by
//! [`serve_tls`] ([`tls`]), where the client certificate is the caller.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::*;
use crate::daemon::{Caller, Daemon};
use crate::events::Actor;

pub mod tls;
pub use tls::{TlsSettings, serve_tls};

/// Settings of the admin socket (mapped from castellan's configuration).
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub socket: PathBuf,
    /// File mode of the socket, e.g. 0o660 (group castellan-admin).
    pub socket_mode: u32,
    pub max_body_bytes: usize,
    /// Time a client has to send a request head (also the idle keep-alive limit).
    pub header_timeout: Duration,
    /// Time for one whole request, body and operation included.
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// uid → role. A uid not listed may only use /healthz and /readyz.
    pub roles: HashMap<u32, Role>,
}

/// Settings that a reload replaces whole. Readers take a snapshot
/// ([`Shared::current`]) and keep it for one request or connection, so none
/// ever sees half of an old and half of a new configuration.
pub struct Shared<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Shared(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The settings in force now.
    pub fn current(&self) -> Arc<T> {
        // The lock only ever guards the swap of one `Arc`, which cannot be
        // left half done: a poisoned lock still holds a whole value.
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `value` in force for every later snapshot.
    pub fn replace(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut g) => *g = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// Fixed settings: nothing will replace them.
impl<T> From<Arc<T>> for Shared<T> {
    fn from(value: Arc<T>) -> Self {
        Shared(Arc::new(RwLock::new(value)))
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            socket: PathBuf::from("/run/castellan/admin.sock"),
            socket_mode: 0o660,
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            max_connections: 64,
            roles: HashMap::new(),
        }
    }
}

/// One admin operation, parsed and authorized: what the domain is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Status,
    Ceremonies,
    OpenCeremony(OpenCeremony),
    Ceremony {
        id: String,
    },
    ApproveCeremony {
        id: String,
        approval: ApproveCeremony,
    },
    ExecuteCeremony {
        id: String,
    },
    Cas,
    Ca {
        id: String,
    },
    Issue(IssueRequest),
    Certificates(CertQuery),
    Certificate {
        serial: String,
    },
    Revoke {
        serial: String,
        request: RevokeRequest,
    },
    AuditVerify,
    AuditLog(LogQuery),
    Checkpoint,
    Crl {
        issuer: String,
    },
    PublishCrl {
        issuer: String,
        request: PublishCrl,
    },
}

/// What the HTTP layer needs from the domain. [`Daemon`] implements it; tests
/// of the HTTP layer implement it with a fake.
pub trait AdminBackend: Send + Sync + 'static {
    /// Performs an authorized call; the answer is the JSON of the route's view.
    fn call(
        &self,
        caller: &Caller,
        call: Call,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;
    /// `call`, answered as the JSON text of the view. The default encodes
    /// `call`'s value; a backend that can write its views directly
    /// overrides it, so that an answer is not built twice (as a
    /// `serde_json::Value` and then as text) on the hot routes.
    fn call_encoded(
        &self,
        caller: &Caller,
        call: Call,
    ) -> impl Future<Output = Result<Vec<u8>, ApiError>> + Send {
        async move { encode_view(&self.call(caller, call).await?) }
    }
    /// (signer reachable, log writable)
    fn ready(&self) -> impl Future<Output = (bool, bool)> + Send;
    /// Why the event log accepts no writes, for `/readyz`.
    fn log_problem(&self) -> Option<String> {
        None
    }
    /// Held for the whole of a request, so that a configuration reload
    /// waits for it and the request sees one configuration throughout
    /// (its settings, its role, the domain's configuration).
    fn request_gate(&self) -> impl Future<Output = Option<Box<dyn Send + Sync>>> + Send {
        async { None }
    }
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
}

/// The JSON text of an answer, with the final newline of every answer.
fn encode_view<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v)
        .map(|mut bytes| {
            bytes.push(b'\n');
            bytes
        })
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("the answer could not be encoded: {e}"),
            )
        })
}

fn to_json<T: Serialize>(r: Result<T, ApiError>) -> Result<serde_json::Value, ApiError> {
    r.and_then(|v| {
        serde_json::to_value(v).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("the answer could not be encoded: {e}"),
            )
        })
    })
}

fn to_text<T: Serialize>(r: Result<T, ApiError>) -> Result<Vec<u8>, ApiError> {
    r.and_then(|v| encode_view(&v))
}

/// Performs a call with the daemon and hands its view to `$out` (`to_json`
/// or `to_text`): one list of routes for both forms of the answer.
macro_rules! daemon_call {
    ($d:expr, $c:expr, $call:expr, $out:ident) => {{
        let (d, c): (&Daemon, &Caller) = ($d, $c);
        match $call {
            Call::Status => $out(d.status(c).await),
            Call::Ceremonies => $out(d.ceremonies(c).await),
            Call::OpenCeremony(r) => $out(d.open_ceremony(c, r).await),
            Call::Ceremony { id } => $out(d.ceremony(c, &id).await),
            Call::ApproveCeremony { id, approval } => {
                $out(d.approve_ceremony(c, &id, approval).await)
            }
            Call::ExecuteCeremony { id } => $out(d.execute_ceremony(c, &id).await),
            Call::Cas => $out(d.cas(c).await),
            Call::Ca { id } => $out(d.ca(c, &id).await),
            Call::Issue(r) => $out(d.issue(c, r).await),
            Call::Certificates(q) => $out(d.certificates(c, q).await),
            Call::Certificate { serial } => $out(d.certificate(c, &serial).await),
            Call::Revoke { serial, request } => $out(d.revoke(c, &serial, request).await),
            Call::AuditVerify => $out(d.audit_verify(c).await),
            Call::AuditLog(q) => $out(d.audit_log(c, q).await),
            Call::Checkpoint => $out(d.checkpoint(c).await),
            Call::Crl { issuer } => $out(d.crl_status(&issuer)),
            Call::PublishCrl { issuer, request } => {
                $out(d.publish_crl_now(c, &issuer, request).await)
            }
        }
    }};
}

impl AdminBackend for Daemon {
    async fn call(&self, c: &Caller, call: Call) -> Result<serde_json::Value, ApiError> {
        daemon_call!(self, c, call, to_json)
    }

    async fn call_encoded(&self, c: &Caller, call: Call) -> Result<Vec<u8>, ApiError> {
        daemon_call!(self, c, call, to_text)
    }

    async fn ready(&self) -> (bool, bool) {
        Daemon::ready(self).await
    }

    fn log_problem(&self) -> Option<String> {
        Daemon::log_problem(self)
    }

    async fn request_gate(&self) -> Option<Box<dyn Send + Sync>> {
        Some(Box::new(Daemon::request_gate(self).await))
    }

    fn metrics(&self) -> String {
        Daemon::metrics(self)
    }
}

// ---------------------------------------------------------------------------
// The route table: the one place that says which role a route needs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    Status,
    Ceremonies,
    OpenCeremony,
    Ceremony,
    ApproveCeremony,
    ExecuteCeremony,
    Cas,
    Ca,
    Issue,
    Certificates,
    Certificate,
    Revoke,
    AuditVerify,
    AuditLog,
    Checkpoint,
    Crl,
    PublishCrl,
}

struct Route {
    method: Method,
    /// `{name}` matches one non-empty path segment.
    path: &'static str,
    /// `None`: any local peer, even one whose uid has no role.
    role: Option<Role>,
    endpoint: Endpoint,
    /// Accepted query parameters.
    query: &'static [&'static str],
}

const CERT_QUERY: &[&str] = &["issuer", "state", "identity", "limit", "after"];
const LOG_QUERY: &[&str] = &[
    "actor", "kind", "since", "until", "subject", "limit", "from_seq",
];

const fn route(
    method: Method,
    path: &'static str,
    role: Option<Role>,
    endpoint: Endpoint,
) -> Route {
    Route {
        method,
        path,
        role,
        endpoint,
        query: &[],
    }
}

use Method::{Get, Post};
const AUDITOR: Option<Role> = Some(Role::Auditor);
const OPERATOR: Option<Role> = Some(Role::Operator);
const ADMIN: Option<Role> = Some(Role::Admin);

/// Every route of the admin API with the least role it needs.
const ROUTES: &[Route] = &[
    route(Get, "/healthz", None, Endpoint::Healthz),
    route(Get, "/readyz", None, Endpoint::Readyz),
    route(Get, "/metrics", AUDITOR, Endpoint::Metrics),
    route(Get, "/v1/status", AUDITOR, Endpoint::Status),
    route(Get, "/v1/ceremonies", AUDITOR, Endpoint::Ceremonies),
    route(Post, "/v1/ceremonies", ADMIN, Endpoint::OpenCeremony),
    route(Get, "/v1/ceremonies/{id}", AUDITOR, Endpoint::Ceremony),
    route(
        Post,
        "/v1/ceremonies/{id}/approvals",
        OPERATOR,
        Endpoint::ApproveCeremony,
    ),
    route(
        Post,
        "/v1/ceremonies/{id}/execute",
        ADMIN,
        Endpoint::ExecuteCeremony,
    ),
    route(Get, "/v1/cas", AUDITOR, Endpoint::Cas),
    route(Get, "/v1/cas/{id}", AUDITOR, Endpoint::Ca),
    route(Post, "/v1/certificates", OPERATOR, Endpoint::Issue),
    Route {
        query: CERT_QUERY,
        ..route(Get, "/v1/certificates", AUDITOR, Endpoint::Certificates)
    },
    route(
        Get,
        "/v1/certificates/{serial}",
        AUDITOR,
        Endpoint::Certificate,
    ),
    route(
        Post,
        "/v1/certificates/{serial}/revoke",
        OPERATOR,
        Endpoint::Revoke,
    ),
    route(Get, "/v1/audit/verify", AUDITOR, Endpoint::AuditVerify),
    Route {
        query: LOG_QUERY,
        ..route(Get, "/v1/audit/log", AUDITOR, Endpoint::AuditLog)
    },
    route(Post, "/v1/audit/checkpoint", OPERATOR, Endpoint::Checkpoint),
    route(Get, "/v1/crls/{issuer}", AUDITOR, Endpoint::Crl),
    route(
        Post,
        "/v1/crls/{issuer}/publish",
        OPERATOR,
        Endpoint::PublishCrl,
    ),
];

/// The least role a route needs: `Some(None)` for the open probes, `None`
/// for an unknown route. For documentation and tests.
pub fn route_role(method: &str, path: &str) -> Option<Option<Role>> {
    ROUTES
        .iter()
        .find(|r| r.method.as_str() == method && match_path(r.path, path).is_some())
        .map(|r| r.role)
}

/// Raw segments captured by the `{…}` parts of `pattern`, or `None`.
fn match_path<'a>(pattern: &str, path: &'a str) -> Option<Vec<&'a str>> {
    let mut params = Vec::new();
    let mut ps = pattern.split('/');
    let mut xs = path.split('/');
    loop {
        match (ps.next(), xs.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(x)) if p.starts_with('{') => {
                if x.is_empty() {
                    return None;
                }
                params.push(x);
            }
            (Some(p), Some(x)) if p == x => {}
            _ => return None,
        }
    }
}

fn route_list() -> String {
    ROUTES
        .iter()
        .map(|r| format!("{} {}", r.method.as_str(), r.path))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to send, for the 400 answer to a body that does not parse.
fn body_example(e: Endpoint) -> &'static str {
    match e {
        Endpoint::OpenCeremony => {
            r#"{"purpose": "root", "ca_id": "root", "subject": "CN=Example Root CA,O=Example", "days": 3650, "algorithm": "ecdsa-p256", "path_len": 1}"#
        }
        Endpoint::ApproveCeremony => {
            r#"{"custodian": "<ed25519 public key, hex>", "signature": "<ed25519 signature over the ceremony statement, hex>"}"#
        }
        Endpoint::Issue => {
            r#"{"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\n…", "profile": "server", "ttl_days": 30}"#
        }
        Endpoint::Revoke => {
            r#"{"reason": "keyCompromise", "invalidity_date": "2025-01-31T00:00:00Z"}"#
        }
        Endpoint::PublishCrl => r#"{"emergency_next_update_secs": 3600}"#,
        _ => "{}",
    }
}

// ---------------------------------------------------------------------------
// Percent-decoding of paths and query strings.

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` (and `+` as a space in query strings) into UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).copied().and_then(hex_val);
                let lo = b.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(format!("{s:?} has a malformed %-escape")),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

fn parse_query(
    raw: Option<&str>,
    allowed: &[&'static str],
) -> Result<HashMap<&'static str, String>, ApiError> {
    let mut out: HashMap<&'static str, String> = HashMap::new();
    let bad = |m: String| ApiError::new(ErrorKind::BadRequest, m);
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true).map_err(bad)?;
        let v = percent_decode(v, true).map_err(bad)?;
        let Some(key) = allowed.iter().copied().find(|a| *a == k) else {
            return Err(bad(if allowed.is_empty() {
                format!("this route takes no query parameters (got {k:?})")
            } else {
                format!(
                    "unknown query parameter {k:?}; this route accepts: {}",
                    allowed.join(", ")
                )
            }));
        };
        if out.insert(key, v).is_some() {
            return Err(bad(format!("query parameter {key:?} is given twice")));
        }
    }
    Ok(out)
}

fn take_limit(q: &mut HashMap<&'static str, String>) -> Result<Option<usize>, ApiError> {
    q.remove("limit")
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<usize>().map_err(|_| {
                ApiError::new(
                    ErrorKind::BadRequest,
                    format!("limit={v:?} is not a number; send e.g. limit=100"),
                )
            })
        })
        .transpose()
}

fn take(q: &mut HashMap<&'static str, String>, key: &str) -> Option<String> {
    q.remove(key).filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------
// Responses.

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    match serde_json::to_vec(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            respond(status, "application/json", bytes)
        }
        Err(e) => error_response(&ApiError::new(
            ErrorKind::Internal,
            format!("the answer could not be encoded: {e}"),
        )),
    }
}

/// The one mapping from an [`ApiError`] to an HTTP answer.
pub fn error_response(err: &ApiError) -> Response<Body> {
    let status =
        StatusCode::from_u16(err.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody { error: err.clone() };
    let bytes = serde_json::to_vec(&body)
        .map(|mut b| {
            b.push(b'\n');
            b
        })
        .unwrap_or_else(|_| {
            br#"{"error":{"kind":"internal","message":"error could not be encoded"}}"#.to_vec()
        });
    respond(status, "application/json", bytes)
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

// ---------------------------------------------------------------------------
// Peers and requests.

/// Who is on the other end of a connection, with the role in force for
/// the request at hand.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A uid or a client certificate with a role.
    Known(Caller),
    /// A peer without a role (a uid castellan does not know, a client
    /// certificate it did not issue under an admin profile or revoked):
    /// only the probes answer it.
    Unknown {
        /// e.g. "uid 65534".
        who: String,
        /// Why it is refused and what to do, for the 403 message.
        why: String,
    },
}

/// The authenticated peer of one connection. [`Identify::peer`] is asked
/// at every request that needs a role, with the settings in force for that
/// request (see the module doc, "Reload").
pub(crate) trait Identify: Send + Sync + 'static {
    /// Who is connected, for logs, whether or not it has a role.
    fn who(&self) -> String;
    fn peer(&self, settings: &AdminSettings) -> impl Future<Output = Peer> + Send;
}

/// A local process, as `SO_PEERCRED` reported it when it connected.
struct UnixPeer {
    uid: u32,
    gid: u32,
    name: String,
}

impl Identify for UnixPeer {
    fn who(&self) -> String {
        format!("{} (uid {})", self.name, self.uid)
    }

    async fn peer(&self, settings: &AdminSettings) -> Peer {
        let uid = self.uid;
        match settings.roles.get(&uid).copied() {
            Some(role) => Peer::Known(Caller {
                actor: Actor::Unix {
                    uid,
                    gid: self.gid,
                    name: self.name.clone(),
                },
                role,
            }),
            None => Peer::Unknown {
                who: format!("uid {uid}"),
                why: format!(
                    "uid {uid} has no castellan role; an admin can grant one in castellan's \
                     configuration ([admin.roles]) and reload castellan"
                ),
            },
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Auditor => "auditor",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

/// Answers one request. Never panics on input; every failure is a JSON error.
async fn handle<B: AdminBackend, P: Identify>(
    backend: Arc<B>,
    settings: Shared<AdminSettings>,
    peer: Arc<P>,
    refused_logged: Arc<std::sync::atomic::AtomicBool>,
    req: Request<Incoming>,
) -> Response<Body> {
    let shared = settings;
    let settings = shared.current();
    let deadline = Instant::now() + settings.request_timeout;
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match route_and_call(
        backend,
        &shared,
        &settings,
        &*peer,
        &refused_logged,
        req,
        deadline,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::debug!(
        peer = %peer.who(),
        %method,
        %path,
        status = response.status().as_u16(),
        "admin request"
    );
    response
}

/// The caller of `route` as `peer`, with the role the settings give it
/// now; `None` for the open probes. Refuses a peer whose role is too low
/// or who has none.
async fn authorize<P: Identify>(
    route: &Route,
    peer: &P,
    settings: &AdminSettings,
    refused_logged: &std::sync::atomic::AtomicBool,
) -> Result<Option<Caller>, ApiError> {
    let Some(need) = route.role else {
        return Ok(None);
    };
    match peer.peer(settings).await {
        Peer::Known(c) if c.role < need => Err(err(
            ErrorKind::Forbidden,
            format!(
                "{} {} needs role {} or above; {} has role {}",
                route.method.as_str(),
                route.path,
                role_name(need),
                c.actor.describe(),
                role_name(c.role)
            ),
        )),
        Peer::Known(c) => Ok(Some(c)),
        Peer::Unknown { who, why } => {
            if !refused_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(peer = %who, reason = %why, "admin API: refused a peer without a role");
            }
            Err(err(ErrorKind::Forbidden, why))
        }
    }
}

async fn route_and_call<B: AdminBackend, P: Identify>(
    backend: Arc<B>,
    shared: &Shared<AdminSettings>,
    settings: &AdminSettings,
    peer: &P,
    refused_logged: &std::sync::atomic::AtomicBool,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Response<Body>, ApiError> {
    let method = match *req.method() {
        hyper::Method::GET => Some(Method::Get),
        hyper::Method::POST => Some(Method::Post),
        _ => None,
    };
    let path = req.uri().path().to_string();
    let mut allowed: Vec<&'static str> = Vec::new();
    let mut found = None;
    for r in ROUTES {
        if let Some(params) = match_path(r.path, &path) {
            if Some(r.method) == method {
                found = Some((r, params));
                break;
            }
            allowed.push(r.method.as_str());
        }
    }
    let Some((route, raw_params)) = found else {
        if allowed.is_empty() {
            // A stray slash (`/v1/cas/`, `//v1/cas`) or upper case: name the
            // route that was meant.
            let tidy = {
                let lower = path.to_ascii_lowercase();
                let parts: Vec<&str> = lower.split('/').filter(|p| !p.is_empty()).collect();
                format!("/{}", parts.join("/"))
            };
            let meant = ROUTES
                .iter()
                .filter(|r| match_path(r.path, &tidy).is_some())
                .map(|r| format!("{} {tidy}", r.method.as_str()))
                .collect::<Vec<_>>();
            if tidy != path && !meant.is_empty() {
                return Err(err(
                    ErrorKind::NotFound,
                    format!("no route {path}; did you mean {}?", meant.join(" or ")),
                ));
            }
            return Err(err(
                ErrorKind::NotFound,
                format!("no route {path}; the admin API has: {}", route_list()),
            ));
        }
        let e = err(
            ErrorKind::BadRequest,
            format!(
                "{} is not allowed on {path}; use {}",
                req.method(),
                allowed.join(" or ")
            ),
        );
        let mut r = error_response(&e);
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            r.headers_mut().insert(ALLOW, v);
        }
        return Ok(r);
    };

    // Authorization, from the table, before anything else of the request is
    // read; the role is the one in force now (see "Reload").
    authorize(route, peer, settings, refused_logged).await?;

    let mut params = Vec::with_capacity(raw_params.len());
    for p in raw_params {
        let v = percent_decode(p, false).map_err(|m| err(ErrorKind::BadRequest, m))?;
        if v.len() > 512 || v.chars().any(char::is_control) {
            return Err(err(
                ErrorKind::BadRequest,
                "a path parameter is longer than 512 characters or holds control characters",
            ));
        }
        params.push(v);
    }
    let mut query = parse_query(req.uri().query(), route.query)?;
    let param = |i: usize| params.get(i).cloned().unwrap_or_default();

    let body = if route.method == Method::Post {
        read_body(req, settings.max_body_bytes, deadline).await?
    } else {
        Bytes::new()
    };

    let call = match route.endpoint {
        Endpoint::Healthz => {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ok"}),
            ));
        }
        Endpoint::Readyz => {
            let (signer, log) = backend.ready().await;
            let status = if signer && log {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = serde_json::json!({"ready": signer && log, "signer_reachable": signer, "log_writable": log});
            if !log && let Some(why) = backend.log_problem() {
                body["log_problem"] = serde_json::Value::String(why);
            }
            return Ok(json_response(status, &body));
        }
        Endpoint::Metrics => {
            return Ok(respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                backend.metrics().into_bytes(),
            ));
        }
        Endpoint::Status => Call::Status,
        Endpoint::Ceremonies => Call::Ceremonies,
        Endpoint::OpenCeremony => {
            Call::OpenCeremony(parse_json(&body, "an OpenCeremony", route.endpoint)?)
        }
        Endpoint::Ceremony => Call::Ceremony { id: param(0) },
        Endpoint::ApproveCeremony => Call::ApproveCeremony {
            id: param(0),
            approval: parse_json(&body, "an ApproveCeremony", route.endpoint)?,
        },
        Endpoint::ExecuteCeremony => Call::ExecuteCeremony { id: param(0) },
        Endpoint::Cas => Call::Cas,
        Endpoint::Ca => Call::Ca { id: param(0) },
        Endpoint::Issue => Call::Issue(parse_json(&body, "an IssueRequest", route.endpoint)?),
        Endpoint::Certificates => {
            let limit = take_limit(&mut query)?;
            Call::Certificates(CertQuery {
                issuer: take(&mut query, "issuer"),
                state: take(&mut query, "state"),
                identity: take(&mut query, "identity"),
                limit,
                after: take(&mut query, "after"),
            })
        }
        Endpoint::Certificate => Call::Certificate { serial: param(0) },
        Endpoint::Revoke => Call::Revoke {
            serial: param(0),
            request: parse_json(&body, "a RevokeRequest", route.endpoint)?,
        },
        Endpoint::AuditVerify => Call::AuditVerify,
        Endpoint::AuditLog => {
            let limit = take_limit(&mut query)?;
            Call::AuditLog(LogQuery {
                actor: take(&mut query, "actor"),
                kind: take(&mut query, "kind"),
                since: take(&mut query, "since"),
                until: take(&mut query, "until"),
                subject: take(&mut query, "subject"),
                limit,
                from_seq: take(&mut query, "from_seq")
                    .map(|v| {
                        v.parse::<u64>().map_err(|_| {
                            err(
                                ErrorKind::BadRequest,
                                format!(
                                    "from_seq={v:?} is not a sequence number; send the `next` \
                                     of the previous page"
                                ),
                            )
                        })
                    })
                    .transpose()?,
            })
        }
        Endpoint::Checkpoint => Call::Checkpoint,
        Endpoint::Crl => Call::Crl { issuer: param(0) },
        Endpoint::PublishCrl => Call::PublishCrl {
            issuer: param(0),
            request: parse_json(&body, "a PublishCrl", route.endpoint)?,
        },
    };
    // From here to the end of the operation the request holds the reload
    // gate, so it sees one configuration: its role (checked again, a
    // reload may have come while the body arrived), its settings, the
    // domain's configuration. Taken only now, so a slow body does not hold
    // a reload (and the requests queued behind it) up.
    let gate = backend.request_gate().await;
    let current = shared.current();
    let Some(caller) = authorize(route, peer, &current, refused_logged).await? else {
        // Only the probes have no role, and they answered above.
        return Err(err(ErrorKind::Internal, "route without a role check"));
    };

    // Run to completion in its own task: see the module doc.
    // The operation keeps the reload gate until it ends, also past the
    // request's deadline.
    let task = tokio::spawn(async move {
        let r = backend.call_encoded(&caller, call).await;
        drop(gate);
        r
    });
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(Ok(text))) => Ok(respond(StatusCode::OK, "application/json", text)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(join)) => {
            tracing::error!(error = %join, route = route.path, "admin operation panicked");
            Err(err(
                ErrorKind::Internal,
                "internal error while performing the operation; see castellan's log (journalctl -u castellan)",
            ))
        }
        Err(_) => Err(err(
            ErrorKind::Unavailable,
            format!(
                "the operation did not finish within {}s; it continues in castellan — \
                 check its outcome with `castellanctl audit log` before retrying",
                settings.request_timeout.as_secs()
            ),
        )),
    }
}

async fn read_body(
    req: Request<Incoming>,
    max: usize,
    deadline: Instant,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        err(
            ErrorKind::TooLarge,
            format!("the request body is larger than the limit of {max} octets"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout_at(deadline, Limited::new(req.into_body(), max).collect())
        .await
        .map_err(|_| {
            err(
                ErrorKind::BadRequest,
                "the request body did not arrive in time",
            )
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(err(
            ErrorKind::BadRequest,
            format!("the request body could not be read: {e}"),
        )),
    }
}

fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str, e: Endpoint) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "the body is not {what}: {err}; send JSON like {}",
                body_example(e)
            ),
        )
    })
}

// ---------------------------------------------------------------------------
// Socket and connections.

/// Binds the admin socket: refuses to replace a live one or a non-socket
/// file, removes a stale one, applies `socket_mode`.
pub fn bind(settings: &AdminSettings) -> io::Result<UnixListener> {
    let path = &settings.socket;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use by a running process (another castellan?); stop it first",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the admin socket {}: {e}", path.display()),
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(settings.socket_mode))?;
    Ok(listener)
}

/// Serves the admin API for `daemon` until `shutdown` completes. `settings`
/// is either fixed (`Arc<AdminSettings>`) or a [`Shared`] that a reload
/// replaces.
pub async fn serve_unix(
    daemon: Arc<Daemon>,
    settings: impl Into<Shared<AdminSettings>>,
    shutdown: impl Future,
) -> io::Result<()> {
    serve_unix_with(daemon, settings, shutdown).await
}

/// [`serve_unix`] for any [`AdminBackend`].
pub async fn serve_unix_with<B: AdminBackend>(
    backend: Arc<B>,
    settings: impl Into<Shared<AdminSettings>>,
    shutdown: impl Future,
) -> io::Result<()> {
    let settings = settings.into();
    let socket = AdminSocket::bind(&settings.current())?;
    socket.serve(backend, settings, shutdown).await;
    Ok(())
}

/// The admin socket, bound (so a daemon can report ready only once admins
/// can reach it) and not yet served.
pub struct AdminSocket {
    listener: UnixListener,
    path: std::path::PathBuf,
    identity: Option<(u64, u64)>,
}

impl AdminSocket {
    /// Binds `settings.socket` (see [`bind`]).
    pub fn bind(settings: &AdminSettings) -> io::Result<AdminSocket> {
        let listener = bind(settings)?;
        let identity = std::fs::metadata(&settings.socket)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        tracing::info!(socket = %settings.socket.display(), "admin API listening");
        Ok(AdminSocket {
            listener,
            path: settings.socket.clone(),
            identity,
        })
    }

    /// Serves until `shutdown` completes, then removes the socket file if
    /// it is still this one (a successor may have bound the path).
    pub async fn serve<B: AdminBackend>(
        self,
        backend: Arc<B>,
        settings: impl Into<Shared<AdminSettings>>,
        shutdown: impl Future,
    ) {
        serve_listener(backend, settings, self.listener, shutdown).await;
        if let Ok(m) = std::fs::metadata(&self.path)
            && Some((m.dev(), m.ino())) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The accept loop on an already bound listener.
pub async fn serve_listener<B: AdminBackend>(
    backend: Arc<B>,
    settings: impl Into<Shared<AdminSettings>>,
    listener: UnixListener,
    shutdown: impl Future,
) {
    let settings = settings.into();
    let s = settings.clone();
    accept_loop(
        "admin socket",
        listener,
        &settings,
        shutdown,
        move |stream: UnixStream, _, stop, permit| {
            connection(backend.clone(), s.clone(), stream, stop, permit)
        },
    )
    .await;
}

/// A listener the admin API accepts connections on (the Unix socket, the
/// mutual-TLS TCP listener).
pub(crate) trait Listener {
    type Stream;
    type Peer: std::fmt::Debug;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;
    /// The network client a connection comes from, for the limit of
    /// connections per client; `None` where there is none (a local socket).
    fn client(_peer: &Self::Peer) -> Option<std::net::IpAddr> {
        None
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(UnixStream, Self::Peer)>> + Send {
        UnixListener::accept(self)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;
    fn accept(
        &self,
    ) -> impl Future<Output = io::Result<(tokio::net::TcpStream, Self::Peer)>> + Send {
        tokio::net::TcpListener::accept(self)
    }
    fn client(peer: &Self::Peer) -> Option<std::net::IpAddr> {
        Some(peer.ip().to_canonical())
    }
}

/// Of `max_connections`, the share one network client may hold at once
/// (at least one): a single host, with or without a certificate, cannot
/// take every slot of the mTLS listener with connections it keeps in the
/// handshake or idle, and so lock every other admin client out.
const CLIENT_SHARE: usize = 4;

/// Connections open per network client ([`Listener::client`]).
type ClientCounts = Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>;

/// One connection counted for its client until dropped.
struct ClientSlot {
    counts: ClientCounts,
    client: std::net::IpAddr,
}

impl ClientSlot {
    /// A slot for `client`, unless it already holds `max`.
    fn take(counts: &ClientCounts, client: std::net::IpAddr, max: usize) -> Option<ClientSlot> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            counts: counts.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, each served by
/// `serve` in a task of its own, at most `max_connections` at once (fixed at
/// start: a reload cannot change it; one over is closed at once), of which
/// one network client holds at most a quarter ([`CLIENT_SHARE`]). Then stops
/// listening, tells the connections to stop and lets in-flight requests
/// finish ([`drain`]).
pub(crate) async fn accept_loop<L, F>(
    what: &'static str,
    listener: L,
    settings: &Shared<AdminSettings>,
    shutdown: impl Future,
    serve: impl Fn(L::Stream, L::Peer, watch::Receiver<bool>, OwnedSemaphorePermit) -> F,
) where
    L: Listener,
    F: Future<Output = ()> + Send + 'static,
{
    let max_connections = settings.current().max_connections;
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let per_client = (max_connections / CLIENT_SHARE).max(1);
    let clients: ClientCounts = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let client = match L::client(&peer) {
                        None => None,
                        Some(ip) => match ClientSlot::take(&clients, ip, per_client) {
                            Some(slot) => Some(slot),
                            None => {
                                tracing::warn!(
                                    max = per_client,
                                    client = %ip,
                                    "{what}: this client holds its share of connections; \
                                     closing a new one"
                                );
                                drop(stream);
                                continue;
                            }
                        },
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(
                            max = max_connections,
                            ?peer,
                            "{what}: connection limit reached; closing a new connection"
                        );
                        drop(stream);
                        continue;
                    };
                    let served = serve(stream, peer, stop_rx.clone(), permit);
                    tasks.spawn(async move {
                        let _client = client;
                        served.await
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drain(tasks, settings.current().request_timeout).await;
}

/// Lets in-flight requests finish (they were told to stop), for at most one
/// request time.
async fn drain(mut tasks: JoinSet<()>, request_timeout: Duration) {
    let grace = request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

/// The peer of a socket connection as the kernel reports it.
async fn identify(stream: &UnixStream) -> io::Result<UnixPeer> {
    let cred = stream.peer_cred()?;
    let (uid, gid) = (cred.uid(), cred.gid());
    // NSS may be slow (LDAP, sssd): keep it off the reactor.
    let name = tokio::task::spawn_blocking(move || {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| uid.to_string());
    Ok(UnixPeer { uid, gid, name })
}

async fn connection<B: AdminBackend>(
    backend: Arc<B>,
    settings: Shared<AdminSettings>,
    stream: UnixStream,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let peer = match identify(&stream).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot read the peer's credentials; closing");
            return;
        }
    };
    let stall = settings.current().header_timeout;
    let stream = WriteStall::new(stream, stall);
    serve_http(backend, settings, TokioIo::new(stream), peer, stop).await;
}

/// A connection whose writes fail with `TimedOut` once the client has
/// taken none of castellan's output for `limit`: a client that sends
/// requests and never reads the answers would otherwise hold its
/// connection (and a slot of `max_connections`) for ever, as no read
/// timeout runs while an answer is being written.
pub(crate) struct WriteStall<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write, flush or shutdown waits for the client.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStall<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        WriteStall {
            inner,
            limit,
            timer: None,
        }
    }

    /// `r` as it is, or `TimedOut` if the client has made no progress
    /// for `limit`.
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<io::Result<T>>,
    ) -> std::task::Poll<io::Result<T>> {
        use std::task::Poll;
        if r.is_ready() {
            self.timer = None;
            return r;
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timer = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client read none of the answer for {}s; closing",
                        limit.as_secs_f64()
                    ),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

/// Serves HTTP/1.1 on one authenticated connection until it closes or
/// `stop` fires (then in-flight requests finish).
pub(crate) async fn serve_http<B, I, P>(
    backend: Arc<B>,
    settings: Shared<AdminSettings>,
    io: I,
    peer: P,
    mut stop: watch::Receiver<bool>,
) where
    B: AdminBackend,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    P: Identify,
{
    let peer = Arc::new(peer);
    let refused_logged = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let header_timeout = settings.current().header_timeout;
    let svc = {
        let peer = peer.clone();
        service_fn(move |req| {
            let fut = handle(
                backend.clone(),
                settings.clone(),
                peer.clone(),
                refused_logged.clone(),
                req,
            );
            async move { Ok::<_, Infallible>(fut.await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer.who(), error = %e, "admin connection ended");
    }
}
