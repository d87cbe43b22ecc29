//! Issuance intents: a certificate asked for with `IssueCertificateForIntent`
//! is journaled with the daemon's intent id, `FindIntents` finds it again
//! (also after a restart, from the journal file), and an intent reported as
//! not signed can never be signed afterwards — so the daemon's "not issued"
//! cannot be overtaken by a request still on its way.
//!
//! The logic is the same for every key backend; it runs on the soft store.

#[allow(dead_code)] // the shared harness has more than these tests use
mod common;

use castellan_proto::{
    Algorithm, ErrorKind, IntentQuery, IntentTemplate, MAX_INTENT_QUERY, Request, Response,
};
use common::{Backend, SignerProcess, now, random_bytes, server_template};

fn issue_for(s: &mut SignerProcess, intent: [u8; 16], dns: &str) -> Response {
    match s.call(Request::IssueCertificateForIntent(IntentTemplate {
        intent,
        template: server_template("inter", dns),
    })) {
        Ok(r) => r,
        Err(e) => Response::Error(e),
    }
}

fn find(s: &mut SignerProcess, since: i64, intents: Vec<[u8; 16]>) -> Response {
    s.ok(Request::FindIntents(IntentQuery { since, intents }))
}

#[test]
fn an_intent_is_found_exactly_and_one_reported_unsigned_is_never_signed() {
    let mut s = SignerProcess::start(Backend::Soft);
    s.pki(Algorithm::EcdsaP256, Algorithm::EcdsaP256);
    let since = (now() - 5) * 1000;

    let signed: [u8; 16] = random_bytes();
    let unsigned: [u8; 16] = random_bytes();
    let cert = match issue_for(&mut s, signed, "intent.example") {
        Response::Certificate(c) => c,
        other => panic!("IssueCertificateForIntent answered {other:?}"),
    };
    // A plain IssueCertificate carries no intent and is never found.
    s.issue(server_template("inter", "plain.example"));

    let Response::IntentsFound { found, in_progress } = find(&mut s, since, vec![signed, unsigned])
    else {
        panic!("FindIntents answered something else");
    };
    assert!(in_progress.is_empty(), "{in_progress:?}");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].intent, signed);
    assert_eq!(found[0].serial, cert.serial);
    assert_eq!(found[0].journal_seq, cert.journal_seq);
    assert_eq!(found[0].issuer, "inter");

    // Both are closed now: the unsigned one was reported as never signed,
    // the signed one may not be signed twice.
    for (id, what) in [
        (unsigned, "the intent reported unsigned"),
        (signed, "the signed intent"),
    ] {
        match issue_for(&mut s, id, "late.example") {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Policy, "{what}: {e:?}");
                assert!(e.message.contains("can no longer be signed"), "{what}: {e}");
            }
            other => panic!("{what} was signed after FindIntents: {other:?}"),
        }
    }

    // The intent is in the journal file: found again after a restart (the
    // record round-trips through the on-disk format and the chain verifies).
    s.restart();
    let Response::IntentsFound { found, .. } = find(&mut s, since, vec![signed]) else {
        panic!("FindIntents answered something else after the restart");
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].serial, cert.serial);
    // Not found before its time: `since` bounds the records read.
    let Response::IntentsFound { found, .. } = find(&mut s, (now() + 3600) * 1000, vec![signed])
    else {
        panic!("FindIntents answered something else");
    };
    assert!(found.is_empty(), "{found:?}");
    s.stop();
    let journal = s.state_dir.join("journal");
    let journal_arg = journal.to_str().expect("utf-8 path");
    let verify = s.cli(&["journal", "verify", "--journal", journal_arg]);
    assert!(verify.status.success(), "{}", common::describe(&verify));
}

#[test]
fn a_find_intents_query_outside_its_bounds_is_refused() {
    let mut s = SignerProcess::start(Backend::Soft);
    for n in [0, MAX_INTENT_QUERY + 1] {
        let e = s.refused(Request::FindIntents(IntentQuery {
            since: 0,
            intents: vec![[7u8; 16]; n],
        }));
        assert_eq!(e.kind, ErrorKind::BadRequest, "{n} intents: {e:?}");
        assert!(e.message.contains("intents at a time"), "{e}");
    }
}
