//! Harness of the signer acceptance suite: starts the real `castellan-signer`
//! binary (under its seccomp filter) in a temporary directory, speaks
//! castellan-proto frames to it over its real Unix socket, and runs the real
//! `openssl` CLI on what it signs.
//!
//! Every failure message that involves the signer process says how the
//! process ended: a signer killed by SIGSYS is a seccomp allowlist gap, not
//! a logic bug, and the message says so.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use castellan_proto::{
    Algorithm, Approval, CaInfo, CaParams, CeremonyContext, CeremonyId, CeremonyOp,
    CeremonyOutcome, CertificateTemplate, DistinguishedName, IssuedCertificate, NameAttribute,
    QuorumProof, Request, RequestFrame, Response, ResponseFrame, SignerError, StatusInfo,
    SubjectAltName, Urls, Validity, read_frame, statement, write_frame,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

/// The key backends the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The sealed software key store.
    Soft,
    /// A SoftHSM2 token through PKCS#11.
    SoftHsm,
}

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN_LABEL: &str = "castellan-suite";
const TOKEN_PIN: &str = "1234";
/// Custodians of every suite signer; `THRESHOLD` of them must approve.
pub const CUSTODIANS: usize = 3;
pub const THRESHOLD: u8 = 2;
/// Bound of every wait for the signer (start-up, one request). Generous:
/// debug builds, PBKDF2 and SoftHSM2 key generation on 2 shared cores.
const WAIT: Duration = Duration::from_secs(120);
/// The signal the kernel sends on a seccomp `kill_process` violation.
pub const SIGSYS: i32 = 31;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn validity(not_before: i64, not_after: i64) -> Validity {
    Validity {
        not_before,
        not_after,
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("system randomness");
    b
}

pub fn ceremony_id() -> CeremonyId {
    random_bytes::<16>()
}

/// Ed25519 approval keys of the custodians, made in the test.
pub struct Custodians {
    pub names: Vec<String>,
    keys: Vec<Ed25519KeyPair>,
    /// The signer and custodian set approvals are for: learnt from the
    /// running signer (its audit key and set) each time it starts.
    pub context: Option<CeremonyContext>,
}

impl Custodians {
    pub fn generate(n: usize) -> Custodians {
        let rng = SystemRandom::new();
        let mut names = Vec::new();
        let mut keys = Vec::new();
        for i in 0..n {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed25519 keygen");
            keys.push(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed25519 key"));
            names.push(format!("custodian-{i}"));
        }
        Custodians {
            names,
            keys,
            context: None,
        }
    }

    pub fn public_key(&self, i: usize) -> [u8; 32] {
        self.keys[i]
            .public_key()
            .as_ref()
            .try_into()
            .expect("32-octet ed25519 key")
    }

    /// `key`'s approval of (`id`, `op`) for the same signer and set.
    pub fn approval_by(&self, key: &Ed25519KeyPair, id: &CeremonyId, op: &CeremonyOp) -> Approval {
        let ctx = self
            .context
            .expect("the custodians' context is learnt when the signer starts");
        approval(key, &ctx, id, op)
    }

    /// A proof with the approvals of the custodians `who`, in that order.
    pub fn proof(&self, id: CeremonyId, op: &CeremonyOp, who: &[usize]) -> QuorumProof {
        let ctx = self
            .context
            .expect("the custodians' context is learnt when the signer starts");
        self.proof_for(&ctx, id, op, who)
    }

    /// [`Custodians::proof`] for the signer and custodian set `ctx` names.
    pub fn proof_for(
        &self,
        ctx: &CeremonyContext,
        id: CeremonyId,
        op: &CeremonyOp,
        who: &[usize],
    ) -> QuorumProof {
        QuorumProof {
            ceremony_id: id,
            approvals: who
                .iter()
                .map(|i| approval(&self.keys[*i], ctx, &id, op))
                .collect(),
        }
    }
}

pub fn approval(
    key: &Ed25519KeyPair,
    ctx: &CeremonyContext,
    id: &CeremonyId,
    op: &CeremonyOp,
) -> Approval {
    Approval {
        custodian: key.public_key().as_ref().try_into().expect("32 octets"),
        signature: key.sign(&statement(ctx, id, op)).as_ref().to_vec(),
    }
}

/// A key pair outside every signer's custodian set.
pub fn outsider_key() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("ed25519 keygen");
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed25519 key")
}

/// DER SubjectPublicKeyInfo of a fresh P-256 key (the subject's key; the
/// private half is not needed by any check).
pub fn p256_spki() -> Vec<u8> {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("p256 keygen");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("p256 key");
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused) point }
    let mut spki =
        hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("constant hex");
    spki.extend_from_slice(key.public_key().as_ref());
    spki
}

