//! Process hardening, the seccomp allowlist and peer credentials: the only
//! module of the signer that may contain `unsafe`.
//!
//! Start-up order in the signer:
//!
//! 1. [`harden_process`] first, before any key material is in memory;
//! 2. parse configuration, bind the listening socket, open the journal, load
//!    and log in to the PKCS#11 module (it needs `dlopen`, which the filter
//!    refuses because it maps executable memory);
//! 3. [`install_seccomp`], while the process still has a single thread;
//! 4. accept connections, one thread each.
//!
//! The filter is `hardening/seccomp/castellan-signer.json`, compiled into the
//! binary by `build.rs` (see `hardening/README.md`). A syscall outside the
//! allowlist kills the whole process with [`SECCOMP_VIOLATION_SIGNAL`]:
//! systemd records `code=killed, status=31/SYS`, a shell reports exit status
//! 159 (128 + 31), and the kernel audit log names the syscall
//! (`type=1326 … sig=31 syscall=N`). The unit sets
//! `RestartPreventExitStatus=SIGSYS`: a violation means the code or the policy
//! is wrong, and restarting would only repeat it.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::net::UnixStream;

mod compiled {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filter.rs"));
}

pub use compiled::{ALLOWED_SYSCALLS, CLONE3_FILTER, FILTER, FILTER_ARCH};

/// The signal that ends the signer when it makes a syscall outside the
/// allowlist. systemd shows `status=31/SYS`; shells show exit status 159. Use
/// this name in `RestartPreventExitStatus=`.
pub const SECCOMP_VIOLATION_SIGNAL: &str = "SIGSYS";

/// Signal number of [`SECCOMP_VIOLATION_SIGNAL`] (31 on x86_64 and aarch64).
pub const SECCOMP_VIOLATION_SIGNO: i32 = libc::SIGSYS;

/// Credentials of the process at the other end of a Unix socket, as the
/// kernel recorded them when it connected (`SO_PEERCRED`): they cannot be
/// forged by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Who is on the other end of `stream` (`SO_PEERCRED`).
pub fn peer_credentials(stream: &UnixStream) -> io::Result<PeerCred> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
    Ok(PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// Keeps key material out of core dumps and away from same-uid debuggers.
///
/// * `PR_SET_DUMPABLE 0`: the kernel writes no core file for this process,
///   and processes of the same uid can no longer `ptrace` it or read its
///   `/proc/PID/mem`, `environ` or open files (only `CAP_SYS_PTRACE` can).
/// * `RLIMIT_CORE` soft and hard 0: covers kernels configured with
///   `fs.suid_dumpable=2`, which dump even non-dumpable processes, and tells a
///   `core_pattern` pipe handler (systemd-coredump) not to store the dump. The
///   hard limit cannot be raised again without `CAP_SYS_RESOURCE`, and the
///   filter admits `prlimit64` only read-only.
///
/// Call it first, before keys are loaded.
pub fn harden_process() -> Result<(), String> {
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| format!("cannot make the signer non-dumpable (PR_SET_DUMPABLE 0): {e}"))?;
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is an initialised `rlimit` that lives across the call;
    // setrlimit only reads it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    if rc != 0 {
        return Err(format!(
            "cannot disable core dumps (RLIMIT_CORE 0): {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn program(filter: &[(u16, u8, u8, u32)]) -> Vec<seccompiler::sock_filter> {
    filter
        .iter()
        .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
        .collect()
}

/// Installs the compiled-in filters on every thread of the process (TSYNC).
///
/// seccompiler sets `PR_SET_NO_NEW_PRIVS` itself before each filter (the
/// kernel requires it of an unprivileged process). [`CLONE3_FILTER`] goes
/// first: it answers `clone3` with ENOSYS so that glibc falls back to
/// `clone`, whose flags [`FILTER`] checks (threads only, no fork). [`FILTER`]
/// goes last and does not admit `seccomp` or `prctl` beyond `PR_SET_NAME`, so
/// nothing can be changed afterwards.
///
/// On `Err` the process may be partly filtered: the caller must exit, never
/// serve.
pub fn install_seccomp() -> Result<(), String> {
    let clone3 = program(CLONE3_FILTER);
    let allowlist = program(FILTER);
    seccompiler::apply_filter_all_threads(&clone3)
        .map_err(|e| format!("cannot install the clone3 seccomp filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&allowlist).map_err(|e| {
        format!("cannot install the seccomp allowlist ({FILTER_ARCH}): {e}; refusing to serve")
    })?;
    Ok(())
}

/// Installs the filter, checks that what the signer does still works, then
/// opens an `AF_INET` socket, which must kill the process with SIGSYS.
///
/// Behind the hidden `--danger-seccomp-selftest` flag: it lets an operator
/// (and `tests/seccomp.rs`) check the policy against this kernel and libc.
/// Each step prints `seccomp selftest: ok: …` on stdout. If the process is
/// still alive after `socket(AF_INET)`, or a step fails, it prints
/// `seccomp selftest FAILED: …` on stderr and exits with status 1.
pub fn seccomp_selftest() -> ! {
    match selftest_steps() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("seccomp selftest FAILED: {e}");
            std::process::exit(1);
        }
    }
    // The forbidden call made last: AF_INET unless the test suite asks for
    // an AF_UNIX stream socket (the signer may only make datagram sockets).
    if std::env::var_os("CASTELLAN_SECCOMP_SELFTEST_LAST").is_some_and(|v| v == "unix-stream") {
        println!(
            "seccomp selftest: opening an AF_UNIX stream socket, which must kill this process"
        );
        // SAFETY: plain socket(2) call with constant arguments; the result
        // is only inspected.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        eprintln!("seccomp selftest FAILED: socket(AF_UNIX, SOCK_STREAM) was allowed (fd {fd})");
        std::process::exit(1);
    }
    println!("seccomp selftest: opening an AF_INET socket, which must kill this process");
    let outcome = std::net::TcpStream::connect(("127.0.0.1", 9));
    eprintln!("seccomp selftest FAILED: socket(AF_INET) was allowed (connect result: {outcome:?})");
    std::process::exit(1);
}

