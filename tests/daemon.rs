//! Acceptance tests of the control daemon: the real `castellan`,
//! `castellan-signer` and `castellanctl` binaries, over the real admin and
//! signer sockets, checked with real clients (`openssl`, `curl`).
//!
//! Build every binary first: `cargo build --workspace --bins`. The tests
//! about other uids switch user with `setpriv` and so run as root.
//!
//! Nothing here asserts on time: waits are bounded polls for readiness, and
//! a bound that is exceeded is reported as a hang.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use castellan::admin_client::{AdminClient, read_response};
use castellan::api::ErrorBody;
use common::{
    Appliance, Out, Settings, WAIT, castellan_bin, ctl_bin, kind, openssl_csr, read_until_closed,
    run, seq, subjects,
};
use serde_json::Value;

/// The uid and gid of `nobody`, for the tests of callers without a role.
const NOBODY: u32 = 65534;

fn openssl(args: &[&str], dir: &Path) -> Out {
    let out = run(Command::new("openssl").args(args).current_dir(dir), WAIT);
    assert_eq!(out.code, Some(0), "openssl is needed by these tests: {out}");
    out
}

/// What the README demo made.
struct Demo {
    root_ceremony: String,
    serial: String,
    checkpoint: u64,
}

/// The path of scripts/demo.sh, asserting every step's result.
fn demo_flow(a: &Appliance) -> Demo {
    let status = a.ctl(&["status"]).ok().json();
    assert_eq!(status["signer_reachable"], true, "{status}");
    assert_eq!(status["signer_backend"], "soft", "{status}");
    assert_eq!(status["role"], "admin", "{status}");
    assert_eq!(status["cas"], 0, "{status}");

    // Root: one approval is not enough.
    let root = a.open_root();
    let v = a.approve(&root, "alice").ok().json();
    assert_eq!(
        (v["approved"].as_u64(), v["threshold"].as_u64()),
        (Some(1), Some(2)),
        "{v}"
    );
    let root_pem = a.path("root.pem");
    let refused = a.execute(&root, Some(&root_pem));
    assert_eq!(refused.code, Some(1), "{refused}");
    let (k, m) = refused.error();
    assert_eq!(k, "refused");
    assert!(m.contains("quorum not met: 1 of 2"), "{m}");
    assert!(!root_pem.exists(), "no CA certificate without a quorum");
    let v = a.approve(&root, "bob").ok().json();
    assert_eq!(v["approved"], 2, "{v}");
    let v = a.execute(&root, Some(&root_pem)).ok().json();
    assert_eq!(v["state"], "executed", "{v}");
    assert_eq!(v["ca"]["id"], "root", "{v}");
    let subject = openssl(
        &["x509", "-in", "root.pem", "-noout", "-subject"],
        a.dir.path(),
    );
    assert!(subject.stdout.contains("castellan test root"), "{subject}");

    // Intermediate, approved by bob and carol.
    let inter = a.open_intermediate();
    a.approve(&inter, "bob").ok();
    let v = a.approve(&inter, "carol").ok().json();
    assert_eq!(v["approved"], 2, "{v}");
    let v = a.execute(&inter, Some(&a.path("issuing.pem"))).ok().json();
    assert_eq!(v["state"], "executed", "{v}");
    assert_eq!(v["ca"]["parent"], "root", "{v}");
    let cas = a.ctl(&["ca", "list"]).ok().json();
    let ids: BTreeSet<&str> = cas
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["status"], "active", "{c}");
            c["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, BTreeSet::from(["issuing", "root"]));

    // A server certificate from an openssl CSR, verified by openssl.
    openssl_csr(
        a.dir.path(),
        "web.key",
        "web.csr",
        "/CN=web.test.internal",
        Some("DNS:web.test.internal,DNS:www.test.internal"),
    );
    let csr = a.path("web.csr");
    let web = a.path("web.pem");
    let chain = a.path("chain.pem");
    let issued = a
        .ctl(&[
            "issue",
            "--csr",
            csr.to_str().unwrap(),
            "--profile",
            "server",
            "--issuer",
            "issuing",
            "--ttl",
            "30",
            "--out",
            web.to_str().unwrap(),
            "--chain-out",
            chain.to_str().unwrap(),
        ])
        .ok()
        .json();
    let serial = issued["serial"].as_str().expect("a serial").to_string();
    assert_eq!(issued["issuer"], "issuing", "{issued}");
    let verify = openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "chain.pem",
            "-purpose",
            "sslserver",
            "web.pem",
        ],
        a.dir.path(),
    );
    assert!(verify.stdout.trim_end().ends_with(": OK"), "{verify}");

    // Revoke it.
    let v = a
        .ctl(&["revoke", &serial, "--reason", "keyCompromise"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
    assert_eq!(v["revocation"]["reason"], "keyCompromise", "{v}");
    let v = a.ctl(&["cert", "show", &serial]).ok().json();
    assert_eq!(v["state"], "revoked", "{v}");

    // Audit: a signed checkpoint, then the whole chain re-walked.
    let c = a.ctl(&["audit", "checkpoint"]).ok().json();
    let checkpoint = c["sequence"].as_u64().expect("a checkpoint sequence");
    let v = a.ctl(&["audit", "verify"]).ok().json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checkpoints_ok"].as_u64() >= Some(1), "{v}");
    assert_eq!(v["last_checkpoint"].as_u64(), Some(checkpoint), "{v}");
    assert_eq!(v["checkpoints_bad"], Value::Array(vec![]), "{v}");

    Demo {
        root_ceremony: root,
        serial,
        checkpoint,
    }
}

#[test]
fn the_readme_demo_path_issues_a_certificate_openssl_verifies_then_revokes_and_audits() {
    let a = Appliance::start();
    let demo = demo_flow(&a);
    let events = a.events();
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    for k in [
        "daemon-started",
        "signer-keys-observed",
        "ceremony-opened",
        "ceremony-approved",
        "ceremony-executed",
        "ca-registered",
        "issuance-intended",
        "certificate-issued",
        "certificate-revoked",
        "checkpoint-signed",
    ] {
        assert!(kinds.contains(&k), "no {k} event in {kinds:?}");
    }
    let revoked = events
        .iter()
        .find(|e| kind(e) == "certificate-revoked")
        .unwrap();
    assert_eq!(subjects(revoked)[0], demo.serial);
    assert!(
        seq(revoked) <= demo.checkpoint,
        "the checkpoint covers the revocation"
    );

    // What an admin reads without --json: listings as tables, or a line
    // saying nothing matched.
    let human = |args: &[&str]| {
        let mut c = Command::new(ctl_bin());
        c.arg("--socket").arg(&a.admin_socket).args(args);
        run(&mut c, WAIT).ok().stdout
    };
    let certs = human(&["cert", "list"]);
    assert!(certs.starts_with("SERIAL"), "{certs}");
    assert!(
        certs
            .lines()
            .any(|l| l.starts_with(&demo.serial) && l.contains("revoked")),
        "{certs}"
    );
    let log = human(&["audit", "log", "--kind", "certificate-revoked"]);
    assert!(log.starts_with("SEQ"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("certificate-revoked") && l.contains(&demo.serial)),
        "{log}"
    );
    let none = human(&["audit", "log", "--actor", "uid:4000000000"]);
    assert_eq!(none.trim(), "no events match");
}

#[test]
fn a_ceremony_needs_its_quorum_counts_a_custodian_once_and_runs_only_once() {
    let a = Appliance::start();
    let id = a.open_root();
    let v = a.ctl(&["ceremony", "show", &id]).ok().json();
    assert_eq!(
        (v["approved"].as_u64(), v["state"].as_str()),
        (Some(0), Some("open")),
        "{v}"
    );

    a.approve(&id, "alice").ok();
    let early = a.execute(&id, None);
    assert_eq!(early.code, Some(1), "{early}");
    let (k, m) = early.error();
    assert_eq!(k, "refused");
    assert!(m.contains("quorum not met: 1 of 2"), "{m}");

    // alice again: still one approval.
    let v = a.approve(&id, "alice").ok().json();
    assert_eq!(v["approved"], 1, "{v}");
    assert_eq!(v["approvals"].as_array().map(Vec::len), Some(1), "{v}");
    let again = a.execute(&id, None);
    assert_eq!(again.code, Some(1), "{again}");
    assert!(
        again.error().1.contains("quorum not met: 1 of 2"),
        "{again}"
    );

    let v = a.approve(&id, "carol").ok().json();
    assert_eq!(v["approved"], 2, "{v}");
    let v = a.execute(&id, None).ok().json();
    assert_eq!(v["state"], "executed", "{v}");

    let twice = a.execute(&id, None);
    assert_eq!(twice.code, Some(1), "{twice}");
    let (k, m) = twice.error();
    assert_eq!(k, "refused");
    assert!(m.contains("already executed"), "{m}");
    let cas = a.ctl(&["ca", "list"]).ok().json();
    assert_eq!(
        cas.as_array().map(Vec::len),
        Some(1),
        "one ceremony, one CA: {cas}"
    );
    let executed = a
        .events()
        .iter()
        .filter(|e| kind(e) == "ceremony-executed")
        .count();
    assert_eq!(executed, 1);
}

/// The serial of a successful `castellanctl --json issue`.
fn serial_of(out: Out) -> String {
    out.ok().json()["serial"]
        .as_str()
        .expect("a serial")
        .to_string()
}

/// Every event's seq is its index: no gap, no repeat.
fn assert_contiguous(events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(seq(e), i as u64, "event {i} of the log is {e}");
    }
}

