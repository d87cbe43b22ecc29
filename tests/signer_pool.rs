//! The daemon's signer pool against the real `castellan-signer` binary over
//! its real socket (soft backend, 3 custodians, 2 must approve — as
//! `scripts/demo.sh` sets it up), plus a fake signer for what a real one
//! never sends.
//!
//! The signer binary is a sibling of `castellanctl` in the target directory;
//! build it first with `cargo build -p castellan-signer`.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use castellan::signer_pool::{PoolConfig, PoolError, SignerPool};
use castellan_proto::{
    CertificateTemplate, CheckpointRequest, DistinguishedName, ErrorKind, Request, RequestFrame,
    Response, ResponseFrame, SignerError, SubjectAltName, Urls, Validity, encode_frame,
};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound of start-up and of every wait that is not the subject of a test.
const WAIT: Duration = Duration::from_secs(120);
/// Bound of a call while the signer is down: generous, so the test never
/// flakes on a loaded machine; the pool itself fails within its connect
/// timeout (500 ms).
const DOWN_BOUND: Duration = Duration::from_secs(5);

fn signer_binary() -> PathBuf {
    let ctl = Path::new(env!("CARGO_BIN_EXE_castellanctl"));
    let bin = ctl
        .parent()
        .expect("castellanctl lives in a directory")
        .join("castellan-signer");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p castellan-signer` first",
        bin.display()
    );
    bin
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A real signer in a temporary directory; killed when dropped.
struct Signer {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl Drop for Signer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Signer {
    fn start() -> Signer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rng = SystemRandom::new();
        let mut custodian_args = Vec::new();
        for who in ["alice", "bob", "carol"] {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
            let file = root.join(format!("{who}.key.pub"));
            std::fs::write(
                &file,
                format!("ed25519:{} {who}\n", hex::encode(key.public_key().as_ref())),
            )
            .unwrap();
            custodian_args.push("--custodian".to_string());
            custodian_args.push(format!("{who}={}", file.display()));
        }
        let pass = root.join("store.pass");
        std::fs::write(&pass, "pool-test-store-passphrase\n").unwrap();
        let socket = root.join("signer.sock");
        let config = root.join("signer.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nsocket = \"{}\"\ndaemon_uid = {}\n\n[backend]\nkind = \"soft\"\npassphrase_file = \"{}\"\n",
                root.join("signer").display(),
                socket.display(),
                nix::unistd::getuid().as_raw(),
                pass.display()
            ),
        )
        .unwrap();
        let out = Command::new(signer_binary())
            .arg("init")
            .arg("--config")
            .arg(&config)
            .args(["--threshold", "2"])
            .args(&custodian_args)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "castellan-signer init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut signer = Signer {
            dir,
            config,
            socket,
            child: None,
        };
        signer.launch();
        signer
    }

    /// Starts `run` on the existing state and waits until it accepts.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("signer.log"))
            .unwrap();
        let child = Command::new(signer_binary())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if StdUnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "castellan-signer run exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("signer.log")).unwrap_or_default()
                );
            }
            assert!(start.elapsed() < WAIT, "the signer did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the socket file stays behind, as after a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pool(&self) -> SignerPool {
        SignerPool::new(PoolConfig::new(&self.socket))
    }
}

fn checkpoint(sequence: u64) -> Request {
    Request::SignCheckpoint(CheckpointRequest {
        sequence,
        head_hash: [sequence as u8; 32],
        time: now(),
    })
}

fn unknown_issuer_template() -> CertificateTemplate {
    let t = now();
    CertificateTemplate {
        issuer: "no-such-ca".into(),
        profile: "server".into(),
        subject: DistinguishedName::common_name("web.example.internal"),
        sans: vec![SubjectAltName::Dns("web.example.internal".into())],
        spki_der: Vec::new(),
        validity: Validity {
            not_before: t - 60,
            not_after: t + 86_400,
        },
        ca: false,
        urls: Urls::default(),
    }
}

async fn assert_status(pool: &SignerPool) {
    match pool.call(Request::Status).await {
        Ok(Response::Status(s)) => assert_eq!(s.backend, "soft"),
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls_through_four_connections_all_get_their_own_answers() {
    let signer = Signer::start();
    let pool = signer.pool();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // A refusal that names what this request asked for: an
                // answer meant for another request would name another CA.
                let mut t = unknown_issuer_template();
                t.issuer = format!("no-such-ca-{i}");
                match pool.call(Request::IssueCertificate(t)).await {
                    Err(PoolError::Refused(e)) => assert!(
                        e.message.contains(&format!("\"no-such-ca-{i}\"")),
                        "answer to another request: {e:?}"
                    ),
                    other => panic!("issuance {i}: {other:?}"),
                }
            } else {
                match pool.call(Request::Status).await {
                    Ok(Response::Status(_)) => {}
                    other => panic!("status {i}: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.connections_open, 4, "{stats:?}");
    assert_eq!(stats.calls, 200);
    assert_eq!(stats.failures, 0);
    assert_eq!(stats.in_flight, 0);
    assert!(stats.latency_ewma_micros > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_fails_closed_while_the_signer_is_down_and_works_again_after_a_restart() {
    let mut signer = Signer::start();
    let pool = signer.pool();
    assert_status(&pool).await;
    assert!(pool.is_reachable().await);

    signer.kill();
    for i in 0..3u64 {
        let started = Instant::now();
        let result = tokio::time::timeout(DOWN_BOUND, pool.call(checkpoint(i)))
            .await
            .expect("a call while the signer is down must not hang");
        // Reported, not asserted: tests never assert on timing.
        eprintln!(
            "call {i} with the signer down returned in {:?}",
            started.elapsed()
        );
        match result {
            Err(PoolError::Unavailable(m)) => {
                assert!(m.contains(&signer.socket.display().to_string()), "{m}");
                assert!(m.contains("is castellan-signer running?"), "{m}");
                assert!(m.contains("issuance is refused"), "{m}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(!pool.is_reachable().await);
    // Many callers at once while it is down: every one fails, none hangs.
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                tokio::time::timeout(DOWN_BOUND, pool.call(Request::Status)).await
            })
        })
        .collect();
    for t in burst {
        assert!(matches!(
            t.await.unwrap(),
            Ok(Err(PoolError::Unavailable(_)))
        ));
    }
    // A connection the calls above did not use learns of the signer's end
    // when its reader next runs: wait (bounded) for that, do not race it.
    let deadline = Instant::now() + DOWN_BOUND;
    while pool.stats().connections_open != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pool.stats().connections_open, 0);

    signer.launch();
    assert_status(&pool).await;
    match pool.call(checkpoint(42)).await {
        Ok(Response::Checkpoint(c)) => assert_eq!(c.request.sequence, 42),
        other => panic!("after the restart: {other:?}"),
    }
    assert!(pool.is_reachable().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_signer_never_ran_fails_closed_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let pool = SignerPool::new(PoolConfig::new(&socket));
    let result = tokio::time::timeout(DOWN_BOUND, pool.call(Request::Status))
        .await
        .expect("must not hang");
    match result {
        Err(e @ PoolError::Unavailable(_)) => assert_eq!(
            e.to_string(),
            format!(
                "signer unavailable at {}: the socket does not exist; is castellan-signer running? issuance is refused until it is back",
                socket.display()
            )
        ),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_carries_the_signers_message_and_the_pool_stays_healthy() {
    let signer = Signer::start();
    let pool = signer.pool();
    match pool
        .call(Request::IssueCertificate(unknown_issuer_template()))
        .await
    {
        Err(PoolError::Refused(e)) => {
            assert_eq!(e.kind, ErrorKind::Policy);
            assert!(e.message.contains("no-such-ca"), "{}", e.message);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_status(&pool).await;
    match pool.call(checkpoint(7)).await {
        Ok(Response::Checkpoint(c)) => assert_eq!(c.request.sequence, 7),
        other => panic!("{other:?}"),
    }
    let stats = pool.stats();
    assert_eq!(stats.failures, 0, "a refusal is an answer, not a failure");
    assert_eq!(stats.calls, 3);
}

/// The next request frame on a fake signer's connection; `None` once the
/// pool closed it.
async fn read_request(s: &mut tokio::net::UnixStream) -> Option<RequestFrame> {
    let mut header = [0u8; 10];
    s.read_exact(&mut header).await.ok()?;
    let len = castellan_proto::frame::parse_header(&header).unwrap();
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    Some(castellan_proto::frame::decode_payload(&payload).unwrap())
}

/// A fake signer that reads one request frame and answers with `reply`
/// (built from the request id), then keeps the connection open, or closes
/// it when `hang_up`.
async fn fake_signer(
    reply: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static,
    hang_up: bool,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let reply = std::sync::Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let Some(req) = read_request(&mut s).await else {
                    return;
                };
                s.write_all(&reply(req.id)).await.unwrap();
                if !hang_up {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                }
            });
        }
    });
    (dir, socket)
}

async fn call_fake_with(
    reply: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static,
    hang_up: bool,
    request_timeout: Duration,
) -> PoolError {
    let (_dir, socket) = fake_signer(reply, hang_up).await;
    let mut cfg = PoolConfig::new(&socket);
    cfg.request_timeout = request_timeout;
    let pool = SignerPool::new(cfg);
    let e = tokio::time::timeout(DOWN_BOUND, pool.call(Request::Status))
        .await
        .expect("must not hang")
        .expect_err("the fake signer never answers properly");
    assert_eq!(pool.stats().connections_open, 0, "the connection was kept");
    e
}

async fn call_fake(reply: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static) -> PoolError {
    call_fake_with(reply, false, Duration::from_secs(30)).await
}

fn header(len: u32) -> Vec<u8> {
    let mut h = b"CSTL".to_vec();
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_a_broken_signer_sends_fails_the_call_without_panicking() {
    // Not a castellan frame.
    let e = call_fake(|_| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
    assert!(matches!(e, PoolError::Protocol(_)), "{e:?}");
    // A length above MAX_PAYLOAD: refused before allocating.
    let e = call_fake(|_| header(u32::MAX)).await;
    assert!(matches!(e, PoolError::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
    // A payload that is not a ResponseFrame.
    let e = call_fake(|_| {
        let mut f = header(3);
        f.extend_from_slice(&[0xff, 0xff, 0xff]);
        f
    })
    .await;
    assert!(matches!(e, PoolError::Protocol(_)), "{e:?}");
    // The signer rejected our frame: id 0, Protocol error, then it closes.
    let e = call_fake(|_| {
        encode_frame(&ResponseFrame {
            id: 0,
            response: Response::Error(SignerError {
                kind: ErrorKind::Protocol,
                message: "bad frame: frame truncated; closing the connection".into(),
            }),
        })
        .unwrap()
    })
    .await;
    match e {
        PoolError::Protocol(m) => assert!(m.contains("frame truncated"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The signer refused the connection itself (wrong uid): id 0, Policy.
    let e = call_fake(|_| {
        encode_frame(&ResponseFrame {
            id: 0,
            response: Response::Error(SignerError {
                kind: ErrorKind::Policy,
                message: "uid 1000 may not use the signer".into(),
            }),
        })
        .unwrap()
    })
    .await;
    match e {
        PoolError::Unavailable(m) => assert!(m.contains("uid 1000 may not"), "{m}"),
        other => panic!("{other:?}"),
    }
    // An answer to a request never sent.
    let e = call_fake(|id| {
        encode_frame(&ResponseFrame {
            id: id + 1000,
            response: Response::Status(castellan_proto::StatusInfo {
                version: "x".into(),
                backend: "x".into(),
                seccomp: false,
                journal_records: 0,
                journal_head: [0; 32],
                ca_count: 0,
                custodian_threshold: 0,
                custodian_count: 0,
            }),
        })
        .unwrap()
    })
    .await;
    assert!(e.to_string().contains("never sent"), "{e}");
    // An answer of the wrong kind.
    let e = call_fake(|id| {
        encode_frame(&ResponseFrame {
            id,
            response: Response::Crl { der: Vec::new() },
        })
        .unwrap()
    })
    .await;
    assert!(matches!(e, PoolError::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("a CRL"), "{e}");
    // The connection ends half-way through an answer.
    let e = call_fake_with(|_| b"CSTL\x01".to_vec(), true, Duration::from_secs(30)).await;
    assert!(matches!(e, PoolError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("middle of an answer"), "{e}");
    // Half an answer and then silence: the request times out.
    let e = call_fake_with(|_| header(100), false, Duration::from_millis(300)).await;
    assert!(matches!(e, PoolError::Timeout(_)), "{e:?}");
    assert!(e.to_string().contains("may still carry it out"), "{e}");
}

/// What the staging fake signer received: (request kind, offset or staged
/// count, entries).
type Received =
    std::sync::Arc<std::sync::Mutex<Vec<(&'static str, u64, Vec<castellan_proto::CrlEntry>)>>>;

/// A fake signer that stages CRL entries as the real one does and answers
/// the final request with `der` (stored, read back in parts, when larger
/// than one part would be inline): checks the daemon's side of staging,
/// pipelining and read-back without keys.
async fn staging_fake_signer(der: Vec<u8>) -> (tempfile::TempDir, PathBuf, Received) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let received: Received = Default::default();
    let log = received.clone();
    let der = std::sync::Arc::new(der);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (log, der) = (log.clone(), der.clone());
            tokio::spawn(async move {
                while let Some(req) = read_request(&mut s).await {
                    let stored = || Response::CrlStored {
                        crl_number: 5,
                        length: der.len() as u64,
                        sha256: ring::digest::digest(&ring::digest::SHA256, &der)
                            .as_ref()
                            .try_into()
                            .unwrap(),
                    };
                    let response = match req.request {
                        Request::StageCrlEntries(c) => {
                            let mut l = log.lock().unwrap();
                            l.push(("stage", c.offset, c.entries.to_vec()));
                            let staged = l.iter().map(|(_, _, e)| e.len() as u64).sum();
                            Response::CrlStaged {
                                crl_number: c.crl_number,
                                staged,
                            }
                        }
                        Request::SignStagedCrl(r) => {
                            log.lock().unwrap().push((
                                "sign-staged",
                                r.staged,
                                r.crl.entries.to_vec(),
                            ));
                            stored()
                        }
                        Request::SignCrl(r) => {
                            log.lock().unwrap().push(("sign", 0, r.entries.to_vec()));
                            Response::Crl { der: der.to_vec() }
                        }
                        Request::ReadCrl { offset, length, .. } => Response::CrlPart {
                            bytes: der[offset as usize..offset as usize + length as usize].to_vec(),
                        },
                        other => panic!("unexpected request {other:?}"),
                    };
                    let frame = encode_frame(&ResponseFrame {
                        id: req.id,
                        response,
                    })
                    .unwrap();
                    if s.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (dir, socket, received)
}

fn crl_entries(n: usize) -> Vec<castellan_proto::CrlEntry> {
    (0..n)
        .map(|i| castellan_proto::CrlEntry {
            serial: (i as u64 + 1).to_be_bytes().to_vec(),
            revoked_at: 1_767_000_000 + i as i64,
            reason: None,
            invalidity_date: (i % 2 == 0).then_some(1_766_000_000),
        })
        .collect()
}

/// CRL 5 of `entries` through a pool whose signer is a staging fake that
/// answers with `der`: (DER, SHA-256, what the fake received).
async fn sign_with_fake(
    entries: &std::sync::Arc<Vec<castellan_proto::CrlEntry>>,
    der: Vec<u8>,
) -> (Vec<u8>, [u8; 32], Received) {
    let (_dir, socket, received) = staging_fake_signer(der).await;
    let pool = SignerPool::new(PoolConfig::new(&socket));
    let (der, sha256) = pool
        .sign_crl(castellan::signer_pool::CrlToSign {
            issuer: "issuing".into(),
            crl_number: 5,
            this_update: 1_767_000_000,
            next_update: 1_767_086_400,
            entries: entries.clone(),
        })
        .await
        .expect("signed");
    (der, sha256, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_crl_is_staged_in_order_signed_once_and_read_back_in_parts() {
    // More entries than two chunks hold, and a DER larger than two parts.
    let n = castellan_proto::CRL_CHUNK_ENTRIES * 2 + 12_345;
    let entries = std::sync::Arc::new(crl_entries(n));
    let der: Vec<u8> = (0..castellan_proto::MAX_CRL_PART as usize * 2 + 777)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let (got, sha256, received) = sign_with_fake(&entries, der.clone()).await;
    assert!(got == der, "the DER read back is the signer's");
    assert_eq!(
        &sha256[..],
        ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
    );
    let received = received.lock().unwrap();
    let kinds: Vec<(&str, u64)> = received.iter().map(|(k, at, _)| (*k, *at)).collect();
    let chunk = castellan_proto::CRL_CHUNK_ENTRIES as u64;
    assert_eq!(
        kinds,
        vec![("stage", 0), ("stage", chunk), ("sign-staged", 2 * chunk)],
        "two chunks at their offsets, then the rest with the staged count"
    );
    let sent: Vec<castellan_proto::CrlEntry> = received
        .iter()
        .flat_map(|(_, _, e)| e.iter().cloned())
        .collect();
    assert!(sent == *entries, "every entry sent once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_crl_goes_in_one_request() {
    let entries = std::sync::Arc::new(crl_entries(10));
    let (got, _, received) = sign_with_fake(&entries, b"small crl".to_vec()).await;
    assert_eq!(got, b"small crl");
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, "sign");
    assert!(received[0].2 == *entries);
}