fn selftest_steps() -> Result<(), String> {
    use std::fs::{self, File, OpenOptions};
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::net::{UnixDatagram, UnixListener};

    fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
        match r {
            Ok(v) => {
                println!("seccomp selftest: ok: {what}");
                Ok(v)
            }
            Err(e) => Err(format!("{what}: {e}")),
        }
    }

    // Before the filter: what the signer sets up at start-up.
    step("harden_process", harden_process())?;
    step(
        "process is not dumpable",
        match nix::sys::prctl::get_dumpable() {
            Ok(false) => Ok(()),
            Ok(true) => Err("PR_GET_DUMPABLE is still 1".to_owned()),
            Err(e) => Err(e.to_string()),
        },
    )?;
    let dir =
        std::env::temp_dir().join(format!("castellan-seccomp-selftest-{}", std::process::id()));
    step("create the selftest directory", fs::create_dir(&dir))?;
    let listener = step(
        "bind a listening AF_UNIX socket",
        UnixListener::bind(dir.join("signer.sock")),
    )?;
    let journald = step(
        "bind a datagram socket standing in for journald",
        UnixDatagram::bind(dir.join("journal.sock")),
    )?;
    // The daemon's end of a connection: made before the filter (it lives in
    // another process; the signer itself never makes a stream socket).
    let daemon_end = step(
        "connect a client standing in for the daemon",
        UnixStream::connect(dir.join("signer.sock")),
    )?;
    // Directories exist before the filter (init makes them).
    let state = dir.join("state");
    step("create the state directory", fs::create_dir(&state))?;

    step("install the seccomp filter", install_seccomp())?;

    // Under the filter: what the signer does while serving.
    let tmp = state.join("ca.json.tmp");
    let mut f = step(
        "open with O_CREAT|O_EXCL, mode 0600",
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp),
    )?;
    step("write", f.write_all(b"{\"serial\":1}\n"))?;
    step("fsync", f.sync_all())?;
    step("fdatasync", f.sync_data())?;
    drop(f);
    step("rename", fs::rename(&tmp, state.join("ca.json")))?;
    step(
        "fsync the directory",
        File::open(&state).and_then(|d| d.sync_all()),
    )?;
    step("stat", fs::metadata(state.join("ca.json")))?;
    let text = step("read back", fs::read_to_string(state.join("ca.json")))?;
    if text != "{\"serial\":1}\n" {
        return Err("read back: content differs from what was written".to_owned());
    }
    step("list a directory", fs::read_dir(&state).map(|d| d.count()))?;
    step(
        "link a file into place (linkat)",
        fs::hard_link(state.join("ca.json"), state.join("ca.json.link")),
    )?;
    step("unlink", fs::remove_file(state.join("ca.json.link")))?;

    let journal = step(
        "open a journal for append",
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(state.join("journal")),
    )?;
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    step(
        "fcntl F_SETLK record lock",
        nix::fcntl::fcntl(&journal, nix::fcntl::FcntlArg::F_SETLK(&lock)),
    )?;
    step("fcntl F_DUPFD_CLOEXEC", journal.try_clone())?;
    step("flock", journal.try_lock().map_err(|e| format!("{e:?}")))?;
    step("journald large record: sealed memfd", sealed_memfd())?;

    step(
        "getrandom",
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut [0u8; 32])
            .map_err(|_| "ring SystemRandom failed"),
    )?;
    let mut core = libc::rlimit {
        rlim_cur: 1,
        rlim_max: 1,
    };
    // SAFETY: `core` is an initialised `rlimit` the kernel writes into; it
    // outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut core) };
    step(
        "read RLIMIT_CORE (read-only prlimit64)",
        match (rc, core.rlim_cur, core.rlim_max) {
            (0, 0, 0) => Ok(()),
            (0, cur, max) => Err(format!("RLIMIT_CORE is {cur}/{max}, not 0/0")),
            _ => Err(io::Error::last_os_error().to_string()),
        },
    )?;

    let client = step(
        "spawn a named thread",
        std::thread::Builder::new()
            .name("selftest-client".to_owned())
            .spawn(move || -> io::Result<Vec<u8>> {
                let mut c = daemon_end;
                c.write_all(b"request")?;
                c.shutdown(std::net::Shutdown::Write)?;
                let mut answer = Vec::new();
                c.read_to_end(&mut answer)?;
                Ok(answer)
            }),
    )?;
    let (mut conn, _) = step("accept a connection", listener.accept())?;
    let cred = step("SO_PEERCRED", peer_credentials(&conn))?;
    if cred.pid != std::process::id() as i32 {
        return Err(format!("SO_PEERCRED: pid {} is not ours", cred.pid));
    }
    step(
        "SO_RCVTIMEO (mid-frame read timeout)",
        conn.set_read_timeout(Some(std::time::Duration::from_secs(30))),
    )?;
    let mut request = Vec::new();
    step("read a request", conn.read_to_end(&mut request))?;
    step("clear SO_RCVTIMEO", conn.set_read_timeout(None))?;
    step("write a response", conn.write_all(b"response"))?;
    drop(conn);
    let answer = match client.join() {
        Ok(r) => step("join the thread", r)?,
        Err(_) => return Err("join the thread: it panicked".to_owned()),
    };
    if request != b"request" || answer != b"response" {
        return Err("AF_UNIX round trip: bytes differ".to_owned());
    }

    let logger = step("socket(AF_UNIX, SOCK_DGRAM)", UnixDatagram::unbound())?;
    step(
        "sendto a datagram (journald)",
        logger.send_to(b"MESSAGE=selftest\n", dir.join("journal.sock")),
    )?;
    step("recv a datagram", journald.recv(&mut [0u8; 64]))?;

    step("remove the selftest directory", fs::remove_dir_all(&dir))?;
    Ok(())
}

