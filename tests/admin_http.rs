//! The admin socket's HTTP layer: authentication by peer uid, the role table,
//! error bodies, limits and timeouts. Runs the real `serve_unix_with` on a
//! temporary socket, in front of a fake domain that records what it was
//! asked (the HTTP layer must behave the same whatever the domain does).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use castellan::admin::{AdminBackend, AdminSettings, Call, serve_unix_with};
use castellan::admin_client::AdminClient;
use castellan::api::{ApiError, CertQuery, ErrorBody, ErrorKind, LogQuery, Role};
use castellan::daemon::Caller;
use serde_json::{Value, json};

type Answer = Box<dyn Fn(&Call) -> Value + Send + Sync>;

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(Role, Call)>>,
    delay: Duration,
    /// The answer to a call, when not the default `{"done": true, …}`.
    answer: Option<Answer>,
    /// A reload gate, as castellan's daemon has one.
    gate: Option<Arc<tokio::sync::RwLock<()>>>,
}

impl AdminBackend for Fake {
    async fn call(&self, c: &Caller, call: Call) -> Result<Value, ApiError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let answer = match &self.answer {
            Some(f) => f(&call),
            None => json!({"done": true, "actor": c.actor.describe()}),
        };
        self.calls.lock().unwrap().push((c.role, call));
        Ok(answer)
    }
    async fn ready(&self) -> (bool, bool) {
        (true, true)
    }
    fn metrics(&self) -> String {
        "castellan_events_total 7\n".into()
    }
    async fn request_gate(&self) -> Option<Box<dyn Send + Sync>> {
        match &self.gate {
            Some(g) => Some(Box::new(g.clone().read_owned().await)),
            None => None,
        }
    }
}

struct Server {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    fake: Arc<Fake>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(role: Option<Role>, tune: impl FnOnce(&mut AdminSettings), fake: Fake) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("admin.sock");
        let mut roles = HashMap::new();
        if let Some(r) = role {
            roles.insert(nix::unistd::geteuid().as_raw(), r);
        }
        let mut settings = AdminSettings {
            socket: sock.clone(),
            socket_mode: 0o660,
            max_body_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connections: 16,
            roles,
        };
        tune(&mut settings);
        let fake = Arc::new(fake);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let backend = fake.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve_unix_with(backend, Arc::new(settings), rx))
        });
        let t0 = Instant::now();
        while UnixStream::connect(&sock).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            _dir: dir,
            sock,
            fake,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(&self.sock).with_timeout(Duration::from_secs(20))
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let r = self
            .client()
            .request(method, path, body.map(str::as_bytes))
            .unwrap();
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v)
    }

    fn stop(mut self) -> std::io::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes.
