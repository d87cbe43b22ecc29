//! The admin API over mutual TLS (`[admin.https]`), end to end: the real
//! `castellan-signer` and `castellan` binaries, CAs made by custodian
//! ceremonies with the real `castellanctl`, the listener's and the clients'
//! certificates issued by that castellan, and the real `curl` and
//! `openssl s_client` as clients. Also SIGHUP: roles and the listener's
//! certificate are replaced for new requests and connections, and a bad
//! reload keeps the running configuration.
//!
//! Waits are bounded polls for readiness only; nothing here measures time.

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use castellan::api::Role;
use castellan::config::Config;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Bound of every wait for readiness: generous, so a loaded machine never
/// flakes.
const WAIT: Duration = Duration::from_secs(120);

fn castellan_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_castellan"))
}

/// The signer is another package's binary: cargo builds it with
/// `cargo build --workspace --bins` (as scripts/test.sh does first).
fn signer_bin() -> PathBuf {
    let bin = castellan_bin().with_file_name("castellan-signer");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A free TCP port on 127.0.0.1 (bound, then released for castellan).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A certificate castellan issued, with its key, as files.
struct Issued {
    serial: String,
    cert: PathBuf,
    key: PathBuf,
}

/// castellan-signer and castellan in a temporary directory, with a root
/// and an intermediate ("issuing") CA. Children are killed on drop; the
/// daemon's log is printed if the test is failing.
struct Appliance {
    dir: tempfile::TempDir,
    signer: Child,
    daemon: Option<Child>,
    port: u16,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        for c in self
            .daemon
            .iter_mut()
            .chain(std::iter::once(&mut self.signer))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            for log in ["castellan.log", "signer.log"] {
                let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
                eprintln!("---- {log}\n{text}");
            }
        }
    }
}

