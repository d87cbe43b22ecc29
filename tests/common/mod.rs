//! A castellan appliance for integration tests: the real `castellan-signer`
//! (soft backend, custodians alice, bob and carol, 2 must approve) and the
//! real `castellan` daemon, each a child process in its own temporary
//! directory, driven with the real `castellanctl` over the admin socket.
//!
//! Waits are bounded polls for readiness only; nothing here measures time.
//! Children are SIGKILLed when the appliance is dropped; if the test is
//! failing, the daemon's and the signer's logs are printed first.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bound of every wait for readiness and of every command that is not the
/// subject of its test: generous, so a loaded CI machine never flakes.
pub const WAIT: Duration = Duration::from_secs(120);

mod tmpfs;
#[allow(unused_imports)] // not every test crate tests a full disk
pub use tmpfs::Tmpfs;

pub const CUSTODIANS: [&str; 3] = ["alice", "bob", "carol"];

pub fn castellan_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_castellan"))
}

pub fn ctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_castellanctl"))
}

/// The signer is another package's binary: cargo builds it only with
/// `cargo build --workspace --bins` (as CI does before the tests).
pub fn signer_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_castellan")).with_file_name("castellan-signer");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// What a finished command said.
#[derive(Debug)]
pub struct Out {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Panics (with everything the command said) unless it exited 0.
    pub fn ok(self) -> Out {
        assert_eq!(self.code, Some(0), "{self}");
        self
    }

    /// stdout as JSON (castellanctl --json prints results and error bodies there).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }

