//! Compiles the signer's seccomp policy into the binary.
//!
//! The policy is a data file, `hardening/seccomp/castellan-signer.json`, in
//! seccompiler's JSON format; every rule carries a `comment` saying why the
//! signer needs it. This script checks the policy, compiles it to classic BPF
//! for the target architecture with `seccompiler::compile_from_json` and
//! writes the programs to `$OUT_DIR/seccomp_filter.rs`, which
//! `src/sys.rs` includes. A policy that does not check or compile fails the
//! build: a signer without its filter is never produced.
//!
//! The file is written for x86_64. For aarch64 the rules for the legacy
//! syscalls listed in [`X86_64_ONLY`] are dropped; the policy must also allow
//! their `*at`/`ppoll` successor, which the check below enforces. Both
//! architectures are compiled on every build so that a change cannot break
//! the one nobody builds locally.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

const POLICY: &str = "../hardening/seccomp/castellan-signer.json";
/// The allowlist: mismatch kills the process with SIGSYS.
const ALLOWLIST: &str = "castellan_signer";
/// Answers clone3 with ENOSYS so that glibc falls back to clone(2).
const CLONE3_FILTER: &str = "castellan_signer_clone3";

/// Syscalls aarch64 does not have, each with the successor the policy must
/// allow in its place.
const X86_64_ONLY: &[(&str, &str)] = &[
    ("rename", "renameat2"),
    ("unlink", "unlinkat"),
    ("mkdir", "mkdirat"),
    ("poll", "ppoll"),
];

/// Syscalls the signer must never be able to make, whatever else changes.
/// Listing one in the allowlist is a build error, not a review comment.
const FORBIDDEN: &[&str] = &[
    "execve",
    "execveat",
    "fork",
    "vfork",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "kill",
    "tkill",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "setgroups",
    "capset",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "keyctl",
    "add_key",
    "request_key",
    "personality",
    "seccomp",
    "reboot",
    "swapon",
    "swapoff",
    "pkey_mprotect",
];

/// Syscalls that may only appear with argument conditions.
const MUST_BE_RESTRICTED: &[&str] = &[
    "socket",
    "clone",
    "mmap",
    "mprotect",
    "prctl",
    "fcntl",
    "tgkill",
    "prlimit64",
    "ioctl",
    "getsockopt",
    "setsockopt",
    "linkat",
    "memfd_create",
];

fn main() {
    let manifest_dir = match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => fail("CARGO_MANIFEST_DIR is not set (run through cargo)"),
    };
    let policy_path = manifest_dir.join(POLICY);
    println!("cargo:rerun-if-changed={}", policy_path.display());
    println!("cargo:rerun-if-changed=build.rs");

    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let out_dir = match std::env::var_os("OUT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => fail("OUT_DIR is not set (run through cargo)"),
    };

    let text = match std::fs::read_to_string(&policy_path) {
        Ok(text) => text,
        Err(e) => fail(&format!("cannot read {}: {e}", policy_path.display())),
    };
    let policy: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => fail(&format!("{} is not valid JSON: {e}", policy_path.display())),
    };
    if let Err(e) = check_policy(&policy) {
        fail(&format!("{}: {e}", policy_path.display()));
    }

    let mut generated = None;
    for arch in ["x86_64", "aarch64"] {
        let compiled = match compile_for(&policy, arch) {
            Ok(c) => c,
            Err(e) if arch != "x86_64" && e.contains("Invalid syscall name") => fail(&format!(
                "{} for {arch}: {e} If it is a legacy x86_64 syscall, add it to X86_64_ONLY \
                 in signer/build.rs with its *at successor and allow that successor too.",
                policy_path.display()
            )),
            Err(e) => fail(&format!("{} for {arch}: {e}", policy_path.display())),
        };
        if arch == target_arch {
            generated = Some(compiled);
        }
    }
    let Some(compiled) = generated else {
        fail(&format!(
            "no seccomp policy for target architecture {target_arch:?}: the signer refuses \
             to build without its filter (supported: x86_64, aarch64)"
        ))
    };

    let out = out_dir.join("seccomp_filter.rs");
    if let Err(e) = std::fs::write(&out, render(&target_arch, &compiled)) {
        fail(&format!("cannot write {}: {e}", out.display()));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: castellan-signer seccomp policy: {msg}");
    std::process::exit(1);
}

