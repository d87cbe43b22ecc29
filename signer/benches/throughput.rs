//! Signer throughput: signatures per second through the signer's socket
//! (32 concurrent clients) against the same backend used in process, side
//! by side in one run. Prints a table; asserts nothing.
//!
//!     cargo bench -p castellan-signer --bench throughput
//!
//! Environment: `BENCH_SECONDS` (default 5) per measurement, `BENCH_CLIENTS`
//! (default 32).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use castellan_proto::*;
use castellan_signer::backend::Backend;
use castellan_signer::backend::pkcs11::{Pkcs11Backend, softhsm_test_token};
use castellan_signer::backend::soft::SoftBackend;
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::SecretString;

const PIN: &str = "1234";

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

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Signer {
    child: Child,
    socket: PathBuf,
}

impl Drop for Signer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(s: &mut UnixStream, id: u64, request: Request) -> Response {
    write_frame(s, &RequestFrame { id, request }).expect("write");
    let f: ResponseFrame = read_frame(s).expect("read");
    f.response
}

/// Starts a real signer with a root CA, an OCSP responder, and returns it.
fn start(dir: &Path, backend: &str) -> Signer {
    let bin = env!("CARGO_BIN_EXE_castellan-signer");
    let mut custodians = Vec::new();
    let rng = ring::rand::SystemRandom::new();
    for name in ["a", "b", "c"] {
        let pk = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let pair = Ed25519KeyPair::from_pkcs8(pk.as_ref()).expect("pkcs8");
        std::fs::write(
            dir.join(format!("{name}.pub")),
            format!("ed25519:{}\n", hex::encode(pair.public_key())),
        )
        .expect("write");
        custodians.push(pair);
    }
    std::fs::write(dir.join("secret"), format!("{PIN}\n")).expect("write");
    let backend_toml = match backend {
        "soft" => format!(
            "kind = \"soft\"\npassphrase_file = \"{}/secret\"\n",
            dir.display()
        ),
        _ => format!(
            "kind = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"bench\"\npin_file = \"{}/secret\"\n",
            dir.display()
        ),
    };
    let socket = dir.join("signer.sock");
    std::fs::write(
        dir.join("signer.toml"),
        format!(
            "state_dir = \"{}/state\"\nsocket = \"{}\"\ndaemon_uid = {}\n[backend]\n{backend_toml}",
            dir.display(),
            socket.display(),
            nix::unistd::getuid().as_raw()
        ),
    )
    .expect("write");
    let conf = dir.join("softhsm2.conf");
    let status = Command::new(bin)
        .env("SOFTHSM2_CONF", &conf)
        .args(["init", "--config"])
        .arg(dir.join("signer.toml"))
        .args(["--threshold", "2"])
        .args(["a", "b", "c"].iter().flat_map(|n| {
            [
                "--custodian".to_string(),
                format!("{n}={}/{n}.pub", dir.display()),
            ]
        }))
        .status()
        .expect("init");
    assert!(status.success(), "signer init failed");
    let child = Command::new(bin)
        .env("SOFTHSM2_CONF", &conf)
        .args(["run", "--config"])
        .arg(dir.join("signer.toml"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let signer = Signer { child, socket };
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&signer.socket).is_err() {
        assert!(Instant::now() < deadline, "signer did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = UnixStream::connect(&signer.socket).expect("connect");
    let op = CeremonyOp::CreateRoot(CaParams {
        ca_id: "root".into(),
        parent: None,
        algorithm: Algorithm::EcdsaP256,
        subject: DistinguishedName::common_name("bench root"),
        validity: Validity {
            not_before: now() - 3600,
            not_after: now() + 86_400 * 365,
        },
        path_len: None,
        urls: Urls::default(),
    });
    let id = [7u8; 16];
    let approvals = custodians[..2]
        .iter()
        .map(|k| Approval {
            custodian: k.public_key().as_ref().try_into().expect("32"),
            signature: k.sign(&statement(&id, &op)).as_ref().to_vec(),
        })
        .collect();
    let r = call(
        &mut s,
        1,
        Request::Ceremony {
            op,
            proof: QuorumProof {
                ceremony_id: id,
                approvals,
            },
        },
    );
    assert!(matches!(r, Response::Ceremony(_)), "root ceremony: {r:?}");
    let r = call(
        &mut s,
        2,
        Request::RotateOcspResponder(ResponderParams {
            issuer: "root".into(),
            validity: Validity {
                not_before: now() - 60,
                not_after: now() + 86_400 * 30,
            },
            algorithm: Algorithm::EcdsaP256,
        }),
    );
    assert!(matches!(r, Response::Responder(_)), "responder: {r:?}");
    signer
}

/// Runs `clients` threads calling `op` until the time is up; returns ops/s.
fn drive(clients: usize, op: impl Fn(&mut u64) -> u64 + Send + Sync + 'static) -> f64 {
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (op, stop, done) = (op.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut state = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    done.fetch_add(op(&mut state), Ordering::Relaxed);
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

fn through_socket(signer: &Signer, kind: &str) -> f64 {
    let socket = signer.socket.clone();
    let kind = kind.to_string();
    let spki = {
        let rng = ring::rand::SystemRandom::new();
        let pk = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .expect("k");
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pk.as_ref(),
            &rng,
        )
        .expect("k");
        let mut spki =
            hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex");
        spki.extend_from_slice(pair.public_key().as_ref());
        spki
    };
    let conns: Arc<std::sync::Mutex<Vec<UnixStream>>> = Arc::new(std::sync::Mutex::new(Vec::new()));
    drive(clients(), move |state| {
        thread_local!(static CONN: std::cell::RefCell<Option<UnixStream>> = const { std::cell::RefCell::new(None) });
        CONN.with(|c| {
            let mut c = c.borrow_mut();
            let s = c.get_or_insert_with(|| {
                let s = UnixStream::connect(&socket).expect("connect");
                if let Ok(mut v) = conns.lock() {
                    v.push(s.try_clone().expect("clone"));
                }
                s
            });
            *state += 1;
            let t = now();
            let req = match kind.as_str() {
                "issue" => Request::IssueCertificate(CertificateTemplate {
                    issuer: "root".into(),
                    profile: "server".into(),
                    subject: DistinguishedName::common_name("bench.example"),
                    sans: vec![SubjectAltName::Dns("bench.example".into())],
                    spki_der: spki.clone(),
                    validity: Validity {
                        not_before: t - 60,
                        not_after: t + 86_400,
                    },
                    ca: false,
                    urls: Urls::default(),
                }),
                _ => Request::SignOcsp(OcspBatch {
                    issuer: "root".into(),
                    produced_at: t,
                    responses: vec![OcspTemplate {
                        singles: vec![SingleStatus {
                            hash: CertIdHash::Sha1,
                            serial: state.to_be_bytes().to_vec(),
                            status: CertStatus::Good,
                            this_update: t,
                            next_update: Some(t + 3600),
                        }],
                        nonce: None,
                    }],
                }),
            };
            match call(s, *state, req) {
                Response::Error(e) => panic!("signer refused: {e}"),
                _ => 1,
            }
        })
    })
}

fn in_process(backend: Arc<dyn Backend>, label: String) -> f64 {
    let msg = vec![0x5au8; 400];
    drive(clients(), move |_| {
        backend.sign(&label, &msg).expect("sign");
        1
    })
}

fn ring_direct() -> f64 {
    let rng = ring::rand::SystemRandom::new();
    let pk = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .expect("k");
    let pair = Arc::new(
        ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pk.as_ref(),
            &rng,
        )
        .expect("k"),
    );
    let msg = vec![0x5au8; 400];
    drive(clients(), move |_| {
        let rng = ring::rand::SystemRandom::new();
        pair.sign(&rng, &msg).expect("sign");
        1
    })
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    println!(
        "castellan-signer throughput, {} clients, {} s per figure, ECDSA P-256",
        clients(),
        secs()
    );
    println!(
        "{:<10} {:>16} {:>16} {:>16} {:>16} {:>8}",
        "backend", "in-process", "socket:ocsp", "socket:issue", "ring direct", "ocsp/in"
    );

    // soft
    let soft_dir = tmp.path().join("soft");
    std::fs::create_dir_all(&soft_dir).expect("mkdir");
    let signer = start(&soft_dir, "soft");
    let ocsp = through_socket(&signer, "ocsp");
    let issue = through_socket(&signer, "issue");
    drop(signer);
    let store = tmp.path().join("soft-inproc");
    let pass = SecretString::from("bench-passphrase".to_string());
    let soft: Arc<dyn Backend> = Arc::new(SoftBackend::create(&store, &pass).expect("store"));
    soft.generate("k", Algorithm::EcdsaP256).expect("gen");
    let inproc = in_process(soft, "k".into());
    let ring_rate = ring_direct();
    println!(
        "{:<10} {:>14.0}/s {:>14.0}/s {:>14.0}/s {:>14.0}/s {:>7.0}%",
        "soft",
        inproc,
        ocsp,
        issue,
        ring_rate,
        100.0 * ocsp / inproc
    );

    // SoftHSM2
    let hsm_dir = tmp.path().join("hsm");
    std::fs::create_dir_all(&hsm_dir).expect("mkdir");
    let conf =
        softhsm_test_token(&hsm_dir, "bench", PIN).expect("softhsm token (is softhsm2 installed?)");
    let signer = start(&hsm_dir, "pkcs11");
    let ocsp = through_socket(&signer, "ocsp");
    let issue = through_socket(&signer, "issue");
    drop(signer);
    // The in-process measurement uses a second token in another directory.
    let hsm2 = tmp.path().join("hsm-inproc");
    std::fs::create_dir_all(&hsm2).expect("mkdir");
    let conf2 = softhsm_test_token(&hsm2, "bench2", PIN).expect("softhsm token");
    let _ = conf;
    // SAFETY: single-threaded at this point; the module reads the variable when loaded.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf2) };
    let hsm: Arc<dyn Backend> = Arc::new(
        Pkcs11Backend::open(
            Path::new("/usr/lib/softhsm/libsofthsm2.so"),
            "bench2",
            &SecretString::from(PIN.to_string()),
        )
        .expect("open"),
    );
    hsm.generate("k", Algorithm::EcdsaP256).expect("gen");
    let inproc = in_process(hsm, "k".into());
    println!(
        "{:<10} {:>14.0}/s {:>14.0}/s {:>14.0}/s {:>16} {:>7.0}%",
        "softhsm2",
        inproc,
        ocsp,
        issue,
        "-",
        100.0 * ocsp / inproc
    );
}