fn raw(sock: &PathBuf, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A refused connection may be closed before the request is written.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn error_of(v: &Value) -> ApiError {
    serde_json::from_value::<ErrorBody>(v.clone())
        .unwrap_or_else(|_| panic!("not an error body: {v}"))
        .error
}

#[test]
fn healthz_readyz_and_metrics_answer() {
    let s = Server::start(Some(Role::Auditor), |_| {}, Fake::default());
    assert_eq!(
        s.request("GET", "/healthz", None),
        (200, json!({"status": "ok"}))
    );
    let (status, v) = s.request("GET", "/readyz", None);
    assert_eq!(status, 200);
    assert_eq!(v["ready"], json!(true));
    let r = s.client().request("GET", "/metrics", None).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    assert_eq!(r.body, b"castellan_events_total 7\n");
}

#[test]
fn an_unknown_uid_is_refused_everything_but_the_probes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to connect as uid 65534");
        return;
    }
    // The server knows only root; nobody (65534) connects with curl.
    let s = Server::start(
        Some(Role::Admin),
        |st| st.socket_mode = 0o666,
        Fake::default(),
    );
    std::fs::set_permissions(
        s.sock.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let curl = |path: &str| {
        let out = std::process::Command::new("timeout")
            .args(["20", "curl", "-s", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&s.sock)
            .arg(format!("http://castellan{path}"))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    let (code, body) = curl("/v1/status");
    assert_eq!(code, "403", "{body}");
    let e = error_of(&serde_json::from_str(&body).unwrap());
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(e.message.contains("uid 65534"), "{}", e.message);
    let (code, _) = curl("/healthz");
    assert_eq!(code, "200");
    assert!(s.fake.calls.lock().unwrap().is_empty());
}

#[test]
fn an_auditor_cannot_revoke_but_can_read() {
    let s = Server::start(Some(Role::Auditor), |_| {}, Fake::default());
    let (status, v) = s.request(
        "POST",
        "/v1/certificates/0a1b/revoke",
        Some(r#"{"reason": "keyCompromise"}"#),
    );
    assert_eq!(status, 403);
    let e = error_of(&v);
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(e.message.contains("operator"), "{}", e.message);
    assert!(s.fake.calls.lock().unwrap().is_empty());

    let (status, v) = s.request("GET", "/v1/status", None);
    assert_eq!(status, 200);
    assert_eq!(v["done"], json!(true));
    assert_eq!(
        s.fake.calls.lock().unwrap()[0],
        (Role::Auditor, Call::Status)
    );
}

#[test]
fn an_operator_revokes_with_the_serial_from_the_path() {
    let s = Server::start(Some(Role::Operator), |_| {}, Fake::default());
    let (status, _) = s.request(
        "POST",
        "/v1/certificates/0a1b/revoke",
        Some(r#"{"reason": "superseded"}"#),
    );
    assert_eq!(status, 200);
    let calls = s.fake.calls.lock().unwrap();
    let Call::Revoke { serial, request } = &calls[0].1 else {
        panic!("{:?}", calls[0]);
    };
    assert_eq!(serial, "0a1b");
    assert_eq!(request.reason, "superseded");
    drop(calls);
    // Opening a ceremony is for admins only.
    let (status, _) = s.request("POST", "/v1/ceremonies", Some(r#"{"purpose": "root"}"#));
    assert_eq!(status, 403);
}

#[test]
fn malformed_json_is_a_400_that_says_what_to_send() {
    let s = Server::start(Some(Role::Admin), |_| {}, Fake::default());
    for body in [r#"{"reason": "#, r#"{"invalidity_date": null}"#, ""] {
        let (status, v) = s.request("POST", "/v1/certificates/0a1b/revoke", Some(body));
        assert_eq!(status, 400, "{body}");
        let e = error_of(&v);
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("send JSON like"), "{}", e.message);
        assert!(e.message.contains("keyCompromise"), "{}", e.message);
    }
    assert!(s.fake.calls.lock().unwrap().is_empty());
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let s = Server::start(
        Some(Role::Admin),
        |st| st.max_body_bytes = 1024,
        Fake::default(),
    );
    let big = format!(r#"{{"reason": "{}"}}"#, "x".repeat(4096));
    let (status, v) = s.request("POST", "/v1/certificates/01/revoke", Some(&big));
    assert_eq!(status, 413);
    assert_eq!(error_of(&v).kind, ErrorKind::TooLarge);
    // Without a Content-Length: the limit applies while the body streams in.
    let chunk = "y".repeat(800);
    let req = format!(
        "POST /v1/certificates/01/revoke HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    let answer = raw(&s.sock, req.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""kind":"too-large""#), "{answer}");
    assert!(s.fake.calls.lock().unwrap().is_empty());
}

#[test]
fn a_client_stalling_mid_header_is_cut_off_while_another_is_served() {
    let s = Server::start(
        Some(Role::Auditor),
        |st| st.header_timeout = Duration::from_millis(300),
        Fake::default(),
    );
    let mut slow = UnixStream::connect(&s.sock).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: cas")
        .unwrap();
    // Served while the slow client holds its connection.
    assert_eq!(s.request("GET", "/healthz", None).0, 200);
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "the stalled connection was not closed: {closed:?}"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    assert!(s.fake.calls.lock().unwrap().is_empty());
}

#[test]
fn unknown_paths_list_the_routes_and_wrong_methods_get_405() {
    let s = Server::start(Some(Role::Admin), |_| {}, Fake::default());
    let (status, v) = s.request("GET", "/v1/nothing", None);
    assert_eq!(status, 404);
    let e = error_of(&v);
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("GET /v1/status"), "{}", e.message);
    // A stray slash or upper case: the route that was meant.
    for (path, meant) in [
        ("/v1/cas/", "GET /v1/cas"),
        ("//v1/status", "GET /v1/status"),
        ("/V1/Certificates/0A1B", "GET /v1/certificates/0a1b"),
    ] {
        let (status, v) = s.request("GET", path, None);
        assert_eq!(status, 404, "{path}");
        let e = error_of(&v);
        assert!(
            e.message.contains(&format!("did you mean {meant}")),
            "{path}: {}",
            e.message
        );
    }

    let r = s.client().request("DELETE", "/v1/cas", None).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(error_of(&v).kind, ErrorKind::BadRequest);
}

#[test]
fn list_queries_are_percent_decoded_and_unknown_parameters_refused() {
    let s = Server::start(Some(Role::Auditor), |_| {}, Fake::default());
    let (status, _) = s.request(
        "GET",
        "/v1/certificates?identity=web%20a%2Fb&state=revoked&limit=5&issuer=",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        s.fake.calls.lock().unwrap()[0].1,
        Call::Certificates(CertQuery {
            issuer: None,
            state: Some("revoked".into()),
            identity: Some("web a/b".into()),
            limit: Some(5),
            after: None,
        })
    );
    for bad in [
        "/v1/certificates?colour=red",
        "/v1/certificates?limit=many",
        "/v1/certificates?state=a&state=b",
        "/v1/audit/log?since=%zz",
    ] {
        let (status, v) = s.request("GET", bad, None);
        assert_eq!(status, 400, "{bad}");
        assert_eq!(error_of(&v).kind, ErrorKind::BadRequest);
    }
    let (status, _) = s.request("GET", "/v1/ceremonies/ab%2Fcd", None);
    assert_eq!(status, 200);
    assert_eq!(
        s.fake.calls.lock().unwrap().last().unwrap().1,
        Call::Ceremony { id: "ab/cd".into() }
    );
}

#[test]
fn connections_beyond_the_limit_are_closed_at_once() {
    let s = Server::start(
        Some(Role::Auditor),
        |st| st.max_connections = 1,
        Fake::default(),
    );
    // Hold the only slot with a keep-alive connection that was answered
    // (retrying while the start-up probe's connection still holds it).
    let t0 = Instant::now();
    let first = loop {
        let mut c = UnixStream::connect(&s.sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n");
        let mut buf = [0u8; 512];
        if let Ok(n) = c.read(&mut buf)
            && buf[..n].starts_with(b"HTTP/1.1 200")
        {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never served");
        std::thread::sleep(Duration::from_millis(20));
    };

    let answer = raw(&s.sock, b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n");
    assert_eq!(answer, "", "a connection beyond the limit was served");

    drop(first);
    let t0 = Instant::now();
    loop {
        match s.client().request("GET", "/healthz", None) {
            Ok(r) if r.status == 200 => break,
            _ => {
                assert!(t0.elapsed() < Duration::from_secs(10), "slot never freed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn a_slow_operation_times_out_as_unavailable_and_still_completes() {
    let s = Server::start(
        Some(Role::Operator),
        |st| st.request_timeout = Duration::from_millis(200),
        Fake {
            delay: Duration::from_millis(600),
            ..Fake::default()
        },
    );
    let (status, v) = s.request("POST", "/v1/audit/checkpoint", Some("{}"));
    assert_eq!(status, 503);
    let e = error_of(&v);
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("audit log"), "{}", e.message);
    // The operation was not dropped half-way.
    let t0 = Instant::now();
    while s.fake.calls.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_client_maps_error_bodies_and_a_missing_daemon_to_api_errors() {
    let s = Server::start(Some(Role::Auditor), |_| {}, Fake::default());
    let e = s
        .client()
        .post::<_, Value>("/v1/audit/checkpoint", &json!({}))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert_eq!(e.kind.exit_code(), 77);
    let v: Value = s.client().get("/v1/cas").unwrap();
    assert_eq!(v["done"], json!(true));

    let e = AdminClient::new("/nonexistent/admin.sock")
        .get::<Value>("/v1/status")
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(
        e.message.contains("systemctl status castellan"),
        "{}",
        e.message
    );
}

#[test]
fn shutdown_removes_the_socket_and_a_stale_one_is_replaced() {
    let s = Server::start(Some(Role::Auditor), |_| {}, Fake::default());
    let sock = s.sock.clone();
    // A live socket is not taken over.
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(serve_unix_with(
            Arc::new(Fake::default()),
            Arc::new(AdminSettings {
                socket: sock.clone(),
                ..AdminSettings::default()
            }),
            std::future::ready(()),
        ));
    assert_eq!(second.unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
    s.stop().unwrap();
    assert!(!sock.exists(), "the socket was left behind");

    // A stale socket file (nobody listening) is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let s2 = {
        let stale = stale.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    serve_unix_with(
                        Arc::new(Fake::default()),
                        Arc::new(AdminSettings {
                            socket: stale,
                            ..AdminSettings::default()
                        }),
                        tokio::time::sleep(Duration::from_millis(300)),
                    )
                    .await
                })
        })
    };
    s2.join().unwrap().unwrap();
    assert!(!stale.exists());
}

// ---------------------------------------------------------------------------
// castellanctl against the same server.

const CEREMONY_ID: &str = "00112233445566778899aabbccddeeff";

fn root_op() -> castellan_proto::CeremonyOp {
    castellan_proto::CeremonyOp::CreateRoot(castellan_proto::CaParams {
        ca_id: "root".into(),
        parent: None,
        algorithm: castellan_proto::Algorithm::EcdsaP256,
        subject: castellan_proto::DistinguishedName::common_name("Test Root"),
        validity: castellan_proto::Validity {
            not_before: 1_700_000_000,
            not_after: 1_700_000_000 + 3650 * 86_400,
        },
        path_len: Some(1),
        urls: castellan_proto::Urls::default(),
    })
}

fn ceremony_view(approved: usize) -> Value {
    serde_json::to_value(castellan::api::CeremonyView {
        id: CEREMONY_ID.into(),
        purpose: "root".into(),
        description: "create root CA".into(),
        op: serde_json::to_value(root_op()).unwrap(),
        // Deliberately not the digest of the op: castellanctl must sign
        // what it computes from the op, never what it is told.
        parameters_sha256: "00".repeat(32),
        opened_by: "admin (uid 0)".into(),
        opened_at: "2025-01-01T00:00:00Z".into(),
        approvals: vec![],
        approved,
        threshold: 2,
        state: "open".into(),
        last_error: None,
        ca: None,
        signer_id: Some(hex::encode(FAKE_SIGNER.signer_id)),
        custodians_sha256: Some(hex::encode(FAKE_SIGNER.custodians_sha256)),
        certificate: None,
    })
    .unwrap()
}

/// The signer and custodian set the fake castellan says ceremonies are for.
const FAKE_SIGNER: castellan_proto::CeremonyContext = castellan_proto::CeremonyContext {
    signer_id: [0x5a; 32],
    custodians_sha256: [0xc5; 32],
};

fn ctl(sock: &PathBuf, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_castellanctl"))
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn castellanctl_approves_the_statement_it_computes_from_the_operation() {
    let s = Server::start(
        Some(Role::Operator),
        |_| {},
        Fake {
            answer: Some(Box::new(|call| match call {
                Call::ApproveCeremony { .. } => ceremony_view(1),
                _ => ceremony_view(0),
            })),
            ..Fake::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("alice.key");
    let pass = dir.path().join("alice.pass");
    std::fs::write(&pass, "alice-passphrase\n").unwrap();
    let pk = castellan::custodian::CustodianKey::generate(
        "alice",
        &key,
        &castellan::custodian::read_passphrase(&pass).unwrap(),
    )
    .unwrap()
    .public_key();

    let out = ctl(
        &s.sock,
        &[
            "ceremony",
            "approve",
            CEREMONY_ID,
            "--key",
            key.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("CN=Test Root"), "{stdout}");

    assert!(stdout.contains("1 of 2"), "{stdout}");
    assert!(stderr.contains("warning"), "{stderr}");

    let calls = s.fake.calls.lock().unwrap();
    let Some(Call::ApproveCeremony { id, approval }) = calls.last().map(|c| &c.1) else {
        panic!("{calls:?}");
    };
    assert_eq!(id, CEREMONY_ID);
    assert_eq!(approval.custodian, hex::encode(pk));
    let ceremony_id: [u8; 16] = hex::decode(CEREMONY_ID).unwrap().try_into().unwrap();
    let statement = castellan_proto::statement(&FAKE_SIGNER, &ceremony_id, &root_op());
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
        .verify(&statement, &hex::decode(&approval.signature).unwrap())
        .expect("the approval signs the statement of the shown operation");
    drop(calls);

    // The public half given for the key: said so.
    let wrong = ctl(
        &s.sock,
        &[
            "ceremony",
            "approve",
            CEREMONY_ID,
            "--key",
            castellan::custodian::pub_path(&key).to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    let wrong_err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{wrong_err}");
    assert!(
        wrong_err.contains("give the key file itself"),
        "{wrong_err}"
    );
}

#[test]
fn castellanctl_exit_codes_follow_the_error_kind() {
    let s = Server::start(Some(Role::Auditor), |_| {}, Fake::default());
    let out = ctl(&s.sock, &["revoke", "0a1b", "--reason", "keyCompromise"]);
    assert_eq!(out.status.code(), Some(77));
    let out = ctl(
        &s.sock,
        &["--json", "revoke", "0a1b", "--reason", "keyCompromise"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error_of(&v).kind, ErrorKind::Forbidden);

    let out = ctl(&s.sock, &["revoke", "0a1b", "--reason", "stolen"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyCompromise"));

    let missing = s.sock.with_file_name("missing.sock");
    let out = ctl(&missing, &["status"]);
    assert_eq!(out.status.code(), Some(69));

    let out = ctl(&s.sock, &["ceremny", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'ceremony'"));
}

#[test]
fn castellanctl_json_reports_a_mistyped_command_line_as_a_json_error() {
    let s = Server::start(Some(Role::Operator), |_| {}, Fake::default());
    for (args, hint) in [
        (&["--json", "ceremny", "list"][..], "'ceremony'"),
        (
            &["--json", "cert", "list", "--status", "revokd"],
            "'revoked'",
        ),
        (&["--json", "revoke", "0a1b"], "--reason <REASON>"),
    ] {
        let out = ctl(&s.sock, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}");
        let v: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {stdout:?}"));
        let e = error_of(&v);
        assert_eq!(e.kind, ErrorKind::BadRequest, "{args:?}");
        assert!(e.message.contains(hint), "{args:?}: {}", e.message);
    }
    // --help says what each exit status means.
    let out = ctl(&s.sock, &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for code in ["0 ok", "2 usage", "3 not found", "69 ", "77 forbidden"] {
        assert!(help.contains(code), "{code}: {help}");
    }

    // --limit 0 would list nothing and say nothing matched.
    for args in [
        &["cert", "list", "--limit", "0"][..],
        &["audit", "log", "--limit", "0"],
    ] {
        let out = ctl(&s.sock, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--limit 0"));
    }

    // Without --json, clap's own message on stderr, as before.
    let out = ctl(&s.sock, &["ceremny", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'ceremony'"));
    assert!(s.fake.calls.lock().unwrap().is_empty());
}

#[test]
fn castellanctl_reads_a_revocation_reason_however_it_is_spelt_and_offers_only_valid_ones() {
    let s = Server::start(
        Some(Role::Operator),
        |_| {},
        Fake {
            answer: Some(cert_view_answer()),
            ..Fake::default()
        },
    );
    let out = ctl(&s.sock, &["revoke", "0a1b", "--reason", "stolen"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("keyCompromise"), "{stderr}");
    // castellan refuses removeFromCRL: it is not offered.
    assert!(!stderr.contains("removeFromCRL"), "{stderr}");
    assert!(s.fake.calls.lock().unwrap().is_empty());

    for spelt in ["key compromise", "Key-Compromise", "keycompromise"] {
        let out = ctl(&s.sock, &["revoke", "0a1b", "--reason", spelt]);
        assert!(
            out.status.success(),
            "{spelt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let calls = s.fake.calls.lock().unwrap();
        let Some(Call::Revoke { request, .. }) = calls.last().map(|c| &c.1) else {
            panic!("{calls:?}");
        };
        assert_eq!(request.reason, "keyCompromise", "{spelt}");
    }
}

#[test]
fn castellanctl_output_into_a_closed_pipe_ends_quietly_without_a_panic() {
    let s = Server::start(
        Some(Role::Auditor),
        |_| {},
        Fake {
            answer: Some(Box::new(|_| json!([]))),
            ..Fake::default()
        },
    );
    // A pipe whose reader is gone, as with `castellanctl ca list | head -0`.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellanctl"))
        .arg("--socket")
        .arg(&s.sock)
        .args(["ca", "list"])
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(s.fake.calls.lock().unwrap().len(), 1);
}

#[test]
fn castellanctl_names_the_ceremony_a_shortened_id_could_be_and_never_guesses() {
    let s = Server::start(
        Some(Role::Operator),
        |_| {},
        Fake {
            answer: Some(Box::new(|call| match call {
                Call::Ceremonies => json!([ceremony_view(0)]),
                _ => ceremony_view(0),
            })),
            ..Fake::default()
        },
    );
    for short in [&CEREMONY_ID[..8], &format!("{}…", &CEREMONY_ID[..16])] {
        let out = ctl(&s.sock, &["ceremony", "show", short]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{short}: {stderr}");
        assert!(
            stderr.contains(&format!("did you mean {CEREMONY_ID}")),
            "{short}: {stderr}"
        );
    }
    let calls = s.fake.calls.lock().unwrap().clone();
    assert!(
        calls.iter().all(|(_, c)| matches!(c, Call::Ceremonies)),
        "a shortened id is never used: {calls:?}"
    );
    // Upper case and stray spaces, as pasted: the ceremony itself.
    let pasted = format!(" {} ", CEREMONY_ID.to_uppercase());
    let out = ctl(&s.sock, &["ceremony", "show", &pasted]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = s.fake.calls.lock().unwrap();
    assert!(
        matches!(calls.last(), Some((_, Call::Ceremony { id })) if id == CEREMONY_ID),
        "{calls:?}"
    );
}

#[test]
fn castellanctl_audit_log_reads_an_event_kind_however_it_is_written() {
    let s = Server::start(
        Some(Role::Auditor),
        |_| {},
        Fake {
            answer: Some(Box::new(|_| json!({"events": []}))),
            ..Fake::default()
        },
    );
    for written in [
        "certificate-revoked",
        "CertificateRevoked",
        "certificate_revoked",
        "Certificate Revoked",
    ] {
        let out = ctl(&s.sock, &["audit", "log", "--kind", written]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{written}: {stdout}");
        assert!(
            stdout.contains("written like certificate-revoked"),
            "{stdout}"
        );
        let calls = s.fake.calls.lock().unwrap();
        let Some(Call::AuditLog(q)) = calls.last().map(|c| &c.1) else {
            panic!("{calls:?}");
        };
        assert_eq!(q.kind.as_deref(), Some("certificate-revoked"), "{written}");
    }
}

fn cert_view_answer() -> Answer {
    Box::new(|_| {
        serde_json::to_value(castellan::api::CertView {
            serial: "0a1b".into(),
            issuer: "issuing".into(),
            profile: "server".into(),
            identity: "web.example.internal".into(),
            subject: "CN=web.example.internal".into(),
            sans: vec![],
            not_before: "2025-01-01T00:00:00Z".into(),
            not_after: "2026-01-01T00:00:00Z".into(),
            state: "issued".into(),
            revocation: None,
            certificate_pem: Some(
                "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            ),
            ocsp: None,
            crl: None,
        })
        .unwrap()
    })
}

#[test]
fn castellanctl_never_writes_a_certificate_over_a_private_key() {
    let s = Server::start(
        Some(Role::Operator),
        |_| {},
        Fake {
            answer: Some(cert_view_answer()),
            ..Fake::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("web.key");
    let key_pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n";
    std::fs::write(&key, key_pem).unwrap();

    // `--out` given the key's name by mistake: the key stays.
    let out = ctl(
        &s.sock,
        &["cert", "show", "0a1b", "--out", key.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds a private key"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_pem);

    // Nothing is issued for an --out that could not be written.
    let csr = dir.path().join("web.csr");
    let csr_pem = rcgen::CertificateParams::new(vec!["web.example.internal".into()])
        .unwrap()
        .serialize_request(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem()
        .unwrap();
    std::fs::write(&csr, csr_pem).unwrap();
    let issue_csr = |more: &[&str]| {
        let mut args = vec![
            "issue",
            "--csr",
            csr.to_str().unwrap(),
            "--profile",
            "server",
        ];
        args.extend_from_slice(more);
        ctl(&s.sock, &args)
    };
    let calls_before = s.fake.calls.lock().unwrap().len();
    let out = issue_csr(&["--out", key.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds a private key"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), key_pem);
    assert_eq!(s.fake.calls.lock().unwrap().len(), calls_before);
    // Nor when --out and --chain-out, or --key-out, name one file spelt
    // two ways: the key is not even made.
    let cert = dir.path().join("web.pem");
    let cert_again = dir.path().join(".").join("web.pem");
    let out = issue_csr(&[
        "--out",
        cert.to_str().unwrap(),
        "--chain-out",
        cert_again.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_key = dir.path().join("new.key");
    let out = ctl(
        &s.sock,
        &[
            "issue",
            "--generate-key",
            "--subject",
            "CN=web.example.internal",
            "--san",
            "DNS:web.example.internal",
            "--profile",
            "server",
            "--key-out",
            new_key.to_str().unwrap(),
            "--out",
            dir.path().join(".").join("new.key").to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!new_key.exists());
    assert_eq!(s.fake.calls.lock().unwrap().len(), calls_before);
    // Nor for an --out in a directory that does not exist.
    let nowhere = dir.path().join("no-such-dir").join("web.pem");
    let out = issue_csr(&["--out", nowhere.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");
    assert_eq!(s.fake.calls.lock().unwrap().len(), calls_before);

    // An older certificate is replaced whole and keeps its mode and its
    // owner (the service that reads it; settable when the test runs as
    // root); no temporary file is left behind.
    let cert = dir.path().join("web.pem");
    std::fs::write(&cert, "old certificate").unwrap();
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o640)).unwrap();
    let _ = std::os::unix::fs::chown(&cert, Some(65534), Some(65534));
    let owner = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&cert).unwrap();
        (m.uid(), m.gid())
    };
    let out = ctl(
        &s.sock,
        &["cert", "show", "0a1b", "--out", cert.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(
        std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
        0o640
    );
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&cert).unwrap();
        assert_eq!((m.uid(), m.gid()), owner);
    }
    // /dev/stdout (here a pipe) is written to as it is, as before; it may
    // take the certificate and then its chain.
    let calls_before = s.fake.calls.lock().unwrap().len();
    let out = issue_csr(&["--out", "/dev/stdout", "--chain-out", "/dev/stdout"]);
    assert_ne!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(
        s.fake.calls.lock().unwrap()[calls_before..],
        [(_, Call::Issue(_))]
    ));
    let out = ctl(&s.sock, &["cert", "show", "0a1b", "--out", "/dev/stdout"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("-----BEGIN CERTIFICATE-----"),
        "{stdout}"
    );

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["web.csr", "web.key", "web.pem"]);
}

#[test]
fn custodian_keygen_never_replaces_either_half_of_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("dave.pass");
    std::fs::write(&pass, "dave-passphrase\n").unwrap();
    let keygen = |name: &str, out: &std::path::Path, pass: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_castellanctl"))
            .args(["custodian", "keygen", "--name", name, "--out"])
            .arg(out)
            .arg("--passphrase-file")
            .arg(pass)
            .output()
            .unwrap()
    };
    let key = dir.path().join("dave.key");
    let pub_file = dir.path().join("dave.key.pub");
    // A passphrase file other users can read is pointed out.
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = keygen("dave", &key, &pass);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key_text = std::fs::read(&key).unwrap();
    let pub_text = std::fs::read(&pub_file).unwrap();

    // The key file itself: refused, both halves unchanged.
    let out = keygen("dave", &key, &pass);
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    assert_eq!(std::fs::read(&key).unwrap(), key_text);
    assert_eq!(std::fs::read(&pub_file).unwrap(), pub_text);

    // The key file moved offline, its registered public half left here:
    // a new key would silently replace it.
    let offline = dir.path().join("offline.key");
    std::fs::rename(&key, &offline).unwrap();
    let out = keygen("dave2", &key, &pass);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("dave.key.pub exists already"), "{stderr}");
    assert_eq!(std::fs::read(&pub_file).unwrap(), pub_text);
    assert!(!key.exists(), "no half-made key is left behind");

    // A passphrase file whose first line is empty says what it expects.
    let blank = dir.path().join("blank.pass");
    std::fs::write(&blank, "\nsecond-line-passphrase\n").unwrap();
    let out = keygen("erin", &dir.path().join("erin.key"), &blank);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the passphrase is its first line"),
        "{stderr}"
    );
    assert!(!dir.path().join("erin.key").exists());
}

#[test]
fn castellanctl_generates_the_key_locally_and_sends_only_a_csr() {
    let s = Server::start(
        Some(Role::Operator),
        |_| {},
        Fake {
            answer: Some(Box::new(|_| {
                serde_json::to_value(castellan::api::IssuedView {
                    serial: "0a1b".into(),
                    issuer: "issuing".into(),
                    certificate_pem:
                        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
                    chain_pem: String::new(),
                    not_after: "2026-01-01T00:00:00Z".into(),
                })
                .unwrap()
            })),
            ..Fake::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("web.key");
    let cert = dir.path().join("web.pem");
    let out = ctl(
        &s.sock,
        &[
            "issue",
            "--generate-key",
            "--subject",
            "CN=web.example.internal,O=Example",
            "--san",
            "DNS:web.example.internal",
            "--san",
            "IP:10.0.0.7",
            "--profile",
            "server",
            "--key-out",
            key.to_str().unwrap(),
            "--out",
            cert.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert!(key_text.contains("PRIVATE KEY"));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    let calls = s.fake.calls.lock().unwrap();
    let Call::Issue(req) = &calls[0].1 else {
        panic!("{calls:?}");
    };
    assert!(!req.csr_pem.contains("PRIVATE KEY"));
    assert_eq!(req.profile, "server");
    let csr = castellan::csr::parse(req.csr_pem.as_bytes()).unwrap();
    assert_eq!(
        csr.sans,
        vec![
            castellan_proto::SubjectAltName::Dns("web.example.internal".into()),
            castellan_proto::SubjectAltName::Ip(vec![10, 0, 0, 7]),
        ]
    );
}

// ---------------------------------------------------------------------------
// The mTLS listener.

struct Pki {
    dir: tempfile::TempDir,
    client_pem: String,
}

/// A CA, a server certificate for localhost and a client certificate
/// (serial 0a1b, clientAuth), all made here with rcgen.
fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SerialNumber,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "test admin CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let mut client = CertificateParams::default();
    client
        .distinguished_name
        .push(DnType::CommonName, "deploy-bot");
    client.serial_number = Some(SerialNumber::from(vec![0x0a, 0x1b]));
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    let w = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    w("ca.pem", ca_cert.pem());
    w("server.pem", server_cert.pem());
    w("server.key", server_key.serialize_pem());
    w("client.pem", client_cert.pem());
    w("client.key", client_key.serialize_pem());
    Pki {
        dir,
        client_pem: client_cert.pem(),
    }
}

fn cert_view(pem: &str, state: &str) -> Value {
    serde_json::to_value(castellan::api::CertView {
        serial: "0a1b".into(),
        issuer: "admin-ca".into(),
        profile: "admin-client".into(),
        identity: "deploy-bot".into(),
        subject: "CN=deploy-bot".into(),
        sans: vec![],
        not_before: String::new(),
        not_after: String::new(),
        state: state.into(),
        revocation: None,
        certificate_pem: Some(pem.into()),
        ocsp: None,
        crl: None,
    })
    .unwrap()
}

/// Serves mTLS in front of a fake whose record of serial 0a1b is in `state`;
/// returns (port, calls seen, stopper).
fn start_tls(
    pki: &Pki,
    state: &'static str,
) -> (
    u16,
    Arc<Fake>,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    use castellan::admin::tls::{TlsSettings, serve_tls_listener, server_config};
    let p = |n: &str| pki.dir.path().join(n);
    let config = server_config(&p("server.pem"), &p("server.key"), &p("ca.pem")).unwrap();
    let client_pem = pki.client_pem.clone();
    let fake = Arc::new(Fake {
        answer: Some(Box::new(move |call| match call {
            Call::Certificate { serial } if serial == "0a1b" => cert_view(&client_pem, state),
            _ => json!({"done": true}),
        })),
        ..Fake::default()
    });
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let backend = fake.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            let tls = TlsSettings {
                listen: listener.local_addr().unwrap(),
                server_config: config,
                profile_roles: HashMap::from([("admin-client".to_string(), Role::Operator)]),
                max_connection_age: Duration::from_secs(60),
            };
            serve_tls_listener(
                backend,
                Arc::new(AdminSettings::default()),
                Arc::new(tls),
                listener,
                stop_rx,
            )
            .await;
        })
    });
    let port = port_rx.recv().unwrap();
    (port, fake, stop_tx, thread)
}

fn curl_tls(pki: &Pki, port: u16, path: &str, with_cert: bool, extra: &[&str]) -> (i32, String) {
    let p = |n: &str| pki.dir.path().join(n);
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["20", "curl", "-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(p("ca.pem"))
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"));
    if with_cert {
        cmd.arg("--cert").arg(p("client.pem"));
        cmd.arg("--key").arg(p("client.key"));
    }
    let out = cmd
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn mtls_clients_get_the_role_of_their_certificates_profile() {
    let pki = pki();
    let (port, fake, stop, thread) = start_tls(&pki, "issued");
    // The profile maps to operator: a checkpoint yes, opening a ceremony no.
    let post = ["-X", "POST", "-d", "{}"];
    let (code, out) = curl_tls(&pki, port, "/v1/audit/checkpoint", true, &post);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("200"), "{out}");
    let (_, out) = curl_tls(&pki, port, "/v1/ceremonies", true, &post);
    assert!(out.ends_with("403"), "{out}");
    let (code, out) = curl_tls(&pki, port, "/v1/status", true, &[]);
    assert_eq!(code, 0);
    assert!(out.ends_with("200"), "{out}");
    {
        let calls = fake.calls.lock().unwrap();
        assert_eq!(calls.last().unwrap(), &(Role::Operator, Call::Status));
    }
    // Without a client certificate there is no connection at all.
    let (code, _) = curl_tls(&pki, port, "/healthz", false, &[]);
    assert_ne!(code, 0);
    let _ = stop.send(());
    thread.join().unwrap();
}

#[test]
fn a_revoked_mtls_client_certificate_carries_no_role() {
    let pki = pki();
    let (port, fake, stop, thread) = start_tls(&pki, "revoked");
    let (code, out) = curl_tls(&pki, port, "/v1/status", true, &[]);
    assert_eq!(code, 0);
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "403", "{out}");
    let e = error_of(&serde_json::from_str(body).unwrap());
    assert!(e.message.contains("revoked"), "{}", e.message);
    assert!(
        !fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|(_, c)| *c == Call::Status)
    );
    let (_, out) = curl_tls(&pki, port, "/healthz", true, &[]);
    assert!(out.ends_with("200"), "{out}");
    let _ = stop.send(());
    thread.join().unwrap();
}

#[test]
fn list_cursors_are_passed_on_and_a_malformed_one_is_refused() {
    let s = Server::start(Some(Role::Auditor), |_| {}, Fake::default());
    let (status, _) = s.request("GET", "/v1/audit/log?from_seq=1000&limit=10", None);
    assert_eq!(status, 200);
    assert_eq!(
        s.fake.calls.lock().unwrap().last().unwrap().1,
        Call::AuditLog(LogQuery {
            limit: Some(10),
            from_seq: Some(1000),
            ..LogQuery::default()
        })
    );
    let (status, _) = s.request("GET", "/v1/certificates?after=0102", None);
    assert_eq!(status, 200);
    assert_eq!(
        s.fake.calls.lock().unwrap().last().unwrap().1,
        Call::Certificates(CertQuery {
            after: Some("0102".into()),
            ..CertQuery::default()
        })
    );
    let (status, v) = s.request("GET", "/v1/audit/log?from_seq=next", None);
    assert_eq!(status, 400);
    assert!(error_of(&v).message.contains("from_seq"), "{v}");
}

#[test]
fn an_operation_waits_while_a_reload_holds_the_gate() {
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let s = Arc::new(Server::start(
        Some(Role::Auditor),
        |_| {},
        Fake {
            gate: Some(gate.clone()),
            ..Fake::default()
        },
    ));
    let reload = gate.blocking_write();
    let client = {
        let s = s.clone();
        std::thread::spawn(move || s.request("GET", "/v1/status", None))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.fake.calls.lock().unwrap().is_empty(),
        "the operation ran while the reload held the gate"
    );
    drop(reload);
    let (status, _) = client.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(s.fake.calls.lock().unwrap().len(), 1);
}

#[test]
fn a_client_that_never_reads_its_answers_is_cut_off_while_another_is_served() {
    let s = Server::start(
        Some(Role::Auditor),
        |st| {
            st.max_connections = 1;
            st.header_timeout = Duration::from_millis(300);
            st.request_timeout = Duration::from_secs(1);
        },
        Fake {
            answer: Some(Box::new(|_| json!({"padding": "x".repeat(256 * 1024)}))),
            ..Fake::default()
        },
    );
    // A few pipelined requests whose answers fill the socket's buffers;
    // the client never reads one.
    // It holds the only slot once answered (retrying while the start-up
    // probe's connection still holds it).
    let t0 = Instant::now();
    let stalled = loop {
        let mut c = UnixStream::connect(&s.sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n");
        let mut buf = [0u8; 512];
        if let Ok(n) = c.read(&mut buf)
            && buf[..n].starts_with(b"HTTP/1.1 200")
        {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never served");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut writer = stalled.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let pump = std::thread::spawn(move || {
        let one = b"GET /v1/status HTTP/1.1\r\nHost: c\r\n\r\n";
        for _ in 0..8 {
            if writer.write_all(one).is_err() {
                break;
            }
        }
    });
    // Once castellan gives up on the stalled connection, the only slot
    // serves another client.
    let t0 = Instant::now();
    loop {
        match s.client().request("GET", "/healthz", None) {
            Ok(r) if r.status == 200 => break,
            _ => {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "a client that does not read its answers holds its connection"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(stalled);
    pump.join().unwrap();
}
