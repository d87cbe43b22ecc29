//! The public OCSP listener under abuse, with the real binaries
//! (`castellan-signer`, `castellan` with a public listener on a free port,
//! `castellanctl`), checked with the real `openssl ocsp` and `curl`.
//!
//! Acceptance point: 200 idle connections plus garbage senders do not stop a
//! good client from getting answers. (`openssl ocsp`'s own responder serves
//! one connection at a time and hangs for as long as one client stays idle.)
//!
//! While these are open, all at once:
//! - 200 TCP connections that send nothing;
//! - connections that send half a request head and stall;
//! - slowloris connections that send one header byte per second;
//! - POSTs announcing a 1 GB body that send a little of it and stall;
//! - threads sending, over and over on new connections: random bytes,
//!   oversized and too many headers, POSTs with a huge Content-Length,
//!   garbage OCSP bodies, invalid base64 GETs and broken HTTP;
//!
//! `openssl ocsp` (POST, with a nonce) and `curl` (GET and POST) must get
//! verified `good` answers for a certificate castellan issued. Every garbage
//! sender must get a well-formed answer: an unsigned OCSP `malformedRequest`
//! (`application/ocsp-response`) where the HTTP is sound but the OCSP is not,
//! a 4xx or a closed connection where the HTTP itself is broken. Afterwards
//! castellan must close the connections that never complete a request head
//! (bounded wait: a hang is a failure, nothing is timed) and still run.
//!
//! Build every binary first: `cargo build --workspace --bins`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use castellan::public_http::MAX_BODY;
use common::{Appliance, Out, Settings, WAIT, run};

/// Connections that send nothing at all.
const IDLE: usize = 200;
/// Connections that send half a request head, then nothing.
const HALF_HEAD: usize = 10;
/// Connections that send one header byte per second, never ending the head.
const SLOWLORIS: usize = 10;
/// POSTs that announce a 1 GB body, send 100 octets of it and stall.
const STALLED_BODY: usize = 5;
/// Rounds of the good client (openssl POST, curl GET, curl POST each).
const GOOD_ROUNDS: usize = 3;

/// The unsigned OCSPResponse `{ responseStatus malformedRequest }`.
const MALFORMED: [u8; 5] = [0x30, 0x03, 0x0a, 0x01, 0x01];

// ---------------------------------------------------------------------------
// The appliance and the good client

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a free port")
        .local_addr()
        .expect("a local address")
        .port()
}