#[test]
fn sixty_four_concurrent_issuances_succeed_survive_a_restart_and_are_logged_intent_first() {
    let mut a = Appliance::start();
    a.make_cas();
    let serials: Vec<String> = std::thread::scope(|s| {
        let a = &a;
        let workers: Vec<_> = (0..64)
            .map(|i| {
                s.spawn(move || {
                    a.issue_generated(&format!("c{i}"), &format!("host-{i}.burst.test"))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| serial_of(w.join().expect("a worker")))
            .collect()
    });
    let distinct: BTreeSet<&String> = serials.iter().collect();
    assert_eq!(distinct.len(), 64, "serials repeat: {serials:?}");

    let stopped = a.stop_daemon();
    assert!(
        stopped.success(),
        "castellan exited with {stopped} on SIGTERM"
    );
    a.start_daemon();

    let listed: HashMap<String, String> = a
        .certs()
        .iter()
        .map(|c| {
            (
                c["serial"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for s in &serials {
        assert_eq!(
            listed.get(s).map(String::as_str),
            Some("issued"),
            "serial {s} after the restart"
        );
    }
    assert_eq!(listed.len(), 64, "{listed:?}");

    let events = a.events();
    assert_contiguous(&events);
    for s in &serials {
        let issued: Vec<&Value> = events
            .iter()
            .filter(|e| kind(e) == "certificate-issued" && subjects(e).get(1) == Some(s))
            .collect();
        assert_eq!(issued.len(), 1, "certificate-issued events of {s}");
        let request = &subjects(issued[0])[0];
        let intents: Vec<&Value> = events
            .iter()
            .filter(|e| kind(e) == "issuance-intended" && subjects(e).first() == Some(request))
            .collect();
        assert_eq!(
            intents.len(),
            1,
            "issuance-intended events of request {request}"
        );
        assert!(
            seq(intents[0]) < seq(issued[0]),
            "serial {s}: the intent (event {}) must precede the result (event {})",
            seq(intents[0]),
            seq(issued[0])
        );
    }
    let v = a.ctl(&["audit", "verify"]).ok().json();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn a_sigkill_during_a_burst_of_issuances_loses_no_acknowledged_certificate() {
    const WORKERS: usize = 16;
    /// Acknowledgements awaited before the kill: the burst is well under way.
    const KILL_AFTER: usize = 24;
    let mut a = Appliance::start();
    a.make_cas();
    let acked: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let failed: Mutex<Vec<Out>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let a = &a;
        for _ in 0..WORKERS {
            s.spawn(|| {
                // Issue until castellan stops answering.
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let out = a.issue_generated(&format!("k{i}"), &format!("host-{i}.crash.test"));
                    if out.code == Some(0) {
                        acked.lock().unwrap().push(serial_of(out));
                    } else {
                        failed.lock().unwrap().push(out);
                        break;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        let start = Instant::now();
        while acked.lock().unwrap().len() < KILL_AFTER {
            assert!(
                done.load(Ordering::Relaxed) < WORKERS,
                "every worker stopped before the kill: {:?}",
                failed
                    .lock()
                    .unwrap()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            );
            assert!(start.elapsed() < WAIT, "the burst made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        a.sigkill_daemon();
    });
    a.kill_daemon();
    let acked = acked.into_inner().unwrap();
    let failed = failed.into_inner().unwrap();
    assert!(acked.len() >= KILL_AFTER);
    // Before the kill nothing failed; the kill makes castellan unavailable.
    for f in &failed {
        assert_eq!(f.code, Some(69), "{f}");
        assert_eq!(f.error().0, "unavailable", "{f}");
    }

    a.start_daemon();
    for s in &acked {
        let v = a.ctl(&["cert", "show", s]).ok().json();
        assert_eq!(v["state"], "issued", "acknowledged serial {s}: {v}");
    }
    let v = a.ctl(&["audit", "verify"]).ok().json();
    assert_eq!(v["ok"], true, "{v}");

    // Intents without a result: listed as possibly issued, or reconciled.
    let events = a.events();
    assert_contiguous(&events);
    let resolved: BTreeSet<String> = events
        .iter()
        .filter(|e| matches!(kind(e), "certificate-issued" | "issuance-failed"))
        .filter_map(|e| subjects(e).first().cloned())
        .collect();
    let recovered: BTreeSet<String> = events
        .iter()
        .filter(|e| kind(e) == "issuance-recovered")
        .filter_map(|e| subjects(e).first().cloned())
        .collect();
    let possibly: BTreeSet<String> = a
        .certs()
        .iter()
        .filter(|c| c["state"] == "possibly-issued")
        .filter_map(|c| c["serial"].as_str().map(str::to_string))
        .collect();
    let mut orphans = 0;
    for intent in events.iter().filter(|e| kind(e) == "issuance-intended") {
        let request = subjects(intent)[0].clone();
        if resolved.contains(&request) {
            continue;
        }
        orphans += 1;
        assert!(
            recovered.contains(&request) || possibly.contains(&format!("pending:{request}")),
            "request {request} (event {}) has no result, is not reconciled and is not \
             listed as possibly issued; possibly-issued: {possibly:?}",
            seq(intent)
        );
    }
    eprintln!(
        "{} acknowledged, {} cut off by the kill; {orphans} intent(s) without a result \
         ({} reconciled, {} listed as possibly issued)",
        acked.len(),
        failed.len(),
        recovered.len(),
        possibly.len()
    );
}

/// The `events` table of the store, as src/store/tables.rs defines it.
const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");

/// Replaces one octet of a string inside event `seq`'s stored value.
fn alter_event(database: &Path, seq: u64, needle: &[u8], replacement: u8) {
    let db = redb::Database::open(database).expect("open the copy with redb");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(EVENTS).unwrap();
        let mut value = {
            use redb::ReadableTable;
            let guard = table.get(seq).unwrap().expect("the event is stored");
            guard.value().to_vec()
        };
        let at = value
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| {
                panic!("event {seq} holds no {:?}", String::from_utf8_lossy(needle))
            });
        assert_ne!(value[at], replacement);
        value[at] = replacement;
        table.insert(seq, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_byte_altered_in_a_stored_event_is_named_by_offline_and_online_verify() {
    let mut a = Appliance::start();
    let demo = demo_flow(&a);
    let target = a
        .events()
        .iter()
        .find(|e| kind(e) == "ceremony-opened" && subjects(e)[0] == demo.root_ceremony)
        .map(seq)
        .expect("the root ceremony's event");
    assert!(a.stop_daemon().success());

    let original = a.database();
    let clean = run(
        Command::new(castellan_bin())
            .arg("verify")
            .arg("--database")
            .arg(&original),
        WAIT,
    )
    .ok();
    assert_eq!(clean.json()["ok"], true, "{clean}");

    // "castellan test root" → "castellan Test root": still a valid string.
    let copy = a.path("evidence.redb");
    std::fs::copy(&original, &copy).unwrap();
    alter_event(&copy, target, b"test root", b'T');

    let damaged = run(
        Command::new(castellan_bin())
            .arg("verify")
            .arg("--database")
            .arg(&copy),
        WAIT,
    );
    assert_eq!(damaged.code, Some(65), "{damaged}");
    let v = damaged.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad_sequence"].as_u64(), Some(target), "{v}");
    let problem = v["problem"].as_str().unwrap_or("");
    assert!(problem.contains("does not match its hash"), "{v}");

    // A daemon serving the damaged copy reports it too.
    let config = a.path("castellan-evidence.toml");
    std::fs::write(&config, a.config_text(Some(&copy))).unwrap();
    a.start_daemon_with(&config);
    let online = a.ctl(&["audit", "verify"]);
    assert_ne!(online.code, Some(0), "{online}");
    assert_eq!(
        online.json()["first_bad_sequence"].as_u64(),
        Some(target),
        "{online}"
    );
    let text = run(
        Command::new(ctl_bin())
            .arg("--socket")
            .arg(&a.admin_socket)
            .args(["audit", "verify"]),
        WAIT,
    );
    assert_ne!(text.code, Some(0), "{text}");
    assert!(
        text.stdout.contains(&format!("first bad event: {target}")),
        "{text}"
    );
}

type Dump = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

/// Where two projection dumps differ, briefly.
fn first_difference(live: &Dump, replayed: &Dump) -> Option<String> {
    let names = |d: &Dump| d.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(live) != names(replayed) {
        return Some(format!("tables {:?} vs {:?}", names(live), names(replayed)));
    }
    for ((name, a), (_, b)) in live.iter().zip(replayed) {
        if a.len() != b.len() {
            return Some(format!(
                "{name}: {} rows live, {} replayed",
                a.len(),
                b.len()
            ));
        }
        for ((ka, va), (kb, vb)) in a.iter().zip(b) {
            if ka != kb || va != vb {
                return Some(format!(
                    "{name}: live row {} = {}, replayed row {} = {}",
                    hex::encode(ka),
                    hex::encode(va),
                    hex::encode(kb),
                    hex::encode(vb)
                ));
            }
        }
    }
    None
}

#[test]
fn replaying_the_event_log_rebuilds_projections_identical_to_the_live_ones() {
    let mut a = Appliance::start();
    demo_flow(&a);
    // More history: a refused request and a certificate left valid.
    let refused = a.ctl(&[
        "issue",
        "--csr",
        a.path("web.csr").to_str().unwrap(),
        "--profile",
        "no-such-profile",
        "--out",
        a.path("refused.pem").to_str().unwrap(),
    ]);
    assert_eq!(refused.code, Some(2), "{refused}");
    a.issue_generated("extra", "extra.replay.test").ok();
    assert!(a.stop_daemon().success());

    let store = castellan::store::Store::open(&a.database(), true).expect("open the store");
    let live = store.projection_dump().expect("dump the live projections");
    let rows = |d: &Dump, t: &str| d.iter().find(|(n, _)| n == t).map(|(_, r)| r.len());
    assert_eq!(rows(&live, "p.cas"), Some(2));
    assert_eq!(rows(&live, "p.certs"), Some(2));
    assert_eq!(rows(&live, "p.ceremonies"), Some(2));
    assert!(rows(&live, "p.checkpoints") >= Some(1));
    store.rebuild_projections().expect("replay the events");
    let replayed = store
        .projection_dump()
        .expect("dump the replayed projections");
    if let Some(d) = first_difference(&live, &replayed) {
        panic!("replay differs from the live projections: {d}");
    }
}

#[test]
fn with_the_signer_stopped_issuance_is_unavailable_reads_work_and_a_restarted_signer_is_used() {
    let mut a = Appliance::start();
    a.make_cas();
    let before = serial_of(a.issue_generated("before", "before.signer.test"));

    a.kill_signer();
    let down = run(
        &mut a.issue_generated_command("down", "down.signer.test"),
        Duration::from_secs(10),
    );
    assert_eq!(down.code, Some(69), "{down}");
    let (k, m) = down.error();
    assert_eq!(k, "unavailable", "{m}");
    assert!(!a.path("down.pem").exists());

    // Reads do not need the signer.
    let certs = a.certs();
    assert!(
        certs.iter().any(|c| c["serial"] == before.as_str()),
        "{certs:?}"
    );
    let cas = a.ctl(&["ca", "list"]).ok().json();
    assert_eq!(cas.as_array().map(Vec::len), Some(2), "{cas}");
    assert!(!a.events().is_empty());
    let status = a.ctl(&["status"]).ok().json();
    assert_eq!(status["signer_reachable"], false, "{status}");

    // Back without restarting castellan.
    a.start_signer();
    let after = serial_of(a.issue_generated("after", "after.signer.test"));
    let v = a.ctl(&["cert", "show", &after]).ok().json();
    assert_eq!(v["state"], "issued", "{v}");
    let status = a.ctl(&["status"]).ok().json();
    assert_eq!(status["signer_reachable"], true, "{status}");
    assert!(a.daemon_running());
}

#[test]
fn an_invalid_configuration_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "state_dir = \"{0}/state\"\n[signer]\nsocket = \"{0}/signer.sock\"\n",
        dir.path().display()
    );
    let sock = format!("socket = \"{}/admin.sock\"\n", dir.path().display());
    let cases = [
        (
            format!("{base}[admin]\nsokcet = \"/x\"\n"),
            &["admin.sokcet", "admin.socket"][..],
        ),
        (
            format!("{base}[admin]\n{sock}socket_mode = 0o666\n"),
            &["admin.socket_mode"][..],
        ),
        (
            format!(
                "{base}[admin]\n{sock}[admin.roles]\nauditor = [\"no-such-user-castellan-test\"]\n"
            ),
            &["admin.roles.auditor"][..],
        ),
    ];
    for (i, (text, keys)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        for check_only in [true, false] {
            let mut cmd = Command::new(castellan_bin());
            cmd.arg("--config").arg(&file).env_remove("JOURNAL_STREAM");
            if check_only {
                cmd.arg("check-config");
            }
            let out = run(&mut cmd, WAIT);
            assert_eq!(out.code, Some(64), "{text}\n{out}");
            assert!(
                keys.iter().any(|k| out.stderr.contains(k)),
                "stderr names none of {keys:?}:\n{out}"
            );
        }
    }
    assert!(!dir.path().join("state").exists(), "nothing was started");
}

/// Lets uid/gid `NOBODY` reach the admin socket at the filesystem level:
/// the kernel then hands the connection to castellan, which decides.
fn admit_nobody_to_the_socket(a: &Appliance) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs castellanctl as uid {NOBODY} with setpriv: run it as root"
    );
    std::fs::set_permissions(a.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&a.admin_socket, None, Some(NOBODY)).unwrap();
}

#[test]
fn a_uid_without_a_role_is_refused_by_the_admin_socket() {
    let a = Appliance::start();
    admit_nobody_to_the_socket(&a);
    for args in [
        &["status"][..],
        &["cert", "list"][..],
        &["audit", "log"][..],
    ] {
        let out = a.ctl_as(NOBODY, NOBODY, args);
        assert_eq!(out.code, Some(77), "{out}");
        let (k, m) = out.error();
        assert_eq!(k, "forbidden", "{m}");
        assert!(m.contains(&format!("uid {NOBODY}")), "{m}");
    }
    // The probes answer any local peer (curl as a real client).
    let probe = run(
        Command::new("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .args([
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&a.admin_socket)
            .arg("http://castellan/healthz"),
        WAIT,
    );
    assert_eq!(probe.stdout, "200", "{probe}");
}

#[test]
fn an_auditor_cannot_revoke_and_the_certificate_stays_issued() {
    let a = Appliance::start_with(Settings {
        roles: format!(
            "admin = [\"{}\"]\nauditor = [\"{NOBODY}\"]\n",
            common::uid()
        ),
        ..Settings::default()
    });
    a.make_cas();
    let serial = serial_of(a.issue_generated("leaf", "leaf.auditor.test"));
    admit_nobody_to_the_socket(&a);

    let out = a.ctl_as(
        NOBODY,
        NOBODY,
        &["revoke", &serial, "--reason", "keyCompromise"],
    );
    assert_eq!(out.code, Some(77), "{out}");
    let (k, m) = out.error();
    assert_eq!(k, "forbidden", "{m}");
    assert!(m.contains("auditor"), "{m}");

    // An auditor reads; the certificate is as it was.
    let v = a
        .ctl_as(NOBODY, NOBODY, &["cert", "show", &serial])
        .ok()
        .json();
    assert_eq!(v["state"], "issued", "{v}");
    let v = a.ctl(&["cert", "show", &serial]).ok().json();
    assert_eq!(v["state"], "issued", "{v}");
    assert!(v["revocation"].is_null(), "{v}");
    assert!(
        !a.events().iter().any(|e| kind(e) == "certificate-revoked"),
        "a refused revocation leaves no revocation event"
    );
}

#[test]
fn serials_pasted_from_openssl_are_found_and_an_unknown_serial_is_not_found() {
    let a = Appliance::start();
    a.make_cas();
    let serial = serial_of(a.issue_generated("leaf", "leaf.serials.test"));
    // As `openssl x509 -serial` prints it: "serial=" and upper case.
    let printed = openssl(
        &["x509", "-in", "leaf.pem", "-noout", "-serial"],
        a.dir.path(),
    )
    .stdout
    .trim()
    .to_string();
    assert!(printed.starts_with("serial="), "{printed}");
    // As `openssl x509 -text` prints it: octets joined by colons.
    let padded = format!("{}{serial}", "0".repeat(serial.len() % 2));
    let colons = padded
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    for form in [
        printed.clone(),
        colons.clone(),
        format!("0X00{}", serial.to_uppercase()),
    ] {
        let v = a.ctl(&["cert", "show", &form]).ok().json();
        assert_eq!(v["serial"], serial.as_str(), "{form}: {v}");
    }
    let events = a.ctl(&["audit", "log", "--subject", &colons]).ok().json();
    assert!(
        events
            .as_array()
            .is_some_and(|l| l.iter().any(|e| kind(e) == "certificate-issued")),
        "{colons}: {events}"
    );

    // A mistyped CA id lists nothing silently no more.
    let out = a.ctl(&["cert", "list", "--ca", "isuing"]);
    assert_eq!(out.code, Some(3), "{out}");
    let (k, m) = out.error();
    assert_eq!(k, "not-found", "{m}");
    assert!(m.contains("issuing, root"), "{m}");
    let listed = a.ctl(&["cert", "list", "--ca", "issuing"]).ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // Not a serial at all: what to give instead.
    let out = a.ctl(&["cert", "show", "leaf.serials.test"]);
    assert_eq!(out.code, Some(2), "{out}");
    let (k, m) = out.error();
    assert_eq!(k, "bad-request", "{m}");
    assert!(m.contains("castellanctl cert list"), "{m}");

    // A serial castellan never issued is not found (exit 3), for revoke
    // as for show; a certificate already revoked is refused (exit 1).
    for args in [
        &["cert", "show", "0badc0de"][..],
        &["revoke", "0badc0de", "--reason", "keyCompromise"],
    ] {
        let out = a.ctl(args);
        assert_eq!(out.code, Some(3), "{out}");
        assert_eq!(out.error().0, "not-found", "{out}");
    }
    // A misspelt field is refused, not dropped: the revocation would be
    // published for good without its invalidity date.
    let r = AdminClient::new(&a.admin_socket)
        .request(
            "POST",
            &format!("/v1/certificates/{serial}/revoke"),
            Some(br#"{"reason": "keyCompromise", "invalidity": "2026-01-01T00:00:00Z"}"#),
        )
        .unwrap();
    let e = error_kind(&r.body);
    assert_eq!(r.status, 400, "{e}");
    assert!(
        e.contains("unknown field `invalidity`") && e.contains("invalidity_date"),
        "{e}"
    );
    // An invalidity date still to come is refused, not published for good.
    let out = a.ctl(&[
        "revoke",
        &printed,
        "--reason",
        "keyCompromise",
        "--invalidity-date",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.error().1.contains("in the future"), "{out}");
    let v = a.ctl(&["cert", "show", &serial]).ok().json();
    assert_eq!(v["state"], "issued", "{v}");
    let v = a
        .ctl(&["revoke", &printed, "--reason", "key-compromise"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
    let out = a.ctl(&["revoke", &serial, "--reason", "keyCompromise"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.error().0, "refused", "{out}");
}

#[test]
fn signer_ceremonies_as_files_answer_in_json_with_json() {
    let mut a = Appliance::prepare(Settings::default());
    a.start_signer();
    let signer = |args: &[&str]| {
        run(
            Command::new(ctl_bin())
                .arg("--json")
                .arg("--socket")
                .arg(&a.signer_socket)
                .arg("signer")
                .args(args),
            WAIT,
        )
        .ok()
        .json()
    };
    let file = a.path("root.ceremony");
    let file_s = file.to_str().unwrap();
    let v = signer(&[
        "ceremony",
        "new",
        "--purpose",
        "root",
        "--ca-id",
        "root",
        "--subject",
        "CN=castellan test root",
        "--out",
        file_s,
    ]);
    let id = v["ceremony_id"]
        .as_str()
        .expect("a ceremony id")
        .to_string();
    assert_eq!(v["purpose"], "root", "{v}");
    for (n, who) in ["alice", "bob"].into_iter().enumerate() {
        let v = signer(&[
            "ceremony",
            "approve",
            file_s,
            "--key",
            a.path(&format!("{who}.key")).to_str().unwrap(),
            "--passphrase-file",
            a.path(&format!("{who}.pass")).to_str().unwrap(),
        ]);
        assert_eq!(v["ceremony_id"], id.as_str(), "{v}");
        assert_eq!(v["custodian"], who, "{v}");
        assert_eq!(v["approvals"], n + 1, "{v}");
    }
    let pem = a.path("root.pem");
    let v = signer(&[
        "ceremony",
        "execute",
        file_s,
        "--out",
        pem.to_str().unwrap(),
    ]);
    assert_eq!(v["ceremony_id"], id.as_str(), "{v}");
    assert_eq!(v["ca_id"], "root", "{v}");
    let copy = a.path("root-copy.pem");
    let v = signer(&["ca-cert", "--ca", "root", "--out", copy.to_str().unwrap()]);
    assert_eq!(v["ca_id"], "root", "{v}");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&pem).unwrap());
    let subject = openssl(
        &["x509", "-in", "root.pem", "-noout", "-subject"],
        a.dir.path(),
    );
    assert!(subject.stdout.contains("castellan test root"), "{subject}");
}

#[test]
fn a_ceremony_for_a_taken_ca_id_is_refused_before_custodians_are_called_and_an_unknown_parent_is_named()
 {
    let a = Appliance::start();
    a.make_cas();
    let before = a.ctl(&["ceremony", "list"]).ok().json();
    let out = a.ctl(&[
        "ceremony",
        "open",
        "--purpose",
        "root",
        "--ca-id",
        "root",
        "--subject",
        "CN=another root",
    ]);
    assert_eq!(out.code, Some(1), "{out}");
    let (k, m) = out.error();
    assert_eq!(k, "refused", "{m}");
    assert!(m.contains("exists already"), "{m}");
    assert!(m.contains("--purpose rotate"), "{m}");
    assert_eq!(a.ctl(&["ceremony", "list"]).ok().json(), before);

    // A parent castellan does not know: opened (it may be made later), but
    // the admin is told at once which CAs there are.
    let out = a.ctl(&[
        "ceremony",
        "open",
        "--purpose",
        "intermediate",
        "--ca-id",
        "second",
        "--parent",
        "roo",
        "--subject",
        "CN=second issuing CA",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("warning"), "{out}");
    assert!(out.stderr.contains("known: issuing, root"), "{out}");
    // A parent that an open ceremony creates: no warning.
    a.open_ceremony(&[
        "--purpose",
        "intermediate",
        "--ca-id",
        "third",
        "--parent",
        "issuing",
        "--subject",
        "CN=third",
    ]);
    let out = a.ctl(&[
        "ceremony",
        "open",
        "--purpose",
        "intermediate",
        "--ca-id",
        "fourth",
        "--parent",
        "third",
        "--subject",
        "CN=fourth",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(!out.stderr.contains("warning"), "{out}");
    // Executed before its quorum: the approve command to run, complete.
    let id = out.json()["id"]
        .as_str()
        .expect("a ceremony id")
        .to_string();
    let out = a.ctl(&["ceremony", "execute", &id]);
    assert_eq!(out.code, Some(1), "{out}");
    let (_, m) = out.error();
    assert!(
        m.contains(&format!("castellanctl ceremony approve {id} --key"))
            && m.contains("--passphrase-file"),
        "{m}"
    );
}

#[test]
fn a_ceremony_the_signer_would_refuse_after_approval_is_refused_when_opened() {
    let a = Appliance::start();
    for (args, said) in [
        (&["--ca-id", "", "--subject", "CN=r"][..], "a CA id is 1-63"),
        (
            &["--ca-id", "Root CA", "--subject", "CN=r"],
            "a CA id is 1-63",
        ),
        (
            &["--ca-id", "r", "--subject", "CN=r", "--days", "0"],
            "--days",
        ),
        (
            &["--ca-id", "r", "--subject", "CN=,O=Example"],
            "empty value",
        ),
    ] {
        let mut all = vec!["ceremony", "open", "--purpose", "root"];
        all.extend_from_slice(args);
        let out = a.ctl(&all);
        assert_eq!(out.code, Some(2), "{args:?}: {out}");
        let (k, m) = out.error();
        assert_eq!(k, "bad-request", "{args:?}: {m}");
        assert!(m.contains(said), "{args:?}: {m}");
    }
    // Also straight to the API, without castellanctl's own checks.
    let r = AdminClient::new(&a.admin_socket)
        .request(
            "POST",
            "/v1/ceremonies",
            Some(br#"{"purpose": "root", "ca_id": "r", "subject": "CN=r", "days": 0}"#),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", error_kind(&r.body));
    assert_eq!(
        a.ctl(&["ceremony", "list"]).ok().json(),
        serde_json::json!([])
    );
}

#[test]
fn castellanctl_pointed_at_the_signers_socket_says_which_socket_it_needs() {
    let mut a = Appliance::prepare(Settings::default());
    a.start_signer();
    let out = run(
        Command::new(ctl_bin())
            .arg("--json")
            .arg("--socket")
            .arg(&a.signer_socket)
            .arg("status"),
        WAIT,
    );
    assert_eq!(out.code, Some(69), "{out}");
    let (k, m) = out.error();
    assert_eq!(k, "unavailable", "{m}");
    assert!(m.contains("castellan's admin socket"), "{m}");
    assert!(m.contains("castellanctl signer"), "{m}");
}

fn error_kind(body: &[u8]) -> String {
    let e: ErrorBody = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not a JSON error body ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    format!("{:?}: {}", e.error.kind, e.error.message)
}

#[test]
fn malformed_json_oversized_bodies_and_stalled_clients_get_clear_answers_and_castellan_stays_up() {
    let mut a = Appliance::start_with(Settings {
        admin: "max_body_bytes = 4096\nheader_timeout_ms = 500\nrequest_timeout_ms = 3000\n".into(),
        ..Settings::default()
    });
    let client = AdminClient::new(&a.admin_socket);

    // Malformed JSON: 400, saying what to send.
    let r = client
        .request("POST", "/v1/certificates", Some(b"{\"csr_pem\": "))
        .unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let e = error_kind(&r.body);
    assert!(
        e.starts_with("BadRequest") && e.contains("send JSON like"),
        "{e}"
    );
    let curl = run(
        Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "-X", "POST"])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data",
                "{not json",
            ])
            .arg("--unix-socket")
            .arg(&a.admin_socket)
            .arg("http://castellan/v1/ceremonies"),
        WAIT,
    )
    .ok();
    let (body, code) = curl.stdout.rsplit_once('\n').expect("body and status");
    assert_eq!(code, "400", "{curl}");
    assert!(
        error_kind(body.as_bytes()).starts_with("BadRequest"),
        "{curl}"
    );

    // Bodies over the limit: 413, declared or streamed.
    let big = vec![b' '; 64 * 1024];
    let r = client
        .request("POST", "/v1/certificates", Some(&big))
        .unwrap();
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert!(error_kind(&r.body).starts_with("TooLarge"));
    let mut chunked = b"POST /v1/certificates HTTP/1.1\r\nHost: castellan\r\n\
        Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
        Connection: close\r\n\r\n"
        .to_vec();
    for _ in 0..8 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 0x400]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = common::raw_exchange(&a.admin_socket, &chunked);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too-large\""), "{answer}");

    // Stalled clients: some mid-head, one mid-body.
    let mut mid_head: Vec<UnixStream> = (0..8)
        .map(|_| {
            let mut s = UnixStream::connect(&a.admin_socket).unwrap();
            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: cas")
                .unwrap();
            s
        })
        .collect();
    let mut mid_body = UnixStream::connect(&a.admin_socket).unwrap();
    mid_body
        .write_all(
            b"POST /v1/certificates HTTP/1.1\r\nHost: castellan\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"csr_pem\": \"",
        )
        .unwrap();
    // Others are served meanwhile.
    let status = a.ctl(&["status"]).ok().json();
    assert_eq!(status["role"], "admin", "{status}");
    assert_eq!(client.request("GET", "/healthz", None).unwrap().status, 200);
    // Then the stalled ones are cut off.
    for s in &mut mid_head {
        let rest = read_until_closed(s);
        assert!(
            !rest.contains(" 200 "),
            "a stalled head was answered: {rest}"
        );
    }
    mid_body.set_read_timeout(Some(WAIT)).unwrap();
    let r = read_response(&mut BufReader::new(&mid_body))
        .expect("an answer to the request whose body stalled");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(error_kind(&r.body).starts_with("BadRequest"));

    // castellan is still up and serving.
    assert!(a.daemon_running());
    assert_eq!(client.request("GET", "/healthz", None).unwrap().status, 200);
    a.ctl(&["audit", "verify"]).ok();
}

/// systemd starts units ordered after castellan once it says READY=1: the
/// admin socket must accept by then. A second daemon on the same admin
/// socket is refused with a clear error and the first keeps serving.
#[test]
fn ready_is_reported_only_once_the_admin_socket_accepts() {
    let mut a = Appliance::prepare(Settings::default());
    a.start_signer();
    let notify_path = a.path("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let log = std::fs::File::create(a.path("castellan.log")).unwrap();
    let mut daemon = Command::new(common::castellan_bin())
        .arg("--config")
        .arg(&a.config)
        .env_remove("JOURNAL_STREAM")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting castellan");
    let mut said = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let n = match notify.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = daemon.kill();
                panic!("no READY=1 from castellan ({e}); it said {said:?}");
            }
        };
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let ready = text.lines().any(|l| l == "READY=1");
        said.push(text);
        if ready {
            break;
        }
    }
    let connected = UnixStream::connect(&a.admin_socket);
    let second = a.path("second.toml");
    std::fs::write(&second, a.config_text(Some(&a.path("second.redb")))).unwrap();
    let out = common::run(
        Command::new(common::castellan_bin())
            .arg("--config")
            .arg(&second)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET"),
        Duration::from_secs(60),
    );
    let still = UnixStream::connect(&a.admin_socket);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        connected.is_ok(),
        "READY=1 was sent before the admin socket accepted: {connected:?} (said {said:?})"
    );
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("admin.socket") && out.stderr.contains("in use"),
        "{out}"
    );
    assert!(still.is_ok(), "the first daemon stopped serving: {still:?}");
}

/// `castellanctl issue` without `--issuer`: castellan picks the issuer.
fn issue_default(a: &Appliance, tag: &str) -> Out {
    let key = a.path(&format!("{tag}.key"));
    let out = a.path(&format!("{tag}.pem"));
    a.ctl(&[
        "issue",
        "--generate-key",
        "--subject",
        &format!("CN={tag}.example"),
        "--san",
        &format!("DNS:{tag}.example"),
        "--key-out",
        key.to_str().unwrap(),
        "--profile",
        "server",
        "--ttl",
        "30",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn the_default_issuer_and_its_chain_follow_each_new_ca_at_once() {
    let a = Appliance::start();
    let (k, m) = issue_default(&a, "none").error();
    assert_eq!(k, "refused", "{m}");
    assert!(m.contains("no active CA yet"), "{m}");

    // The root alone issues, with an empty chain; asked twice, so the
    // second answer may come from what the first one looked up.
    let root = a.open_root();
    a.approve(&root, "alice").ok();
    a.approve(&root, "bob").ok();
    a.execute(&root, None).ok();
    for tag in ["root-1", "root-2"] {
        let v = issue_default(&a, tag).ok().json();
        assert_eq!(v["issuer"], "root", "{v}");
        assert_eq!(v["chain_pem"], "", "{v}");
    }

    // Once an intermediate exists it is the default, and its certificate
    // is the chain: nothing looked up for the root alone is reused.
    let inter = a.open_intermediate();
    a.approve(&inter, "bob").ok();
    a.approve(&inter, "carol").ok();
    let issuing_pem = a.path("issuing.pem");
    a.execute(&inter, Some(&issuing_pem)).ok();
    let issuing_pem = std::fs::read_to_string(&issuing_pem).unwrap();
    for tag in ["inter-1", "inter-2"] {
        let v = issue_default(&a, tag).ok().json();
        assert_eq!(v["issuer"], "issuing", "{v}");
        assert_eq!(v["chain_pem"].as_str(), Some(issuing_pem.as_str()), "{v}");
    }
    let v = a.issue_generated("named", "named.example").ok().json();
    assert_eq!(v["issuer"], "issuing", "{v}");
    assert_eq!(v["chain_pem"].as_str(), Some(issuing_pem.as_str()), "{v}");
}

/// `castellanctl issue --generate-key` under the server profile from
/// `issuing` with this subject and these SANs (files `<tag>.key`, `<tag>.pem`).
fn issue_with(a: &Appliance, tag: &str, subject: &str, sans: &[&str], issuer: &str) -> Out {
    let key = a.path(&format!("{tag}.key"));
    let out = a.path(&format!("{tag}.pem"));
    let mut args = vec![
        "issue",
        "--generate-key",
        "--subject",
        subject,
        "--key-out",
        key.to_str().unwrap(),
        "--profile",
        "server",
        "--issuer",
        issuer,
        "--out",
        out.to_str().unwrap(),
    ];
    for s in sans {
        args.extend(["--san", s]);
    }
    a.ctl(&args)
}

fn refusals(a: &Appliance) -> Vec<String> {
    a.events()
        .iter()
        .filter(|e| kind(e) == "issuance-refused")
        .map(|e| e["payload"].to_string())
        .collect()
}

#[test]
fn a_subject_that_names_another_host_or_breaks_the_attribute_rules_is_refused_and_logged() {
    let a = Appliance::start();
    a.make_cas();
    let cases: [(&str, &[&str], &[&str]); 4] = [
        (
            "CN=www.bank.example",
            &["DNS:app.corp.example"],
            &["CN", "www.bank.example", "not among"],
        ),
        // An address in the CN is a host name too.
        (
            "CN=10.1.2.3",
            &["DNS:app.corp.example"],
            &["CN", "10.1.2.3", "IP address"],
        ),
        (
            "CN=a long name that is not a host name but is longer than the sixty-four allowed",
            &["DNS:app.corp.example"],
            &["CN (commonName)", "at most 64"],
        ),
        (
            "CN=app.corp.example,C=Germany",
            &["DNS:app.corp.example"],
            &["C (countryName)", "at most 2"],
        ),
    ];
    let mut refused = 0;
    for (i, (subject, sans, words)) in cases.iter().enumerate() {
        let out = issue_with(&a, &format!("bad{i}"), subject, sans, "issuing");
        assert_eq!(out.code, Some(2), "{subject}: {out}");
        for w in *words {
            assert!(out.stdout.contains(w), "{subject}: no {w:?} in {out}");
        }
        refused += 1;
        let logged = refusals(&a);
        assert_eq!(logged.len(), refused, "{logged:?}");
        assert!(logged[refused - 1].contains("subject"), "{logged:?}");
    }
    // A control character in an attribute.
    let out = issue_with(
        &a,
        "ctrl",
        "CN=app.corp.example,OU=ops\u{7}team",
        &["DNS:app.corp.example"],
        "issuing",
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stdout.contains("OU (organizationalUnitName)") && out.stdout.contains("control"),
        "{out}"
    );
    refused += 1;
    assert_eq!(refusals(&a).len(), refused);

    // An unknown issuer is refused and logged like any other refusal.
    let out = issue_with(
        &a,
        "noissuer",
        "CN=app.corp.example",
        &["DNS:app.corp.example"],
        "no-such-ca",
    );
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("no-such-ca"), "{out}");
    let logged = refusals(&a);
    assert_eq!(logged.len(), refused + 1, "{logged:?}");
    assert!(logged[refused].contains("no-such-ca"), "{logged:?}");

    // The CN repeating a SAN (in another case) and a person's name as CN
    // are issued.
    issue_with(
        &a,
        "good",
        "CN=App.Corp.Example,O=Example",
        &["DNS:app.corp.example"],
        "issuing",
    )
    .ok();
    issue_with(
        &a,
        "person",
        "CN=Jane Doe,C=DE",
        &["DNS:app.corp.example"],
        "issuing",
    )
    .ok();
}

/// Rewrites a copy of the log as someone who can write the file could:
/// every recorded audit key replaced by `key`'s, every checkpoint re-made
/// and re-signed with it, the chain re-hashed. Returns the sequence numbers
/// of the replaced `SignerKeysObserved` events.
fn swap_audit_key(database: &Path, key: &ring::signature::EcdsaKeyPair) -> Vec<u64> {
    use castellan::events::{Event, EventPayload};
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(key.public_key().as_ref());
    let db = redb::Database::open(database).expect("open the copy with redb");
    let txn = db.begin_write().unwrap();
    let mut swapped = Vec::new();
    {
        use redb::ReadableTable;
        let mut table = txn.open_table(EVENTS).unwrap();
        let stored: Vec<Event> = table
            .range::<u64>(..)
            .unwrap()
            .map(|kv| postcard::from_bytes(kv.unwrap().1.value()).unwrap())
            .collect();
        let mut hashes: Vec<[u8; 32]> = Vec::new();
        let mut prev = [0u8; 32];
        for ev in stored {
            let payload = match ev.payload {
                EventPayload::SignerKeysObserved { custodians, .. } => {
                    swapped.push(ev.seq);
                    EventPayload::SignerKeysObserved {
                        audit_spki_der: spki.clone(),
                        audit_algorithm: castellan_proto::Algorithm::EcdsaP256,
                        custodians,
                    }
                }
                EventPayload::CheckpointSigned { sequence, time, .. } => {
                    let request = castellan_proto::CheckpointRequest {
                        sequence,
                        head_hash: hashes[sequence as usize],
                        time,
                    };
                    let message = castellan_proto::checkpoint_message(&request);
                    EventPayload::CheckpointSigned {
                        sequence,
                        head_hash: request.head_hash,
                        time,
                        signature: key.sign(&rng, &message).unwrap().as_ref().to_vec(),
                    }
                }
                other => other,
            };
            let new = Event::new(ev.seq, ev.time_ms, ev.actor, payload, prev);
            prev = new.hash;
            hashes.push(new.hash);
            table
                .insert(new.seq, postcard::to_stdvec(&new).unwrap().as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
    swapped
}

#[test]
fn a_log_whose_recorded_audit_key_was_swapped_is_reported_online_and_offline() {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let mut a = Appliance::start();
    a.make_cas();
    a.ctl(&["audit", "checkpoint"]).ok();
    common::issue(&a, "after-checkpoint");
    a.ctl(&["audit", "checkpoint"]).ok();
    a.ctl(&["audit", "verify"]).ok();
    assert!(a.stop_daemon().success());

    // The signer's audit key, exported apart from the log.
    let audit_pem = a.path("audit-key.pem");
    run(
        Command::new(ctl_bin())
            .arg("--socket")
            .arg(&a.signer_socket)
            .args(["signer", "audit-key", "--out"])
            .arg(&audit_pem),
        WAIT,
    )
    .ok();
    assert!(
        std::fs::read_to_string(&audit_pem)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );

    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let forger =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let copy = a.path("forged.redb");
    std::fs::copy(a.database(), &copy).unwrap();
    let swapped = swap_audit_key(&copy, &forger);
    assert!(
        !swapped.is_empty(),
        "the log records the signer's audit key"
    );

    let verify = |db: &Path, key: Option<&Path>| {
        let mut cmd = Command::new(castellan_bin());
        cmd.arg("verify").arg("--database").arg(db);
        if let Some(k) = key {
            cmd.arg("--audit-key").arg(k);
        }
        run(&mut cmd, WAIT)
    };
    // Against the keys in the log alone, the forgery is consistent: the
    // report says that is all it checked.
    let alone = verify(&copy, None);
    assert_eq!(alone.code, Some(0), "{alone}");
    assert_eq!(alone.json()["checkpoint_keys"], "log-only", "{alone}");
    assert!(
        alone
            .stderr
            .contains("only against the audit keys recorded in the log itself"),
        "{alone}"
    );
    // With the signer's key: the original verifies, the forgery does not.
    let original = verify(&a.database(), Some(&audit_pem));
    assert_eq!(original.code, Some(0), "{original}");
    assert_eq!(original.json()["checkpoint_keys"], "file", "{original}");
    let forged = verify(&copy, Some(&audit_pem));
    assert_eq!(forged.code, Some(65), "{forged}");
    let v = forged.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(
        v["foreign_audit_keys"][0][0].as_u64(),
        Some(swapped[0]),
        "{v}"
    );

    // Online: castellan asks the signer for its audit key.
    let config = a.path("castellan-forged.toml");
    std::fs::write(&config, a.config_text(Some(&copy))).unwrap();
    a.start_daemon_with(&config);
    let online = run(
        Command::new(ctl_bin())
            .arg("--socket")
            .arg(&a.admin_socket)
            .args(["audit", "verify"]),
        WAIT,
    );
    assert_eq!(online.code, Some(1), "{online}");
    assert!(
        online.stdout.contains(&format!(
            "audit key at event {} is not the signer's",
            swapped[0]
        )),
        "{online}"
    );

    // Without the signer the keys cannot be confirmed: not a plain OK.
    a.kill_signer();
    let unconfirmed = a.ctl(&["audit", "verify"]);
    assert_eq!(unconfirmed.code, Some(69), "{unconfirmed}");
    let v = unconfirmed.json();
    assert_eq!(v["checkpoint_keys"], "log-only", "{v}");
    assert!(
        v["checkpoint_keys_note"]
            .as_str()
            .unwrap_or("")
            .contains("could not be confirmed against the signer"),
        "{v}"
    );
}

#[test]
fn event_and_certificate_lists_come_in_bounded_pages_that_castellanctl_follows() {
    // More events than the largest page, written before castellan starts.
    let mut a = Appliance::prepare(Settings::default());
    std::fs::create_dir_all(a.path("state")).unwrap();
    {
        let store = castellan::store::Store::open(&a.database(), true).unwrap();
        let events: Vec<castellan::events::EventPayload> = (0..10_050)
            .map(|i| castellan::events::EventPayload::IssuanceRefused {
                reason: format!("bulk {i}"),
            })
            .collect();
        store
            .execute_blocking(castellan::events::Actor::System, move |_| {
                castellan::store::Decision::Commit { events, output: () }
            })
            .unwrap();
    }
    a.start_signer();
    a.start_daemon();
    a.make_cas();
    for tag in ["p1", "p2", "p3"] {
        common::issue(&a, tag);
    }
    let client = AdminClient::new(&a.admin_socket);

    // Without a limit: the default page, and where the next one starts.
    let first: Value = client.get("/v1/audit/log").unwrap();
    assert_eq!(first["events"].as_array().unwrap().len(), 1_000);
    assert_eq!(first["next"], 1_000);
    let r = client
        .request("GET", "/v1/audit/log?limit=10001", None)
        .unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("10000"));

    // castellanctl follows the pages: every event, once, in order.
    let all = a.events();
    assert!(all.len() > 10_050, "{}", all.len());
    for (i, e) in all.iter().enumerate() {
        assert_eq!(seq(e), i as u64);
    }
    let three = a.ctl(&["audit", "log", "--limit", "3"]).ok().json();
    assert_eq!(three.as_array().unwrap().len(), 3);
    // The human listing is a table, as before.
    let human = run(
        Command::new(ctl_bin())
            .arg("--socket")
            .arg(&a.admin_socket)
            .args(["audit", "log", "--kind", "certificate-issued"]),
        WAIT,
    )
    .ok();
    assert!(human.stdout.starts_with("SEQ"), "{human}");
    assert_eq!(human.stdout.lines().count(), 4, "{human}");

    // Octet strings are hex in the payloads.
    let issued: Vec<&Value> = all
        .iter()
        .filter(|e| kind(e) == "certificate-issued")
        .collect();
    let der = issued[0]["payload"]["CertificateIssued"]["certificate_der"]
        .as_str()
        .unwrap_or_else(|| panic!("not hex: {}", issued[0]));
    assert!(der.starts_with("30"), "{der}");
    assert!(hex::decode(der).is_ok());

    // Certificates one per page, by the cursor, are what `cert list` shows.
    let mut after: Option<String> = None;
    let mut paged = Vec::new();
    loop {
        let path = match &after {
            None => "/v1/certificates?limit=1".to_string(),
            Some(c) => format!("/v1/certificates?limit=1&after={c}"),
        };
        let page: Value = client.get(&path).unwrap();
        let certs = page["certificates"].as_array().unwrap();
        assert!(certs.len() <= 1, "{page}");
        paged.extend(certs.iter().map(|c| c["serial"].clone()));
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let listed: Vec<Value> = a.certs().iter().map(|c| c["serial"].clone()).collect();
    assert_eq!(paged.len(), 3);
    assert_eq!(paged, listed);
}

#[test]
fn on_a_full_disk_nothing_is_acknowledged_reads_go_on_and_a_restart_recovers() {
    let mut a = Appliance::start();
    a.make_cas();
    a.stop_daemon();
    // The event store moves onto a small file system of its own.
    let fs_dir = a.path("log-fs");
    std::fs::create_dir(&fs_dir).expect("mount point");
    let fs = common::Tmpfs::mount_at(&fs_dir, "4m");
    let database = fs_dir.join("castellan.redb");
    std::fs::copy(a.database(), &database).expect("copy the event store");
    let config = a.path("castellan-small-disk.toml");
    std::fs::write(&config, a.config_text(Some(&database))).expect("write config");
    a.start_daemon_with(&config);
    a.issue_generated("before", "before.example.test").ok();

    fs.fill();
    let refused = a.issue_generated("full", "full.example.test");
    assert_ne!(refused.code, Some(0), "{refused}");
    let (_, message) = refused.error();
    assert!(
        message.contains("No space left on device") && message.contains("restart"),
        "{message}"
    );
    assert!(
        !a.path("full.pem").exists(),
        "a certificate was handed out that the log does not hold"
    );
    // The daemon stays up, answers reads and says what is wrong.
    assert!(a.daemon_running());
    let status = a.ctl(&["status"]).ok().json();
    let problem = status["log_problem"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(problem.contains("restart castellan"), "{status}");
    assert!(
        a.certs()
            .iter()
            .any(|c| c["identity"] == "before.example.test" && c["state"] == "issued")
    );
    // Space alone does not bring writes back: the failed commit leaves the
    // file to be repaired by reopening it, and the refusal says so.
    fs.free();
    let (_, message) = a.issue_generated("freed", "freed.example.test").error();
    assert!(message.contains("restart"), "{message}");

    a.stop_daemon();
    a.start_daemon_with(&config);
    a.issue_generated("after", "after.example.test").ok();
    let verify = a.ctl(&["audit", "verify"]).ok().json();
    assert_eq!(verify["ok"], true, "{verify}");
    let issued: Vec<String> = a
        .certs()
        .iter()
        .filter(|c| c["state"] == "issued")
        .filter_map(|c| c["identity"].as_str().map(str::to_string))
        .collect();
    assert!(
        issued.contains(&"before.example.test".to_string())
            && issued.contains(&"after.example.test".to_string()),
        "{issued:?}"
    );
    a.stop_daemon();
}
