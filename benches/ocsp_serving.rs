//! OCSP serving: requests per second and latency (p50, p99) of castellan's
//! public listener against nginx serving the same response bytes from
//! files and against `openssl ocsp`'s own responder, side by side in one
//! run, at 32 and 64 connections, POST and GET. Prints a table and the goal
//! lines; asserts nothing about the figures.
//!
//!     cargo build --release --workspace --bins
//!     cargo bench -p castellan --bench ocsp_serving
//!
//! Targets, all on 127.0.0.1 (the load never leaves the machine):
//! - castellan: a real `castellan-signer` (soft backend) and a real
//!   `castellan` daemon with its public listener, a root and an issuing CA
//!   made by 2-of-3 custodian ceremonies with `castellanctl`, then
//!   `BENCH_CERTS` certificates (default 1,000) issued from `issuing`
//!   through the admin socket by concurrent clients, every tenth revoked.
//!   One GET and one POST per certificate warm it before the load.
//! - nginx: castellan's GET answer of every certificate as a static file
//!   (`/ocsp/<base64url>`); POST is served the answer of the first
//!   certificate whatever the body (nginx cannot choose by body), through
//!   `return 405` + `error_page 405 =200 /post.der`.
//! - `openssl ocsp -index index.txt -port P -rsigner … -rkey … -CA
//!   issuing.pem`: the same certificates (an index.txt written from them,
//!   revocations included), signing with a P-256 key and a self-signed
//!   responder certificate made with `openssl req`. Its `-port` listens on
//!   every interface (it takes no bind address); only this program talks to
//!   it, and a fresh responder serves each run.
//!
//! Load: castellan and nginx with `wrk` (HTTP/1.1 keep-alive, `--timeout
//! 2s`, a Lua script cycling each connection through every certificate's
//! request). wrk cannot load `openssl ocsp`: it opens and closes a probe
//! connection before the load, and OpenSSL 3.0's responder then loops on
//! that closed connection for ever, serving no one. So openssl and, for a
//! like-for-like ratio, castellan are also loaded by this program's own
//! closed-loop clients, one thread per connection and a new connection per
//! request (openssl answers HTTP/1.0 and closes after every answer anyway).
//! The GET path is the base64url DER request for castellan and nginx, the
//! percent-encoded standard base64 for openssl (the only form it decodes).
//! Before the load every target's answers for a good and a revoked
//! certificate, GET and POST, are checked with `openssl ocsp -respin`.
//!
//! Environment: `BENCH_SECONDS` (default 10) per run; `BENCH_CERTS` (default
//! 1000); `BENCH_WRK_THREADS` (default 2); `BENCH_HOLD` (default 0): before
//! the load, keep castellan and nginx warmed and idle for that many seconds
//! and print their wrk scripts, for loading and profiling them by hand.

mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    Bins, ISSUING_CA, Proc, ROOT_CA, binaries, ceremony, env_num, loadavg, run_limited as run,
    start_signer,
};

use base64::Engine;
use castellan::admin_client::{AdminClient, encode_component};
use castellan::api::{IssueRequest, IssuedView, RevokeRequest, StatusView};
use der::{Decode, Encode};

const CONNECTIONS: [usize; 2] = [32, 64];
const REVOKE_EVERY: usize = 10;
/// Concurrent issuing clients on the admin socket.
const ISSUERS: usize = 16;

/// The goals of the project for cached OCSP serving.
const GOAL_VS_NGINX: f64 = 0.9;
const GOAL_VS_OPENSSL: f64 = 50.0;
const GOAL_P99_MS: f64 = 2.0;

/// `name` on PATH, or in the sbin directories (nginx lives there).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("a free port: {e}"))
}

// ---------------------------------------------------------------------------
// Processes

