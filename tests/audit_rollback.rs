//! An event log replaced by an older copy, or cut short, keeps an intact
//! hash chain and valid checkpoints; only the signer, with its own journal,
//! knows how far the log had been checkpointed. `castellanctl audit verify`
//! asks it and must report such a log as rolled back, while the daemon
//! refuses to checkpoint over it (which would erase that evidence).
//!
//! Real signer and daemon, real redb files copied aside and put back, as
//! whoever can write the daemon's files could.

mod common;

use std::process::Command;

use common::{Appliance, Out, WAIT, ctl_bin, issue, run};
use serde_json::Value;

/// `castellanctl audit verify` without `--json`, as an operator reads it.
fn verify_text(a: &Appliance) -> Out {
    run(
        Command::new(ctl_bin())
            .arg("--socket")
            .arg(&a.admin_socket)
            .args(["audit", "verify"]),
        WAIT,
    )
}

fn checkpoint(a: &Appliance) -> u64 {
    let v = a.ctl(&["audit", "checkpoint"]).ok().json();
    v["sequence"].as_u64().expect("a checkpoint sequence")
}

/// The untouched log: verify passes and says it reaches the signer's last
/// checkpoint; returns the verify report.
fn verifies_clean(a: &Appliance) -> Value {
    let v = a.ctl(&["audit", "verify"]).ok().json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["signer_checkpoint"], "matches", "{v}");
    let status = a.ctl(&["status"]).ok().json();
    assert!(status["checkpoint_problem"].is_null(), "{status}");
    let text = verify_text(a).ok();
    assert!(
        text.stdout.contains("audit chain OK")
            && text
                .stdout
                .contains("reaches at least the signer's last checkpoint"),
        "{text}"
    );
    v
}

fn note(v: &Value) -> String {
    v["signer_checkpoint_note"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_event_log_replaced_by_an_older_copy_fails_audit_verify_and_names_the_rollback() {
    let mut a = Appliance::start();
    a.make_cas();
    let first = issue(&a, "first");
    checkpoint(&a);
    verifies_clean(&a);
    assert!(a.stop_daemon().success());
    let old = a.path("older-copy.redb");
    std::fs::copy(a.database(), &old).expect("copying the log aside");

    a.start_daemon();
    issue(&a, "rogue");
    a.ctl(&["revoke", &first, "--reason", "keyCompromise"]).ok();
    let checkpointed = checkpoint(&a);
    verifies_clean(&a);
    assert!(a.stop_daemon().success());

    std::fs::copy(&old, a.database()).expect("putting the older copy back");
    a.start_daemon();

    let out = a.ctl(&["audit", "verify"]);
    assert_eq!(out.code, Some(1), "{out}");
    let v = out.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["signer_checkpoint"], "log-behind", "{v}");
    // The chain of the older copy is intact: only the signer tells.
    assert!(v["first_bad_sequence"].is_null(), "{v}");
    let signed = v["signer_checkpoint_sequence"]
        .as_u64()
        .expect("the signer's checkpoint sequence");
    assert!(signed >= checkpointed, "{v}");
    let events = v["events"].as_u64().expect("an event count");
    assert!(events <= signed, "{v}");
    let expected = format!(
        "the signer checkpointed event {signed}, but the event log ends at event {}",
        events - 1
    );
    assert!(
        note(&v).contains(&expected) && note(&v).contains("older copy"),
        "{v}"
    );
    assert!(note(&v).contains("preserve both files"), "{v}");

    let text = verify_text(&a);
    assert_eq!(text.code, Some(1), "{text}");
    assert!(
        text.stdout.contains("ROLLED BACK") && text.stdout.contains(&expected),
        "{text}"
    );

    // Checkpointing the older copy would make the signer's record agree
    // with it: refused, naming what to run.
    let refused = a.ctl(&["audit", "checkpoint"]);
    assert_ne!(refused.code, Some(0), "{refused}");
    let (_, message) = refused.error();
    assert!(
        message.contains(&expected) && message.contains("castellanctl audit verify"),
        "{refused}"
    );
    // The daemon said so in its log when it started.
    let log = std::fs::read_to_string(a.path("castellan.log")).unwrap_or_default();
    assert!(
        log.contains("does not match the signer's last checkpoint")
            && log.contains("castellanctl audit verify"),
        "{log}"
    );
    // `castellanctl status` shows it too.
    let status = a.ctl(&["status"]).ok().json();
    let problem = status["checkpoint_problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains(&expected) && problem.contains("castellanctl audit verify"),
        "{status}"
    );
    // The signer still holds the evidence.
    let again = a.ctl(&["audit", "verify"]).json();
    assert_eq!(again["signer_checkpoint_sequence"].as_u64(), Some(signed));

    // Without the signer this cannot be checked, which is not an OK.
    a.kill_signer();
    let unchecked = a.ctl(&["audit", "verify"]);
    assert_eq!(unchecked.code, Some(69), "{unchecked}");
    let v = unchecked.json();
    assert_eq!(v["signer_checkpoint"], "not-checked", "{v}");
    assert!(note(&v).contains("could not be checked"), "{v}");
}

#[test]
fn a_cut_log_that_grew_again_past_the_checkpoint_differs_from_it_after_a_signer_restart() {
    let mut a = Appliance::start();
    a.make_cas();
    issue(&a, "early");
    checkpoint(&a);
    assert!(a.stop_daemon().success());
    let old = a.path("cut.redb");
    std::fs::copy(a.database(), &old).expect("copying the log aside");

    a.start_daemon();
    issue(&a, "removed");
    let checkpointed = checkpoint(&a);
    assert!(a.stop_daemon().success());
    // The signer restarts: it knows its last checkpoint only from its
    // journal (a digest), and a log that agrees still verifies.
    a.kill_signer();
    a.start_signer();
    a.start_daemon();
    let v = verifies_clean(&a);
    assert_eq!(
        v["signer_checkpoint_sequence"].as_u64(),
        Some(checkpointed),
        "{v}"
    );
    assert!(a.stop_daemon().success());

    // The tail is cut and the log grows again beyond the checkpointed
    // sequence: long enough, but not the history the signer checkpointed.
    std::fs::copy(&old, a.database()).expect("putting the cut log back");
    a.kill_signer();
    a.start_signer();
    a.start_daemon();
    let mut n = 0;
    loop {
        let v = a.ctl(&["audit", "verify"]).json();
        if v["events"].as_u64().unwrap_or(0) > checkpointed + 1 {
            break;
        }
        n += 1;
        assert!(n < 100, "the log does not grow: {v}");
        issue(&a, &format!("after-{n}"));
    }
    let out = a.ctl(&["audit", "verify"]);
    assert_eq!(out.code, Some(1), "{out}");
    let v = out.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["signer_checkpoint"], "differs", "{v}");
    assert_eq!(
        v["signer_checkpoint_sequence"].as_u64(),
        Some(checkpointed),
        "{v}"
    );
    assert!(
        note(&v).contains(&format!(
            "differs from what the signer checkpointed at event {checkpointed}"
        )),
        "{v}"
    );
    let text = verify_text(&a);
    assert_eq!(text.code, Some(1), "{text}");
    assert!(text.stdout.contains("ROLLED BACK"), "{text}");
    // And the daemon does not checkpoint over it.
    let refused = a.ctl(&["audit", "checkpoint"]);
    assert_ne!(refused.code, Some(0), "{refused}");
}
