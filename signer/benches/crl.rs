//! A CRL of a million entries: how long the signer takes to build, check,
//! sign, verify and journal it, in process and through its real socket
//! (soft backend, ECDSA P-256). Prints figures; asserts nothing but that the
//! CRL came back whole.
//!
//!     cargo bench -p castellan-signer --bench crl
//!
//! Environment: `BENCH_CRL_ENTRIES` (default 1,000,000), `BENCH_RUNS`
//! (default 3; the best and the median are shown).
//!
//! Every entry has a 16-octet random serial, a random revocation time in
//! the past year and a reason code, as a CA's real CRL would.
//!
//! - in process, by phase: writing the entries' DER (`CrlEntries::push`),
//!   assembling and checking the TBS (`build_crl_from`), signing with the
//!   backend plus verifying the signature and the signed structure
//!   (`CheckedTbs::sign`); then the whole `Signer::handle(SignCrl)` (all of
//!   that, the CRL-number policy and the journal's fsync, and the SHA-256 of
//!   the stored DER).
//! - socket: what the daemon's `SignerPool::sign_crl` does, over the real
//!   socket of the real `castellan-signer` under seccomp: stage the entries
//!   in chunks (`castellan_proto::crl_chunks`), sign the staged CRL, read the
//!   DER back in parts and check its SHA-256.
//!
//! In-process figures run in a child process of this program, after the
//! socket signer stopped (the soft store admits one process at a time).

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use castellan_proto::*;
use castellan_signer::config::Config;
use castellan_signer::service::Signer as InProcessSigner;
use castellan_signer::x509::{self, CrlEntries, CrlEntrySpec, IssuerKey};
use common::{call, init, load_average, now, open_backend, start};
use ring::rand::SecureRandom;