/// An appliance whose public listener is on a free port, with root and
/// `issuing` CAs, chain.pem (root + issuing) and one certificate, leaf.pem.
fn appliance() -> (Appliance, SocketAddr) {
    let mut a = Appliance::prepare(Settings::default());
    let port = free_port();
    let text = a.config_text(None).replace(
        "[http]\nenabled = false\n",
        &format!("[http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    std::fs::write(&a.config, text).expect("writing castellan.toml");
    a.start_signer();
    a.start_daemon();
    a.make_cas();
    let mut chain = std::fs::read(a.path("root.pem")).expect("root.pem");
    chain.extend(std::fs::read(a.path("issuing.pem")).expect("issuing.pem"));
    std::fs::write(a.path("chain.pem"), chain).expect("writing chain.pem");
    a.issue_generated("leaf", "leaf.example").ok();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "castellan does not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (a, addr)
}

/// A bounded command in `dir`; stdout and stderr joined (`openssl ocsp`
/// says "Response verify OK" on stderr).
fn tool(program: &str, args: &[&str], dir: &Path) -> Result<String, String> {
    let out: Out = run(
        Command::new("timeout")
            .arg("60")
            .arg(program)
            .args(args)
            .current_dir(dir),
        WAIT,
    );
    if out.code != Some(0) {
        return Err(out.to_string());
    }
    Ok(format!("{}\n{}", out.stdout, out.stderr))
}

/// `openssl ocsp` output for leaf.pem must say good and verified.
fn check_good(text: &str, what: &str) -> Result<(), String> {
    if text.contains("leaf.pem: good") && text.contains("Response verify OK") {
        Ok(())
    } else {
        Err(format!("{what}: not a verified `good` answer:\n{text}"))
    }
}

/// One round of the good client; `tag` keeps the files of rounds apart.
fn good_round(dir: &Path, url: &str, get_url: &str, tag: &str) -> Result<(), String> {
    // openssl ocsp: POST, with a nonce.
    let t = tool(
        "openssl",
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-url",
            url,
            "-CAfile",
            "chain.pem",
        ],
        dir,
    )?;
    check_good(&t, "openssl ocsp (POST)")?;
    if t.contains("WARNING: no nonce") || t.contains("Nonce Verify error") {
        return Err(format!("openssl ocsp (POST): nonce not echoed:\n{t}"));
    }
    // curl GET and curl POST, each answer checked by openssl.
    for (method, extra) in [
        ("GET", vec![get_url.to_string()]),
        (
            "POST",
            vec![
                "-H".to_string(),
                "Content-Type: application/ocsp-request".to_string(),
                "--data-binary".to_string(),
                "@req.der".to_string(),
                url.to_string(),
            ],
        ),
    ] {
        let resp = format!("resp-{tag}-{method}.der");
        let headers = format!("headers-{tag}-{method}.txt");
        let mut args = vec![
            "-sS",
            "--max-time",
            "60",
            "-o",
            &resp,
            "-D",
            &headers,
            "-w",
            "%{http_code}",
        ];
        args.extend(extra.iter().map(String::as_str));
        let code = tool("curl", &args, dir)?;
        if code.trim() != "200" {
            return Err(format!("curl {method}: HTTP {}", code.trim()));
        }
        let h = std::fs::read_to_string(dir.join(&headers))
            .map_err(|e| format!("{headers}: {e}"))?
            .to_ascii_lowercase();
        if !h.contains("content-type: application/ocsp-response") {
            return Err(format!("curl {method}: content type: {h}"));
        }
        let t = tool(
            "openssl",
            &[
                "ocsp",
                "-respin",
                &resp,
                "-issuer",
                "issuing.pem",
                "-cert",
                "leaf.pem",
                "-CAfile",
                "chain.pem",
            ],
            dir,
        )?;
        check_good(&t, &format!("curl {method}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Connections that stall

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stall {
    Idle,
    HalfHead,
    Slowloris,
    StalledBody,
}

impl Stall {
    fn count(self) -> usize {
        match self {
            Stall::Idle => IDLE,
            Stall::HalfHead => HALF_HEAD,
            Stall::Slowloris => SLOWLORIS,
            Stall::StalledBody => STALLED_BODY,
        }
    }

    /// What is sent right after connecting.
    fn opening(self) -> Vec<u8> {
        match self {
            Stall::Idle | Stall::Slowloris => Vec::new(),
            Stall::HalfHead => {
                b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applica".to_vec()
            }
            Stall::StalledBody => {
                let mut v = b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                    Content-Type: application/ocsp-request\r\n\
                    Content-Length: 1000000000\r\n\r\n"
                    .to_vec();
                v.extend_from_slice(&[0x30; 100]);
                v
            }
        }
    }

    /// Whether castellan must close it by itself (the request head never
    /// completes). A stalled body is the request timeout's business.
    fn must_be_closed(self) -> bool {
        self != Stall::StalledBody
    }
}

/// The slowloris drip: a request head that never ends.
fn slowloris_byte(i: usize) -> u8 {
    const HEAD: &[u8] =
        b"GET /ocsp/MEIwQDA-MDwwOjAJBgUrDgMCGgUA HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ";
    HEAD.get(i).copied().unwrap_or(b'a')
}

struct Held {
    stream: TcpStream,
    sent: usize,
    open: bool,
}

#[derive(Debug, Default)]
struct HolderReport {
    opened: u64,
    /// Closed by castellan while the holder kept the set full.
    closed_while_held: u64,
    connect_errors: Vec<String>,
    /// First line of anything castellan said on such a connection.
    said: Vec<String>,
    /// Still open when the final bounded wait ended.
    still_open: usize,
}

/// Peeks without blocking: true if castellan closed the connection (what it
/// said before closing, if anything, goes to `said`).
fn closed_by_peer(s: &mut TcpStream, said: &mut Vec<String>) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break true,
        }
    };
    let _ = s.set_nonblocking(false);
    if !got.is_empty() {
        let text = String::from_utf8_lossy(&got);
        said.push(text.lines().next().unwrap_or("").to_string());
    }
    closed
}

/// Keeps `kind.count()` connections of `kind` open (reopening those
/// castellan closes) until `stop`; then, without reopening, waits (bounded
/// by [`WAIT`]) for castellan to close them all, still dripping slowloris
/// bytes. `ready` is raised once the first full set is open.
fn holder(
    addr: SocketAddr,
    kind: Stall,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> HolderReport {
    let mut r = HolderReport::default();
    let connect = |r: &mut HolderReport| -> Option<Held> {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(30)) {
            Ok(mut s) => {
                r.opened += 1;
                let opening = kind.opening();
                if !opening.is_empty() {
                    let _ = s.write_all(&opening);
                }
                Some(Held {
                    stream: s,
                    sent: 0,
                    open: true,
                })
            }
            Err(e) => {
                r.connect_errors.push(e.to_string());
                None
            }
        }
    };
    let mut held: Vec<Held> = (0..kind.count()).filter_map(|_| connect(&mut r)).collect();
    ready.store(true, Ordering::SeqCst);
    let mut last_drip = Instant::now();
    let mut final_wait: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && final_wait.is_none() {
            if !kind.must_be_closed() {
                break;
            }
            final_wait = Some(Instant::now());
        }
        let drip = kind == Stall::Slowloris && last_drip.elapsed() >= Duration::from_secs(1);
        if drip {
            last_drip = Instant::now();
        }
        for h in held.iter_mut().filter(|h| h.open) {
            if closed_by_peer(&mut h.stream, &mut r.said) {
                h.open = false;
                if final_wait.is_none() {
                    r.closed_while_held += 1;
                }
                continue;
            }
            if drip {
                let _ = h.stream.write_all(&[slowloris_byte(h.sent)]);
                h.sent += 1;
            }
        }
        if final_wait.is_none() {
            // Keep the set full.
            let missing = held.iter().filter(|h| !h.open).count();
            held.retain(|h| h.open);
            if r.connect_errors.len() < 1000 {
                held.extend((0..missing).filter_map(|_| connect(&mut r)));
            }
        }
        let open = held.iter().filter(|h| h.open).count();
        if let Some(since) = final_wait
            && (open == 0 || since.elapsed() > WAIT)
        {
            r.still_open = open;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    r
}

// ---------------------------------------------------------------------------
// Garbage senders

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Garbage {
    RandomBytes,
    OversizedHeader,
    TooManyHeaders,
    HugeContentLength,
    JunkOcspBody,
    InvalidBase64Get,
    BrokenHttp,
}

const GARBAGE: [Garbage; 7] = [
    Garbage::RandomBytes,
    Garbage::OversizedHeader,
    Garbage::TooManyHeaders,
    Garbage::HugeContentLength,
    Garbage::JunkOcspBody,
    Garbage::InvalidBase64Get,
    Garbage::BrokenHttp,
];

/// What castellan must answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// HTTP 200, `application/ocsp-response`, body = [`MALFORMED`].
    Malformed,
    /// A 4xx, or the connection closed (or reset) with nothing said.
    ClientErrorOrClosed,
}

/// A tiny xorshift generator: garbage needs no quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The bytes of one garbage request (new each time) and the answer it calls for.
fn garbage_request(kind: Garbage, rng: &mut Rng, n: u64) -> (Vec<u8>, Expect) {
    match kind {
        Garbage::RandomBytes => {
            // A NUL first: never the start of a method token.
            let mut v = vec![0u8];
            let n = 1 + rng.below(4096) as usize;
            v.extend(rng.bytes(n));
            (v, Expect::ClientErrorOrClosed)
        }
        Garbage::OversizedHeader => {
            let mut v = b"GET /ocsp/MEIwQDA HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".to_vec();
            v.extend(std::iter::repeat_n(b'a', 256 * 1024));
            v.extend_from_slice(b"\r\n\r\n");
            (v, Expect::ClientErrorOrClosed)
        }
        Garbage::TooManyHeaders => {
            let mut v = b"GET /ocsp/MEIwQDA HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
            for i in 0..500 {
                v.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
            }
            v.extend_from_slice(b"Connection: close\r\n\r\n");
            (v, Expect::ClientErrorOrClosed)
        }
        Garbage::HugeContentLength => {
            // Announces 1 TB, sends one octet more than castellan takes.
            let mut v = b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                Content-Type: application/ocsp-request\r\n\
                Content-Length: 1000000000000\r\nConnection: close\r\n\r\n"
                .to_vec();
            v.extend(rng.bytes(MAX_BODY + 1));
            (v, Expect::Malformed)
        }
        Garbage::JunkOcspBody => {
            // 0x04 first: an OCTET STRING, never the SEQUENCE of a request.
            let mut body = vec![0x04u8];
            let n = rng.below(2000) as usize;
            body.extend(rng.bytes(n));
            let mut v = format!(
                "POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Content-Type: application/ocsp-request\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            v.extend(body);
            (v, Expect::Malformed)
        }
        Garbage::InvalidBase64Get => {
            const PATHS: [&str; 6] = [
                "/ocsp/!!!not*base64!!!",
                "/ocsp/%zz%zz",
                "/ocsp/%00%01%02",
                "/ocsp/aGVsbG8gd29ybGQ=",
                "/ocsp/issuing/AAAAAAAAAAAAAAAA",
                "/ocsp/====",
            ];
            let path = PATHS[(n % PATHS.len() as u64) as usize];
            (
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .into_bytes(),
                Expect::Malformed,
            )
        }
        Garbage::BrokenHttp => {
            const HEADS: [&str; 6] = [
                "POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
                "POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
                "GET /ocsp HTTP/7.3\r\nHost: 127.0.0.1\r\n\r\n",
                "GET\r\n\r\n",
                "GET /ocsp HTTP/1.1\r\nHost 127.0.0.1\r\nBroken\r\n\r\n",
                "G\x01T /ocsp HTTP/1.1\r\n\r\n",
            ];
            let head = HEADS[(n % HEADS.len() as u64) as usize];
            (head.as_bytes().to_vec(), Expect::ClientErrorOrClosed)
        }
    }
}

/// Sends `bytes` on a new connection and reads until castellan closes it
/// (bounded by [`WAIT`]). `Ok((bytes received, reset))`.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(WAIT))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    // castellan may answer and close before everything is sent.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((out, false)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok((out, true)),
            Err(e) => {
                return Err(format!(
                    "the connection was not closed within {} s ({e}); received: {:?}",
                    WAIT.as_secs(),
                    String::from_utf8_lossy(&out)
                ));
            }
        }
    }
}

