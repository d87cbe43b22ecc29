//! Signer throughput: signatures per second through the signer's socket
//! (32 concurrent clients) against the same backend used in process, side
//! by side in one run. Prints a table; asserts nothing.
//!
//!     cargo bench -p castellan-signer --bench throughput
//!
//! Environment: `BENCH_SECONDS` (default 5) per figure, `BENCH_CLIENTS`
//! (default 32).
//!
//! Columns, all ECDSA P-256, all with 32 threads:
//! - `raw sign`: `Backend::sign` called in process (ring inside the soft
//!   store; cryptoki → SoftHSM2).
//! - `path in-proc`: the signer's whole signing path called in process
//!   (`Signer::handle(SignOcsp)`: build the OCSP DER, sign, verify the
//!   signature, journal with fsync) — no socket.
//! - `socket`: the same request through the real `castellan-signer` under
//!   seccomp, one connection per client.
//! - `socket issue`: `IssueCertificate` through the socket.
//!
//! In-process figures run in a child process of this program so that each
//! backend gets its own environment (`SOFTHSM2_CONF`).

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use castellan_proto::*;
use castellan_signer::backend::Backend;
use castellan_signer::config::Config;
use castellan_signer::service::Signer as InProcessSigner;
use common::{Running, call, init, load_average, now, open_backend, start};
use ring::signature::KeyPair;

fn secs() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn clients() -> usize {
    std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32)
}

/// Runs `clients` threads calling `op` until the time is up; returns ops/s.
fn drive(op: impl Fn(u64) + Send + Sync + 'static) -> f64 {
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients())
        .map(|t| {
            let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = (t as u64) << 40;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    op(n);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs()));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn ocsp_request(n: u64) -> Request {
    let t = now();
    Request::SignOcsp(OcspBatch {
        issuer: "root".into(),
        produced_at: t,
        responses: vec![OcspTemplate {
            singles: vec![SingleStatus {
                hash: CertIdHash::Sha1,
                serial: n.to_be_bytes().to_vec(),
                status: CertStatus::Good,
                this_update: t,
                next_update: Some(t + 3600),
            }],
            nonce: None,
        }],
    })
}

fn issue_request(spki: &[u8]) -> Request {
    let t = now();
    Request::IssueCertificate(CertificateTemplate {
        issuer: "root".into(),
        profile: "server".into(),
        subject: DistinguishedName::common_name("bench.example"),
        sans: vec![SubjectAltName::Dns("bench.example".into())],
        spki_der: spki.to_vec(),
        validity: Validity {
            not_before: t - 60,
            not_after: t + 86_400,
        },
        ca: false,
        urls: Urls::default(),
    })
}

fn through_socket(running: &Running, make: fn(u64, &[u8]) -> Request) -> f64 {
    let socket = running.socket.clone();
    let spki = leaf_spki();
    drive(move |n| {
        thread_local!(static CONN: std::cell::RefCell<Option<UnixStream>> = const { std::cell::RefCell::new(None) });
        CONN.with(|c| {
            let mut c = c.borrow_mut();
            let s = c.get_or_insert_with(|| UnixStream::connect(&socket).expect("connect"));
            if let Response::Error(e) = call(s, n, make(n, &spki)) {
                panic!("signer refused: {e}");
            }
        })
    })
}

fn leaf_spki() -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pk = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("k");
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pk.as_ref(), &rng).expect("k");
    let mut spki =
        hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
    spki.extend_from_slice(pair.public_key().as_ref());
    spki
}

/// Child mode: the in-process figures for the signer initialised in `dir`.
/// Prints "<raw sign/s> <signing path/s>".
fn child(dir: &Path) {
    let cfg = Config::load(&dir.join("signer.toml")).expect("config");
    let open = || open_backend(&cfg);
    let backend = open();
    backend
        .generate("bench-raw", Algorithm::EcdsaP256)
        .expect("generate");
    let backend: Arc<dyn Backend> = Arc::from(backend);
    let msg = vec![0x5au8; 400];
    let b = Arc::clone(&backend);
    let raw = drive(move |_| {
        b.sign("bench-raw", &msg).expect("sign");
    });
    drop(backend);
    // A fresh open for the signing path (the raw backend above is dropped
    // so the store's lock is free).
    let backend = open();
    let signer = Arc::new(
        InProcessSigner::open(&cfg.state_dir, backend, cfg.profiles.clone()).expect("signer"),
    );
    // The CA was made through the socket by the parent before this child ran.
    let s = Arc::clone(&signer);
    let path = drive(move |n| {
        if let Response::Error(e) = s.handle(ocsp_request(n)) {
            panic!("refused: {e}");
        }
    });
    println!("{raw} {path}");
}

fn in_process(dir: &Path) -> (f64, f64) {
    let out = Command::new(std::env::current_exe().expect("exe"))
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .arg("--child")
        .arg(dir)
        .stderr(Stdio::null())
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<f64>().ok());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("in-process child failed: {text}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(Path::new(&args[i + 1]));
        return;
    }
    // `cargo test --benches` lists or runs benches with other flags: do nothing.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    println!(
        "castellan-signer throughput: {} clients, {} s per figure, ECDSA P-256, load average {}",
        clients(),
        secs(),
        load_average()
    );
    println!(
        "{:<9} {:>12} {:>14} {:>12} {:>14} {:>10} {:>10}",
        "backend", "raw sign", "path in-proc", "socket", "socket issue", "sock/path", "sock/raw"
    );
    for (backend, label) in [("soft", "soft"), ("pkcs11", "softhsm2")] {
        let dir = tmp.path().join(label);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let custodians = init(&dir, backend, "bench");
        let running = start(&dir, &custodians);
        let socket = through_socket(&running, |n, _| ocsp_request(n));
        let issue = through_socket(&running, |_, spki| issue_request(spki));
        drop(running);
        let (raw, path) = in_process(&dir);
        println!(
            "{:<9} {:>10.0}/s {:>12.0}/s {:>10.0}/s {:>12.0}/s {:>9.0}% {:>9.0}%",
            label,
            raw,
            path,
            socket,
            issue,
            100.0 * socket / path,
            100.0 * socket / raw
        );
    }
}