    /// The `{"error": {"kind", "message"}}` castellanctl --json prints on failure.
    pub fn error(&self) -> (String, String) {
        let v = self.json();
        let kind = v["error"]["kind"].as_str();
        let message = v["error"]["message"].as_str();
        match (kind, message) {
            (Some(k), Some(m)) => (k.to_string(), m.to_string()),
            _ => panic!("not an error body: {self}"),
        }
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.what, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion; kills it and panics if it is still running
/// after `bound` (a hang is a failure, however long the bound).
pub fn run(cmd: &mut Command, bound: Duration) -> Out {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for a child") {
            break s;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {} s; killed it. stderr so far:\n{}",
                bound.as_secs(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        what,
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Sends raw bytes on a new connection to `socket` and reads until the
/// server closes it. Write errors are ignored: a server that refuses a
/// request may close before it is fully sent.
pub fn raw_exchange(socket: &Path, bytes: &[u8]) -> String {
    let mut s =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let _ = s.write_all(bytes);
    read_until_closed(&mut s)
}

/// Everything until the peer closes; panics if it has not closed within
/// [`WAIT`] (the bound of a hang, not a measurement).
pub fn read_until_closed(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(WAIT)).expect("set_read_timeout");
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the connection was not closed by castellan ({e}); received so far: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Extra configuration of the daemon, inserted into its TOML file.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Lines for the `[admin]` table.
    pub admin: String,
    /// Lines for `[admin.roles]`; empty: `admin = [<this uid>]`.
    pub roles: String,
}

/// One signer and one daemon in a temporary directory.
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub signer_config: PathBuf,
    pub signer_socket: PathBuf,
    pub config: PathBuf,
    pub admin_socket: PathBuf,
    signer: Option<Child>,
    daemon: Option<Child>,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        for child in [self.daemon.take(), self.signer.take()]
            .into_iter()
            .flatten()
        {
            kill_child(child);
        }
        if std::thread::panicking() {
            for log in ["castellan.log", "signer.log"] {
                let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("---- last lines of {log}:");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn kill_child(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("signalling a child");
}

impl Appliance {
    /// Custodian keys, an initialised and running signer, a running daemon.
    pub fn start() -> Appliance {
        Appliance::start_with(Settings::default())
    }

    pub fn start_with(settings: Settings) -> Appliance {
        let mut a = Appliance::prepare(settings);
        a.start_signer();
        a.start_daemon();
        a
    }

    /// Keys and configuration files; nothing running yet.
    pub fn prepare(settings: Settings) -> Appliance {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().to_path_buf();
        let a = Appliance {
            settings,
            signer_config: root.join("signer.toml"),
            signer_socket: root.join("signer.sock"),
            config: root.join("castellan.toml"),
            admin_socket: root.join("admin.sock"),
            dir,
            signer: None,
            daemon: None,
        };
        for who in CUSTODIANS {
            write_secret(
                &a.path(&format!("{who}.pass")),
                &format!("{who}-passphrase\n"),
            );
            run(
                Command::new(ctl_bin())
                    .args(["custodian", "keygen", "--name", who, "--out"])
                    .arg(a.path(&format!("{who}.key")))
                    .arg("--passphrase-file")
                    .arg(a.path(&format!("{who}.pass"))),
                WAIT,
            )
            .ok();
        }
        write_secret(&a.path("store.pass"), "test-store-passphrase\n");
        std::fs::write(
            &a.signer_config,
            format!(
                "state_dir = \"{}\"\nsocket = \"{}\"\ndaemon_uid = {}\n[backend]\nkind = \"soft\"\npassphrase_file = \"{}\"\n",
                a.path("signer").display(),
                a.signer_socket.display(),
                uid(),
                a.path("store.pass").display()
            ),
        )
        .unwrap();
        let mut init = Command::new(signer_bin());
        init.arg("init")
            .arg("--config")
            .arg(&a.signer_config)
            .args(["--threshold", "2"])
            .env_remove("JOURNAL_STREAM");
        for who in CUSTODIANS {
            init.arg("--custodian").arg(format!(
                "{who}={}",
                a.path(&format!("{who}.key.pub")).display()
            ));
        }
        run(&mut init, WAIT).ok();
        let config = a.config_text(None);
        std::fs::write(&a.config, config).unwrap();
        a
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The daemon's event store (the default `castellan.redb` in state_dir).
    pub fn database(&self) -> PathBuf {
        self.path("state").join("castellan.redb")
    }

    /// The daemon's configuration; `database` overrides the store's path.
    pub fn config_text(&self, database: Option<&Path>) -> String {
        let roles = if self.settings.roles.is_empty() {
            format!("admin = [\"{}\"]\n", uid())
        } else {
            self.settings.roles.clone()
        };
        let database = database
            .map(|d| format!("database = \"{}\"\n", d.display()))
            .unwrap_or_default();
        // No public listener: tests run in parallel and would share its port.
        format!(
            "state_dir = \"{}\"\n{database}[signer]\nsocket = \"{}\"\n[admin]\nsocket = \"{}\"\n{}\n[admin.roles]\n{roles}\n[http]\nenabled = false\n",
            self.path("state").display(),
            self.signer_socket.display(),
            self.admin_socket.display(),
            self.settings.admin,
        )
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .unwrap()
    }

    pub fn start_signer(&mut self) {
        assert!(self.signer.is_none(), "the signer is already running");
        let child = Command::new(signer_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.signer_config)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("signer.log"))
            .spawn()
            .expect("starting castellan-signer");
        let socket = self.signer_socket.clone();
        self.signer = Some(child);
        self.wait_listening(&socket, false);
    }

    /// The signer's exit status if it has ended (None while it runs).
    pub fn signer_exited(&mut self) -> Option<ExitStatus> {
        self.signer
            .as_mut()
            .and_then(|c| c.try_wait().expect("waiting for castellan-signer"))
    }

    /// SIGKILL: the signer's socket file stays behind, as after a crash.
    pub fn kill_signer(&mut self) {
        kill_child(self.signer.take().expect("the signer is running"));
    }

    pub fn start_daemon(&mut self) {
        let config = self.config.clone();
        self.start_daemon_with(&config);
    }

    pub fn start_daemon_with(&mut self, config: &Path) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let child = Command::new(castellan_bin())
            .arg("--config")
            .arg(config)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("castellan.log"))
            .spawn()
            .expect("starting castellan");
        let socket = self.admin_socket.clone();
        self.daemon = Some(child);
        self.wait_listening(&socket, true);
    }

    /// Polls until `socket` accepts; panics if the process exits first.
    fn wait_listening(&mut self, socket: &Path, daemon: bool) {
        let (name, log) = if daemon {
            ("castellan", "castellan.log")
        } else {
            ("castellan-signer", "signer.log")
        };
        let start = Instant::now();
        loop {
            if UnixStream::connect(socket).is_ok() {
                return;
            }
            let child = if daemon {
                self.daemon.as_mut()
            } else {
                self.signer.as_mut()
            };
            let status = child
                .expect("a started child")
                .try_wait()
                .expect("waiting for a child");
            if let Some(status) = status {
                panic!(
                    "{name} exited with {status} before listening on {}:\n{}",
                    socket.display(),
                    std::fs::read_to_string(self.path(log)).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < WAIT,
                "{name} did not listen on {} within {} s",
                socket.display(),
                WAIT.as_secs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for the daemon to exit; returns its exit status.
    pub fn stop_daemon(&mut self) -> ExitStatus {
        let mut child = self.daemon.take().expect("the daemon is running");
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("waiting for castellan") {
                return s;
            }
            if start.elapsed() > WAIT {
                kill_child(child);
                panic!(
                    "castellan did not exit within {} s of SIGTERM",
                    WAIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash or a power cut would stop it.
    pub fn kill_daemon(&mut self) {
        kill_child(self.daemon.take().expect("the daemon is running"));
    }

    /// SIGKILL to the daemon without reaping it (callable while other
    /// threads use the appliance); [`Appliance::kill_daemon`] reaps it.
    pub fn sigkill_daemon(&self) {
        signal(
            self.daemon.as_ref().expect("the daemon is running"),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Whether the daemon process is still running.
    pub fn daemon_running(&mut self) -> bool {
        match self.daemon.as_mut() {
            Some(c) => c.try_wait().expect("waiting for castellan").is_none(),
            None => false,
        }
    }

    /// `castellanctl --json --socket <admin socket> ARGS` (as this uid).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ctl_bin());
        c.arg("--json")
            .arg("--socket")
            .arg(&self.admin_socket)
            .args(args);
        c
    }

    pub fn ctl(&self, args: &[&str]) -> Out {
        run(&mut self.ctl_command(args), WAIT)
    }

    /// castellanctl --json as another uid and gid, without supplementary groups.
    pub fn ctl_as(&self, uid: u32, gid: u32, args: &[&str]) -> Out {
        run(
            Command::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(ctl_bin())
                .arg("--json")
                .arg("--socket")
                .arg(&self.admin_socket)
                .args(args),
            WAIT,
        )
    }

    /// Opens a ceremony; returns its id.
    pub fn open_ceremony(&self, args: &[&str]) -> String {
        let mut all = vec!["ceremony", "open"];
        all.extend_from_slice(args);
        let v = self.ctl(&all).ok().json();
        v["id"].as_str().expect("a ceremony id").to_string()
    }

    pub fn open_root(&self) -> String {
        self.open_ceremony(&[
            "--purpose",
            "root",
            "--ca-id",
            "root",
            "--subject",
            "CN=castellan test root,O=castellan tests",
            "--days",
            "3650",
            "--path-len",
            "1",
        ])
    }

    pub fn open_intermediate(&self) -> String {
        self.open_ceremony(&[
            "--purpose",
            "intermediate",
            "--ca-id",
            "issuing",
            "--parent",
            "root",
            "--subject",
            "CN=castellan test issuing CA,O=castellan tests",
            "--days",
            "1825",
            "--path-len",
            "0",
        ])
    }

    /// `ceremony approve` with a custodian's key; the output (JSON or error).
    pub fn approve(&self, id: &str, who: &str) -> Out {
        let key = self.path(&format!("{who}.key"));
        let pass = self.path(&format!("{who}.pass"));
        self.ctl(&[
            "ceremony",
            "approve",
            id,
            "--key",
            key.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
    }

    pub fn execute(&self, id: &str, out: Option<&Path>) -> Out {
        let mut args = vec!["ceremony", "execute", id];
        let out_s;
        if let Some(o) = out {
            out_s = o.to_str().unwrap().to_string();
            args.extend_from_slice(&["--out", &out_s]);
        }
        self.ctl(&args)
    }

    /// Root (alice, bob) and intermediate `issuing` (bob, carol) CAs; the
    /// certificates are written to root.pem and issuing.pem.
    pub fn make_cas(&self) {
        let root = self.open_root();
        self.approve(&root, "alice").ok();
        self.approve(&root, "bob").ok();
        self.execute(&root, Some(&self.path("root.pem"))).ok();
        let inter = self.open_intermediate();
        self.approve(&inter, "bob").ok();
        self.approve(&inter, "carol").ok();
        self.execute(&inter, Some(&self.path("issuing.pem"))).ok();
    }

    /// `castellanctl issue --generate-key` from `issuing` for `name`
    /// (files `<tag>.key` and `<tag>.pem`); the output as it is.
    pub fn issue_generated(&self, tag: &str, name: &str) -> Out {
        run(&mut self.issue_generated_command(tag, name), WAIT)
    }

    pub fn issue_generated_command(&self, tag: &str, name: &str) -> Command {
        let key = self.path(&format!("{tag}.key"));
        let out = self.path(&format!("{tag}.pem"));
        self.ctl_command(&[
            "issue",
            "--generate-key",
            "--subject",
            &format!("CN={name}"),
            "--san",
            &format!("DNS:{name}"),
            "--key-out",
            key.to_str().unwrap(),
            "--profile",
            "server",
            "--issuer",
            "issuing",
            "--ttl",
            "30",
            "--out",
            out.to_str().unwrap(),
        ])
    }

    /// The whole event log, in order.
    pub fn events(&self) -> Vec<Value> {
        match self.ctl(&["audit", "log"]).ok().json() {
            Value::Array(v) => v,
            other => panic!("audit log is not a list: {other}"),
        }
    }

    /// `cert list`: every certificate and possibly-issued intent.
    pub fn certs(&self) -> Vec<Value> {
        match self.ctl(&["cert", "list"]).ok().json() {
            Value::Array(v) => v,
            other => panic!("cert list is not a list: {other}"),
        }
    }
}

/// The `subjects` of an event view as strings.
pub fn subjects(event: &Value) -> Vec<String> {
    event["subjects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn kind(event: &Value) -> &str {
    event["kind"].as_str().unwrap_or("")
}

pub fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().expect("an event has a seq")
}

// ---------------------------------------------------------------------------
// Relying-party tools and the public listener

/// A bounded `openssl` run in `dir` (stdout and stderr joined: `openssl
/// ocsp` says "Response verify OK" on stderr and exits 0 whatever the
/// status).
pub fn openssl(args: &[&str], dir: &Path) -> String {
    openssl_exit(args, dir, 0)
}

/// A P-256 key `key` and a CSR `csr` for it, made by `openssl req` in
/// `dir`, with `subject` (openssl's `/CN=…` form) and, when given, a
/// subjectAltName extension (`DNS:a,DNS:b`). Returns the CSR's PEM.
pub fn openssl_csr(dir: &Path, key: &str, csr: &str, subject: &str, san: Option<&str>) -> String {
    let san = san.map(|s| format!("subjectAltName={s}"));
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key,
        "-subj",
        subject,
        "-out",
        csr,
    ];
    if let Some(san) = &san {
        args.extend(["-addext", san]);
    }
    openssl(&args, dir);
    std::fs::read_to_string(dir.join(csr)).expect("the CSR openssl wrote")
}

/// Waits until the OCSP answer published at `file` says that goes.pem
/// (issued by `issuing`) is revoked, verified with chain.pem.
pub fn wait_published_revoked(dir: &Path, file: &Path) {
    eventually("the revoked answer to be published", || {
        std::fs::copy(file, dir.join("published.der")).ok()?;
        let t = openssl(
            &[
                "ocsp",
                "-respin",
                "published.der",
                "-issuer",
                "issuing.pem",
                "-cert",
                "goes.pem",
                "-CAfile",
                "chain.pem",
            ],
            dir,
        );
        t.contains("goes.pem: revoked").then_some(())
    });
}

/// `openssl ocsp` for `cert` (issued by `issuing`) against `url`, the
/// answer verified with chain.pem; `extra` arguments appended.
pub fn openssl_ocsp(dir: &Path, url: &str, cert: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "ocsp",
        "-issuer",
        "issuing.pem",
        "-cert",
        cert,
        "-url",
        url,
        "-CAfile",
        "chain.pem",
    ];
    args.extend_from_slice(extra);
    openssl(&args, dir)
}

/// A running nginx, stopped when dropped.
pub struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would leave
        // them running).
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Checks `conf` with `nginx -t` (prefix `work`), starts nginx with it and
/// waits until `port` answers.
pub fn start_nginx(work: &Path, conf: &Path, port: u16) -> Nginx {
    let out = run(
        Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(conf)
            .arg("-p")
            .arg(work),
        WAIT,
    );
    assert_eq!(out.code, Some(0), "nginx refuses {}: {out}", conf.display());
    let child = Command::new("nginx")
        .arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nginx (Debian package nginx): {e}"));
    wait_http(port);
    Nginx { child }
}

/// Revokes `serial` for keyCompromise with an invalidity date
/// (2026-01-31) through castellanctl, and checks that the revoke was
/// acknowledged with OCSP already answering revoked. Returns its JSON.
pub fn revoke_compromised(a: &Appliance, serial: &str) -> Value {
    let v = a
        .ctl(&[
            "revoke",
            serial,
            "--reason",
            "keyCompromise",
            "--invalidity-date",
            "2026-01-31T00:00:00Z",
        ])
        .ok()
        .json();
    assert!(
        v["ocsp"].as_str().unwrap_or("").starts_with("revoked"),
        "the revoke was acknowledged before OCSP said revoked: {v}"
    );
    v
}

/// As [`openssl`], expecting exit status `code`.
pub fn openssl_exit(args: &[&str], dir: &Path, code: i32) -> String {
    let out = run(
        Command::new("timeout")
            .arg("60")
            .arg("openssl")
            .args(args)
            .current_dir(dir),
        WAIT,
    );
    assert_eq!(out.code, Some(code), "{out}");
    format!("{}\n{}", out.stdout, out.stderr)
}

/// A bounded `curl -sS` run in `dir` that must succeed.
pub fn curl(args: &[&str], dir: &Path) -> Out {
    let out = run(
        Command::new("curl")
            .args(["-sS", "--max-time", "60"])
            .args(args)
            .current_dir(dir),
        WAIT,
    );
    assert_eq!(out.code, Some(0), "{out}");
    out
}

/// Writes a passphrase file as an operator would: readable by its owner only.
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_http(port: u16) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "castellan does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An appliance whose public listener is on a free port (`http_extra`:
/// more lines for `[http]`; `extra`: more tables appended), with root and
/// `issuing` CAs and chain.pem (root + issuing).
pub fn public_appliance(http_extra: &str, extra: &str) -> (Appliance, u16) {
    public_appliance_with(600, http_extra, extra)
}

/// As [`public_appliance`], with `http.ocsp_validity_secs` of its own.
pub fn public_appliance_with(
    ocsp_validity_secs: u32,
    http_extra: &str,
    extra: &str,
) -> (Appliance, u16) {
    let mut a = Appliance::prepare(Settings::default());
    let port = free_port();
    // The issuance URL templates follow http.listen by default.
    let text = a.config_text(None).replace(
        "[http]\nenabled = false\n",
        &format!(
            "[http]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nocsp_validity_secs = {ocsp_validity_secs}\n{http_extra}\n{extra}\n"
        ),
    );
    std::fs::write(&a.config, text).unwrap();
    a.start_signer();
    a.start_daemon();
    a.make_cas();
    let mut chain = std::fs::read(a.path("root.pem")).unwrap();
    chain.extend(std::fs::read(a.path("issuing.pem")).unwrap());
    std::fs::write(a.path("chain.pem"), chain).unwrap();
    wait_http(port);
    (a, port)
}

/// A second root `root-2` (approved by alice and bob) with `subject` and
/// `algorithm`, then a cross-sign ceremony in which `root` certifies it
/// (365 days, pathLen 0; bob and carol): root-2.pem and cross.pem are
/// written. Returns the executed cross-sign ceremony (JSON).
pub fn cross_certify_a_second_root(a: &Appliance, subject: &str, algorithm: &str) -> Value {
    let r2 = a.open_ceremony(&[
        "--purpose",
        "root",
        "--ca-id",
        "root-2",
        "--subject",
        subject,
        "--algorithm",
        algorithm,
        "--days",
        "3000",
        "--path-len",
        "1",
    ]);
    a.approve(&r2, "alice").ok();
    a.approve(&r2, "bob").ok();
    a.execute(&r2, Some(&a.path("root-2.pem"))).ok();
    let root2 = a.path("root-2.pem");
    let cross = a.open_ceremony(&[
        "--purpose",
        "cross-sign",
        "--parent",
        "root",
        "--certificate",
        root2.to_str().unwrap(),
        "--days",
        "365",
        "--path-len",
        "0",
    ]);
    a.approve(&cross, "bob").ok();
    a.approve(&cross, "carol").ok();
    a.execute(&cross, Some(&a.path("cross.pem"))).ok().json()
}

/// The DER CRL of `ca` from the public listener on `port`, once there is
/// one (listing `serial`, hex, when given), in `<ca>.crl`; returns that
/// file name.
pub fn fetch_crl(a: &Appliance, port: u16, ca: &str, serial: Option<&str>) -> String {
    let file = format!("{ca}.crl");
    eventually(&format!("a CRL of {ca}"), || {
        let got = run(
            Command::new("curl")
                .args(["-sSf", "--max-time", "60", "-o", &file])
                .arg(format!("http://127.0.0.1:{port}/crl/{ca}.crl"))
                .current_dir(a.dir.path()),
            WAIT,
        );
        if got.code != Some(0) {
            return None;
        }
        let Some(serial) = serial else {
            return Some(file.clone());
        };
        let text = openssl(
            &["crl", "-inform", "DER", "-in", &file, "-noout", "-text"],
            a.dir.path(),
        );
        text.to_ascii_lowercase()
            .contains(&format!("serial number: {}", serial.to_ascii_lowercase()))
            .then(|| file.clone())
    })
}

/// Issues a certificate for `{tag}.example` (key and PEM in `{tag}.*`);
/// returns its serial (hex).
pub fn issue(a: &Appliance, tag: &str) -> String {
    let v = a
        .issue_generated(tag, &format!("{tag}.example"))
        .ok()
        .json();
    v["serial"].as_str().expect("a serial").to_string()
}

/// As [`eventually`], waiting at most `bound`.
pub fn eventually_within<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {bound:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` until it gives a value (at most [`WAIT`]; panics naming
/// `what` after that). For things that happen in the background — a CRL
/// being published, a responder being rotated — never for timing.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
