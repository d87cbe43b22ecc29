//! What the benchmark programs share: environment knobs, the load average
//! they print beside every figure, and child processes that are stopped
//! (SIGTERM, then SIGKILL) when dropped.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