/// Rules the JSON compiler would accept but that do not mean what they say,
/// and the project's own requirements on the policy.
fn check_policy(policy: &serde_json::Value) -> Result<(), String> {
    let filters = policy
        .as_object()
        .ok_or("the top level must be an object of named filters")?;
    for name in [ALLOWLIST, CLONE3_FILTER] {
        if !filters.contains_key(name) {
            return Err(format!("filter {name:?} is missing"));
        }
    }
    if let Some(extra) = filters
        .keys()
        .find(|k| *k != ALLOWLIST && *k != CLONE3_FILTER)
    {
        return Err(format!(
            "unexpected filter {extra:?}: nothing would install it"
        ));
    }
    let allow = &filters[ALLOWLIST];
    if allow.get("mismatch_action").and_then(|v| v.as_str()) != Some("kill_process") {
        return Err(format!(
            "{ALLOWLIST}: mismatch_action must be \"kill_process\" (a violation must end the \
             process with SIGSYS, which the unit does not restart)"
        ));
    }
    if allow.get("filter_action").and_then(|v| v.as_str()) != Some("allow") {
        return Err(format!("{ALLOWLIST}: filter_action must be \"allow\""));
    }

    // syscall -> has it rules with and without conditions
    let mut shapes: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for (name, filter) in filters {
        let rules = filter
            .get("filter")
            .and_then(|v| v.as_array())
            .ok_or_else(|| format!("{name}: \"filter\" must be an array of rules"))?;
        for rule in rules {
            let syscall = rule
                .get("syscall")
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("{name}: a rule has no \"syscall\""))?;
            let comment = rule.get("comment").and_then(|v| v.as_str()).unwrap_or("");
            if comment.trim().is_empty() {
                return Err(format!(
                    "{name}: rule for {syscall:?} has no \"comment\" saying why the signer needs it"
                ));
            }
            if name != ALLOWLIST {
                continue;
            }
            if FORBIDDEN.contains(&syscall) {
                return Err(format!(
                    "{ALLOWLIST} allows {syscall:?}, which the signer must never be able to call"
                ));
            }
            let conditional = rule.get("args").is_some_and(|a| !a.is_null());
            let entry = shapes.entry(syscall.to_owned()).or_default();
            if conditional {
                entry.1 = true;
            } else {
                entry.0 = true;
            }
        }
    }
    for (syscall, (unconditional, conditional)) in &shapes {
        // seccompiler silently drops an unconditional rule once a conditional
        // one exists for the same syscall: refuse the ambiguity.
        if *unconditional && *conditional {
            return Err(format!(
                "{syscall:?} has both an unconditional rule and rules with \"args\"; \
                 keep one form"
            ));
        }
        if *unconditional && MUST_BE_RESTRICTED.contains(&syscall.as_str()) {
            return Err(format!(
                "{syscall:?} must be allowed only with argument conditions"
            ));
        }
    }
    for (legacy, successor) in X86_64_ONLY {
        if shapes.contains_key(*legacy) && !shapes.contains_key(*successor) {
            return Err(format!(
                "{legacy:?} is allowed but {successor:?}, its replacement on aarch64, is not"
            ));
        }
    }
    Ok(())
}

struct Compiled {
    allowlist: Vec<seccompiler::sock_filter>,
    clone3: Vec<seccompiler::sock_filter>,
    syscalls: BTreeSet<String>,
}

fn compile_for(policy: &serde_json::Value, arch: &str) -> Result<Compiled, String> {
    let mut policy = policy.clone();
    if arch != "x86_64" {
        for filter in policy
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            if let Some(rules) = filter.get_mut("filter").and_then(|v| v.as_array_mut()) {
                rules.retain(|rule| {
                    let syscall = rule.get("syscall").and_then(|v| v.as_str());
                    !X86_64_ONLY.iter().any(|(l, _)| Some(*l) == syscall)
                });
            }
        }
    }
    let syscalls = policy[ALLOWLIST]["filter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("syscall").and_then(|v| v.as_str()))
        .map(str::to_owned)
        .collect();
    let bytes = serde_json::to_vec(&policy).map_err(|e| e.to_string())?;
    let target = seccompiler::TargetArch::try_from(arch).map_err(|e| e.to_string())?;
    let mut map = seccompiler::compile_from_json(&bytes[..], target).map_err(|e| e.to_string())?;
    let allowlist = map
        .remove(ALLOWLIST)
        .ok_or_else(|| format!("{ALLOWLIST} did not compile"))?;
    let clone3 = map
        .remove(CLONE3_FILTER)
        .ok_or_else(|| format!("{CLONE3_FILTER} did not compile"))?;
    Ok(Compiled {
        allowlist,
        clone3,
        syscalls,
    })
}

fn render(arch: &str, c: &Compiled) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// @generated by signer/build.rs from hardening/seccomp/castellan-signer.json; \
         do not edit.\n"
    );
    let _ = writeln!(
        s,
        "/// Architecture the filters were compiled for (the BPF checks it first and\n\
         /// kills a process calling in through another ABI).\n\
         pub const FILTER_ARCH: &str = {arch:?};\n"
    );
    render_program(
        &mut s,
        "FILTER",
        "The allowlist: any syscall not listed kills the process with SIGSYS.",
        &c.allowlist,
    );
    render_program(
        &mut s,
        "CLONE3_FILTER",
        "Answers clone3 with ENOSYS so that glibc creates threads with clone(2),\n\
         /// whose flags [`FILTER`] can check. Installed before [`FILTER`].",
        &c.clone3,
    );
    let _ = writeln!(
        s,
        "/// Syscall names [`FILTER`] admits (some only with argument conditions).\n\
         pub const ALLOWED_SYSCALLS: &[&str] = &["
    );
    for name in &c.syscalls {
        let _ = writeln!(s, "    {name:?},");
    }
    let _ = writeln!(s, "];");
    s
}

fn render_program(s: &mut String, name: &str, doc: &str, prog: &[seccompiler::sock_filter]) {
    let _ = writeln!(
        s,
        "/// {doc}\n/// Classic BPF `sock_filter` instructions as (code, jt, jf, k).\n\
         pub const {name}: &[(u16, u8, u8, u32)] = &["
    );
    for ins in prog {
        let _ = writeln!(
            s,
            "    (0x{:04x}, {}, {}, 0x{:08x}),",
            ins.code, ins.jt, ins.jf, ins.k
        );
    }
    let _ = writeln!(s, "];\n");
}