fn wait_listening(addr: SocketAddr, proc: &mut Proc, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if !proc.running() || Instant::now() > deadline {
            return Err(format!(
                "{} does not listen on {addr}:\n{}",
                proc.name,
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn wait_for_file(path: &Path, proc: &mut Proc, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if !proc.running() || Instant::now() > deadline {
            return Err(format!(
                "{} did not create {}:\n{}",
                proc.name,
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client (one request per connection)

struct Reply {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Result<Reply, String> {
    let what = format!("{method} http://{addr}{path}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("{what}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| format!("{what}: {e}"))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        let _ = write!(
            req,
            "Content-Type: application/ocsp-request\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    s.write_all(&bytes).map_err(|e| format!("{what}: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .map_err(|e| format!("{what}: {e}"))?;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{what}: no complete answer"))?;
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{what}: bad status line in {head:?}"))?;
    let mut content_type = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-type" {
                content_type = v.trim().to_string();
            }
            if k == "transfer-encoding" {
                return Err(format!("{what}: chunked answers are not expected"));
            }
        }
    }
    Ok(Reply {
        status,
        content_type,
        body: got[end + 4..].to_vec(),
    })
}

/// The OCSPResponseStatus of a DER OCSPResponse (0 = successful).
fn ocsp_status(der: &[u8]) -> Option<u8> {
    if der.first() != Some(&0x30) {
        return None;
    }
    let first = *der.get(1)?;
    let at = if first < 0x80 {
        2
    } else {
        2 + usize::from(first & 0x7f)
    };
    match der.get(at..at + 3)? {
        [0x0a, 0x01, v] => Some(*v),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// OCSP requests

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        v.push(0x80 | (len.len() - skip) as u8);
        v.extend_from_slice(&len[skip..]);
    }
    v.extend_from_slice(content);
    v
}

/// A one-CertID OCSPRequest (SHA-1 CertID, no nonce, as RFC 5019 asks).
fn ocsp_request(name_hash: &[u8], key_hash: &[u8], serial: &[u8]) -> Vec<u8> {
    const SHA1: [u8; 5] = [0x2b, 0x0e, 0x03, 0x02, 0x1a];
    let mut alg = tlv(0x06, &SHA1);
    alg.extend_from_slice(&[0x05, 0x00]);
    let mut cert_id = tlv(0x30, &alg);
    cert_id.extend(tlv(0x04, name_hash));
    cert_id.extend(tlv(0x04, key_hash));
    cert_id.extend(tlv(0x02, serial));
    let request = tlv(0x30, &tlv(0x30, &cert_id));
    let tbs = tlv(0x30, &tlv(0x30, &request));
    tlv(0x30, &tbs)
}

fn sha1(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

/// One issued certificate and what the targets are asked about it.
struct Cert {
    serial_api: String,
    /// INTEGER content octets of the serial.
    serial: Vec<u8>,
    subject: String,
    revoked: bool,
    request: Vec<u8>,
}

impl Cert {
    /// The serial as openssl's index.txt writes it (upper-case hex, whole
    /// octets, no sign octet).
    fn serial_index(&self) -> String {
        let s: &[u8] = match self.serial.as_slice() {
            [0, rest @ ..] if !rest.is_empty() => rest,
            s => s,
        };
        hex::encode_upper(s)
    }

    fn get_path_url_safe(&self) -> String {
        format!(
            "/ocsp/{}",
            base64::engine::general_purpose::URL_SAFE.encode(&self.request)
        )
    }

    fn get_path_openssl(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.request);
        format!("/{}", encode_component(&b64))
    }
}

// ---------------------------------------------------------------------------
// castellan

struct Castellan {
    _signer: Proc,
    daemon: Proc,
    addr: SocketAddr,
    admin: AdminClient,
}

fn ctl(bins: &Bins, sock: &Path, args: &[&str]) -> Result<String, String> {
    run(
        Command::new(&bins.ctl)
            .arg("--json")
            .arg("--socket")
            .arg(sock)
            .args(args),
        &format!("castellanctl {}", args.join(" ")),
        Duration::from_secs(120),
    )
}

fn start_castellan(bins: &Bins, dir: &Path) -> Result<Castellan, String> {
    let p = |name: &str| dir.join(name);
    let uid = nix::unistd::getuid().as_raw();
    let io = |e: std::io::Error| e.to_string();
    let signer = start_signer(bins, dir)?;
    let signer_sock = p("signer.sock");

    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let admin_sock = p("admin.sock");
    std::fs::write(
        p("castellan.toml"),
        format!(
            "state_dir = \"{}\"\n[signer]\nsocket = \"{}\"\n[admin]\nsocket = \"{}\"\n\
             [admin.roles]\nadmin = [\"{uid}\"]\n[http]\nenabled = true\nlisten = \"{addr}\"\n",
            p("state").display(),
            signer_sock.display(),
            admin_sock.display()
        ),
    )
    .map_err(io)?;
    let daemon_log = p("castellan.log");
    let mut daemon = Proc::spawn(
        "castellan",
        Command::new(&bins.castellan)
            .arg("--config")
            .arg(p("castellan.toml"))
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET"),
        &daemon_log,
    )?;
    wait_for_file(&admin_sock, &mut daemon, &daemon_log)?;
    wait_listening(addr, &mut daemon, &daemon_log)?;
    let admin = AdminClient::new(&admin_sock).with_timeout(Duration::from_secs(60));
    let status: StatusView = admin
        .get("/v1/status")
        .map_err(|e| format!("GET /v1/status: {e}"))?;
    if !status.signer_reachable {
        return Err("the daemon does not reach the signer".into());
    }
    let ctl_json = |a: &[&str]| ctl(bins, &admin_sock, a);
    ceremony(&ctl_json, dir, ROOT_CA.0, ROOT_CA.1)?;
    ceremony(&ctl_json, dir, ISSUING_CA.0, ISSUING_CA.1)?;
    Ok(Castellan {
        _signer: signer,
        daemon,
        addr,
        admin,
    })
}

fn csr(i: usize) -> Result<(String, IssueRequest), String> {
    let name = format!("host-{i}.ocsp-bench.internal");
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.clone()]).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.clone());
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| e.to_string())?;
    Ok((
        name,
        IssueRequest {
            csr_pem,
            profile: "server".into(),
            ttl_days: Some(30),
            issuer: Some("issuing".into()),
            identity: None,
        },
    ))
}

/// Issues `n` certificates from `issuing` with [`ISSUERS`] concurrent
/// clients of the admin API; (subject CN, answer) in issue order.
fn issue_all(admin: &AdminClient, n: usize) -> Result<Vec<(String, IssuedView)>, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..ISSUERS)
        .map(|_| {
            let (admin, next) = (admin.clone(), next.clone());
            std::thread::spawn(
                move || -> Result<Vec<(usize, String, IssuedView)>, String> {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            return Ok(out);
                        }
                        let (name, req) = csr(i)?;
                        let v: IssuedView = admin
                            .post("/v1/certificates", &req)
                            .map_err(|e| format!("issuing certificate {i}: {e}"))?;
                        out.push((i, name, v));
                    }
                },
            )
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.join().map_err(|_| "an issuing client panicked")??);
    }
    all.sort_by_key(|(i, _, _)| *i);
    Ok(all.into_iter().map(|(_, name, v)| (name, v)).collect())
}

