//! Revocation at scale: how long a full CRL of an issuer with N revoked
//! certificates takes to generate, sign and publish, and whether the OCSP
//! lookup rate of a cached answer depends on the size of the store. Prints
//! figures and the goal lines; asserts nothing about the figures.
//!
//!     cargo build --release --workspace --bins
//!     cargo bench -p castellan --bench revocation_scale
//!
//! Goals (from the project's issue):
//! 1. a store of 1,000,000 certificates, all revoked: full CRL generation,
//!    signing and publishing in at most 1 s;
//! 2. the OCSP lookup rate is the same as with a 1,000-certificate store.
//!
//! For each N (`BENCH_CERTS`, default `1000,1000000`), in its own state
//! directory:
//!
//! 1. Setup: a real `castellan-signer` (soft backend) and a real `castellan`
//!    daemon with its public listener on 127.0.0.1, a publish directory and
//!    `crl.coalesce_ms = 60000`; a root and an issuing CA made by 2-of-3
//!    custodian ceremonies with `castellanctl`; the first (empty) CRLs of
//!    both CAs, which the daemon's CRL task publishes by itself.
//! 2. Load: the daemon is stopped (SIGTERM) and this program opens its
//!    event store with `castellan::store::Store::open` and appends N
//!    synthetic certificates of `issuing` with their revocations, through
//!    the store's own command path (`IssuanceIntended`, `CertificateIssued`,
//!    `CertificateRevoked` per certificate, `LOAD_BATCH` certificates per
//!    commit): 16-octet random serials with the top bit clear, revocation
//!    times spread over the past year, reasons varied (key compromise with
//!    an invalidity date). The certificate DER is a placeholder of
//!    `BENCH_DER_BYTES` octets (default 64): the CRL is built from the
//!    revocation records, not from the DER, but the DER sits in every
//!    certificate record that a start-up OCSP pre-signing pass reads.
//!    Before the store is closed, in this process: the scan `publish_crl`
//!    makes (`ReadView::revocations`), the CRL entries built from it, and
//!    their postcard frames as `SignerPool::sign_crl` sends them.
//! 3. Quiet daemon: restarted with `http.enabled = false` (the publish
//!    directory stays, so `publish_crl` does all of its work, but no OCSP
//!    responder and no pre-signing compete for the two processes); then
//!    `castellanctl crl publish --issuer issuing` timed end to end, 3 runs
//!    (best and median). `BENCH_PERF=DIR` adds a 4th run under `perf
//!    record --call-graph dwarf` of daemon and signer.
//! 4. Serving daemon, twice: with the publish directory (as configured in
//!    production), then without it (pre-signing is then bound by signing
//!    alone, so a 1M store can finish its warm-up within the wait). At start
//!    the daemon pre-signs an OCSP answer for every unexpired certificate.
//!    During that warm-up: `wrk` (2 threads, 32 connections,
//!    `BENCH_SECONDS`, default 10) GETs one cached answer (the request made
//!    by `openssl ocsp -reqout` for a loaded serial, its answer checked with
//!    `openssl ocsp -respin`); one CRL publish; with the publish directory,
//!    the served `GET /crl/issuing.crl` counted with x509-cert (and its
//!    serials compared with the loaded ones) and with `openssl crl -text |
//!    grep -c "Serial Number"`, and its signature checked with `openssl crl
//!    -CAfile`. Then `castellan_ocsp_cached_answers` is polled (every 0.5 s
//!    from the start) until it reaches N or `BENCH_PRESIGN_WAIT` seconds
//!    (default 300) pass; if it reached N, wrk again. Then wrk once more
//!    while one CRL is published (2 s into the window), and, after a full
//!    warm-up, 3 CRL publishes. Memory (RSS from /proc) of daemon and signer
//!    is shown along the way.
//!
//! Every process and all traffic stay on this machine (127.0.0.1 and Unix
//! sockets). Every external command runs with a time limit.
//!
//! Environment: `BENCH_CERTS` (comma-separated list), `BENCH_SECONDS`,
//! `BENCH_PRESIGN_WAIT`, `BENCH_DER_BYTES`, `BENCH_DIR` (parent of the
//! state directories; the default temp dir), `BENCH_KEEP=1` (keep them),
//! `BENCH_PERF=DIR`.
//!
//! Shared with the other benchmarks (`benches/common`): `env_num`,
//! `loadavg`, `Proc`, `run_limited`, `wait_for`, `binaries`, the signer's
//! set-up and start (`start_signer`), `ceremony` and the CA arguments.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Bins, ISSUING_CA, Proc, ROOT_CA, env_num, loadavg, run_limited, wait_for};

use base64::Engine;
use castellan::admin_client::AdminClient;
use castellan::api::CrlView;
use castellan::events::{Actor, EventPayload};
use castellan::store::{Decision, ReadView, Store};
use castellan_proto::{
    CrlChunk, CrlEntry, DistinguishedName, Request, RevocationReason, SubjectAltName,
};
use der::Decode;
use ring::rand::SecureRandom;

const ISSUER: &str = "issuing";
/// The project's goal for a full CRL of 1,000,000 entries.
const GOAL_CRL_SECS: f64 = 1.0;
/// Certificates per store commit while loading.
const LOAD_BATCH: usize = 10_000;
/// CRL publishes timed per phase.
const RUNS: usize = 3;
const WRK_CONNECTIONS: usize = 32;
const WRK_THREADS: usize = 2;
/// Time limit of every external command that is not a daemon.
const CMD_LIMIT: Duration = Duration::from_secs(180);

/// Reasons cycled through the loaded revocations (removeFromCRL is not a
/// revocation reason; the daemon refuses it).
const REASONS: [RevocationReason; 7] = [
    RevocationReason::Superseded,
    RevocationReason::CessationOfOperation,
    RevocationReason::KeyCompromise,
    RevocationReason::Unspecified,
    RevocationReason::AffiliationChanged,
    RevocationReason::Superseded,
    RevocationReason::PrivilegeWithdrawn,
];

// ---------------------------------------------------------------------------
// Small things
// ---------------------------------------------------------------------------

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(s) => {
            let v: Vec<usize> = s
                .split(',')
                .filter_map(|x| x.trim().replace('_', "").parse().ok())
                .filter(|n| *n > 0)
                .collect();
            if v.is_empty() {
                eprintln!("{name}={s:?} names no certificate count; using the default");
                default.to_vec()
            } else {
                v
            }
        }
        Err(_) => default.to_vec(),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

