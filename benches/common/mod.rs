//! What the benchmark programs share: environment knobs, the load average
//! they print beside every figure, and child processes that are stopped
//! (SIGTERM, then SIGKILL) when dropped.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// `name` from the environment as a number (`1_000_000` allowed), or
/// `default` (saying so when the value is not a number).
pub fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(s) => s.trim().replace('_', "").parse().unwrap_or_else(|_| {
            eprintln!("{name}={s:?} is not a number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// The 1, 5 and 15 minute load averages, for the record next to a figure.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A child stopped (SIGTERM, then SIGKILL after [`Proc::GRACE`]) when
/// dropped.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

impl Proc {
    /// How long a child has to stop on SIGTERM.
    pub const GRACE: Duration = Duration::from_secs(20);

    /// Starts `cmd` with stdin closed and stdout and stderr into `log`.
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Result<Proc, String> {
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`Proc::GRACE`].
    pub fn stop(&mut self) {
        if self.running() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Proc::GRACE;
            while Instant::now() < deadline {
                if !self.running() {
                    let _ = self.child.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "{} did not stop on SIGTERM within {} s; killing it",
                self.name,
                Proc::GRACE.as_secs()
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `path` exists (a socket a child creates once ready); after
/// `limit`, an error carrying the child's log.
pub fn wait_for(path: &Path, what: &str, log: &Path, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{what} did not create {}:\n{log}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The three binaries a benchmark starts.
pub struct Bins {
    pub castellan: PathBuf,
    pub ctl: PathBuf,
    pub signer: PathBuf,
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut best = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        best = best.max(t);
    }
    best
}

/// `castellan` and `castellanctl` as cargo built them for this bench, and
/// `castellan-signer` next to them (another package: it must have been
/// built first; a warning if it is older than the signer's sources).
pub fn binaries() -> Result<Bins, String> {
    let castellan = PathBuf::from(env!("CARGO_BIN_EXE_castellan"));
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_castellanctl"));
    let dir = castellan
        .parent()
        .ok_or("the castellan binary has no directory")?;
    let signer = dir.join("castellan-signer");
    for b in [&castellan, &ctl, &signer] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing. Build the binaries first, with the same \
                 CARGO_TARGET_DIR:\n\n    cargo build --release --workspace --bins\n",
                b.display()
            ));
        }
    }
    let built = std::fs::metadata(&signer).and_then(|m| m.modified()).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = newest(&root.join("signer/src")).max(newest(&root.join("signer/proto/src")));
    if let (Some(b), Some(s)) = (built, sources)
        && s > b
    {
        eprintln!(
            "warning: {} is older than the signer's sources; rebuild it with \
             `cargo build --release --workspace --bins` if the protocol changed",
            signer.display()
        );
    }
    Ok(Bins {
        castellan,
        ctl,
        signer,
    })
}

/// Runs `cmd` to completion, killed if still running after `limit`; its
/// stdout followed by its stderr, or an error with all of that.
pub fn run_limited(cmd: &mut Command, what: &str, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    // Both pipes drained on threads, so a large output cannot block the child.
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            String::from_utf8_lossy(&v).into_owned()
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what}: still running after {:.1} s; killed",
                    limit.as_secs_f64()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("{what}: {status}\n{out}{err}"));
    }
    Ok(out + &err)
}

/// The benchmarks' root CA: the `castellanctl ceremony open` arguments and
/// the two custodians (of alice, bob and carol, 2 of 3) who approve.
pub const ROOT_CA: (&[&str], [&str; 2]) = (
    &[
        "--purpose",
        "root",
        "--ca-id",
        "root",
        "--subject",
        "CN=castellan bench root,O=castellan bench",
        "--days",
        "3650",
        "--path-len",
        "1",
    ],
    ["alice", "bob"],
);

/// The benchmarks' issuing CA `issuing`, under [`ROOT_CA`].
pub const ISSUING_CA: (&[&str], [&str; 2]) = (
    &[
        "--purpose",
        "intermediate",
        "--ca-id",
        "issuing",
        "--parent",
        "root",
        "--subject",
        "CN=castellan bench issuing CA,O=castellan bench",
        "--days",
        "1825",
        "--path-len",
        "0",
    ],
    ["bob", "carol"],
);