impl Appliance {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Signer with custodians alice and bob (both must approve), castellan
    /// without [admin.https], a root and an intermediate CA.
    fn start() -> Appliance {
        let dir = tempfile::Builder::new()
            .prefix("castellan-tls.")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        for who in ["alice", "bob"] {
            std::fs::write(d.join(format!("{who}.pass")), format!("{who}-passphrase\n")).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_castellanctl"))
                .args(["custodian", "keygen", "--name", who, "--out"])
                .arg(d.join(format!("{who}.key")))
                .arg("--passphrase-file")
                .arg(d.join(format!("{who}.pass")))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
        }
        std::fs::write(d.join("store.pass"), "test-store-passphrase\n").unwrap();
        std::fs::write(
            d.join("signer.toml"),
            format!(
                "state_dir = \"{d}/signer\"\nsocket = \"{d}/signer.sock\"\ndaemon_uid = {uid}\n\
                 [backend]\nkind = \"soft\"\npassphrase_file = \"{d}/store.pass\"\n",
                d = d.display(),
                uid = nix::unistd::geteuid().as_raw()
            ),
        )
        .unwrap();
        let out = Command::new(signer_bin())
            .arg("init")
            .arg("--config")
            .arg(d.join("signer.toml"))
            .args(["--threshold", "2"])
            .arg("--custodian")
            .arg(format!("alice={}/alice.key.pub", d.display()))
            .arg("--custodian")
            .arg(format!("bob={}/bob.key.pub", d.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let signer = Command::new(signer_bin())
            .arg("run")
            .arg("--config")
            .arg(d.join("signer.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("signer.log")).unwrap())
            .spawn()
            .unwrap();
        let mut a = Appliance {
            dir,
            signer,
            daemon: None,
            // Not http.listen's default, which admin.https.listen must differ from.
            port: std::iter::repeat_with(free_port)
                .find(|p| *p != 8080)
                .unwrap(),
        };
        let sock = a.path("signer.sock");
        wait_until("the signer's socket", || UnixStream::connect(&sock).is_ok());

        std::fs::write(a.path("castellan.toml"), a.config("", "")).unwrap();
        a.start_daemon();
        a.ceremony(&[
            "--purpose",
            "root",
            "--ca-id",
            "root",
            "--subject",
            "CN=castellan test root",
            "--days",
            "3650",
            "--path-len",
            "1",
        ]);
        a.ceremony(&[
            "--purpose",
            "intermediate",
            "--ca-id",
            "issuing",
            "--parent",
            "root",
            "--subject",
            "CN=castellan test issuing CA",
            "--days",
            "1825",
            "--path-len",
            "0",
        ]);
        a
    }

    /// castellan's configuration: the server profile allows 127.0.0.1 (the
    /// listener's certificate names it); `extra` is appended.
    fn config(&self, https: &str, extra: &str) -> String {
        format!(
            "state_dir = \"{d}/state\"\n[signer]\nsocket = \"{d}/signer.sock\"\n\
             [admin]\nsocket = \"{d}/admin.sock\"\n\
             [http]\nenabled = false\n\
             [profiles.server]\nallowed_ips = [\"127.0.0.1/32\"]\n{https}{extra}",
            d = self.dir.path().display(),
        )
    }

    /// `[admin.https]` on `self.port` with the given listener certificate,
    /// clients chaining to the issuing CA.
    fn https(&self, server: &Issued, more: &str) -> String {
        format!(
            "[admin.https]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{cert}\"\n\
             private_key = \"{key}\"\nclient_ca = \"{ca}\"\n{more}",
            port = self.port,
            cert = server.cert.display(),
            key = server.key.display(),
            ca = self.path("issuing.pem").display(),
        )
    }

    fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("castellan.log"))
            .unwrap();
        let child = Command::new(castellan_bin())
            .arg("--config")
            .arg(self.path("castellan.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        wait_until("castellan's admin socket", || {
            self.ctl(&["status"]).status.success()
        });
    }

    fn stop_daemon(&mut self) {
        let mut child = self.daemon.take().expect("castellan is running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(t0.elapsed() < WAIT, "castellan did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes castellan's configuration file and sends SIGHUP.
    fn reload(&self, config: &str) {
        std::fs::write(self.path("castellan.toml"), config).unwrap();
        let pid = self.daemon.as_ref().expect("castellan is running").id();
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("castellan.log")).unwrap_or_default()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_castellanctl"))
            .arg("--socket")
            .arg(self.path("admin.sock"))
            .args(args)
            .output()
            .unwrap()
    }

    fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        assert!(
            out.status.success(),
            "castellanctl {args:?}: {}",
            text(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    }

    /// Opens a ceremony, has alice and bob approve it, executes it and
    /// writes the CA certificate to `<ca-id>.pem`.
    fn ceremony(&self, open: &[&str]) {
        let mut args = vec!["ceremony", "open"];
        args.extend_from_slice(open);
        let id = self.ctl_json(&args)["id"].as_str().unwrap().to_string();
        for who in ["alice", "bob"] {
            let key = self.path(&format!("{who}.key"));
            let pass = self.path(&format!("{who}.pass"));
            let out = self.ctl(&[
                "ceremony",
                "approve",
                &id,
                "--key",
                key.to_str().unwrap(),
                "--passphrase-file",
                pass.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{}", text(&out));
        }
        let ca_id = open[open.iter().position(|a| *a == "--ca-id").unwrap() + 1];
        let pem = self.path(&format!("{ca_id}.pem"));
        let out = self.ctl(&["ceremony", "execute", &id, "--out", pem.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// `castellanctl issue --generate-key` from the issuing CA; the
    /// certificate file holds the chain up to the issuing CA.
    fn issue(&self, name: &str, subject: &str, profile: &str, sans: &[&str]) -> Issued {
        let key = self.path(&format!("{name}.key"));
        let leaf = self.path(&format!("{name}.leaf.pem"));
        let chain = self.path(&format!("{name}.chain.pem"));
        let mut args = vec![
            "issue",
            "--generate-key",
            "--subject",
            subject,
            "--profile",
            profile,
            "--issuer",
            "issuing",
            "--key-out",
            key.to_str().unwrap(),
            "--out",
            leaf.to_str().unwrap(),
            "--chain-out",
            chain.to_str().unwrap(),
        ];
        for s in sans {
            args.extend(["--san", s]);
        }
        let v = self.ctl_json(&args);
        let cert = self.path(&format!("{name}.pem"));
        let mut pem = std::fs::read_to_string(&leaf).unwrap();
        pem.push_str(&std::fs::read_to_string(&chain).unwrap());
        std::fs::write(&cert, pem).unwrap();
        Issued {
            serial: v["serial"].as_str().unwrap().to_string(),
            cert,
            key,
        }
    }

    fn wait_for_https(&self) {
        wait_until("the mTLS listener", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// `curl` to the mTLS listener, trusting castellan's root; returns
    /// (curl's exit status, HTTP status, body).
    fn curl(&self, client: Option<&Issued>, method: &str, path: &str) -> (i32, String, String) {
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "curl", "-sS", "-w", "\n%{http_code}", "-X", method])
            .arg("--cacert")
            .arg(self.path("root.pem"));
        if let Some(c) = client {
            cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
        }
        if method == "POST" {
            cmd.args(["-H", "content-type: application/json", "-d", "{}"]);
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{}{path}", self.port))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (
            out.status.code().unwrap_or(-1),
            status.to_string(),
            format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// GET /v1/status as `client`: the JSON of a 200 answer.
    fn status_as(&self, client: &Issued) -> Value {
        let (code, status, body) = self.curl(Some(client), "GET", "/v1/status");
        assert_eq!((code, status.as_str()), (0, "200"), "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The serial of the certificate the listener presents to a new
    /// connection (`openssl s_client`), lowercase hex.
    fn served_serial(&self, client: &Issued) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(
                "timeout 60 openssl s_client -connect \"127.0.0.1:$1\" -cert \"$2\" -key \"$3\" \
                 </dev/null 2>/dev/null | openssl x509 -noout -serial",
            )
            .arg("sh")
            .arg(self.port.to_string())
            .arg(&client.cert)
            .arg(&client.key)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        s.trim()
            .trim_start_matches("serial=")
            .trim_start_matches('0')
            .to_ascii_lowercase()
    }
}

fn canonical(serial: &str) -> String {
    serial.trim_start_matches('0').to_ascii_lowercase()
}

fn error_message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Issues the listener's and the clients' certificates, then restarts
/// castellan with `[admin.https]` (its listen address cannot change on
/// reload).
fn with_https(a: &mut Appliance, more: &str) -> (Issued, Issued) {
    let server = a.issue("server", "CN=castellan admin", "server", &["IP:127.0.0.1"]);
    // Admin client certificates name a person by subject only: the
    // admin-client profile allows no subject alternative names.
    let alice = a.issue("alice-client", "CN=alice", "admin-client", &[]);
    std::fs::write(
        a.path("castellan.toml"),
        a.config(&a.https(&server, more), ""),
    )
    .unwrap();
    a.stop_daemon();
    a.start_daemon();
    a.wait_for_https();
    (server, alice)
}

#[test]
fn an_issued_admin_client_certificate_is_the_caller_until_it_is_revoked() {
    let mut a = Appliance::start();
    let bot = a.issue(
        "bot",
        "CN=deploy-bot",
        "client",
        &["DNS:bot.example.internal"],
    );
    let (_server, alice) = with_https(&mut a, "");

    // Default role of the client profile: operator; the actor is the
    // certificate's subject.
    let v = a.status_as(&alice);
    assert!(
        v["actor"].as_str().unwrap().starts_with("mtls:CN=alice"),
        "{v}"
    );
    assert_eq!(v["role"], "operator");
    let (_, status, _) = a.curl(Some(&alice), "POST", "/v1/audit/checkpoint");
    assert_eq!(status, "200");
    let (_, status, body) = a.curl(Some(&alice), "POST", "/v1/ceremonies");
    assert_eq!(status, "403", "{body}");
    assert!(error_message(&body).contains("needs role admin"), "{body}");

    // No client certificate: the TLS handshake fails, no HTTP at all.
    let (code, status, out) = a.curl(None, "GET", "/healthz");
    assert_ne!(code, 0, "{out}");
    assert_eq!(status, "000", "{out}");

    // A certificate castellan issued under a profile that carries no role
    // (a workload's `client` profile) passes TLS but has no role.
    let (_, status, body) = a.curl(Some(&bot), "GET", "/v1/status");
    assert_eq!(status, "403", "{body}");
    assert!(error_message(&body).contains("\"client\""), "{body}");
    let (_, status, _) = a.curl(Some(&bot), "GET", "/healthz");
    assert_eq!(status, "200");

    // Revoked: refused from the next request on.
    let out = a.ctl(&["revoke", &alice.serial, "--reason", "keyCompromise"]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, status, body) = a.curl(Some(&alice), "GET", "/v1/status");
    assert_eq!(status, "403", "{body}");
    assert!(error_message(&body).contains("revoked"), "{body}");

    // The audit log names the certificate's subject as the actor.
    let log = a.ctl_json(&["audit", "log", "--limit", "100"]);
    assert!(log.to_string().contains("mtls:CN=alice"), "{log}");
}

#[test]
fn sighup_replaces_roles_and_the_listener_certificate_and_a_bad_reload_keeps_the_old() {
    let mut a = Appliance::start();
    let server2 = a.issue(
        "server2",
        "CN=castellan admin 2",
        "server",
        &["IP:127.0.0.1"],
    );
    let victim = a.issue("victim", "CN=victim", "admin-client", &[]);
    let (server, alice) = with_https(&mut a, "");
    assert_eq!(a.served_serial(&alice), canonical(&server.serial));
    let refusals = |a: &Appliance| a.log().matches("reload refused").count();

    // A new listener certificate is used for new connections.
    let config2 = a.config(&a.https(&server2, ""), "");
    a.reload(&config2);
    wait_until("the new listener certificate", || {
        a.served_serial(&alice) == canonical(&server2.serial)
    });
    assert_eq!(a.status_as(&alice)["role"], "operator");

    // A certificate file that does not load refuses the whole reload.
    let junk = a.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let bad = config2.replace(
        &format!("certificate = \"{}\"", server2.cert.display()),
        &format!("certificate = \"{}\"", junk.display()),
    );
    assert_ne!(bad, config2);
    a.reload(&bad);
    wait_until("the refused reload", || refusals(&a) == 1);
    assert!(a.log().contains("admin.https.certificate"), "{}", a.log());
    assert_eq!(a.served_serial(&alice), canonical(&server2.serial));

    // Demote root on the socket to auditor and the admin-client profile to
    // auditor: both apply to the next request.
    let demoted = a.config(
        &a.https(&server2, "roles = { \"admin-client\" = \"auditor\" }\n"),
        "[admin.roles]\nadmin = []\nauditor = [\"root\"]\n",
    );
    a.reload(&demoted);
    wait_until("root's new role", || {
        a.ctl_json(&["status"])["role"] == "auditor"
    });
    let out = a.ctl(&["revoke", &victim.serial, "--reason", "superseded"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs role operator"),
        "{}",
        text(&out)
    );
    assert_eq!(
        a.ctl_json(&["cert", "show", &victim.serial])["state"],
        "issued"
    );
    assert_eq!(a.status_as(&alice)["role"], "auditor");
    let (_, status, body) = a.curl(Some(&alice), "POST", "/v1/audit/checkpoint");
    assert_eq!(status, "403", "{body}");

    // A broken file: refused, castellan keeps answering with the running
    // configuration (the demoted roles).
    a.reload("[admin\nsocket = \n");
    wait_until("the second refused reload", || refusals(&a) == 2);
    assert_eq!(a.ctl_json(&["status"])["role"], "auditor");
    assert_eq!(a.status_as(&alice)["role"], "auditor");
    assert!(
        a.daemon.as_mut().unwrap().try_wait().unwrap().is_none(),
        "castellan exited"
    );
}

// ---------------------------------------------------------------------------
// The `[admin.https]` role mapping in the configuration.

fn https_files(dir: &Path, more: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin.crt", "admin.key", "clients.crt"] {
        std::fs::write(dir.join(f), "x").unwrap();
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    format!(
        "[admin.https]\nlisten = \"127.0.0.1:8443\"\ncertificate = \"{d}/admin.crt\"\n\
         private_key = \"{d}/admin.key\"\nclient_ca = \"{d}/clients.crt\"\n{more}",
        d = dir.display()
    )
}

#[test]
fn the_client_profile_is_an_operator_unless_roles_say_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::parse(&https_files(dir.path(), "")).unwrap();
    let h = c.admin.https.unwrap();
    assert_eq!(
        h.roles.into_iter().collect::<Vec<_>>(),
        vec![("admin-client".to_string(), Role::Operator)]
    );

    let text = https_files(
        dir.path(),
        "roles = { \"admin-client\" = \"admin\", \"robots\" = \"auditor\" }\n\
         [profiles.robots]\nkind = \"admin-client\"\n",
    );
    let h = Config::parse(&text).unwrap().admin.https.unwrap();
    assert_eq!(h.roles["admin-client"], Role::Admin);
    assert_eq!(h.roles["robots"], Role::Auditor);

    let none = Config::parse(&https_files(dir.path(), "roles = {}\n")).unwrap();
    assert!(none.admin.https.unwrap().roles.is_empty());
}

#[test]
fn an_unknown_https_role_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::parse(&https_files(
        dir.path(),
        "roles = { \"admin-client\" = \"superuser\" }\n",
    ))
    .unwrap_err();
    assert_eq!(e.key, "admin.https.roles.admin-client");
    assert!(e.problem.contains("\"superuser\""), "{e}");
    assert!(e.problem.contains("operator"), "{e}");
}

#[test]
fn only_admin_client_profiles_can_carry_an_https_role() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::parse(&https_files(
        dir.path(),
        "roles = { \"client\" = \"admin\" }\n",
    ))
    .unwrap_err();
    assert_eq!(e.key, "admin.https.roles.client");
    assert!(e.problem.contains("admin-client"), "{e}");

    let e = Config::parse(&https_files(
        dir.path(),
        "roles = { \"nobody\" = \"admin\" }\n",
    ))
    .unwrap_err();
    assert_eq!(e.key, "admin.https.roles.nobody");

    let e = Config::parse(&https_files(dir.path(), "client_profile = \"client\"\n")).unwrap_err();
    assert_eq!(e.key, "admin.https.client_profile");
}

#[test]
fn https_roles_change_on_reload_but_the_listen_address_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let old = Config::parse(&https_files(dir.path(), "")).unwrap();
    let new = Config::parse(&https_files(
        dir.path(),
        "roles = { \"admin-client\" = \"auditor\" }\n",
    ))
    .unwrap();
    old.reloadable_diff(&new).unwrap();
    let moved =
        Config::parse(&https_files(dir.path(), "").replace("127.0.0.1:8443", "127.0.0.1:9443"))
            .unwrap();
    assert_eq!(
        old.reloadable_diff(&moved).unwrap_err().key,
        "admin.https.listen"
    );
}

#[test]
fn a_listener_certificate_that_does_not_load_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("castellan.toml");
    std::fs::write(
        &conf,
        format!(
            "state_dir = \"{}\"\n{}",
            dir.path().display(),
            https_files(dir.path(), "")
        ),
    )
    .unwrap();
    let out = Command::new(castellan_bin())
        .arg("--config")
        .arg(&conf)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`admin.https.client_ca`"), "{err}");
}

/// The uid and gid of `nobody`: a real local user given the operator role.
const NOBODY: u32 = 65534;

/// `castellanctl --json` as uid/gid `NOBODY` (setpriv), on the admin socket.
fn ctl_as_nobody(a: &Appliance, args: &[&str]) -> Output {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs castellanctl as uid {NOBODY} with setpriv: run it as root"
    );
    Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(env!("CARGO_BIN_EXE_castellanctl"))
        .arg("--json")
        .arg("--socket")
        .arg(a.path("admin.sock"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_operator_cannot_have_admin_listener_credentials_of_a_higher_role_issued() {
    use std::os::unix::fs::PermissionsExt;
    let mut a = Appliance::start();
    // Certificates of the admin-client profile are admins on the mTLS
    // listener; uid nobody is an operator on the admin socket.
    let (_server, _alice) = with_https(
        &mut a,
        "roles = { \"admin-client\" = \"admin\" }\n\
         [admin.roles]\nadmin = [\"root\"]\noperator = [\"65534\"]\n",
    );
    std::fs::set_permissions(a.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(a.path("admin.sock"), None, Some(NOBODY)).unwrap();
    let out_dir = a.path("nobody");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let file = |n: &str| out_dir.join(n).to_str().unwrap().to_string();
    let issue = |profile: &str, subject: &str, sans: &[&str], tag: &str| {
        let (key, cert) = (file(&format!("{tag}.key")), file(&format!("{tag}.pem")));
        let mut args = vec![
            "issue",
            "--generate-key",
            "--subject",
            subject,
            "--profile",
            profile,
            "--issuer",
            "issuing",
            "--key-out",
            &key,
            "--out",
            &cert,
        ];
        for s in sans {
            args.extend(["--san", s]);
        }
        ctl_as_nobody(&a, &args)
    };

    let v: Value = serde_json::from_slice(&ctl_as_nobody(&a, &["status"]).stdout).unwrap();
    assert_eq!(v["role"], "operator", "{v}");
    let refused = issue("admin-client", "CN=mallory", &[], "mallory");
    assert_eq!(refused.status.code(), Some(77), "{}", text(&refused));
    let body: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(body["error"]["kind"], "forbidden", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"admin-client\""), "{message}");
    assert!(message.contains("needs role admin"), "{message}");
    assert!(!out_dir.join("mallory.pem").exists());

    // The refusal is in the log, with the operator as the actor.
    let log = a.ctl_json(&["audit", "log", "--kind", "issuance-refused"]);
    let entry = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["actor"].as_str().unwrap_or("").contains("uid 65534"))
        .unwrap_or_else(|| panic!("no refusal by uid 65534 in {log}"));
    assert!(
        entry["payload"].to_string().contains("admin-client"),
        "{entry}"
    );

    // The operator still issues under profiles that carry no role…
    let ok = issue("server", "CN=127.0.0.1", &["IP:127.0.0.1"], "web");
    assert!(ok.status.success(), "{}", text(&ok));
    // …and an admin issues admin credentials.
    a.issue("bob-client", "CN=bob", "admin-client", &[]);
}

/// The `config-reloaded` events of the log, oldest first.
fn reloads(a: &Appliance) -> Vec<Value> {
    let log = a.ctl_json(&["audit", "log", "--kind", "config-reloaded"]);
    log.as_array().unwrap().clone()
}

#[test]
fn a_reload_is_recorded_in_the_audit_log_before_it_applies_and_a_refused_one_is_not() {
    let mut a = Appliance::start();
    let (server, alice) = with_https(&mut a, "");
    assert!(reloads(&a).is_empty());
    assert_eq!(a.status_as(&alice)["role"], "operator");

    let remapped = a.config(
        &a.https(&server, "roles = { \"admin-client\" = \"auditor\" }\n"),
        "",
    );
    a.reload(&remapped);
    wait_until("the new role of the admin-client profile", || {
        a.status_as(&alice)["role"] == "auditor"
    });
    let recorded = reloads(&a);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let payload = &recorded[0]["payload"];
    let changed: Vec<&str> = payload["ConfigReloaded"]["changed"]
        .as_array()
        .unwrap_or_else(|| panic!("no changed keys in {payload}"))
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(changed, ["admin.https.roles.admin-client"], "{payload}");
    assert_eq!(recorded[0]["actor"], "system");
    let file = std::fs::read(a.path("castellan.toml")).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &file);
    assert_eq!(
        payload["ConfigReloaded"]["file_sha256"],
        hex::encode(digest.as_ref()),
        "{payload}"
    );

    // The human listing names it too.
    let human = a.ctl(&["audit", "log", "--kind", "config-reloaded"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("config-reloaded"),
        "{}",
        text(&human)
    );

    // A refused reload records nothing.
    a.reload("[admin\nsocket = \n");
    wait_until("the refused reload", || {
        a.log().matches("reload refused").count() == 1
    });
    assert_eq!(reloads(&a).len(), 1);
    assert_eq!(a.status_as(&alice)["role"], "auditor");

    // The chain with the new event verifies, against the signer's key.
    let v = a.ctl_json(&["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoint_keys"], "signer", "{v}");
}

/// One HTTP request through `openssl s_client` to the mTLS listener, with
/// `args` (client certificate, session file); returns s_client's whole
/// output (handshake report and the HTTP answer).
fn s_client(a: &Appliance, args: &[&str], request: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "r=$1 port=$2 ca=$3; shift 3; printf '%s' \"$r\" | timeout 60 openssl s_client \
             -connect \"127.0.0.1:$port\" -CAfile \"$ca\" -ign_eof \"$@\" 2>&1",
        )
        .arg("sh")
        .arg(format!(
            "{request} HTTP/1.1\r\nHost: castellan\r\nConnection: close\r\n\r\n"
        ))
        .arg(a.port.to_string())
        .arg(a.path("root.pem"))
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_connection_verifies_the_client_certificate_no_session_is_resumed() {
    let mut a = Appliance::start();
    let (_server, alice) = with_https(&mut a, "");
    let session = a.path("alice.session");
    let (cert, key, sess) = (
        alice.cert.to_str().unwrap(),
        alice.key.to_str().unwrap(),
        session.to_str().unwrap(),
    );
    let first = s_client(
        &a,
        &["-cert", cert, "-key", key, "-sess_out", sess],
        "GET /v1/status",
    );
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    // A resumed session would carry alice's certificate chain from the
    // first handshake without verifying it again (an expired certificate
    // would go on working). Offered a session and no certificate, the
    // server must make a full handshake and refuse.
    let second = s_client(&a, &["-sess_in", sess], "GET /v1/status");
    assert!(!second.contains("Reused,"), "{second}");
    assert!(!second.contains("HTTP/1.1 200"), "{second}");
}

#[test]
fn one_host_without_a_certificate_cannot_take_every_connection_of_the_listener() {
    let mut a = Appliance::start();
    let (server, alice) = with_https(&mut a, "");
    // 8 connections in all; handshakes may take a minute, so the idle
    // connections below stay open for the whole test.
    let config = a.config(&a.https(&server, ""), "").replace(
        "[admin]\n",
        "[admin]\nmax_connections = 8\nheader_timeout_ms = 60000\n",
    );
    std::fs::write(a.path("castellan.toml"), config).unwrap();
    a.stop_daemon();
    a.start_daemon();
    a.wait_for_https();

    // A host (127.0.0.2) opens as many TCP connections as the listener
    // serves and never starts a handshake.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target: std::net::SocketAddr = format!("127.0.0.1:{}", a.port).parse().unwrap();
    let idle: Vec<tokio::net::TcpStream> = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..8 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            held.push(s.connect(target).await.unwrap());
        }
        held
    });

    // An admin client on another host is still served.
    let v = a.status_as(&alice);
    assert_eq!(v["role"], "operator", "{v}");
    assert!(
        a.log().contains("holds its share of connections"),
        "{}",
        a.log()
    );
    drop(idle);
}

#[test]
fn a_client_certificate_cannot_have_admin_listener_credentials_issued() {
    let mut a = Appliance::start();
    let (_server, alice) = with_https(&mut a, "");
    // Whoever holds alice's operator certificate asks for a fresh admin
    // credential with a key of their own, which would outlive the
    // revocation of alice's.
    let key = a.path("mallory.key");
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/CN=mallory", "-keyout"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let csr = String::from_utf8(out.stdout).unwrap();
    let issue = |profile: &str| {
        let body = serde_json::json!({"csr_pem": csr, "profile": profile, "issuer": "issuing"});
        let out = Command::new("timeout")
            .args(["60", "curl", "-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(a.path("root.pem"))
            .arg("--cert")
            .arg(&alice.cert)
            .arg("--key")
            .arg(&alice.key)
            .args(["-H", "content-type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("https://127.0.0.1:{}/v1/certificates", a.port))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (status.to_string(), body.to_string())
    };
    let (status, body) = issue("admin-client");
    assert_eq!(status, "403", "{body}");
    let message = error_message(&body);
    assert!(message.contains("\"admin-client\""), "{message}");
    assert!(message.contains("admin socket"), "{message}");
    let listed = a.ctl_json(&["cert", "list"]).to_string();
    assert!(!listed.contains("mallory"), "{listed}");

    // The refusal is recorded with the certificate as the actor.
    let log = a.ctl_json(&["audit", "log", "--kind", "issuance-refused"]);
    assert!(log.to_string().contains("mtls:CN=alice"), "{log}");
}

#[test]
fn a_reload_that_moves_the_state_directory_is_refused_naming_the_key() {
    let a = Appliance::start();
    // The file says where castellan's state is; a new place takes a restart.
    let moved = a.config("", "").replace("/state\"", "/elsewhere\"");
    assert!(moved.contains("/elsewhere\""), "{moved}");
    a.reload(&moved);
    wait_until("the refused reload", || a.log().contains("reload refused"));
    let log = a.log();
    // (the database, whose default place follows it, or state_dir itself)
    assert!(
        log.contains("cannot change on reload; restart castellan"),
        "{log}"
    );
    assert!(reloads(&a).is_empty());
}

#[test]
fn a_sighup_as_soon_as_the_admin_socket_answers_is_a_reload_not_the_end() {
    let mut a = Appliance::start();
    a.stop_daemon();
    let sock = a.path("admin.sock");
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(a.path("castellan.log"))
        .unwrap();
    let mut child = Command::new(castellan_bin())
        .arg("--config")
        .arg(a.path("castellan.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // A reload sent the moment the socket accepts connections (an admin's
    // `systemctl reload` right after the start).
    let t0 = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(t0.elapsed() < WAIT, "castellan's admin socket never came");
        assert!(child.try_wait().unwrap().is_none(), "castellan exited");
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
    wait_until("the reload", || {
        let status = child.try_wait().unwrap();
        assert!(status.is_none(), "castellan ended on SIGHUP: {status:?}");
        a.log().contains("configuration reloaded")
    });
    a.daemon = Some(child);
    assert!(a.ctl(&["status"]).status.success());
}

#[test]
fn a_revocation_applies_to_the_next_request_on_an_open_connection() {
    use std::io::{BufRead, BufReader, Write};
    let mut a = Appliance::start();
    let (_server, alice) = with_https(&mut a, "");
    let mut s = Command::new("timeout")
        .args(["120", "openssl", "s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{}", a.port))
        .arg("-CAfile")
        .arg(a.path("root.pem"))
        .arg("-cert")
        .arg(&alice.cert)
        .arg("-key")
        .arg(&alice.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = s.stdin.take().unwrap();
    let mut output = BufReader::new(s.stdout.take().unwrap());
    // One keep-alive connection; each answer is read whole (by its length).
    let mut ask = |path: &str| -> String {
        write!(input, "GET {path} HTTP/1.1\r\nHost: castellan\r\n\r\n").unwrap();
        input.flush().unwrap();
        let (mut head, mut length) = (String::new(), 0usize);
        loop {
            let mut line = String::new();
            assert_ne!(output.read_line(&mut line).unwrap(), 0, "closed: {head}");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; length];
        std::io::Read::read_exact(&mut output, &mut body).unwrap();
        format!("{head}{}", String::from_utf8_lossy(&body))
    };
    let before = ask("/v1/status");
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    let out = a.ctl(&["revoke", &alice.serial, "--reason", "keyCompromise"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = ask("/v1/status");
    assert!(after.starts_with("HTTP/1.1 403"), "{after}");
    assert!(after.contains("revoked"), "{after}");
    drop(input);
    let _ = s.kill();
    let _ = s.wait();
}