/// (best, median) of a non-empty list.
fn best_median(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[0], s[s.len() / 2])
}

/// Serial octets as DER and OCSP carry them: no leading zero octets.
fn magnitude(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    if start == serial.len() {
        vec![0]
    } else {
        serial[start..].to_vec()
    }
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn rss_words(name: &str, pid: u32) -> String {
    let (now, peak) = rss(pid);
    format!("{name} RSS {} (peak {})", mib(now), mib(peak))
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    run_limited(cmd, what, CMD_LIMIT)
}

fn binaries() -> Result<Bins, String> {
    let bins = common::binaries()?;
    for tool in ["openssl", "wrk"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(format!("`{tool}` is not installed (it is needed on PATH)"));
        }
    }
    Ok(bins)
}

fn perf_record(data: &Path, pids: &[u32]) -> std::io::Result<Child> {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf,32768",
            "-o",
        ])
        .arg(data)
        .arg("-p")
        .arg(pids.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

// ---------------------------------------------------------------------------
// HTTP on 127.0.0.1
// ---------------------------------------------------------------------------

struct HttpAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// One GET with `Connection: close`, the whole answer read.
fn http_get(addr: SocketAddr, path: &str) -> Result<HttpAnswer, String> {
    let what = format!("GET http://{addr}{path}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("{what}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| format!("{what}: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{what}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("{what}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{what}: no end of head in {} octets", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{what}: bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        && len != body.len()
    {
        return Err(format!(
            "{what}: Content-Length {len} but {} octets",
            body.len()
        ));
    }
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// One instance: signer, daemon, CAs
// ---------------------------------------------------------------------------

struct Instance {
    bins: Bins,
    dir: PathBuf,
    http: SocketAddr,
    signer: Option<Proc>,
    daemon: Option<Proc>,
    /// Daemon starts so far (each logs into its own file).
    starts: usize,
}

impl Instance {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn admin_sock(&self) -> PathBuf {
        self.p("admin.sock")
    }

    fn admin(&self) -> AdminClient {
        AdminClient::new(self.admin_sock()).with_timeout(Duration::from_secs(300))
    }

    fn daemon_log(&self) -> PathBuf {
        self.p(&format!("castellan-{}.log", self.starts))
    }

    fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, Proc::pid)
    }

    fn signer_pid(&self) -> u32 {
        self.signer.as_ref().map_or(0, Proc::pid)
    }

    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        run(
            Command::new(&self.bins.ctl)
                .arg("--socket")
                .arg(self.admin_sock())
                .args(args),
            &format!("castellanctl {}", args.join(" ")),
        )
    }

    fn new(bins: Bins, dir: PathBuf) -> Result<Instance, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut inst = Instance {
            bins,
            dir,
            http,
            signer: None,
            daemon: None,
            starts: 0,
        };
        inst.start_signer()?;
        Ok(inst)
    }

    fn start_signer(&mut self) -> Result<(), String> {
        self.signer = Some(common::start_signer(&self.bins, &self.dir)?);
        Ok(())
    }

    /// Starts the daemon (`http`: the public listener and OCSP) and waits
    /// until `/readyz` answers 200. Returns how long that took.
    fn start_daemon(&mut self, http: bool, publish: bool) -> Result<Duration, String> {
        let uid = nix::unistd::getuid().as_raw();
        let sock = self.admin_sock();
        // A socket file left by the previous run would look ready.
        let _ = std::fs::remove_file(&sock);
        std::fs::write(
            self.p("castellan.toml"),
            format!(
                "state_dir = \"{}\"\n[signer]\nsocket = \"{}\"\n[admin]\nsocket = \"{}\"\n\
                 [admin.roles]\nadmin = [\"{uid}\"]\n\
                 [http]\nenabled = {http}\nlisten = \"{}\"\n{}\
                 [crl]\ncoalesce_ms = 60000\n",
                self.p("state").display(),
                self.p("signer.sock").display(),
                sock.display(),
                self.http,
                if publish {
                    format!("publish_dir = \"{}\"\n", self.p("publish").display())
                } else {
                    String::new()
                },
            ),
        )
        .map_err(|e| e.to_string())?;
        self.starts += 1;
        let log = self.daemon_log();
        let t0 = Instant::now();
        self.daemon = Some(Proc {
            name: "castellan",
            child: Command::new(&self.bins.castellan)
                .arg("--config")
                .arg(self.p("castellan.toml"))
                .env("CASTELLAN_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
                .spawn()
                .map_err(|e| format!("castellan: {e}"))?,
        });
        wait_for(&sock, "castellan", &log, Duration::from_secs(600))?;
        let admin = self.admin().with_timeout(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match admin.request("GET", "/readyz", None) {
                Ok(r) if r.status == 200 => break,
                _ if Instant::now() > deadline => {
                    return Err(format!(
                        "castellan is not ready after 60 s: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(t0.elapsed())
    }

    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.daemon_log()).unwrap_or_default()
    }

    /// Lines of the current daemon log that contain `needle`.
    fn log_count(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn ceremony(&self, open: &[&str], who: [&str; 2]) -> Result<(), String> {
        let ctl_json = |a: &[&str]| self.ctl(&[&["--json"][..], a].concat());
        common::ceremony(&ctl_json, &self.dir, open, who)
    }

    fn make_cas(&self) -> Result<(), String> {
        self.ceremony(ROOT_CA.0, ROOT_CA.1)?;
        self.ceremony(ISSUING_CA.0, ISSUING_CA.1)
    }

    /// Waits (bounded) until the CRL task published the first CRL of both
    /// CAs and the issuing CA has an OCSP responder.
    fn wait_first_crls(&self) -> Result<(), String> {
        let admin = self.admin().with_timeout(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(60);
        for ca in ["root", ISSUER] {
            loop {
                match admin.request("GET", &format!("/v1/crls/{ca}"), None) {
                    Ok(r) if r.status == 200 => break,
                    _ if Instant::now() > deadline => {
                        return Err(format!("no CRL of {ca} after 60 s"));
                    }
                    _ => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        while !self
            .log_text()
            .lines()
            .any(|l| l.contains("OCSP responder rotated") && l.contains(ISSUER))
        {
            if Instant::now() > deadline {
                return Err(format!("no OCSP responder for {ISSUER} after 60 s"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        if let Ok(r) = self
            .admin()
            .with_timeout(Duration::from_secs(30))
            .request("GET", "/metrics", None)
            && r.status == 200
        {
            for line in String::from_utf8_lossy(&r.body).lines() {
                if line.starts_with('#') {
                    continue;
                }
                if let Some((k, v)) = line.rsplit_once(' ')
                    && let Ok(v) = v.parse()
                {
                    out.insert(k.to_string(), v);
                }
            }
        }
        out
    }

    fn cached_answers(&self) -> Option<f64> {
        self.metrics().get("castellan_ocsp_cached_answers").copied()
    }

    /// `castellanctl crl publish --issuer issuing`, timed end to end.
    fn publish(&self) -> Result<(f64, CrlView), String> {
        let t0 = Instant::now();
        let out = self.ctl(&["--json", "crl", "publish", "--issuer", ISSUER])?;
        let took = t0.elapsed().as_secs_f64();
        let view: CrlView = serde_json::from_str(&out)
            .map_err(|e| format!("castellanctl crl publish --json: {e}: {out}"))?;
        Ok((took, view))
    }

    /// A CA certificate from the public listener, as PEM in `dir/{ca}.pem`.
    fn ca_pem(&self, ca: &str) -> Result<PathBuf, String> {
        let a = http_get(self.http, &format!("/ca/{ca}.crt"))?;
        if a.status != 200 {
            return Err(format!("GET /ca/{ca}.crt answered {}", a.status));
        }
        let path = self.p(&format!("{ca}.pem"));
        std::fs::write(&path, castellan::pem::encode("CERTIFICATE", &a.body))
            .map_err(|e| e.to_string())?;
        Ok(path)
    }
}

// ---------------------------------------------------------------------------
// Loading N revoked certificates into the stopped daemon's store
// ---------------------------------------------------------------------------

struct Loaded {
    load: Duration,
    /// Store file size after the load.
    db_bytes: u64,
    /// Every loaded serial's magnitude, sorted.
    serials: Vec<Vec<u8>>,
    /// In process, after the load: `ReadView::revocations` of the issuer.
    scan: Duration,
    /// Building the `CrlEntry` list from the scan, as `publish_crl` does.
    entries: Duration,
    /// postcard frames of the chunks `SignerPool::sign_crl` sends.
    encode: Duration,
    frames: usize,
    frame_bytes: usize,
    /// A commit with no events (what the `CrlPublished` commit costs at
    /// least: one durable redb commit).
    commit: Duration,
}

fn load(db: &Path, n: usize, der_bytes: usize) -> Result<Loaded, String> {
    let store = Store::open(db, true).map_err(|e| e.to_string())?;
    let rng = ring::rand::SystemRandom::new();
    let now = now_secs();
    let placeholder = {
        // A DER SEQUENCE of zeros: not a certificate, only the size of one.
        let mut v = vec![0x30, 0x82, 0, 0];
        let body = der_bytes.saturating_sub(4).max(1);
        v[2] = (body >> 8) as u8;
        v[3] = body as u8;
        v.resize(4 + body, 0);
        v
    };
    let mut serials = Vec::with_capacity(n);
    let t0 = Instant::now();
    let mut next_report = Instant::now() + Duration::from_secs(10);
    let mut done = 0usize;
    while done < n {
        let m = LOAD_BATCH.min(n - done);
        let mut rnd = vec![0u8; m * 32];
        rng.fill(&mut rnd)
            .map_err(|_| "no randomness".to_string())?;
        let mut events = Vec::with_capacity(3 * m);
        for (j, r) in rnd.chunks_exact(32).enumerate() {
            let i = done + j;
            let mut serial = r[..16].to_vec();
            serial[0] &= 0x7f;
            let mut request_id = [0u8; 16];
            request_id.copy_from_slice(&r[16..]);
            let identity = format!("host-{i}.bench.example");
            let reason = REASONS[i % REASONS.len()];
            // Spread over the past year, oldest first.
            let revoked_at = now - 365 * 86_400 + (i as i64 * 365 * 86_400) / n.max(1) as i64;
            events.push(EventPayload::IssuanceIntended {
                request_id,
                issuer: ISSUER.to_string(),
                profile: "server".to_string(),
                identity: identity.clone(),
                subject: DistinguishedName::common_name(&identity),
                sans: vec![SubjectAltName::Dns(identity)],
                spki_sha256: [r[16]; 32],
                not_before: revoked_at - 86_400,
                // Unexpired: OCSP pre-signs an answer for each.
                not_after: now + 397 * 86_400,
            });
            events.push(EventPayload::CertificateIssued {
                request_id,
                serial: serial.clone(),
                certificate_der: placeholder.clone(),
                signer_journal_seq: 0,
            });
            events.push(EventPayload::CertificateRevoked {
                serial: serial.clone(),
                issuer: ISSUER.to_string(),
                reason,
                revoked_at,
                invalidity_date: (reason == RevocationReason::KeyCompromise)
                    .then_some(revoked_at - 6 * 3600),
            });
            serials.push(magnitude(&serial));
        }
        store
            .execute_blocking(Actor::System, move |_v: &dyn ReadView| Decision::Commit {
                events,
                output: (),
            })
            .map_err(|e| format!("loading certificates {done}..{}: {e}", done + m))?;
        done += m;
        if Instant::now() >= next_report || done == n {
            let el = t0.elapsed().as_secs_f64();
            println!(
                "   loaded {:>9} / {} ({:>3.0}%) in {:>6.1} s, {:>6.0} certificates/s",
                thousands(done as u64),
                thousands(n as u64),
                done as f64 * 100.0 / n as f64,
                el,
                done as f64 / el
            );
            next_report = Instant::now() + Duration::from_secs(10);
        }
    }
    let load = t0.elapsed();

    // What publish_crl does before it calls the signer, in this process.
    let snap = store.read().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let revocations = snap.revocations(ISSUER);
    let scan = t.elapsed();
    if let Some(e) = snap.error() {
        return Err(format!("reading the revocations: {e}"));
    }
    drop(snap);
    if revocations.len() != n {
        return Err(format!(
            "the store lists {} revocations of {ISSUER}, {n} were loaded",
            revocations.len()
        ));
    }
    let t = Instant::now();
    let entries: Vec<CrlEntry> = revocations
        .iter()
        .map(|(serial, r)| CrlEntry {
            serial: magnitude(serial),
            revoked_at: r.revoked_at,
            reason: (r.reason != RevocationReason::Unspecified).then_some(r.reason),
            invalidity_date: r.invalidity_date,
        })
        .collect();
    let entries_t = t.elapsed();
    drop(revocations);
    let entries = std::sync::Arc::new(entries);
    let chunks: Vec<Request> = castellan_proto::crl_chunks(&entries)
        .into_iter()
        .scan(0usize, |offset, c| {
            let chunk = CrlChunk {
                issuer: ISSUER.to_string(),
                crl_number: 2,
                offset: *offset as u64,
                entries: castellan_proto::CrlEntryList::shared(
                    std::sync::Arc::clone(&entries),
                    *offset..*offset + c.len(),
                ),
            };
            *offset += c.len();
            Some(Request::StageCrlEntries(chunk))
        })
        .collect();
    let t = Instant::now();
    let mut frame_bytes = 0;
    for c in &chunks {
        frame_bytes += castellan_proto::encode_frame(c)
            .map_err(|e| format!("encoding a chunk: {e}"))?
            .len();
    }
    let encode = t.elapsed();
    let frames = chunks.len();
    drop(chunks);
    drop(entries);

    let t = Instant::now();
    store
        .execute_blocking(Actor::System, |_v: &dyn ReadView| Decision::Commit {
            events: vec![],
            output: (),
        })
        .map_err(|e| e.to_string())?;
    let commit = t.elapsed();
    drop(store);
    let db_bytes = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    serials.sort_unstable();
    Ok(Loaded {
        load,
        db_bytes,
        serials,
        scan,
        entries: entries_t,
        encode,
        frames,
        frame_bytes,
        commit,
    })
}

/// What `write_atomically` in src/daemon/revocation.rs does for one file:
/// temporary file, write, fsync, rename, fsync of the directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

// ---------------------------------------------------------------------------
// CRL and OCSP measurements
// ---------------------------------------------------------------------------

/// Times `RUNS` publishes; returns the durations.
fn publish_runs(inst: &Instance, label: &str, runs: usize) -> Result<Vec<f64>, String> {
    let mut v = Vec::new();
    for i in 1..=runs {
        let (took, view) = inst.publish()?;
        println!(
            "   {label} publish {i}: {:>7.3} s  (CRL number {}, {} entries)",
            took,
            view.crl_number,
            thousands(view.entries)
        );
        v.push(took);
    }
    if !v.is_empty() {
        let (b, m) = best_median(&v);
        println!("   {label}: best {b:.3} s, median {m:.3} s");
    }
    Ok(v)
}

struct ServedCrl {
    der_bytes: usize,
    pem_bytes: u64,
    get: Duration,
    entries_x509: usize,
    serials_match: bool,
    entries_openssl: Result<usize, String>,
    openssl_verify: String,
}

/// The CRL served by the public listener, counted and checked.
fn check_served_crl(inst: &Instance, loaded: &Loaded) -> Result<ServedCrl, String> {
    let t = Instant::now();
    let a = http_get(inst.http, &format!("/crl/{ISSUER}.crl"))?;
    let get = t.elapsed();
    if a.status != 200 {
        return Err(format!("GET /crl/{ISSUER}.crl answered {}", a.status));
    }
    let ctype = a
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map_or("", |(_, v)| v.as_str());
    if ctype != "application/pkix-crl" {
        println!("   note: the CRL was served as {ctype:?}");
    }
    let path = inst.p("served.crl");
    std::fs::write(&path, &a.body).map_err(|e| e.to_string())?;
    let crl = <x509_cert::crl::CertificateList>::from_der(&a.body)
        .map_err(|e| format!("the served CRL does not parse: {e}"))?;
    let listed = crl.tbs_cert_list.revoked_certificates.unwrap_or_default();
    let mut got: Vec<Vec<u8>> = listed
        .iter()
        .map(|r| magnitude(r.serial_number.as_bytes()))
        .collect();
    got.sort_unstable();
    let serials_match = got == loaded.serials;
    let entries_x509 = listed.len();
    drop(listed);
    drop(got);
    let entries_openssl = run(
        Command::new("sh").arg("-c").arg(format!(
            "openssl crl -inform DER -in '{}' -noout -text | grep -c 'Serial Number'",
            path.display()
        )),
        "openssl crl -text | grep -c",
    )
    .and_then(|s| {
        s.trim()
            .parse::<usize>()
            .map_err(|e| format!("openssl count {s:?}: {e}"))
    });
    let chain = inst.p("chain.pem");
    let openssl_verify = match run(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-in"])
            .arg(&path)
            .arg("-CAfile")
            .arg(&chain),
        "openssl crl -CAfile",
    ) {
        Ok(s) => s.trim().to_string(),
        Err(e) => format!("FAILED: {e}"),
    };
    let pem_bytes = std::fs::metadata(inst.p(&format!("publish/crl/{ISSUER}.pem")))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(ServedCrl {
        der_bytes: a.body.len(),
        pem_bytes,
        get,
        entries_x509,
        serials_match,
        entries_openssl,
        openssl_verify,
    })
}

/// The GET path (`/ocsp/{base64url}`) of the request `openssl ocsp` makes
/// for `serial`, after checking the answer verifies and says revoked.
fn ocsp_path(inst: &Instance, serial: &[u8]) -> Result<(String, String), String> {
    let issuer_pem = inst.ca_pem(ISSUER)?;
    let hex_serial = hex::encode(serial);
    let req = inst.p("ocsp-req.der");
    run(
        Command::new("openssl")
            .args(["ocsp", "-issuer"])
            .arg(&issuer_pem)
            .arg("-serial")
            .arg(format!("0x{hex_serial}"))
            .arg("-no_nonce")
            .arg("-reqout")
            .arg(&req),
        "openssl ocsp -reqout",
    )?;
    let der = std::fs::read(&req).map_err(|e| e.to_string())?;
    let path = format!(
        "/ocsp/{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der)
    );
    // The first GET signs and caches it (if the pre-signing did not yet).
    let a = http_get(inst.http, &path)?;
    if a.status != 200 {
        return Err(format!("the first OCSP GET answered {}", a.status));
    }
    let resp = inst.p("ocsp-resp.der");
    std::fs::write(&resp, &a.body).map_err(|e| e.to_string())?;
    let out = run(
        Command::new("openssl")
            .args(["ocsp", "-respin"])
            .arg(&resp)
            .arg("-issuer")
            .arg(&issuer_pem)
            .arg("-CAfile")
            .arg(inst.p("chain.pem"))
            .arg("-serial")
            .arg(format!("0x{hex_serial}"))
            .arg("-no_nonce"),
        "openssl ocsp -respin",
    )?;
    let status = out
        .lines()
        .find(|l| l.starts_with("0x"))
        .unwrap_or("?")
        .to_string();
    let verify = out
        .lines()
        .find(|l| l.contains("verify"))
        .unwrap_or("?")
        .to_string();
    Ok((path, format!("{status}; {verify}")))
}

#[derive(Clone, Default)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    requests: u64,
    non2xx: u64,
    errors: String,
    cached_before: f64,
    cached_after: f64,
}

fn wrk_ms(v: &str) -> f64 {
    let v = v.trim();
    let (num, mul) = if let Some(x) = v.strip_suffix("us") {
        (x, 0.001)
    } else if let Some(x) = v.strip_suffix("ms") {
        (x, 1.0)
    } else if let Some(x) = v.strip_suffix('s') {
        (x, 1000.0)
    } else if let Some(x) = v.strip_suffix('m') {
        (x, 60_000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().map_or(f64::NAN, |n| n * mul)
}

fn run_wrk(inst: &Instance, path: &str, seconds: u64) -> Result<Wrk, String> {
    let cached_before = inst.cached_answers().unwrap_or(f64::NAN);
    let out = run_limited(
        Command::new("wrk")
            .arg(format!("-t{WRK_THREADS}"))
            .arg(format!("-c{WRK_CONNECTIONS}"))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "2s", "--latency"])
            .arg(format!("http://{}{path}", inst.http)),
        "wrk",
        Duration::from_secs(seconds + 60),
    )?;
    let cached_after = inst.cached_answers().unwrap_or(f64::NAN);
    let mut w = Wrk {
        cached_before,
        cached_after,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
        rps: f64::NAN,
        ..Wrk::default()
    };
    let mut in_dist = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            if let Some(v) = t.strip_prefix("50%") {
                w.p50_ms = wrk_ms(v);
            } else if let Some(v) = t.strip_prefix("99%") {
                w.p99_ms = wrk_ms(v);
                in_dist = false;
            }
        }
        if let Some(v) = t.strip_prefix("Latency ")
            && !in_dist
        {
            // avg, stdev, max, +/- stdev
            w.max_ms = v.split_whitespace().nth(2).map_or(f64::NAN, wrk_ms);
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            w.rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            w.non2xx = v.trim().parse().unwrap_or(0);
        } else if t.starts_with("Socket errors:") {
            w.errors = t.to_string();
        } else if t.contains(" requests in ") {
            w.requests = t
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(w)
}

fn print_wrk(label: &str, w: &Wrk) {
    println!(
        "   {label}: {:>8.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} requests, {} non-2xx{}; cached answers {} → {})",
        w.rps,
        w.p50_ms,
        w.p99_ms,
        w.max_ms,
        thousands(w.requests),
        w.non2xx,
        if w.errors.is_empty() {
            String::new()
        } else {
            format!(", {}", w.errors)
        },
        w.cached_before,
        w.cached_after
    );
}

/// Samples `castellan_ocsp_cached_answers` every half second from the
/// daemon's start, on its own thread, until it reaches `target` or is
/// stopped: (seconds since `started`, answers cached).
struct Poller {
    samples: Arc<Mutex<Vec<(f64, f64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    fn start(admin: AdminClient, started: Instant, target: f64) -> Poller {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (Arc::clone(&samples), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let Ok(r) = admin.request("GET", "/metrics", None)
                    && r.status == 200
                {
                    let body = String::from_utf8_lossy(&r.body).into_owned();
                    if let Some(v) = body
                        .lines()
                        .find_map(|l| l.strip_prefix("castellan_ocsp_cached_answers "))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                    {
                        if let Ok(mut g) = s2.lock() {
                            g.push((started.elapsed().as_secs_f64(), v));
                        }
                        if v >= target {
                            return;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(500).saturating_sub(t.elapsed()));
            }
        });
        Poller {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The latest sample.
    fn last(&self) -> (f64, f64) {
        self.samples
            .lock()
            .ok()
            .and_then(|g| g.last().copied())
            .unwrap_or((0.0, 0.0))
    }

    /// When the count first reached `target`.
    fn reached(&self, target: f64) -> Option<f64> {
        self.samples
            .lock()
            .ok()?
            .iter()
            .find(|(_, v)| *v >= target)
            .map(|(t, _)| *t)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// One N
// ---------------------------------------------------------------------------

/// One start of the serving daemon (public listener, OCSP pre-signing).
#[derive(Default)]
struct Serving {
    /// `http.publish_dir` set.
    publish: bool,
    ready: Duration,
    wrk_warmup: Option<Wrk>,
    warm_publish: Vec<f64>,
    served: Option<ServedCrl>,
    /// Seconds from the daemon's start until every answer was cached;
    /// `None` if not within the wait.
    presign: Option<f64>,
    /// (answers cached, seconds since start) when the wait ended.
    presign_progress: (f64, f64),
    rss_daemon: (u64, u64),
    rss_signer: (u64, u64),
    wrk_after: Option<Wrk>,
    /// wrk while one CRL publish runs (started 2 s into the window), and
    /// that publish's time.
    wrk_during_crl: Option<(Wrk, f64)>,
    after_publish: Vec<f64>,
    background_crls: usize,
}

impl Serving {
    fn label(&self) -> &'static str {
        if self.publish {
            "with publish_dir"
        } else {
            "without publish_dir"
        }
    }
}

#[derive(Default)]
struct Outcome {
    n: usize,
    load: Option<Duration>,
    db_bytes: u64,
    scan: Duration,
    encode: Duration,
    entries: Duration,
    commit: Duration,
    writes: Option<Duration>,
    quiet_ready: Duration,
    quiet: Vec<f64>,
    crl_der: usize,
    serving: Vec<Serving>,
    background_crls: usize,
}

struct Settings {
    seconds: u64,
    presign_wait: u64,
    der_bytes: usize,
    perf: Option<PathBuf>,
}

fn run_n(bins: Bins, dir: PathBuf, n: usize, s: &Settings) -> Result<Outcome, String> {
    let mut o = Outcome {
        n,
        ..Outcome::default()
    };
    let t = Instant::now();
    let mut inst = Instance::new(bins, dir)?;
    inst.start_daemon(true, true)?;
    inst.make_cas()?;
    inst.wait_first_crls()?;
    let root_pem = inst.ca_pem("root")?;
    let issuing_pem = inst.ca_pem(ISSUER)?;
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(&issuing_pem).map_err(|e| e.to_string())?,
        std::fs::read_to_string(&root_pem).map_err(|e| e.to_string())?
    );
    std::fs::write(inst.p("chain.pem"), chain).map_err(|e| e.to_string())?;
    println!(
        "   setup (signer, daemon, root and issuing CA by ceremony, first CRLs, responder): {}",
        secs(t.elapsed())
    );
    inst.stop_daemon();

    // -- load --
    println!(
        "   daemon stopped; appending {} certificates of {ISSUER:?}, each issued and revoked \
         ({LOAD_BATCH} per commit; certificate DER is a {}-octet placeholder: CRLs are built \
         from the revocation records)",
        thousands(n as u64),
        s.der_bytes
    );
    let db = inst.p("state/castellan.redb");
    let loaded = load(&db, n, s.der_bytes)?;
    println!(
        "   load: {} ({:.0} certificates/s, {} events), store file {}",
        secs(loaded.load),
        n as f64 / loaded.load.as_secs_f64(),
        thousands(3 * n as u64),
        mib(loaded.db_bytes)
    );
    println!(
        "   in process: store scan (ReadView::revocations) {}, CRL entries {}, {} postcard frames \
         ({}) {}, one empty durable commit {}",
        secs(loaded.scan),
        secs(loaded.entries),
        loaded.frames,
        mib(loaded.frame_bytes as u64),
        secs(loaded.encode),
        secs(loaded.commit)
    );
    o.load = Some(loaded.load);
    o.db_bytes = loaded.db_bytes;
    o.scan = loaded.scan;
    o.entries = loaded.entries;
    o.encode = loaded.encode;
    o.commit = loaded.commit;

    // The load leaves ~1.6 GiB of the store to be written back; flushed
    // here so that the publishes below measure castellan, not the kernel
    // writing back what this program loaded (every publish has an
    // fdatasync or two on its path).
    let flushing = Instant::now();
    nix::unistd::sync();
    println!("   sync(2) after the load: {}", secs(flushing.elapsed()));

    // -- quiet daemon: CRL publish only --
    o.quiet_ready = inst.start_daemon(false, true)?;
    println!(
        "\n   quiet daemon (http.enabled = false, publish_dir kept): ready in {}, {}",
        secs(o.quiet_ready),
        rss_words("daemon", inst.daemon_pid())
    );
    o.quiet = publish_runs(&inst, "quiet", RUNS)?;
    if let Some(dir) = &s.perf {
        let data = dir.join(format!("revocation-scale-{n}.perf.data"));
        match perf_record(&data, &[inst.daemon_pid(), inst.signer_pid()]) {
            Ok(mut child) => {
                std::thread::sleep(Duration::from_millis(300));
                let r = inst.publish();
                std::thread::sleep(Duration::from_millis(100));
                let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                let _ = child.wait();
                match r {
                    Ok((took, _)) => println!(
                        "   perf run: {took:.3} s (not counted); perf report -i {} --no-children --sort comm,dso,sym",
                        data.display()
                    ),
                    Err(e) => println!("   perf run failed: {e}"),
                }
            }
            Err(e) => println!("   perf record: {e}"),
        }
    }
    let crl_der = std::fs::read(inst.p(&format!("state/crl/{ISSUER}.crl"))).unwrap_or_default();
    let crl_pem = std::fs::read(inst.p(&format!("publish/crl/{ISSUER}.pem"))).unwrap_or_default();
    o.crl_der = crl_der.len();
    // The three files publish_crl writes (state, publish DER, publish PEM).
    let scratch = inst.p("write-probe");
    let t = Instant::now();
    let w = write_atomically(&scratch, "a.crl", &crl_der)
        .and_then(|()| write_atomically(&scratch, "b.crl", &crl_der))
        .and_then(|()| write_atomically(&scratch, "b.pem", &crl_pem));
    o.writes = w.ok().map(|()| t.elapsed());
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "   CRL DER {}, PEM {}; writing the same 3 files atomically here: {}",
        mib(crl_der.len() as u64),
        mib(crl_pem.len() as u64),
        o.writes.map_or("failed".into(), secs)
    );
    drop(crl_der);
    drop(crl_pem);
    let published = inst.log_count("CRL published");
    o.background_crls += published.saturating_sub(RUNS + usize::from(s.perf.is_some()));
    inst.stop_daemon();

    // -- serving daemon, as configured in production (with a publish
    //    directory), then without one (the pre-signing pass is then bound
    //    by signing alone) --
    for publish in [true, false] {
        let sv = serving(&mut inst, &loaded, n, s, publish)?;
        o.background_crls += sv.background_crls;
        o.serving.push(sv);
    }
    if o.background_crls > 0 {
        println!(
            "   note: the daemon's CRL task published {} CRL(s) by itself during the measurements",
            o.background_crls
        );
    }
    Ok(o)
}

/// Starts the serving daemon and measures OCSP and CRLs while it
/// pre-signs and, if that ends within the wait, after.
fn serving(
    inst: &mut Instance,
    loaded: &Loaded,
    n: usize,
    s: &Settings,
    publish: bool,
) -> Result<Serving, String> {
    let mut sv = Serving {
        publish,
        ..Serving::default()
    };
    if publish {
        // Answers published by an earlier start would not be rewritten
        // faster; start from an empty directory of answers all the same.
        let _ = std::fs::remove_dir_all(inst.p("publish/ocsp"));
    }
    let started = Instant::now();
    sv.ready = inst.start_daemon(true, publish)?;
    let poller = Poller::start(
        inst.admin().with_timeout(Duration::from_secs(30)),
        started,
        n as f64,
    );
    println!(
        "\n   serving daemon {} (public listener {}): ready in {}, {}",
        sv.label(),
        inst.http,
        secs(sv.ready),
        rss_words("daemon", inst.daemon_pid())
    );
    let serial = loaded.serials[loaded.serials.len() / 2].clone();
    let (path, words) = ocsp_path(inst, &serial)?;
    println!("   OCSP GET for serial 0x{}: {words}", hex::encode(&serial));
    let w = run_wrk(inst, &path, s.seconds)?;
    print_wrk("OCSP during pre-signing warm-up", &w);
    sv.wrk_warmup = Some(w);
    sv.warm_publish = publish_runs(inst, "during warm-up", 1)?;
    if publish {
        let served = check_served_crl(inst, loaded)?;
        println!(
            "   served CRL: {} DER (GET {}; PEM in the publish directory {}), {} entries by \
             x509-cert (serials {} the loaded ones), openssl counts {}, openssl signature check: {}",
            mib(served.der_bytes as u64),
            secs(served.get),
            mib(served.pem_bytes),
            thousands(served.entries_x509 as u64),
            if served.serials_match {
                "are exactly"
            } else {
                "DIFFER from"
            },
            match &served.entries_openssl {
                Ok(c) => thousands(*c as u64),
                Err(e) => format!("FAILED ({e})"),
            },
            served.openssl_verify
        );
        sv.served = Some(served);
    }

    // -- the pre-signing pass --
    let deadline = started + Duration::from_secs(s.presign_wait);
    let mut last_print = Instant::now() - Duration::from_secs(60);
    let mut cached = poller.last().1;
    while poller.reached(n as f64).is_none() && Instant::now() < deadline {
        if last_print.elapsed() >= Duration::from_secs(30) {
            let el = poller.last().0;
            println!(
                "   pre-signing: {} of {} answers cached {:.0} s after start ({:.0}/s), {}, {}",
                thousands(cached as u64),
                thousands(n as u64),
                el,
                cached / el.max(0.001),
                rss_words("daemon", inst.daemon_pid()),
                rss_words("signer", inst.signer_pid())
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(1));
        cached = poller.last().1;
    }
    let reached = poller.reached(n as f64);
    drop(poller);
    let el = reached.unwrap_or_else(|| started.elapsed().as_secs_f64());
    cached = inst.cached_answers().unwrap_or(cached);
    sv.presign_progress = (cached, el);
    sv.rss_daemon = rss(inst.daemon_pid());
    sv.rss_signer = rss(inst.signer_pid());
    if let Some(el) = reached {
        sv.presign = Some(el);
        println!(
            "   pre-signing done: {} answers cached {el:.1} s after the daemon was started \
             (sampled every 0.5 s); {}, {}",
            thousands(cached as u64),
            rss_words("daemon", inst.daemon_pid()),
            rss_words("signer", inst.signer_pid())
        );
        let w = run_wrk(inst, &path, s.seconds)?;
        print_wrk("OCSP after warm-up", &w);
        sv.wrk_after = Some(w);
    } else {
        println!(
            "   pre-signing NOT done within {} s: {} of {} answers cached ({:.0}/s; all of them \
             would take about {:.0} min at that rate); {}, {}",
            s.presign_wait,
            thousands(cached as u64),
            thousands(n as u64),
            cached / el,
            n as f64 / (cached / el).max(1e-9) / 60.0,
            rss_words("daemon", inst.daemon_pid()),
            rss_words("signer", inst.signer_pid())
        );
    }
    // OCSP while a CRL is being published (much of the publish is CPU work
    // on the daemon's async runtime).
    let (w, took) = std::thread::scope(|scope| {
        let inst = &*inst;
        let publisher = scope.spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            inst.publish().map(|(t, _)| t)
        });
        let w = run_wrk(inst, &path, s.seconds);
        let took = publisher
            .join()
            .unwrap_or_else(|_| Err("the publishing thread panicked".into()));
        (w, took)
    });
    let (w, took) = (w?, took?);
    print_wrk(
        &format!("OCSP while one CRL publish ran ({took:.3} s, from 2 s into the window)"),
        &w,
    );
    sv.wrk_during_crl = Some((w, took));
    if reached.is_some() {
        sv.after_publish = publish_runs(inst, "after warm-up", RUNS)?;
    }
    let mine = sv.warm_publish.len() + sv.after_publish.len() + 1;
    sv.background_crls = inst.log_count("CRL published").saturating_sub(mine);
    inst.stop_daemon();
    Ok(sv)
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

fn cell_runs(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (b, m) = best_median(v);
    if v.len() == 1 {
        format!("{b:.3} s")
    } else {
        format!("{b:.3} / {m:.3} s")
    }
}

fn cell_wrk(w: Option<&Wrk>) -> String {
    match w {
        None => "-".into(),
        Some(w) => format!("{:.0} /s, {:.2} / {:.1} ms", w.rps, w.p50_ms, w.p99_ms),
    }
}

fn summary(all: &[Outcome], s: &Settings) {
    println!("\n== Summary (load average {})", loadavg());
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Outcome) -> String| {
        rows.push((name.to_string(), all.iter().map(f).collect()));
    };
    row("certificates (all revoked)", &|o| thousands(o.n as u64));
    row("load into the store", &|o| o.load.map_or("-".into(), secs));
    row("store file", &|o| mib(o.db_bytes));
    row("store scan, in process", &|o| secs(o.scan));
    row("CRL DER size", &|o| mib(o.crl_der as u64));
    row("the 3 CRL files written + fsynced", &|o| {
        o.writes.map_or("-".into(), secs)
    });
    row("CRL publish, quiet daemon (best / median)", &|o| {
        cell_runs(&o.quiet)
    });
    row("served CRL entries (x509-cert / openssl)", &|o| {
        o.serving
            .iter()
            .find_map(|v| v.served.as_ref())
            .map_or("-".into(), |c| {
                format!(
                    "{} / {}",
                    thousands(c.entries_x509 as u64),
                    c.entries_openssl
                        .as_ref()
                        .map_or("failed".into(), |n| thousands(*n as u64))
                )
            })
    });
    for (i, label) in ["with publish_dir", "without publish_dir"]
        .iter()
        .enumerate()
    {
        row(&format!("[{label}] daemon ready after restart"), &|o| {
            o.serving.get(i).map_or("-".into(), |v| secs(v.ready))
        });
        row(
            &format!("[{label}] OCSP during warm-up (p50 / p99)"),
            &|o| cell_wrk(o.serving.get(i).and_then(|v| v.wrk_warmup.as_ref())),
        );
        row(&format!("[{label}] CRL publish during warm-up"), &|o| {
            o.serving
                .get(i)
                .map_or("-".into(), |v| cell_runs(&v.warm_publish))
        });
        row(&format!("[{label}] pre-signing every answer"), &|o| {
            o.serving.get(i).map_or("-".into(), |v| match v.presign {
                Some(t) => format!("{t:.1} s"),
                None => format!(
                    "> {} s ({} done)",
                    s.presign_wait,
                    thousands(v.presign_progress.0 as u64)
                ),
            })
        });
        row(&format!("[{label}] daemon RSS (peak) then"), &|o| {
            o.serving.get(i).map_or("-".into(), |v| {
                format!("{} ({})", mib(v.rss_daemon.0), mib(v.rss_daemon.1))
            })
        });
        row(&format!("[{label}] signer RSS (peak) then"), &|o| {
            o.serving.get(i).map_or("-".into(), |v| {
                format!("{} ({})", mib(v.rss_signer.0), mib(v.rss_signer.1))
            })
        });
        row(&format!("[{label}] OCSP after warm-up (p50 / p99)"), &|o| {
            cell_wrk(o.serving.get(i).and_then(|v| v.wrk_after.as_ref()))
        });
        row(&format!("[{label}] OCSP during a CRL publish"), &|o| {
            o.serving
                .get(i)
                .and_then(|v| v.wrk_during_crl.as_ref())
                .map_or("-".into(), |(w, _)| {
                    format!("{}, max {:.0} ms", cell_wrk(Some(w)), w.max_ms)
                })
        });
        row(&format!("[{label}] CRL publish after warm-up"), &|o| {
            o.serving
                .get(i)
                .map_or("-".into(), |v| cell_runs(&v.after_publish))
        });
    }
    let w0 = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(10);
    for (name, cells) in &rows {
        let mut line = format!("   {name:<w0$}");
        for c in cells {
            line.push_str(&format!("  {c:>32}"));
        }
        println!("{line}");
    }

    println!("\n== Goals");
    for o in all.iter().filter(|o| o.n >= 1_000_000) {
        let quiet = (!o.quiet.is_empty()).then(|| best_median(&o.quiet));
        let verdict = match quiet {
            Some((_, m)) if m <= GOAL_CRL_SECS => "MET",
            Some(_) => "NOT MET",
            None => "NOT MEASURED",
        };
        println!(
            "   1. full CRL of {} revoked certificates generated, signed and published in ≤ {GOAL_CRL_SECS} s: \
             {verdict} (quiet daemon, median {} of {RUNS})",
            thousands(o.n as u64),
            quiet.map_or("-".into(), |(_, m)| format!("{m:.3} s"))
        );
    }
    if !all.iter().any(|o| o.n >= 1_000_000) {
        println!("   1. not measured: no run with 1,000,000 certificates (BENCH_CERTS)");
    }
    let small = all.iter().find(|o| o.n <= 1_000);
    let large = all.iter().filter(|o| o.n > 1_000).max_by_key(|o| o.n);
    let (Some(a), Some(b)) = (small, large) else {
        println!("   2. not measured: needs a run with ≤ 1,000 and one with more certificates");
        return;
    };
    for (i, config) in ["with publish_dir", "without publish_dir"]
        .iter()
        .enumerate()
    {
        let (Some(sa), Some(sb)) = (a.serving.get(i), b.serving.get(i)) else {
            continue;
        };
        for (label, wa, wb) in [
            ("during pre-signing warm-up", &sa.wrk_warmup, &sb.wrk_warmup),
            ("after warm-up", &sa.wrk_after, &sb.wrk_after),
        ] {
            match (wa, wb) {
                (Some(x), Some(y)) => println!(
                    "   2. OCSP cached-answer rate, {config}, {label}: {} certificates {:.0} req/s \
                     (p99 {:.1} ms) vs {} certificates {:.0} req/s (p99 {:.1} ms): {:+.1}%",
                    thousands(a.n as u64),
                    x.rps,
                    x.p99_ms,
                    thousands(b.n as u64),
                    y.rps,
                    y.p99_ms,
                    (y.rps / x.rps - 1.0) * 100.0
                ),
                _ => println!(
                    "   2. OCSP cached-answer rate, {config}, {label}: not measured for both \
                     stores (pre-signing did not finish within {} s)",
                    s.presign_wait
                ),
            }
        }
    }
}

fn main() -> ExitCode {
    let bins = match binaries() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let counts = env_list("BENCH_CERTS", &[1_000, 1_000_000]);
    let settings = Settings {
        seconds: env_num("BENCH_SECONDS", 10).max(1),
        presign_wait: env_num("BENCH_PRESIGN_WAIT", 300),
        der_bytes: env_num("BENCH_DER_BYTES", 64).clamp(8, 60_000) as usize,
        perf: std::env::var_os("BENCH_PERF").map(PathBuf::from),
    };
    if let Some(p) = &settings.perf
        && let Err(e) = std::fs::create_dir_all(p)
    {
        eprintln!("BENCH_PERF={}: {e}", p.display());
        return ExitCode::from(2);
    }
    let parent = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let base = match tempfile::Builder::new()
        .prefix("castellan-revscale-")
        .tempdir_in(&parent)
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a directory in {}: {e}", parent.display());
            return ExitCode::from(2);
        }
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "castellan revocation at scale: soft backend, {cores} cores, certificates {}, wrk \
         {WRK_THREADS} threads x {WRK_CONNECTIONS} connections x {} s, state in {}",
        counts
            .iter()
            .map(|n| thousands(*n as u64))
            .collect::<Vec<_>>()
            .join(" and "),
        settings.seconds,
        base.path().display()
    );
    let mut all = Vec::new();
    for &n in &counts {
        println!(
            "\n== {} certificates, all revoked (load average {})",
            thousands(n as u64),
            loadavg()
        );
        let bins = Bins {
            castellan: bins.castellan.clone(),
            ctl: bins.ctl.clone(),
            signer: bins.signer.clone(),
        };
        match run_n(bins, base.path().join(format!("n{n}")), n, &settings) {
            Ok(o) => all.push(o),
            Err(e) => println!("   FAILED: {e}"),
        }
    }
    summary(&all, &settings);
    if std::env::var_os("BENCH_KEEP").is_some() {
        let kept = base.keep();
        println!("\nstate kept in {}", kept.display());
    }
    ExitCode::SUCCESS
}