/// One HTTP/1.1 response; header names and values lower-cased.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn parse_response(bytes: &[u8]) -> Result<HttpResponse, String> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the response head")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "a response head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| format!("bad header {l:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()));
    }
    let body = bytes[end + 4..].to_vec();
    if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if len != body.len() {
            return Err(format!(
                "Content-Length {len} but {} octets of body",
                body.len()
            ));
        }
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn check_answer(expect: Expect, got: &[u8], reset: bool) -> Result<(), String> {
    match expect {
        Expect::Malformed => {
            if reset {
                return Err("the connection was reset".into());
            }
            let HttpResponse {
                status,
                headers,
                body,
            } = parse_response(got)?;
            let ct = headers
                .iter()
                .find(|(k, _)| k == "content-type")
                .map(|(_, v)| v.as_str());
            if status != 200 || ct != Some("application/ocsp-response") || body != MALFORMED {
                return Err(format!(
                    "not an OCSP malformedRequest: HTTP {status}, content-type {ct:?}, body {}",
                    hex::encode(&body)
                ));
            }
            Ok(())
        }
        Expect::ClientErrorOrClosed => {
            if got.is_empty() {
                return Ok(());
            }
            let status = parse_response(got)?.status;
            if (400..500).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP {status}, not a 4xx"))
            }
        }
    }
}