/// What tracing-journald does with a record too large for one datagram.
fn sealed_memfd() -> Result<(), String> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::io::Write;
    let fd = memfd_create(
        c"castellan-selftest",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| format!("memfd_create: {e}"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(b"MESSAGE=large\n")
        .map_err(|e| format!("write: {e}"))?;
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(&file, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| format!("F_ADD_SEALS: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credentials_of_a_socket_pair_are_our_own_pid_uid_and_gid() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let cred = peer_credentials(&a).expect("SO_PEERCRED");
        assert_eq!(cred.pid, std::process::id() as i32);
        assert_eq!(cred.uid, nix::unistd::getuid().as_raw());
        assert_eq!(cred.gid, nix::unistd::getgid().as_raw());
    }

    #[test]
    fn compiled_filter_is_non_empty_and_checks_the_architecture_first() {
        assert!(
            FILTER.len() > 10,
            "allowlist has {} instructions",
            FILTER.len()
        );
        assert!(!CLONE3_FILTER.is_empty());
        // BPF_LD|BPF_W|BPF_ABS of seccomp_data.arch (offset 4).
        assert_eq!((FILTER[0].0, FILTER[0].3), (0x20, 4));
        assert_eq!(FILTER_ARCH, std::env::consts::ARCH);
    }

    #[test]
    fn allowlist_admits_neither_exec_nor_ptrace_nor_mount_nor_new_listeners() {
        for forbidden in [
            "execve",
            "execveat",
            "ptrace",
            "mount",
            "unshare",
            "setns",
            "bind",
            "listen",
            "seccomp",
            "process_vm_readv",
        ] {
            assert!(
                !ALLOWED_SYSCALLS.contains(&forbidden),
                "{forbidden} is allowed"
            );
        }
        for needed in ["accept4", "getsockopt", "fdatasync", "getrandom", "futex"] {
            assert!(ALLOWED_SYSCALLS.contains(&needed), "{needed} is missing");
        }
    }
}