/// Issues and revokes the certificates; writes issuing.pem; builds the requests.
fn make_certs(c: &Castellan, dir: &Path, n: usize) -> Result<Vec<Cert>, String> {
    let started = Instant::now();
    let issued = issue_all(&c.admin, n)?;
    println!(
        "   issued {} certificates in {:.1} s",
        issued.len(),
        started.elapsed().as_secs_f64()
    );
    let issuing = http(c.addr, "GET", "/ca/issuing.crt", None)?;
    if issuing.status != 200 {
        return Err(format!("GET /ca/issuing.crt: HTTP {}", issuing.status));
    }
    std::fs::write(
        dir.join("issuing.pem"),
        castellan::pem::encode("CERTIFICATE", &issuing.body),
    )
    .map_err(|e| e.to_string())?;
    let ca = x509_cert::Certificate::from_der(&issuing.body)
        .map_err(|e| format!("the issuing CA certificate: {e}"))?;
    let name_der = ca
        .tbs_certificate()
        .subject()
        .to_der()
        .map_err(|e| e.to_string())?;
    let name_hash = sha1(&name_der);
    let key_hash = sha1(
        ca.tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes(),
    );
    let mut certs = Vec::with_capacity(issued.len());
    for (i, (subject, v)) in issued.into_iter().enumerate() {
        let der = castellan::pem::decode(v.certificate_pem.as_bytes(), &["CERTIFICATE"])?;
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| format!("certificate {}: {e}", v.serial))?;
        let serial = cert.tbs_certificate().serial_number().as_bytes().to_vec();
        let request = ocsp_request(&name_hash, &key_hash, &serial);
        castellan::ocsp::parse_request(&request)
            .map_err(|e| format!("the request built for {}: {e}", v.serial))?;
        certs.push(Cert {
            serial_api: v.serial,
            serial,
            subject,
            revoked: i % REVOKE_EVERY == REVOKE_EVERY - 1,
            request,
        });
    }
    let started = Instant::now();
    let mut revoked = 0;
    for cert in certs.iter().filter(|c| c.revoked) {
        let _: serde_json::Value = c
            .admin
            .post(
                &format!(
                    "/v1/certificates/{}/revoke",
                    encode_component(&cert.serial_api)
                ),
                &RevokeRequest {
                    reason: "keyCompromise".into(),
                    invalidity_date: None,
                },
            )
            .map_err(|e| format!("revoking {}: {e}", cert.serial_api))?;
        revoked += 1;
    }
    println!(
        "   revoked {revoked} of them in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(certs)
}

/// One GET and one POST per certificate (4 clients); castellan's GET
/// answers, which nginx will serve.
fn warm(addr: SocketAddr, certs: &Arc<Vec<Cert>>) -> Result<Vec<Vec<u8>>, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (certs, next) = (certs.clone(), next.clone());
            std::thread::spawn(move || -> Result<Vec<(usize, Vec<u8>)>, String> {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(c) = certs.get(i) else {
                        return Ok(out);
                    };
                    let post = http(addr, "POST", "/ocsp", Some(&c.request))?;
                    let get = http(addr, "GET", &c.get_path_url_safe(), None)?;
                    for (m, r) in [("POST", &post), ("GET", &get)] {
                        if r.status != 200 || ocsp_status(&r.body) != Some(0) {
                            return Err(format!(
                                "castellan {m} for {}: HTTP {}, OCSP status {:?}",
                                c.serial_api,
                                r.status,
                                ocsp_status(&r.body)
                            ));
                        }
                    }
                    out.push((i, get.body));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.join().map_err(|_| "a warming client panicked")??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, b)| b).collect())
}

// ---------------------------------------------------------------------------
// openssl ocsp and nginx