#[derive(Default)]
struct GarbageReport {
    exchanges: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// What castellan answered (status or "closed"/"reset"), by kind.
    seen: Mutex<Vec<String>>,
}

/// Sends garbage of `kind` on new connections until `stop`.
fn garbage_sender(
    addr: SocketAddr,
    kind: Garbage,
    seed: u64,
    report: Arc<GarbageReport>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(seed | 1);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let (bytes, expect) = garbage_request(kind, &mut rng, n);
        n += 1;
        let result = exchange(addr, &bytes).and_then(|(got, reset)| {
            let seen = if reset {
                "reset".to_string()
            } else if got.is_empty() {
                "closed".to_string()
            } else {
                String::from_utf8_lossy(&got[..got.len().min(12)]).into_owned()
            };
            if let Ok(mut s) = report.seen.lock()
                && !s.contains(&seen)
            {
                s.push(seen);
            }
            check_answer(expect, &got, reset)
        });
        if let Err(e) = result {
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
            if let Ok(mut f) = report.failures.lock()
                && f.len() < 20
            {
                f.push(format!("{kind:?} (request starting {shown:?}): {e}"));
            }
        }
        report.exchanges.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises `stop` when dropped, so no helper thread outlives a failing test.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {} s",
            WAIT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_connections_slowloris_and_garbage_do_not_stop_a_good_client() {
    let (mut a, addr) = appliance();
    let dir = a.dir.path().to_path_buf();
    let url = format!("http://{addr}/ocsp");

    // The request of the GET and curl POST rounds (no nonce: RFC 5019).
    tool(
        "openssl",
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
        &dir,
    )
    .expect("openssl ocsp -reqout");
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join("req.der")).expect("req.der"));
    let get_url = format!(
        "{url}/{}",
        b64.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );

    // Answers before the abuse.
    good_round(&dir, &url, &get_url, "before").expect("the good client before the abuse");

    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());

    // The stalled connections first, each set fully open before the next.
    let mut holders: Vec<(Stall, JoinHandle<HolderReport>)> = Vec::new();
    for kind in [
        Stall::Idle,
        Stall::HalfHead,
        Stall::Slowloris,
        Stall::StalledBody,
    ] {
        let ready = Arc::new(AtomicBool::new(false));
        let (r, s) = (ready.clone(), stop.clone());
        holders.push((kind, std::thread::spawn(move || holder(addr, kind, r, s))));
        wait_until(&format!("{kind:?} connections open"), || {
            ready.load(Ordering::SeqCst)
        });
    }

    // Then the garbage senders.
    let reports: Vec<(Garbage, Arc<GarbageReport>)> = GARBAGE
        .iter()
        .map(|&k| (k, Arc::new(GarbageReport::default())))
        .collect();
    let senders: Vec<JoinHandle<()>> = reports
        .iter()
        .enumerate()
        .map(|(i, (kind, report))| {
            let (kind, report, stop) = (*kind, report.clone(), stop.clone());
            let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1);
            std::thread::spawn(move || garbage_sender(addr, kind, seed, report, stop))
        })
        .collect();
    // Every sender has been answered once: castellan accepts in order, so
    // every stalled connection opened before has been accepted too.
    for (kind, report) in &reports {
        wait_until(&format!("a first answer to {kind:?}"), || {
            report.exchanges.load(Ordering::SeqCst) > 0
        });
    }

    // The good client, while all of that is going on; between rounds every
    // garbage sender is answered again, so the rounds interleave with it.
    let mut good: Vec<Result<(), String>> = Vec::new();
    for i in 0..GOOD_ROUNDS {
        good.push(good_round(&dir, &url, &get_url, &format!("abuse{i}")));
        let now: Vec<u64> = reports
            .iter()
            .map(|(_, r)| r.exchanges.load(Ordering::SeqCst))
            .collect();
        for ((kind, report), before) in reports.iter().zip(&now) {
            wait_until(&format!("{kind:?} answered after good round {i}"), || {
                report.exchanges.load(Ordering::SeqCst) > *before
            });
        }
    }

    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().expect("a garbage sender panicked");
    }
    let held: Vec<(Stall, HolderReport)> = holders
        .into_iter()
        .map(|(k, h)| (k, h.join().expect("a holder panicked")))
        .collect();

    // What happened, for the log.
    for (kind, r) in &held {
        eprintln!(
            "{kind:?}: {} opened, {} closed by castellan while held, connect errors {:?}, \
             said {:?}, still open at the end {}",
            r.opened,
            r.closed_while_held,
            r.connect_errors.iter().take(3).collect::<Vec<_>>(),
            r.said.iter().take(3).collect::<Vec<_>>(),
            r.still_open
        );
    }
    for (kind, r) in &reports {
        eprintln!(
            "{kind:?}: {} exchanges, answers seen {:?}",
            r.exchanges.load(Ordering::SeqCst),
            r.seen.lock().map(|s| s.clone()).unwrap_or_default()
        );
    }

    // 1. The acceptance point: the good client got verified answers.
    for (i, g) in good.iter().enumerate() {
        if let Err(e) = g {
            panic!("ACCEPTANCE FAILED: good client round {i} during the abuse: {e}");
        }
    }
    // 2. Every garbage sender got a well-formed answer.
    for (kind, r) in &reports {
        let f = r.failures.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(f.is_empty(), "{kind:?}: badly answered:\n{}", f.join("\n"));
    }
    // 3. Every stalled connection was accepted, and castellan closed those
    //    that never complete a request head by itself.
    for (kind, r) in &held {
        assert!(
            r.connect_errors.is_empty(),
            "{kind:?}: connections refused: {:?}",
            r.connect_errors.iter().take(5).collect::<Vec<_>>()
        );
        if kind.must_be_closed() {
            assert_eq!(
                r.still_open,
                0,
                "{kind:?}: castellan kept {} connections open for {} s",
                r.still_open,
                WAIT.as_secs()
            );
        }
        for said in &r.said {
            assert!(
                said.starts_with("HTTP/1.1 "),
                "{kind:?}: castellan said {said:?}"
            );
        }
    }
    // 4. Still running, still answering.
    assert!(a.daemon_running(), "castellan exited under the abuse");
    good_round(&dir, &url, &get_url, "after").expect("the good client after the abuse");
}