/// The custodians every benchmark enrols: 2 of these 3 approve ceremonies.
pub const CUSTODIANS: [&str; 3] = ["alice", "bob", "carol"];

/// Bound of each set-up command and of the signer's start.
const SETUP_LIMIT: Duration = Duration::from_secs(120);

/// Custodian keys for [`CUSTODIANS`] (`{who}.key`, `.key.pub`, `.pass`), a
/// soft-backend `castellan-signer` initialised in `dir` with 2 of them
/// (`signer.toml`, `store.pass`, `signer/`), then started: its socket is
/// `dir/signer.sock`, its log `dir/signer.log`.
pub fn start_signer(bins: &Bins, dir: &Path) -> Result<Proc, String> {
    let p = |name: &str| dir.join(name);
    let io = |e: std::io::Error| e.to_string();
    for who in CUSTODIANS {
        std::fs::write(
            p(&format!("{who}.pass")),
            format!("{who}-bench-passphrase\n"),
        )
        .map_err(io)?;
        run_limited(
            Command::new(&bins.ctl)
                .args(["custodian", "keygen", "--name", who, "--out"])
                .arg(p(&format!("{who}.key")))
                .arg("--passphrase-file")
                .arg(p(&format!("{who}.pass"))),
            "castellanctl custodian keygen",
            SETUP_LIMIT,
        )?;
    }
    std::fs::write(p("store.pass"), "bench-store-passphrase\n").map_err(io)?;
    let socket = p("signer.sock");
    std::fs::write(
        p("signer.toml"),
        format!(
            "state_dir = \"{}\"\nsocket = \"{}\"\ndaemon_uid = {}\n[backend]\nkind = \"soft\"\npassphrase_file = \"{}\"\n",
            p("signer").display(),
            socket.display(),
            nix::unistd::getuid().as_raw(),
            p("store.pass").display()
        ),
    )
    .map_err(io)?;
    let mut init = Command::new(&bins.signer);
    init.args(["init", "--config"])
        .arg(p("signer.toml"))
        .args(["--threshold", "2"]);
    for who in CUSTODIANS {
        init.arg("--custodian")
            .arg(format!("{who}={}", p(&format!("{who}.key.pub")).display()));
    }
    run_limited(&mut init, "castellan-signer init", SETUP_LIMIT)?;
    let log = p("signer.log");
    let signer = Proc::spawn(
        "castellan-signer",
        Command::new(&bins.signer)
            .args(["run", "--config"])
            .arg(p("signer.toml"))
            .env_remove("JOURNAL_STREAM"),
        &log,
    )?;
    wait_for(&socket, "castellan-signer", &log, SETUP_LIMIT)?;
    Ok(signer)
}

/// A ceremony run to its end: opened with the `castellanctl ceremony open`
/// arguments `open`, approved by `who` with their key files in `dir`,
/// executed. `ctl_json` runs `castellanctl --json` (with the daemon's
/// socket) with the arguments given.
pub fn ceremony(
    ctl_json: &dyn Fn(&[&str]) -> Result<String, String>,
    dir: &Path,
    open: &[&str],
    who: [&str; 2],
) -> Result<(), String> {
    let mut args = vec!["ceremony", "open"];
    args.extend_from_slice(open);
    let text = ctl_json(&args)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("castellanctl --json ceremony open: {e}: {text}"))?;
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .ok_or_else(|| format!("no ceremony id in {text}"))?
        .to_string();
    for w in who {
        let key = dir.join(format!("{w}.key"));
        let pass = dir.join(format!("{w}.pass"));
        ctl_json(&[
            "ceremony",
            "approve",
            &id,
            "--key",
            &key.to_string_lossy(),
            "--passphrase-file",
            &pass.to_string_lossy(),
        ])?;
    }
    ctl_json(&["ceremony", "execute", &id])?;
    Ok(())
}