/// index.txt (revocations included) and the responder's key and
/// self-signed certificate, for [`start_openssl`].
fn prepare_openssl(dir: &Path, certs: &[Cert]) -> Result<(), String> {
    let mut index = String::new();
    for c in certs {
        let (flag, revoked) = if c.revoked {
            ("R", "260101000000Z,keyCompromise")
        } else {
            ("V", "")
        };
        let _ = writeln!(
            index,
            "{flag}\t491231235959Z\t{revoked}\t{}\tunknown\t/CN={}",
            c.serial_index(),
            c.subject
        );
    }
    std::fs::write(dir.join("index.txt"), index).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("index.txt.attr"), "unique_subject = no\n")
        .map_err(|e| e.to_string())?;
    run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "rkey.pem",
                "-out",
                "rcert.pem",
                "-subj",
                "/CN=openssl ocsp bench responder",
                "-days",
                "2",
            ])
            .current_dir(dir),
        "openssl req (responder key)",
        Duration::from_secs(60),
    )?;
    Ok(())
}

/// A fresh `openssl ocsp` responder on a free port. Readiness is read from
/// its log, never probed with an empty connection: OpenSSL 3.0's responder
/// spins on a connection closed without a request and serves no one after
/// it, so every run gets a responder of its own.
fn start_openssl(dir: &Path, run_no: usize) -> Result<(Proc, SocketAddr), String> {
    let port = free_port()?;
    let log = dir.join(format!("openssl-ocsp-{run_no}.log"));
    let mut p = Proc::spawn(
        "openssl ocsp",
        Command::new("openssl")
            .args([
                "ocsp",
                "-index",
                "index.txt",
                "-port",
                &port.to_string(),
                "-rsigner",
                "rcert.pem",
                "-rkey",
                "rkey.pem",
                "-CA",
                "issuing.pem",
                "-nmin",
                "60",
                "-ignore_err",
            ])
            .current_dir(dir),
        &log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("waiting for OCSP client connections") {
            break;
        }
        if !p.running() || Instant::now() > deadline {
            return Err(format!("openssl ocsp did not start:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((p, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn start_nginx(
    nginx: &Path,
    dir: &Path,
    certs: &[Cert],
    answers: &[Vec<u8>],
) -> Result<(Proc, SocketAddr), String> {
    let io = |e: std::io::Error| e.to_string();
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("ocsp")).map_err(io)?;
    for (c, a) in certs.iter().zip(answers) {
        let name = c
            .get_path_url_safe()
            .trim_start_matches("/ocsp/")
            .to_string();
        std::fs::write(www.join("ocsp").join(name), a).map_err(io)?;
    }
    let first = answers.first().ok_or("no answers to serve")?;
    std::fs::write(www.join("post.der"), first).map_err(io)?;
    // nginx's workers drop root: they must be able to read the files.
    {
        use std::os::unix::fs::PermissionsExt;
        let mut d = Some(www.as_path());
        while let Some(p) = d {
            if p == dir.parent().unwrap_or(dir) {
                break;
            }
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
            d = p.parent();
        }
        for e in std::fs::read_dir(www.join("ocsp")).map_err(io)?.flatten() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644))
                .map_err(io)?;
        }
        std::fs::set_permissions(www.join("post.der"), std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tmp = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp).map_err(io)?;
    let conf = format!(
        "daemon off;\n\
         worker_processes {workers};\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/nginx-error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {tmp}/body;\n\
           proxy_temp_path {tmp}/proxy;\n\
           fastcgi_temp_path {tmp}/fastcgi;\n\
           uwsgi_temp_path {tmp}/uwsgi;\n\
           scgi_temp_path {tmp}/scgi;\n\
           keepalive_requests 1000000;\n\
           types {{ }}\n\
           default_type application/ocsp-response;\n\
           server {{\n\
             listen {addr};\n\
             root {www};\n\
             location = /ocsp {{ error_page 405 =200 /post.der; return 405; }}\n\
             location / {{ }}\n\
           }}\n\
         }}\n",
        dir = dir.display(),
        tmp = tmp.display(),
        www = www.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(io)?;
    let log = dir.join("nginx.log");
    let mut p = Proc::spawn(
        "nginx",
        Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log")),
        &log,
    )?;
    wait_listening(addr, &mut p, &log)?;
    Ok((p, addr))
}

/// Checks a target's answers for a good and a revoked certificate, by GET
/// and by POST, with `openssl ocsp -respin`.
fn check_target(
    dir: &Path,
    target: Target,
    addr: SocketAddr,
    certs: &[Cert],
) -> Result<(), String> {
    let good = certs
        .iter()
        .find(|c| !c.revoked)
        .ok_or("no good certificate")?;
    let revoked = certs.iter().find(|c| c.revoked);
    let mut cases = vec![(good, "good")];
    if let Some(r) = revoked
        && target != Target::Nginx
    {
        cases.push((r, "revoked"));
    }
    for (cert, want) in cases {
        for method in [Method::Get, Method::Post] {
            let r = match method {
                Method::Get => http(addr, "GET", &target.get_path(cert), None)?,
                Method::Post => http(addr, "POST", "/ocsp", Some(&cert.request))?,
            };
            let what = format!("{} {} ({want})", target.name(), method.name());
            if r.status != 200 || ocsp_status(&r.body) != Some(0) {
                return Err(format!(
                    "{what}: HTTP {}, OCSP status {:?} (content-type {:?})",
                    r.status,
                    ocsp_status(&r.body),
                    r.content_type
                ));
            }
            if !r
                .content_type
                .eq_ignore_ascii_case("application/ocsp-response")
            {
                return Err(format!("{what}: content-type {:?}", r.content_type));
            }
            let file = dir.join("check.der");
            std::fs::write(&file, &r.body).map_err(|e| e.to_string())?;
            let text = run(
                Command::new("openssl")
                    .args(["ocsp", "-respin"])
                    .arg(&file)
                    .args(["-resp_text", "-noverify"]),
                "openssl ocsp -respin",
                Duration::from_secs(60),
            )?;
            if !text.contains(&format!("Cert Status: {want}")) {
                return Err(format!("{what}: openssl reads:\n{text}"));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// wrk

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Castellan,
    Nginx,
    Openssl,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Castellan => "castellan",
            Target::Nginx => "nginx (static file)",
            Target::Openssl => "openssl ocsp",
        }
    }

    fn get_path(self, c: &Cert) -> String {
        match self {
            Target::Castellan | Target::Nginx => c.get_path_url_safe(),
            Target::Openssl => c.get_path_openssl(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Post,
    Get,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Get => "GET",
        }
    }
}

/// A wrk script cycling through one request per certificate; with
/// `pause_ms`, each connection waits that long after an answer.
fn wrk_script(
    target: Target,
    method: Method,
    addr: SocketAddr,
    certs: &[Cert],
    pause_ms: Option<u64>,
) -> String {
    let mut s = String::from("local items = {\n");
    for c in certs {
        match method {
            Method::Post => {
                let _ = writeln!(s, "  \"{}\",", hex::encode(&c.request));
            }
            Method::Get => {
                let _ = writeln!(s, "  \"{}\",", target.get_path(c));
            }
        }
    }
    s.push_str("}\nlocal reqs = {}\nlocal n = 0\n");
    let _ = write!(
        s,
        "function init(args)\n\
         \x20 for i, item in ipairs(items) do\n\
         \x20   local headers = {{ [\"Host\"] = \"{addr}\" }}\n"
    );
    match method {
        Method::Post => s.push_str(
            "    headers[\"Content-Type\"] = \"application/ocsp-request\"\n\
             \x20   local body = (item:gsub(\"..\", function(h) return string.char(tonumber(h, 16)) end))\n\
             \x20   reqs[i] = wrk.format(\"POST\", \"/ocsp\", headers, body)\n",
        ),
        Method::Get => s.push_str("    reqs[i] = wrk.format(\"GET\", item, headers, nil)\n"),
    }
    s.push_str(
        "  end\n\
         \x20 n = math.random(#reqs)\n\
         end\n\
         function request()\n\
         \x20 n = n % #reqs + 1\n\
         \x20 return reqs[n]\n\
         end\n",
    );
    if let Some(ms) = pause_ms {
        let _ = write!(s, "function delay()\n  return {ms}\nend\n");
    }
    s
}

/// `BENCH_HOLD` seconds with castellan and nginx warmed and idle, their
/// wrk scripts written, for loading and profiling them by hand.
fn hold_for_profiling(
    dir: &Path,
    c: &Castellan,
    nginx: SocketAddr,
    certs: &[Cert],
    secs: u64,
) -> Result<(), String> {
    println!(
        "\n== holding {secs} s (BENCH_HOLD): castellan http://{} (pid {}), nginx http://{nginx}",
        c.addr,
        c.daemon.pid()
    );
    for (t, addr) in [(Target::Castellan, c.addr), (Target::Nginx, nginx)] {
        for m in [Method::Post, Method::Get] {
            let script = dir.join(format!(
                "wrk-{}-{}.lua",
                format!("{t:?}").to_lowercase(),
                m.name()
            ));
            std::fs::write(&script, wrk_script(t, m, addr, certs, None))
                .map_err(|e| e.to_string())?;
            println!(
                "   wrk -t2 -c32 -d5s --latency -s {} http://{addr}/",
                script.display()
            );
        }
    }
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

/// Who generated the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    /// wrk, HTTP/1.1 keep-alive.
    Wrk,
    /// This program's closed-loop clients, a new connection per request.
    PerConnection,
    /// wrk, HTTP/1.1 keep-alive, each connection pausing between an answer
    /// and its next request so that the offered rate is about
    /// `BENCH_PACED_RPS`: latency below saturation.
    WrkPaced,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Wrk => "wrk, keep-alive",
            Client::PerConnection => "a connection per request",
            Client::WrkPaced => "wrk, keep-alive, paced",
        }
    }
}

struct Row {
    client: Client,
    target: Target,
    method: Method,
    connections: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: String,
    load: String,
}

/// `1.23ms`, `456.00us`, `2.00s` → milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    match unit {
        "us" => Some(v / 1000.0),
        "ms" => Some(v),
        "s" => Some(v * 1000.0),
        "m" => Some(v * 60_000.0),
        _ => None,
    }
}