/// A client that pipelines requests and never reads the answers: castellan
/// stops writing to it when its writes make no progress and closes the
/// connection, while a good client is served meanwhile.
#[test]
fn a_pipelining_client_that_never_reads_is_disconnected_while_good_clients_are_served() {
    let (a, addr) = appliance();
    let dir = a.dir.path().to_path_buf();
    let url = format!("http://{addr}/ocsp");
    tool(
        "openssl",
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
        &dir,
    )
    .expect("openssl ocsp -reqout");
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join("req.der")).expect("req.der"));
    let get_url = format!(
        "{url}/{}",
        b64.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );

    // How long one answer is.
    let one = b"GET /ca/issuing.crt HTTP/1.1\r\nHost: x\r\n\r\n";
    let (answer, _) = exchange(
        addr,
        b"GET /ca/issuing.crt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("one answer");
    let answer_len = answer.len() as u64;

    // Pipeline until the socket blocks: castellan's answers fill every
    // buffer between it and this client.
    let mut stuck = TcpStream::connect(addr).expect("connecting");
    stuck
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    let mut sent = 0u64;
    for _ in 0..200_000 {
        match stuck.write_all(one) {
            Ok(()) => sent += 1,
            Err(_) => break,
        }
    }
    println!("{sent} requests pipelined before the socket blocked");

    // Good clients are served meanwhile, past castellan's write timeout.
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < castellan::public_http::WRITE_TIMEOUT + Duration::from_secs(5) {
        good_round(&dir, &url, &get_url, &format!("stall{round}"))
            .expect("the good client while a connection stalls");
        round += 1;
    }

    // Reading now: what was in the buffers, then the end of the
    // connection — not the answers to every request pipelined.
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ended = loop {
        if Instant::now() > deadline {
            break false;
        }
        match stuck.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true,
        }
    };
    assert!(
        ended,
        "the connection that never read is still open ({got} octets read)"
    );
    assert!(
        got < sent * answer_len / 2,
        "castellan answered every pipelined request ({got} octets for {sent} requests): the stalled connection was kept"
    );
    drop(a);
}

/// Every connection slot taken by connections that send nothing: a new
/// client is still served (the idle connections are closed to make room),
/// well before the header timeout would have closed them.
#[test]
fn when_every_slot_is_taken_idle_connections_make_room_for_a_new_client() {
    let (a, addr) = appliance();
    let dir = a.dir.path().to_path_buf();
    let max = castellan::public_http::MAX_CONNECTIONS;
    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..max)
        .map(|i| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    // Every one accepted (castellan accepts in order; this one waits in
    // the queue behind them).
    std::thread::sleep(Duration::from_millis(500));
    let code = tool(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{addr}/ca/issuing.crt"),
        ],
        &dir,
    );
    let waited = opened.elapsed();
    assert!(
        waited < castellan::public_http::HEADER_TIMEOUT,
        "took {waited:?}: the header timeout may have freed the slots instead"
    );
    match code {
        Ok(c) => assert_eq!(c.trim(), "200", "the new client: HTTP {c}"),
        Err(e) => panic!("the new client was not served with every slot taken: {e}"),
    }
    drop(idle);
}
