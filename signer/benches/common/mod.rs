//! Set-up shared by the signer benchmarks: a signer initialised in a
//! temporary directory with three custodians, started on its real socket,
//! with a root CA made by a 2-of-3 ceremony and a delegated OCSP responder.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use castellan_proto::*;
use castellan_signer::backend::Backend;
use castellan_signer::backend::pkcs11::{Pkcs11Backend, softhsm_test_token};
use castellan_signer::backend::soft::SoftBackend;
use castellan_signer::config::{BackendConfig, Config};
use ring::signature::{Ed25519KeyPair, KeyPair};

pub const PIN: &str = "1234";

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub struct Running {
    pub child: Child,
    pub socket: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn call(s: &mut UnixStream, id: u64, request: Request) -> Response {
    write_frame(s, &RequestFrame { id, request }).expect("write");
    let f: ResponseFrame = read_frame(s).expect("read");
    f.response
}

/// Writes a signer configuration and initialises it with three custodians;
/// returns the custodian keys.
pub fn init(dir: &Path, backend: &str, token_label: &str) -> Vec<Ed25519KeyPair> {
    let bin = env!("CARGO_BIN_EXE_castellan-signer");
    let rng = ring::rand::SystemRandom::new();
    let mut custodians = Vec::new();
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
    std::fs::write(dir.join("secret"), format!("{PIN}-bench-passphrase\n")).expect("write");
    if backend == "pkcs11" {
        softhsm_test_token(dir, token_label, &format!("{PIN}-bench-passphrase"))
            .expect("softhsm token (is softhsm2 installed?)");
    }
    let backend_toml = match backend {
        "soft" => format!(
            "kind = \"soft\"\npassphrase_file = \"{}/secret\"\n",
            dir.display()
        ),
        _ => format!(
            "kind = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"{token_label}\"\npin_file = \"{}/secret\"\n",
            dir.display()
        ),
    };
    std::fs::write(
        dir.join("signer.toml"),
        format!(
            "state_dir = \"{}/state\"\nsocket = \"{}/signer.sock\"\ndaemon_uid = {}\n[backend]\n{backend_toml}",
            dir.display(),
            dir.display(),
            nix::unistd::getuid().as_raw()
        ),
    )
    .expect("write");
    let status = Command::new(bin)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .args(["init", "--config"])
        .arg(dir.join("signer.toml"))
        .args(["--threshold", "2"])
        .args(["a", "b", "c"].iter().flat_map(|n| {
            [
                "--custodian".to_string(),
                format!("{n}={}/{n}.pub", dir.display()),
            ]
        }))
        .stdout(Stdio::null())
        .status()
        .expect("init");
    assert!(status.success(), "signer init failed");
    custodians
}

/// A root CA by a 2-of-3 ceremony and a delegated OCSP responder for it.
pub fn setup_ca(custodians: &[Ed25519KeyPair], mut call: impl FnMut(Request) -> Response) {
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
    let ctx = match call(Request::PublicKeys) {
        Response::PublicKeys(k) => CeremonyContext::new(&k.audit_spki_der, &k.custodians),
        other => panic!("PublicKeys answered {other:?}"),
    };
    let approvals = custodians[..2]
        .iter()
        .map(|k| Approval {
            custodian: k.public_key().as_ref().try_into().expect("32"),
            signature: k.sign(&statement(&ctx, &id, &op)).as_ref().to_vec(),
        })
        .collect();
    let r = call(Request::Ceremony {
        op,
        proof: QuorumProof {
            ceremony_id: id,
            approvals,
        },
    });
    assert!(matches!(r, Response::Ceremony(_)), "root ceremony: {r:?}");
    let r = call(Request::RotateOcspResponder(ResponderParams {
        issuer: "root".into(),
        validity: Validity {
            not_before: now() - 60,
            not_after: now() + 86_400 * 30,
        },
        algorithm: Algorithm::EcdsaP256,
    }));
    assert!(matches!(r, Response::Responder(_)), "responder: {r:?}");
}

pub fn start(dir: &Path, custodians: &[Ed25519KeyPair]) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_castellan-signer"))
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .args(["run", "--config"])
        .arg(dir.join("signer.toml"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let running = Running {
        child,
        socket: dir.join("signer.sock"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&running.socket).is_err() {
        assert!(Instant::now() < deadline, "signer did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = UnixStream::connect(&running.socket).expect("connect");
    let mut id = 0;
    setup_ca(custodians, |r| {
        id += 1;
        call(&mut s, id, r)
    });
    running
}

/// Opens the backend a signer configuration names, in this process.
pub fn open_backend(cfg: &Config) -> Box<dyn Backend> {
    match &cfg.backend {
        BackendConfig::Soft {
            key_store,
            passphrase,
        } => {
            Box::new(SoftBackend::open(key_store, &passphrase.read().expect("pass")).expect("soft"))
        }
        BackendConfig::Pkcs11 {
            module,
            token_label,
            pin,
        } => Box::new(
            Pkcs11Backend::open(module, token_label, &pin.read().expect("pin")).expect("pkcs11"),
        ),
    }
}

/// Load average over the last minute, as /proc shows it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}