fn parse_wrk(text: &str) -> Result<(f64, f64, f64, String), String> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = duration_ms(v.trim());
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = duration_ms(v.trim());
        } else if t.starts_with("Socket errors:") || t.starts_with("Non-2xx") {
            errors.push(t.to_string());
        }
    }
    match (rps, p50, p99) {
        (Some(r), Some(a), Some(b)) => Ok((
            r,
            a,
            b,
            if errors.is_empty() {
                "0".into()
            } else {
                errors.join("; ")
            },
        )),
        (Some(r), a, b) => Ok((
            r,
            a.unwrap_or(f64::NAN),
            b.unwrap_or(f64::NAN),
            errors.join("; "),
        )),
        _ => Err(format!("cannot read wrk's output:\n{text}")),
    }
}

#[allow(clippy::too_many_arguments)]
fn wrk_load(
    wrk: &Path,
    dir: &Path,
    target: Target,
    method: Method,
    addr: SocketAddr,
    certs: &[Cert],
    connections: usize,
    secs: u64,
    threads: usize,
    pause_ms: Option<u64>,
) -> Result<Row, String> {
    let script = dir.join(format!(
        "wrk-{}-{}.lua",
        format!("{target:?}").to_lowercase(),
        method.name()
    ));
    std::fs::write(&script, wrk_script(target, method, addr, certs, pause_ms))
        .map_err(|e| e.to_string())?;
    let load_before = loadavg();
    let text = run(
        Command::new(wrk)
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "2s", "--latency", "-s"])
            .arg(&script)
            .arg(format!("http://{addr}/")),
        "wrk",
        Duration::from_secs(secs + 60),
    )?;
    let (rps, p50_ms, p99_ms, errors) = parse_wrk(&text)?;
    Ok(Row {
        client: if pause_ms.is_some() {
            Client::WrkPaced
        } else {
            Client::Wrk
        },
        target,
        method,
        connections,
        rps,
        p50_ms,
        p99_ms,
        errors,
        load: format!("{load_before} → {}", loadavg()),
    })
}