fn entries_wanted() -> usize {
    std::env::var("BENCH_CRL_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1)
}

fn entries(n: usize) -> Vec<CrlEntry> {
    let rng = ring::rand::SystemRandom::new();
    let mut random = vec![0u8; n * 20];
    rng.fill(&mut random).expect("random");
    let t = now();
    random
        .chunks_exact(20)
        .map(|r| {
            let mut serial = r[..16].to_vec();
            serial[0] = (serial[0] & 0x7f) | 0x40;
            let age = i64::from(u32::from_le_bytes([r[16], r[17], r[18], 0])) % (365 * 86_400);
            CrlEntry {
                serial,
                revoked_at: t - 3600 - age,
                reason: Some(RevocationReason::ALL[r[19] as usize % 7]),
                invalidity_date: None,
            }
        })
        .collect()
}

fn crl_request(crl_number: u64, entries: Vec<CrlEntry>) -> CrlRequest {
    let t = now();
    CrlRequest {
        issuer: "root".into(),
        crl_number,
        this_update: t - 60,
        next_update: t + 7 * 86_400,
        entries: entries.into(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Best and median of each column over the runs.
fn summary(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let cols = rows[0].len();
    let mut best = Vec::new();
    let mut median = Vec::new();
    for c in 0..cols {
        let mut v: Vec<f64> = rows.iter().map(|r| r[c]).collect();
        v.sort_by(f64::total_cmp);
        best.push(v[0]);
        median.push(v[v.len() / 2]);
    }
    (best, median)
}

/// The daemon's protocol (`SignerPool::sign_crl`), synchronously. Returns
/// the DER and the time spent staging, signing and reading.
fn sign_through_socket(s: &mut UnixStream, r: CrlRequest) -> (Vec<u8>, [Duration; 3]) {
    let started = Instant::now();
    let CrlRequest {
        issuer,
        crl_number,
        this_update,
        next_update,
        entries,
    } = r;
    let sizes: Vec<usize> = crl_chunks(&entries).iter().map(|c| c.len()).collect();
    let mut entries = entries.iter();
    let mut offset = 0u64;
    for (i, &size) in sizes[..sizes.len() - 1].iter().enumerate() {
        let answer = call(
            s,
            i as u64,
            Request::StageCrlEntries(CrlChunk {
                issuer: issuer.clone(),
                crl_number,
                offset,
                entries: entries
                    .by_ref()
                    .take(size)
                    .cloned()
                    .collect::<Vec<_>>()
                    .into(),
            }),
        );
        offset += size as u64;
        assert_eq!(
            answer,
            Response::CrlStaged {
                crl_number,
                staged: offset
            }
        );
    }
    let staging = started.elapsed();
    let final_request = CrlRequest {
        issuer: issuer.clone(),
        crl_number,
        this_update,
        next_update,
        entries: entries.cloned().collect::<Vec<_>>().into(),
    };
    let request = if sizes.len() == 1 {
        Request::SignCrl(final_request)
    } else {
        Request::SignStagedCrl(StagedCrlRequest {
            crl: final_request,
            staged: offset,
        })
    };
    let answer = call(s, 1 << 32, request);
    let signing = started.elapsed() - staging;
    let der = match answer {
        Response::Crl { der } => der,
        Response::CrlStored { length, sha256, .. } => {
            let mut der = Vec::with_capacity(length as usize);
            while (der.len() as u64) < length {
                let part = (length - der.len() as u64).min(u64::from(MAX_CRL_PART)) as u32;
                match call(
                    s,
                    2 << 32,
                    Request::ReadCrl {
                        issuer: issuer.clone(),
                        crl_number,
                        offset: der.len() as u64,
                        length: part,
                    },
                ) {
                    Response::CrlPart { bytes } => der.extend_from_slice(&bytes),
                    other => panic!("ReadCrl: {other:?}"),
                }
            }
            assert_eq!(
                ring::digest::digest(&ring::digest::SHA256, &der).as_ref(),
                sha256,
                "the CRL read back does not match its SHA-256"
            );
            der
        }
        other => panic!("signing the CRL: {other:?}"),
    };
    let reading = started.elapsed() - staging - signing;
    (der, [staging, signing, reading])
}

/// Child mode: the in-process figures for the signer initialised in `dir`.
/// Prints one line per run: write, build+check, sign+verify, whole handle
/// (milliseconds), then the DER's length.
fn child(dir: &Path, first_number: u64) {
    let cfg = Config::load(&dir.join("signer.toml")).expect("config");
    let backend = open_backend(&cfg);
    // The phases, with a key of their own so the signer's CRL numbers are
    // untouched.
    let spki = backend
        .generate("bench-crl", Algorithm::EcdsaP256)
        .expect("generate");
    let key = IssuerKey {
        key_label: "bench-crl".into(),
        key_id: "bench-crl".into(),
        algorithm: Algorithm::EcdsaP256,
        spki_der: spki,
        name_der: x509::encode_name(&DistinguishedName::common_name("bench CRL issuer"))
            .expect("name"),
    };
    let n = entries_wanted();
    let mut phases = Vec::new();
    for _ in 0..runs() {
        let list = entries(n);
        let t0 = Instant::now();
        let mut written = CrlEntries::new();
        written.reserve(list.len());
        for e in &list {
            written
                .push(&CrlEntrySpec {
                    serial: &e.serial,
                    revoked_at: e.revoked_at,
                    reason_code: e.reason.map(RevocationReason::code),
                    invalidity_date: e.invalidity_date,
                })
                .expect("entry");
        }
        let t1 = Instant::now();
        let t = now();
        let tbs = x509::build_crl_from(&key, 1, t - 60, t + 86_400, written).expect("build");
        let t2 = Instant::now();
        let signed = tbs.sign(backend.as_ref(), &key).expect("sign");
        let t3 = Instant::now();
        drop(signed);
        phases.push([t1 - t0, t2 - t1, t3 - t2]);
    }
    drop(backend);
    let signer = InProcessSigner::open(&cfg.state_dir, open_backend(&cfg), cfg.profiles.clone())
        .expect("signer");
    for (i, p) in phases.iter().enumerate() {
        let request = Request::SignCrl(crl_request(first_number + i as u64, entries(n)));
        let t0 = Instant::now();
        let answer = signer.handle(request);
        let whole = t0.elapsed();
        let length = match answer {
            Response::CrlStored { length, .. } => length,
            Response::Crl { der } => der.len() as u64,
            other => panic!("SignCrl in process: {other:?}"),
        };
        println!(
            "{} {} {} {} {length}",
            ms(p[0]),
            ms(p[1]),
            ms(p[2]),
            ms(whole)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let first = args[i + 2].parse().expect("number");
        child(Path::new(&args[i + 1]), first);
        return;
    }
    // `cargo test --benches` lists or runs benches with other flags: do nothing.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let n = entries_wanted();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("soft");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let custodians = init(&dir, "soft", "bench");
    println!(
        "castellan-signer: a CRL of {n} entries (16-octet random serials, revocation time and reason on each), soft backend, ECDSA P-256, {} runs, load average {}",
        runs(),
        load_average()
    );

    let running = start(&dir, &custodians);
    let mut s = UnixStream::connect(&running.socket).expect("connect");
    let mut rows = Vec::new();
    let mut length = 0;
    for run in 0..runs() {
        let list = entries(n);
        let request = crl_request(run as u64 + 1, list.clone());
        let (der, [staging, signing, reading]) = sign_through_socket(&mut s, request);
        length = der.len();
        rows.push(vec![
            ms(staging),
            ms(signing),
            ms(reading),
            ms(staging + signing + reading),
        ]);
    }
    drop(s);
    drop(running);
    let chunks = crl_chunks(&entries(n)).len();

    let out = Command::new(std::env::current_exe().expect("exe"))
        .arg("--child")
        .arg(&dir)
        .arg((runs() + 1).to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    let in_process: Vec<Vec<f64>> = text
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .filter(|v: &Vec<f64>| v.len() == 5)
        .collect();
    assert!(!in_process.is_empty(), "in-process child failed: {text}");

    println!(
        "DER of {:.1} MB; {chunks} frames of entries; read back in parts of {} MiB",
        length as f64 / 1e6,
        MAX_CRL_PART / (1024 * 1024)
    );
    let (best, median) = summary(&in_process);
    println!(
        "{:<22} {:>14} {:>16} {:>14} {:>22}",
        "in process (ms)",
        "write entries",
        "build+check TBS",
        "sign+verify",
        "whole SignCrl+journal"
    );
    for (label, v) in [("  best", &best), ("  median", &median)] {
        println!(
            "{label:<22} {:>14.0} {:>16.0} {:>14.0} {:>22.0}",
            v[0], v[1], v[2], v[3]
        );
    }
    let (best, median) = summary(&rows);
    println!(
        "{:<22} {:>14} {:>16} {:>14} {:>22}",
        "socket (ms)", "stage chunks", "sign staged", "read parts", "total"
    );
    for (label, v) in [("  best", &best), ("  median", &median)] {
        println!(
            "{label:<22} {:>14.0} {:>16.0} {:>14.0} {:>22.0}",
            v[0], v[1], v[2], v[3]
        );
    }
}
