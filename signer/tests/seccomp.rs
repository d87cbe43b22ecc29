//! The compiled-in seccomp policy, checked on the real binary in a child
//! process: a filter that kills cannot be tested inside the test harness.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

fn run_selftest() -> Output {
    run_selftest_ending_with("inet")
}

/// The self-test, ending with the forbidden call `last` ("inet": an
/// AF_INET socket; "unix-stream": an AF_UNIX stream socket).
fn run_selftest_ending_with(last: &str) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_castellan-signer"))
        .arg("--danger-seccomp-selftest")
        .env("CASTELLAN_SECCOMP_SELFTEST_LAST", last)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("cannot run castellan-signer --danger-seccomp-selftest: {e}"),
    }
}

fn describe(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn opening_an_inet_socket_under_the_filter_kills_the_signer_with_sigsys() {
    let out = run_selftest();
    assert_eq!(
        out.status.signal(),
        Some(castellan_signer::sys::SECCOMP_VIOLATION_SIGNO),
        "expected death by SIGSYS (31)\n{}",
        describe(&out)
    );
    assert_eq!(castellan_signer::sys::SECCOMP_VIOLATION_SIGNO, 31);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("opening an AF_INET socket"),
        "{}",
        describe(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("FAILED"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_unix_stream_socket_under_the_filter_kills_the_signer_with_sigsys() {
    let out = run_selftest_ending_with("unix-stream");
    assert_eq!(out.status.signal(), Some(31), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("opening an AF_UNIX stream socket"),
        "{}",
        describe(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("FAILED"),
        "{}",
        describe(&out)
    );
}

#[test]
fn files_threads_randomness_locks_and_unix_sockets_still_work_under_the_filter() {
    let out = run_selftest();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed = stdout
        .find("ok: install the seccomp filter")
        .unwrap_or_else(|| panic!("filter not installed\n{}", describe(&out)));
    for step in [
        "open with O_CREAT|O_EXCL, mode 0600",
        "write",
        "fsync",
        "fdatasync",
        "rename",
        "fsync the directory",
        "read back",
        "list a directory",
        "link a file into place (linkat)",
        "unlink",
        "fcntl F_SETLK record lock",
        "fcntl F_DUPFD_CLOEXEC",
        "flock",
        "journald large record: sealed memfd",
        "getrandom",
        "read RLIMIT_CORE (read-only prlimit64)",
        "spawn a named thread",
        "accept a connection",
        "SO_PEERCRED",
        "SO_RCVTIMEO (mid-frame read timeout)",
        "clear SO_RCVTIMEO",
        "join the thread",
        "socket(AF_UNIX, SOCK_DGRAM)",
        "sendto a datagram (journald)",
        "remove the selftest directory",
    ] {
        let line = format!("seccomp selftest: ok: {step}\n");
        match stdout.find(&line) {
            Some(at) if at > installed => {}
            _ => panic!(
                "step {step:?} did not succeed under the filter\n{}",
                describe(&out)
            ),
        }
    }
    // And the one thing that must not work still ended the process.
    assert_eq!(out.status.signal(), Some(31), "{}", describe(&out));
}