pub fn dn(cn: &str) -> DistinguishedName {
    DistinguishedName(vec![
        NameAttribute::CommonName(cn.to_string()),
        NameAttribute::Organization("castellan acceptance suite".to_string()),
    ])
}

pub fn root_params(ca_id: &str, algorithm: Algorithm) -> CaParams {
    let t = now();
    CaParams {
        ca_id: ca_id.to_string(),
        parent: None,
        algorithm,
        subject: dn(&format!("suite root {ca_id}")),
        validity: validity(t - 86_400, t + 10 * 365 * 86_400),
        path_len: Some(1),
        urls: Urls::default(),
    }
}

pub fn intermediate_params(ca_id: &str, parent: &str, algorithm: Algorithm) -> CaParams {
    let t = now();
    CaParams {
        ca_id: ca_id.to_string(),
        parent: Some(parent.to_string()),
        algorithm,
        subject: dn(&format!("suite issuing CA {ca_id}")),
        validity: validity(t - 3_600, t + 5 * 365 * 86_400),
        path_len: Some(0),
        urls: Urls::default(),
    }
}

/// A `server` profile leaf for `dns`, valid for 30 days from a minute ago.
pub fn server_template(issuer: &str, dns: &str) -> CertificateTemplate {
    let t = now();
    CertificateTemplate {
        issuer: issuer.to_string(),
        profile: "server".to_string(),
        subject: DistinguishedName::common_name(dns),
        sans: vec![SubjectAltName::Dns(dns.to_string())],
        spki_der: p256_spki(),
        validity: validity(t - 60, t + 30 * 86_400),
        ca: false,
        urls: Urls::default(),
    }
}

/// A root and an intermediate made by 2-of-3 ceremonies.
pub struct Pki {
    pub root: CaInfo,
    pub inter: CaInfo,
}

/// One connection to the signer socket.
pub struct Conn {
    pub stream: UnixStream,
    next_id: u64,
}

impl Conn {
    pub fn open(socket: &Path) -> io::Result<Conn> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        Ok(Conn { stream, next_id: 1 })
    }

    /// One request, one answer; the answer must echo the request id.
    pub fn call(&mut self, request: Request) -> Result<Response, String> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &RequestFrame { id, request })
            .map_err(|e| format!("sending the request: {e}"))?;
        let frame: ResponseFrame =
            read_frame(&mut self.stream).map_err(|e| format!("reading the answer: {e}"))?;
        if frame.id != id {
            return Err(format!(
                "the answer carries id {} instead of {id}: {:?}",
                frame.id, frame.response
            ));
        }
        Ok(frame.response)
    }
}

/// A running `castellan-signer run` in its own temporary directory; killed
/// when dropped.
pub struct SignerProcess {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// stderr of every start, appended.
    pub log: PathBuf,
    softhsm_conf: Option<PathBuf>,
    child: Option<Child>,
    /// How the last child ended, once reaped.
    exited: Option<ExitStatus>,
    conn: Option<Conn>,
    pub custodians: Custodians,
}