/// One request on a new connection (`Connection: close`, so the server
/// closes first); Ok if the answer is an HTTP 200. Bounded by 2 s per
/// operation, as `wrk --timeout 2s`.
fn one_request(addr: SocketAddr, request: &[u8]) -> Result<(), String> {
    let bound = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, bound).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(bound))
        .and_then(|()| s.set_write_timeout(Some(bound)))
        .map_err(|e| format!("socket: {e}"))?;
    s.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::with_capacity(2048);
    s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
    match got.get(..12) {
        Some(
            [
                b'H',
                b'T',
                b'T',
                b'P',
                b'/',
                b'1',
                b'.',
                _,
                b' ',
                b'2',
                b'0',
                b'0',
            ],
        ) => Ok(()),
        _ => Err(format!(
            "answer: {:?}",
            String::from_utf8_lossy(&got[..got.len().min(40)])
        )),
    }
}

/// `connections` closed-loop clients (a thread each) for `secs`, each
/// request on a new connection: the only way `openssl ocsp`'s responder
/// serves (HTTP/1.0, it closes after every answer), and wrk cannot drive it
/// (see the module documentation). Latency runs from connect to the last
/// octet of the answer; only requests completed inside the window count.
fn per_connection_load(
    target: Target,
    method: Method,
    addr: SocketAddr,
    certs: &[Cert],
    connections: usize,
    secs: u64,
) -> Row {
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        certs
            .iter()
            .map(|c| {
                let mut r = match method {
                    Method::Get => format!(
                        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                        target.get_path(c)
                    )
                    .into_bytes(),
                    Method::Post => format!(
                        "POST /ocsp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                         Content-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
                        c.request.len()
                    )
                    .into_bytes(),
                };
                if method == Method::Post {
                    r.extend_from_slice(&c.request);
                }
                r
            })
            .collect(),
    );
    let load_before = loadavg();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let workers: Vec<_> = (0..connections)
        .map(|k| {
            let requests = requests.clone();
            std::thread::spawn(move || {
                let mut lat_us: Vec<u32> = Vec::new();
                let (mut errors, mut first_error) = (0u64, None);
                let mut i = k * requests.len() / connections;
                while Instant::now() < deadline {
                    let req = &requests[i % requests.len()];
                    i += 1;
                    let t0 = Instant::now();
                    match one_request(addr, req) {
                        Ok(()) => {
                            let end = Instant::now();
                            if end <= deadline {
                                lat_us.push(
                                    end.duration_since(t0).as_micros().min(u128::from(u32::MAX))
                                        as u32,
                                );
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (lat_us, errors, first_error)
            })
        })
        .collect();
    let mut lat: Vec<u32> = Vec::new();
    let (mut errors, mut first_error) = (0u64, None);
    for w in workers {
        match w.join() {
            Ok((l, e, f)) => {
                lat.extend(l);
                errors += e;
                if first_error.is_none() {
                    first_error = f;
                }
            }
            Err(_) => errors += 1,
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    Row {
        client: Client::PerConnection,
        target,
        method,
        connections,
        rps: lat.len() as f64 / secs as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: match first_error {
            None => errors.to_string(),
            Some(e) => format!("{errors} (first: {e})"),
        },
        load: format!("{load_before} → {}", loadavg()),
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "n/a".into()
    }
}

fn bench(wrk: &Path, nginx: &Path) -> Result<(), String> {
    let bins = binaries()?;
    let secs = env_num("BENCH_SECONDS", 10).clamp(1, 120);
    let n = env_num("BENCH_CERTS", 1000).clamp(REVOKE_EVERY as u64, 20_000) as usize;
    let threads = env_num("BENCH_WRK_THREADS", 2).clamp(1, 64) as usize;
    let paced_rps = env_num("BENCH_PACED_RPS", 16_000).clamp(100, 1_000_000);
    // Each connection's pause: the offered rate is connections / pause.
    let pause = |conns: usize| (conns as u64 * 1000).div_ceil(paced_rps).max(1);
    let base = tempfile::Builder::new()
        .prefix("castellan-ocsp-bench-")
        .tempdir()
        .map_err(|e| format!("a temporary directory: {e}"))?;
    let dir = base.path();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "castellan OCSP serving benchmark: {n} certificates (every {REVOKE_EVERY}th revoked), \
         wrk -t{threads} for {secs} s per run at {CONNECTIONS:?} connections, {cores} cores \
         shared by the servers, wrk and whatever else runs on this machine (load average {}), \
         files in {}",
        loadavg(),
        dir.display()
    );

    println!("\n== castellan: signer, daemon, CAs");
    let mut c = start_castellan(&bins, dir)?;
    let certs = Arc::new(make_certs(&c, dir, n)?);
    let started = Instant::now();
    let answers = warm(c.addr, &certs)?;
    println!(
        "   warmed: one GET and one POST per certificate in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    println!("== openssl ocsp responder and nginx");
    prepare_openssl(dir, &certs)?;
    let (mut nginx_proc, nginx_addr) = start_nginx(nginx, dir, &certs, &answers)?;
    let mut runs = 0;
    // openssl: a fresh responder per use (see start_openssl).
    let mut target = |t: Target| -> Result<(Option<Proc>, SocketAddr), String> {
        runs += 1;
        Ok(match t {
            Target::Castellan => (None, c.addr),
            Target::Nginx => (None, nginx_addr),
            Target::Openssl => {
                let (p, a) = start_openssl(dir, runs)?;
                (Some(p), a)
            }
        })
    };
    let all = [Target::Castellan, Target::Nginx, Target::Openssl];
    for t in all {
        let (_responder, addr) = target(t)?;
        check_target(dir, t, addr, &certs)?;
        println!("   {}: answers checked with openssl ocsp -respin", t.name());
    }

    let hold = env_num("BENCH_HOLD", 0);
    if hold > 0 {
        hold_for_profiling(dir, &c, nginx_addr, &certs, hold)?;
    }

    // Interleaved, so that what else runs on the machine weighs on every
    // target alike.
    let mut rows: Vec<Row> = Vec::new();
    let mut openssl_exited = 0;
    for method in [Method::Post, Method::Get] {
        for conns in CONNECTIONS {
            for (client, t) in [
                (Client::Wrk, Target::Castellan),
                (Client::Wrk, Target::Nginx),
                (Client::WrkPaced, Target::Castellan),
                (Client::WrkPaced, Target::Nginx),
                (Client::PerConnection, Target::Castellan),
                (Client::PerConnection, Target::Openssl),
            ] {
                let (mut responder, addr) = target(t)?;
                let row = match client {
                    Client::Wrk => wrk_load(
                        wrk, dir, t, method, addr, &certs, conns, secs, threads, None,
                    )?,
                    Client::WrkPaced => wrk_load(
                        wrk,
                        dir,
                        t,
                        method,
                        addr,
                        &certs,
                        conns,
                        secs,
                        threads,
                        Some(pause(conns)),
                    )?,
                    Client::PerConnection => {
                        per_connection_load(t, method, addr, &certs, conns, secs)
                    }
                };
                if let Some(p) = responder.as_mut()
                    && !p.running()
                {
                    openssl_exited += 1;
                }
                drop(responder);
                println!(
                    "   {} {} c={conns} ({}): {:.0} req/s, p50 {} ms, p99 {} ms, errors {}",
                    t.name(),
                    method.name(),
                    client.name(),
                    row.rps,
                    ms(row.p50_ms),
                    ms(row.p99_ms),
                    row.errors
                );
                rows.push(row);
            }
        }
    }
    let alive = [
        ("castellan", c.daemon.running()),
        ("nginx", nginx_proc.running()),
    ];

    println!(
        "\n## OCSP serving, warmed ({n} certificates, {secs} s per run, {cores} cores shared)\n"
    );
    println!(
        "| target | method | connections | client | req/s | p50 ms | p99 ms | vs nginx | vs openssl | errors | load avg before → after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let find = |cl: Client, t: Target, m: Method, c: usize| {
        rows.iter()
            .find(|r| r.client == cl && r.target == t && r.method == m && r.connections == c)
    };
    for r in &rows {
        // Ratios only between rows loaded by the same client.
        let vs = |t: Target| {
            if r.target == t {
                return String::new();
            }
            find(r.client, t, r.method, r.connections)
                .map_or(String::new(), |o| ratio(r.rps, o.rps))
        };
        println!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.target.name(),
            r.method.name(),
            r.connections,
            r.client.name(),
            r.rps,
            ms(r.p50_ms),
            ms(r.p99_ms),
            vs(Target::Nginx),
            vs(Target::Openssl),
            r.errors,
            r.load
        );
    }
    println!(
        "\nwrk: -t{threads} --timeout 2s, each connection cycling through the {n} requests. \
         nginx POST: `return 405` + `error_page 405 =200 /post.der`, the first certificate's \
         answer whatever the body. openssl ocsp cannot be loaded with wrk (wrk's start-up probe \
         connection, opened and closed without a request, sends OpenSSL 3.0's responder into an \
         endless loop), so it and castellan are also loaded by this program's own clients, a new \
         connection per request (openssl answers HTTP/1.0 and closes anyway); a fresh openssl \
         responder per run."
    );
    println!(
        "\nPaced rows: wrk with each connection pausing {} ms (32 connections) / {} ms (64) \
         after every answer, an offered rate of about {paced_rps} req/s (BENCH_PACED_RPS): the \
         latency of a server that is not saturated. Saturated closed-loop rows queue by \
         construction: 64 connections at 40,000 req/s wait 1.6 ms on average (Little's law).",
        pause(32),
        pause(64)
    );
    println!(
        "\nGoals: castellan ≥ {GOAL_VS_NGINX}× nginx (wrk), ≥ {GOAL_VS_OPENSSL:.0}× openssl ocsp \
         (same clients), p99 < {GOAL_P99_MS} ms (wrk, keep-alive; saturated and paced)"
    );
    for r in rows
        .iter()
        .filter(|r| r.target == Target::Castellan && r.client == Client::Wrk)
    {
        let held = |ok: bool| if ok { "holds" } else { "DOES NOT HOLD" };
        let nginx = find(Client::Wrk, Target::Nginx, r.method, r.connections).map(|o| o.rps);
        let mine = find(
            Client::PerConnection,
            Target::Castellan,
            r.method,
            r.connections,
        );
        let openssl = find(
            Client::PerConnection,
            Target::Openssl,
            r.method,
            r.connections,
        )
        .map(|o| o.rps);
        let vs_openssl = mine.zip(openssl).map(|(m, o)| (m.rps, o));
        println!(
            "  {} c={}: ≥ {GOAL_VS_NGINX}× nginx: {} ({}); ≥ {GOAL_VS_OPENSSL:.0}× openssl: {} ({}); p99 < {GOAL_P99_MS} ms: {} ({} ms)",
            r.method.name(),
            r.connections,
            held(nginx.is_some_and(|x| r.rps >= GOAL_VS_NGINX * x)),
            nginx.map_or("n/a".into(), |x| ratio(r.rps, x)),
            held(vs_openssl.is_some_and(|(m, o)| o > 0.0 && m >= GOAL_VS_OPENSSL * o)),
            vs_openssl.map_or("n/a".into(), |(m, o)| ratio(m, o)),
            held(r.p99_ms < GOAL_P99_MS),
            ms(r.p99_ms)
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.target == Target::Castellan && r.client == Client::WrkPaced)
    {
        let nginx = find(Client::WrkPaced, Target::Nginx, r.method, r.connections);
        println!(
            "  {} c={} paced ({:.0} req/s served): p99 < {GOAL_P99_MS} ms: {} ({} ms; nginx {} ms)",
            r.method.name(),
            r.connections,
            r.rps,
            if r.p99_ms < GOAL_P99_MS {
                "holds"
            } else {
                "DOES NOT HOLD"
            },
            ms(r.p99_ms),
            nginx.map_or("n/a".into(), |o| ms(o.p99_ms))
        );
    }
    for (name, up) in alive {
        if !up {
            println!("note: {name} had exited by the end of the load");
        }
    }
    println!(
        "\n(load average at the end {}; the servers and the load generators share {cores} \
         cores, and other sessions may be running builds or tests on them: re-measure on an \
         idle machine before quoting a figure)",
        loadavg()
    );
    if openssl_exited > 0 {
        println!("note: the openssl responder had exited by the end of {openssl_exited} runs");
    }
    nginx_proc.stop();
    c.daemon.stop();
    Ok(())
}

fn main() -> ExitCode {
    let wrk = find_tool("wrk");
    let nginx = find_tool("nginx");
    let openssl = find_tool("openssl");
    let (Some(wrk), Some(nginx), Some(_)) = (wrk, nginx, openssl) else {
        println!(
            "ocsp_serving: skipped, it needs wrk, nginx and openssl on this machine \
             (Debian/Ubuntu: `apt-get install wrk nginx-light openssl`)."
        );
        return ExitCode::SUCCESS;
    };
    match bench(&wrk, &nginx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocsp_serving: {e}");
            ExitCode::FAILURE
        }
    }
}