impl Drop for SignerProcess {
    fn drop(&mut self) {
        self.conn = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl SignerProcess {
    /// Initialises a signer with 3 custodians (2 must approve) and starts it.
    pub fn start(backend: Backend) -> SignerProcess {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().to_path_buf();
        let custodians = Custodians::generate(CUSTODIANS);
        let state_dir = root.join("state");
        let socket = root.join("signer.sock");
        let backend_toml = match backend {
            Backend::Soft => {
                let pass = root.join("store.pass");
                fs::write(&pass, "suite store passphrase\n").expect("write passphrase");
                format!(
                    "kind = \"soft\"\npassphrase_file = \"{}\"\n",
                    pass.display()
                )
            }
            Backend::SoftHsm => {
                let pin = root.join("token.pin");
                fs::write(&pin, format!("{TOKEN_PIN}\n")).expect("write pin");
                format!(
                    "kind = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{TOKEN_LABEL}\"\npin_file = \"{}\"\n",
                    pin.display()
                )
            }
        };
        let softhsm_conf = match backend {
            Backend::Soft => None,
            Backend::SoftHsm => Some(
                castellan_signer::backend::pkcs11::softhsm_test_token(
                    &root.join("softhsm"),
                    TOKEN_LABEL,
                    TOKEN_PIN,
                )
                .expect("SoftHSM2 test token"),
            ),
        };
        let config = root.join("signer.toml");
        // Tests run as root; the daemon uid is ours. Seccomp stays on (the
        // default): the suite is run the way the appliance runs.
        fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nsocket = \"{}\"\ndaemon_uid = {}\n\n[backend]\n{backend_toml}",
                state_dir.display(),
                socket.display(),
                nix::unistd::getuid().as_raw()
            ),
        )
        .expect("write config");
        let mut signer = SignerProcess {
            log: root.join("signer.log"),
            dir,
            config,
            socket,
            state_dir,
            softhsm_conf,
            child: None,
            exited: None,
            conn: None,
            custodians,
        };
        signer.init();
        signer.launch();
        signer
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_castellan-signer"));
        cmd.env_remove("JOURNAL_STREAM")
            .env_remove("CASTELLAN_LOG")
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path());
        if let Some(conf) = &self.softhsm_conf {
            cmd.env("SOFTHSM2_CONF", conf);
        }
        cmd
    }

    fn init(&self) {
        let mut cmd = self.command();
        cmd.arg("init")
            .arg("--config")
            .arg(&self.config)
            .arg("--threshold")
            .arg(THRESHOLD.to_string());
        for i in 0..CUSTODIANS {
            let file = self.dir.path().join(format!("custodian-{i}.pub"));
            fs::write(
                &file,
                format!("ed25519:{}\n", hex::encode(self.custodians.public_key(i))),
            )
            .expect("write custodian key");
            cmd.arg("--custodian")
                .arg(format!("{}={}", self.custodians.names[i], file.display()));
        }
        let out = run_bounded(&mut cmd);
        assert!(
            out.status.success(),
            "castellan-signer init failed: {}",
            describe(&out)
        );
    }

    /// Starts `castellan-signer run` and waits (bounded) until it answers a
    /// Status request; asserts that it runs under seccomp.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "the signer is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open signer log");
        let child = self
            .command()
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn castellan-signer run");
        self.child = Some(child);
        self.exited = None;
        let deadline = Instant::now() + WAIT;
        let conn = loop {
            if let Some(status) = self.reap() {
                panic!(
                    "the signer exited during start-up ({})\n{}",
                    explain(status),
                    self.log_tail()
                );
            }
            // The socket may be missing or stale until the new process binds.
            if let Ok(c) = Conn::open(&self.socket) {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "the signer did not open {} within {WAIT:?}\n{}",
                self.socket.display(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.conn = Some(conn);
        let status = self.status();
        assert!(
            status.seccomp,
            "the signer runs without its seccomp filter: {status:?}"
        );
        self.custodians.context = match self.ok(Request::PublicKeys) {
            Response::PublicKeys(k) => Some(CeremonyContext::new(&k.audit_spki_der, &k.custodians)),
            other => panic!("PublicKeys answered with {other:?}"),
        };
    }

    /// Kills the signer (SIGKILL: everything acknowledged is durable) and
    /// waits for it.
    pub fn stop(&mut self) {
        self.conn = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let status = child.wait().expect("wait for the signer");
            self.exited = Some(status);
        }
        // A stale socket would look like a ready signer to the next start.
        let _ = fs::remove_file(&self.socket);
    }

    /// Stops the signer, runs `castellan-signer run` on the same state
    /// directory, asserts that it refuses to start and returns its output.
    /// (Used by `refusals.rs`, not by every test crate that shares this.)
    #[allow(dead_code)]
    pub fn start_refused(&mut self) -> Output {
        self.stop();
        let mut cmd = self.command();
        cmd.arg("run").arg("--config").arg(&self.config);
        let out = run_bounded(&mut cmd);
        assert!(
            !out.status.success(),
            "the signer was expected to refuse to start: {}",
            describe(&out)
        );
        out
    }

    /// Stops the signer and starts it again on the same state directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Reaps the child if it has ended.
    fn reap(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exited = Some(status);
            self.child = None;
        }
        self.exited
    }

    /// How the signer is doing, for assertion messages: whether it still
    /// runs, or how it died (SIGSYS = seccomp), and the end of its log.
    pub fn diagnose(&mut self) -> String {
        // A process that just broke a connection may not be reapable yet.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut status = self.reap();
        while status.is_none() && self.child.is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            status = self.reap();
        }
        let state = match status {
            Some(s) => explain(s),
            None => "the signer process is still running".to_string(),
        };
        format!("{state}\n{}", self.log_tail())
    }

    /// The signer's stderr so far, without ANSI colour codes.
    pub fn log_text(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- signer log (last {} lines)\n{}",
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends one request on the suite's connection; a broken connection
    /// fails the test with the signer's fate.
    pub fn call(&mut self, request: Request) -> Result<Response, SignerError> {
        let kind = request.kind();
        let result = match self.conn.as_mut() {
            Some(c) => c.call(request),
            None => Err("no connection (the signer is stopped)".to_string()),
        };
        match result {
            Ok(Response::Error(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(e) => {
                let why = self.diagnose();
                panic!("{kind} request: the connection to the signer broke: {e}\n{why}");
            }
        }
    }

    /// A request that must succeed.
    pub fn ok(&mut self, request: Request) -> Response {
        let kind = request.kind();
        match self.call(request) {
            Ok(r) => r,
            Err(e) => panic!("{kind} refused: {:?}: {}", e.kind, e.message),
        }
    }

    /// A request that must be refused.
    pub fn refused(&mut self, request: Request) -> SignerError {
        let kind = request.kind();
        match self.call(request) {
            Ok(r) => panic!("{kind} was accepted but must be refused; answer: {r:?}"),
            Err(e) => e,
        }
    }

    pub fn status(&mut self) -> StatusInfo {
        match self.ok(Request::Status) {
            Response::Status(s) => s,
            other => panic!("Status answered with {other:?}"),
        }
    }

    /// Runs a ceremony approved by the custodians `who` under a fresh id.
    pub fn ceremony(
        &mut self,
        op: CeremonyOp,
        who: &[usize],
    ) -> Result<CeremonyOutcome, SignerError> {
        let proof = self.custodians.proof(ceremony_id(), &op, who);
        self.ceremony_with(op, proof)
    }

    pub fn ceremony_with(
        &mut self,
        op: CeremonyOp,
        proof: QuorumProof,
    ) -> Result<CeremonyOutcome, SignerError> {
        self.call(Request::Ceremony { op, proof }).map(|r| match r {
            Response::Ceremony(o) => o,
            other => panic!("a ceremony answered with {other:?}"),
        })
    }

    /// A CA-creating ceremony approved by custodians 0 and 2 that must succeed.
    pub fn create_ca(&mut self, op: CeremonyOp) -> CaInfo {
        match self.ceremony(op, &[0, 2]) {
            Ok(CeremonyOutcome::Ca(info)) => info,
            Ok(other) => panic!("a CA ceremony produced {other:?}"),
            Err(e) => panic!("CA ceremony refused: {:?}: {}", e.kind, e.message),
        }
    }

    /// Root `root` and intermediate `inter` (parent `root`), each under a
    /// 2-of-3 quorum.
    pub fn pki(&mut self, root_alg: Algorithm, inter_alg: Algorithm) -> Pki {
        let root = self.create_ca(CeremonyOp::CreateRoot(root_params("root", root_alg)));
        let inter = self.create_ca(CeremonyOp::CreateIntermediate(intermediate_params(
            "inter", "root", inter_alg,
        )));
        Pki { root, inter }
    }

    pub fn issue(&mut self, template: CertificateTemplate) -> IssuedCertificate {
        match self.ok(Request::IssueCertificate(template)) {
            Response::Certificate(c) => c,
            other => panic!("IssueCertificate answered with {other:?}"),
        }
    }

    /// Writes `der` as PEM `label` into the test directory.
    pub fn write_pem(&self, name: &str, label: &str, der: &[u8]) -> PathBuf {
        self.write_file(name, pem(label, der).as_bytes())
    }

    /// Writes several certificates, in order, into one PEM file.
    pub fn write_pem_bundle(&self, name: &str, certs: &[&[u8]]) -> PathBuf {
        let text: String = certs.iter().map(|c| pem("CERTIFICATE", c)).collect();
        self.write_file(name, text.as_bytes())
    }

    pub fn write_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, bytes).expect("write test file");
        path
    }

    /// Runs `castellan-signer` with `args` (offline commands: journal ...).
    pub fn cli(&self, args: &[&str]) -> Output {
        run_bounded(self.command().args(args))
    }

    /// Makes the temporary directory traversable and the socket connectable
    /// by every uid (for the test of a foreign uid only).
    pub fn open_socket_to_everyone(&self) {
        fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the test directory");
        fs::set_permissions(&self.socket, fs::Permissions::from_mode(0o666))
            .expect("chmod 0666 the socket");
    }
}

fn explain(status: ExitStatus) -> String {
    match status.signal() {
        Some(SIGSYS) => format!(
            "the signer was KILLED BY SIGSYS (signal {SIGSYS}): a seccomp violation — a syscall this path needs is missing from the allowlist, not a logic failure; `dmesg | grep type=1326` names it ({status})"
        ),
        Some(sig) => format!("the signer was killed by signal {sig} ({status})"),
        None => format!("the signer exited: {status}"),
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (@..~)
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs a command to completion, killing it if it outlives [`WAIT`].
pub fn run_bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for child") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let s = child.wait().expect("wait for killed child");
            panic!("{cmd:?} did not finish within {WAIT:?} and was killed ({s})");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Runs the real `openssl` CLI in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    run_bounded(Command::new("openssl").args(args).current_dir(dir))
}

/// stdout and stderr together: `openssl ocsp` splits its verdicts between them.
pub fn all_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// PEM text of one DER object.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648_vectors() {
    for (input, want) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), want);
    }
}
