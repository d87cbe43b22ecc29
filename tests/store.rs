//! The event store on real redb files: group commit, durability across
//! SIGKILL, replay equality, chain and checkpoint verification, filters.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use castellan::events::{Actor, EventPayload, RequestId};
use castellan::store::{
    CeremonyStatus, CertFilter, CertState, Decision, EventFilter, ExecError, ReadView, Store,
};
use castellan_proto::{
    Algorithm, CaStatus, CeremonyOp, CheckpointRequest, Custodian, CustodianSet, DistinguishedName,
    RevocationReason, SubjectAltName, checkpoint_message,
};
use redb::ReadableTable;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");

fn alice() -> Actor {
    Actor::Unix {
        uid: 1000,
        gid: 1000,
        name: "alice".into(),
    }
}

fn bot() -> Actor {
    Actor::Mtls {
        subject: "CN=deploy-bot".into(),
        serial: vec![0x42],
    }
}

fn commit(store: &Store, actor: Actor, events: Vec<EventPayload>) {
    store
        .execute_blocking(actor, move |_| Decision::Commit { events, output: () })
        .unwrap();
}

fn refused(reason: &str) -> EventPayload {
    EventPayload::IssuanceRefused {
        reason: reason.into(),
    }
}

fn custodians() -> CustodianSet {
    CustodianSet {
        threshold: 2,
        custodians: vec![
            Custodian {
                name: "ann".into(),
                public_key: [1; 32],
            },
            Custodian {
                name: "bob".into(),
                public_key: [2; 32],
            },
        ],
    }
}

fn intent(request_id: RequestId, identity: &str) -> EventPayload {
    EventPayload::IssuanceIntended {
        request_id,
        issuer: "issuing".into(),
        profile: "tls-server".into(),
        identity: identity.into(),
        subject: DistinguishedName::common_name(identity),
        sans: vec![SubjectAltName::Dns(format!("{identity}.example"))],
        spki_sha256: [7; 32],
        not_before: 1_700_000_000,
        not_after: 1_700_086_400,
    }
}

fn issued(request_id: RequestId, serial: &[u8]) -> EventPayload {
    EventPayload::CertificateIssued {
        request_id,
        serial: serial.to_vec(),
        certificate_der: vec![0x30, 0x03, serial[0], 0, 0],
        signer_journal_seq: u64::from(serial[0]),
    }
}

fn ca(ca_id: &str, parent: Option<&str>) -> EventPayload {
    EventPayload::CaRegistered {
        ca_id: ca_id.into(),
        parent: parent.map(str::to_string),
        algorithm: Algorithm::EcdsaP256,
        status: CaStatus::Active,
        certificate_der: vec![0x30, 0x00],
    }
}

/// DER SubjectPublicKeyInfo of a P-256 key (id-ecPublicKey, prime256v1).
fn p256_spki(point: &[u8]) -> Vec<u8> {
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(point);
    spki
}

fn audit_key() -> EcdsaKeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
}

fn signer_keys(key: &EcdsaKeyPair) -> EventPayload {
    EventPayload::SignerKeysObserved {
        audit_spki_der: p256_spki(key.public_key().as_ref()),
        audit_algorithm: Algorithm::EcdsaP256,
        custodians: custodians(),
    }
}

fn sign_checkpoint(key: &EcdsaKeyPair, sequence: u64, head_hash: [u8; 32]) -> EventPayload {
    let time = 1_700_000_123;
    let msg = checkpoint_message(&CheckpointRequest {
        sequence,
        head_hash,
        time,
    });
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), &msg)
        .unwrap()
        .as_ref()
        .to_vec();
    EventPayload::CheckpointSigned {
        sequence,
        head_hash,
        time,
        signature: sig,
    }
}

/// A checkpoint over the current head, as the daemon would ask for one.
fn checkpoint_now(store: &Store, key: &EcdsaKeyPair) -> (u64, EventPayload) {
    let (n, hash) = store.read().unwrap().head();
    (n - 1, sign_checkpoint(key, n - 1, hash))
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_share_few_durable_commits_and_all_survive_reopen() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .execute(alice(), move |view| {
                    // The seq this command's event gets: earlier commands of
                    // the same batch must already be visible.
                    let (next, _) = view.head();
                    Decision::Commit {
                        events: vec![refused(&format!("command {i}"))],
                        output: next,
                    }
                })
                .await
        }));
    }
    let mut seqs = BTreeSet::new();
    for t in tasks {
        assert!(seqs.insert(t.await.unwrap().unwrap()));
    }
    assert_eq!(seqs, (0..64).collect::<BTreeSet<u64>>());
    let (commits, commands) = store.group_commit_stats();
    println!("group commit: {commits} commits for {commands} commands");
    assert_eq!(commands, 64);
    assert!(commits < 32, "{commits} commits for 64 commands");
    drop(store);

    let store = Store::open(&path, true).unwrap();
    let events = store.events(&EventFilter::default()).unwrap();
    assert_eq!(events.len(), 64);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        if i > 0 {
            assert_eq!(e.prev_hash, events[i - 1].hash);
            assert!(e.time_ms >= events[i - 1].time_ms);
        }
    }
    assert!(store.verify().is_clean());
    assert_eq!(store.read().unwrap().head(), (64, events[63].hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_group_commit_every_command_has_its_own_commit() {
    let (_dir, path) = temp();
    let store = Store::open(&path, false).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .execute(bot(), move |_| Decision::Commit {
                    events: vec![refused(&format!("command {i}"))],
                    output: (),
                })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.group_commit_stats(), (64, 64));
    assert!(store.verify().is_clean());
}

#[test]
fn refused_command_records_its_events_and_the_caller_gets_refused() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    let r: Result<(), ExecError> = store.execute_blocking(bot(), |_| Decision::Refuse {
        events: vec![refused("dns name evil.example is not allowed")],
        error: "dns name evil.example is not allowed by profile tls-server".into(),
    });
    assert_eq!(
        r,
        Err(ExecError::Refused(
            "dns name evil.example is not allowed by profile tls-server".into()
        ))
    );
    drop(store);
    let store = Store::open(&path, true).unwrap();
    let events = store.events(&EventFilter::default()).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, bot());
    assert_eq!(
        events[0].payload,
        refused("dns name evil.example is not allowed")
    );
}

/// Everything the projections know about, including the impossible cases
/// that apply must skip.
fn rich_history(store: &Store) {
    let key = audit_key();
    let cer = [9u8; 16];
    commit(
        store,
        Actor::System,
        vec![
            EventPayload::DaemonStarted {
                version: "0.1.0".into(),
                config_sha256: [3; 32],
            },
            signer_keys(&key),
            ca("root", None),
        ],
    );
    commit(
        store,
        alice(),
        vec![EventPayload::CeremonyOpened {
            ceremony_id: cer,
            op: CeremonyOp::ChangeCustodians(custodians()),
        }],
    );
    for (custodian, name) in [([1; 32], "ann"), ([1; 32], "ann"), ([2; 32], "bob")] {
        commit(
            store,
            alice(),
            vec![EventPayload::CeremonyApproved {
                ceremony_id: cer,
                custodian,
                custodian_name: name.into(),
                signature: vec![0xaa; 64],
            }],
        );
    }
    commit(
        store,
        Actor::System,
        vec![
            EventPayload::CeremonyFailed {
                ceremony_id: cer,
                reason: "signer unreachable".into(),
            },
            EventPayload::CeremonyExecuted { ceremony_id: cer },
            // After execution: skipped.
            EventPayload::CeremonyApproved {
                ceremony_id: cer,
                custodian: [3; 32],
                custodian_name: "late".into(),
                signature: vec![0xbb; 64],
            },
            ca("issuing", Some("root")),
            EventPayload::ResponderRotated {
                issuer: "issuing".into(),
                certificate_der: vec![0x30, 0x00],
            },
            EventPayload::CrlPublished {
                issuer: "issuing".into(),
                crl_number: 7,
                this_update: 1_700_000_000,
                next_update: 1_700_086_400,
                entries: 0,
                sha256: [0x5a; 32],
                as_of: 9,
                emergency_validity: Some(3600),
            },
        ],
    );
    for (i, who) in ["web", "web", "db", "mail", "vpn", "pending"]
        .iter()
        .enumerate()
    {
        commit(store, bot(), vec![intent([i as u8 + 1; 16], who)]);
    }
    commit(
        store,
        Actor::System,
        vec![
            issued([1; 16], &[0x10, 0x01]),
            issued([2; 16], &[0x10, 0x02]),
            EventPayload::IssuanceFailed {
                request_id: [3; 16],
                reason: "signer refused".into(),
            },
            EventPayload::IssuanceRecovered {
                request_id: [4; 16],
                serial: Some(vec![0x10, 0x04]),
            },
            EventPayload::IssuanceRecovered {
                request_id: [5; 16],
                serial: None,
            },
            // No intent: skipped.
            issued([0x77; 16], &[0x10, 0x77]),
        ],
    );
    commit(
        store,
        alice(),
        vec![
            EventPayload::CertificateRevoked {
                serial: vec![0x10, 0x01],
                issuer: "issuing".into(),
                reason: RevocationReason::KeyCompromise,
                revoked_at: 1_700_000_500,
                invalidity_date: Some(1_700_000_400),
            },
            EventPayload::CertificateRevoked {
                serial: vec![0x10, 0x04],
                issuer: "issuing".into(),
                reason: RevocationReason::Superseded,
                revoked_at: 1_700_000_600,
                invalidity_date: None,
            },
            // Already revoked: skipped.
            EventPayload::CertificateRevoked {
                serial: vec![0x10, 0x01],
                issuer: "issuing".into(),
                reason: RevocationReason::Unspecified,
                revoked_at: 1_700_000_700,
                invalidity_date: None,
            },
        ],
    );
    // A cross-sign ceremony: root certifies another CA, kept with root's
    // certificates; a second certificate for the same ceremony is skipped.
    let cross = [8u8; 16];
    let cross_cert = |serial: &[u8]| EventPayload::CrossCertificateIssued {
        ceremony_id: cross,
        issuer: "root".into(),
        serial: serial.to_vec(),
        subject: DistinguishedName::common_name("Other Root"),
        not_before: 1_700_000_000,
        not_after: 1_800_000_000,
        certificate_der: vec![0x30, 0x03, 0x02, 0x01, 0x2a],
        signer_journal_seq: 12,
    };
    commit(
        store,
        alice(),
        vec![EventPayload::CeremonyOpened {
            ceremony_id: cross,
            op: CeremonyOp::CrossSign(castellan_proto::CrossSignParams {
                issuer: "root".into(),
                subject_certificate_der: vec![0x30, 0x00],
                validity: castellan_proto::Validity {
                    not_before: 1_700_000_000,
                    not_after: 1_800_000_000,
                },
                path_len: Some(0),
                urls: castellan_proto::Urls::default(),
            }),
        }],
    );
    commit(
        store,
        Actor::System,
        vec![
            EventPayload::CeremonyExecuted { ceremony_id: cross },
            cross_cert(&[0x20, 0x01]),
            cross_cert(&[0x20, 0x02]),
        ],
    );
    let (_, cp) = checkpoint_now(store, &key);
    commit(store, Actor::System, vec![cp]);
}

#[test]
fn projections_answer_what_the_history_implies() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    rich_history(&store);
    let v = store.read().unwrap();

    let c = v.ceremony(&[9; 16]).unwrap();
    assert_eq!(c.approvals.len(), 2, "a custodian's approval counts once");
    assert!(matches!(c.status, CeremonyStatus::Executed { .. }));
    assert_eq!(c.last_error.as_deref(), Some("signer unreachable"));
    assert_eq!(c.opened_by, alice());

    let x = v.ceremony(&[8; 16]).unwrap();
    assert!(
        matches!(&x.status, CeremonyStatus::ExecutedWithCertificate { serial, .. } if serial == &[0x20, 0x01]),
        "{:?}",
        x.status
    );
    let cross = v.cert(&[0x20, 0x01]).unwrap();
    assert_eq!(
        (cross.issuer.as_str(), cross.profile.as_str(), cross.state),
        ("root", "cross-certificate", CertState::Issued)
    );
    assert_eq!(cross.identity, "CN=Other Root");
    assert!(
        v.cert(&[0x20, 0x02]).is_none(),
        "one certificate per ceremony"
    );
    assert_eq!(v.children("ca:root"), vec!["ca:issuing", "cert:2001"]);

    assert_eq!(v.cas().len(), 2);
    assert_eq!(
        v.responder("issuing").map(|r| r.certificate_der),
        Some(vec![0x30, 0x00])
    );
    assert!(v.responder("root").is_none());
    assert_eq!(v.ca("issuing").unwrap().parent.as_deref(), Some("root"));
    assert_eq!(
        v.children("ca:issuing"),
        vec!["cert:1001", "cert:1002", "cert:1004"]
    );
    assert_eq!(v.children("cert:1001"), vec!["identity:web"]);

    let revoked = v.cert(&[0x10, 0x01]).unwrap();
    assert_eq!(revoked.state, CertState::Revoked);
    let rev = revoked.revocation.unwrap();
    assert_eq!(rev.reason, RevocationReason::KeyCompromise);
    assert_eq!(rev.invalidity_date, Some(1_700_000_400));
    let possibly = v.cert(&[0x10, 0x04]).unwrap();
    assert_eq!(possibly.certificate_der, None);
    assert_eq!(possibly.identity, "mail");
    assert!(v.cert(&[0x10, 0x77]).is_none());

    let serials = |cs: Vec<castellan::store::CertRecord>| -> Vec<Vec<u8>> {
        cs.into_iter().map(|c| c.serial).collect()
    };
    assert_eq!(
        serials(v.revoked("issuing")),
        vec![vec![0x10, 0x01], vec![0x10, 0x04]]
    );
    // What a CRL lists, from the index alone, agrees with the records.
    let listed: Vec<(Vec<u8>, castellan::store::records::Revocation)> = v
        .revoked("issuing")
        .into_iter()
        .map(|c| (c.serial, c.revocation.expect("a revocation")))
        .collect();
    assert_eq!(v.revocations("issuing"), listed);
    assert_eq!(v.crl("issuing").map(|c| c.crl_number), Some(7));
    assert_eq!(
        serials(v.certs_by_identity("web")),
        vec![vec![0x10, 0x01], vec![0x10, 0x02]]
    );
    assert_eq!(
        serials(v.certs(&CertFilter {
            issuer: Some("issuing".into()),
            state: Some(CertState::Issued),
            ..CertFilter::default()
        })),
        vec![vec![0x10, 0x02]]
    );
    assert_eq!(
        v.certs(&CertFilter {
            limit: Some(2),
            ..CertFilter::default()
        })
        .len(),
        2
    );
    let pending: Vec<_> = v
        .pending_intents()
        .into_iter()
        .map(|i| i.identity)
        .collect();
    assert_eq!(pending, vec!["pending".to_string()]);
    assert_eq!(
        v.signer_keys().unwrap().audit_algorithm,
        Algorithm::EcdsaP256
    );
    assert!(v.latest_checkpoint().is_some());
    assert_eq!(v.error(), None);

    let report = store.verify();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.checkpoints_ok, 1);
}

#[test]
fn replaying_all_events_rebuilds_byte_identical_projections() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    rich_history(&store);
    let before = store.projection_dump().unwrap();
    let empty: Vec<&str> = before
        .iter()
        .filter(|(_, rows)| rows.is_empty())
        .map(|(n, _)| n.as_str())
        .collect();
    // Every table but the intents (all resolved but one) has rows.
    assert!(empty.is_empty(), "empty projections: {empty:?}");
    store.rebuild_projections().unwrap();
    assert_eq!(store.projection_dump().unwrap(), before);
    drop(store);
    // And after a reopen, with the writer appending on top.
    let store = Store::open(&path, true).unwrap();
    assert_eq!(store.projection_dump().unwrap(), before);
    commit(&store, bot(), vec![intent([0x55; 16], "late")]);
    let after = store.projection_dump().unwrap();
    store.rebuild_projections().unwrap();
    assert_eq!(store.projection_dump().unwrap(), after);
}

/// Copies the (closed) store and rewrites event `seq` of the copy with
/// `edit` applied to its stored bytes.
fn tamper(path: &Path, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let copy = path.with_extension("tampered");
    std::fs::copy(path, &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(EVENTS).unwrap();
        let mut bytes = t.get(seq).unwrap().unwrap().value().to_vec();
        edit(&mut bytes);
        t.insert(seq, bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    copy
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

fn history_of_refusals(path: &Path) {
    let store = Store::open(path, true).unwrap();
    for i in 0..10 {
        commit(
            &store,
            alice(),
            vec![refused(&format!("refusal number {i}"))],
        );
    }
    assert!(store.verify().is_clean());
}

#[test]
fn a_changed_byte_inside_an_event_is_reported_at_its_sequence_number() {
    let (_dir, path) = temp();
    history_of_refusals(&path);
    let copy = tamper(&path, 6, |b| {
        let at = find(b, b"refusal number 6");
        b[at + 2] ^= 0x01; // "refusal" -> "regusal": still decodes
    });
    let report = Store::verify_file(&copy).unwrap();
    let (seq, why) = report.first_bad.unwrap();
    assert_eq!(seq, 6, "{why}");
    assert!(why.contains("hash"), "{why}");
    assert_eq!(report.events, 10);
    // The original is untouched.
    assert!(Store::verify_file(&path).unwrap().is_clean());
}

#[test]
fn an_event_that_no_longer_decodes_is_reported_at_its_sequence_number() {
    let (_dir, path) = temp();
    history_of_refusals(&path);
    let copy = tamper(&path, 3, |b| {
        // The string's length prefix now runs past the end of the value.
        let at = find(b, b"refusal number 3");
        assert_eq!(b[at - 1], 16);
        b[at - 1] = 0x7f;
    });
    let (seq, why) = Store::verify_file(&copy).unwrap().first_bad.unwrap();
    assert_eq!(seq, 3, "{why}");
    assert!(why.contains("decode"), "{why}");
}

#[test]
fn checkpoint_signed_by_the_audit_key_verifies() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    let key = audit_key();
    commit(&store, Actor::System, vec![signer_keys(&key)]);
    for i in 0..5 {
        commit(&store, alice(), vec![refused(&format!("r{i}"))]);
    }
    let (sequence, cp) = checkpoint_now(&store, &key);
    commit(&store, Actor::System, vec![cp]);
    commit(&store, alice(), vec![refused("after the checkpoint")]);
    let report = store.verify();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.checkpoints_ok, 1);
    assert_eq!(report.last_checkpoint, Some(sequence));
    assert_eq!(report.events, 8);
    assert_eq!(store.read().unwrap().latest_checkpoint().unwrap().seq, 6);
}

#[test]
fn checkpoint_with_a_wrong_head_hash_or_signature_is_reported() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    let key = audit_key();
    commit(&store, Actor::System, vec![signer_keys(&key)]);
    commit(&store, alice(), vec![refused("one")]);
    // Properly signed, but over a hash that is not event 1's.
    commit(
        &store,
        Actor::System,
        vec![sign_checkpoint(&key, 1, [0xee; 32])],
    );
    // Right hash, altered signature.
    let (_, mut cp) = checkpoint_now(&store, &key);
    if let EventPayload::CheckpointSigned { signature, .. } = &mut cp {
        let last = signature.len() - 1;
        signature[last] ^= 0x01;
    }
    commit(&store, Actor::System, vec![cp]);
    // Right hash, signed by another key.
    let (_, cp) = checkpoint_now(&store, &audit_key());
    commit(&store, Actor::System, vec![cp]);
    // And one good one.
    let (good, cp) = checkpoint_now(&store, &key);
    commit(&store, Actor::System, vec![cp]);

    let report = store.verify();
    assert_eq!(report.first_bad, None, "the chain itself is intact");
    assert_eq!(report.checkpoints_ok, 1);
    assert_eq!(report.last_checkpoint, Some(good));
    let bad: Vec<u64> = report.checkpoints_bad.iter().map(|(s, _)| *s).collect();
    assert_eq!(bad, vec![2, 3, 4], "{:?}", report.checkpoints_bad);
    assert!(report.checkpoints_bad[0].1.contains("head hash"));
    assert!(report.checkpoints_bad[1].1.contains("signature"));
    assert!(!report.is_clean());
}

#[test]
fn a_checkpoint_without_a_recorded_audit_key_is_reported() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    commit(&store, alice(), vec![refused("one")]);
    let (_, cp) = checkpoint_now(&store, &audit_key());
    commit(&store, Actor::System, vec![cp]);
    let report = store.verify();
    assert_eq!(report.checkpoints_bad.len(), 1);
    assert!(report.checkpoints_bad[0].1.contains("audit key"));
}

const CRASH_CHILD: &str = "CASTELLAN_STORE_CRASH_CHILD";

/// The child process of the crash test (does nothing in a normal run):
/// several threads execute commands in a loop and print each acknowledged
/// seq after `execute` returned.
#[test]
fn crash_child_process_body() {
    let Ok(path) = std::env::var(CRASH_CHILD) else {
        return;
    };
    let store = Store::open(Path::new(&path), true).unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                for i in 0u64.. {
                    let seq = store
                        .execute_blocking(alice(), move |view| {
                            let (next, _) = view.head();
                            Decision::Commit {
                                events: vec![
                                    intent([t as u8; 16], &format!("t{t}-{i}")),
                                    EventPayload::IssuanceFailed {
                                        request_id: [t as u8; 16],
                                        reason: format!("crash test {t} {i}"),
                                    },
                                ],
                                output: next,
                            }
                        })
                        .unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {seq}").unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn acknowledged_commands_survive_sigkill_at_random_moments() {
    let (_dir, path) = temp();
    drop(Store::open(&path, true).unwrap());
    let mut acked_all = BTreeSet::new();
    for round in 0..5 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let kill_after = 5 + random % 400;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_process_body",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).unwrap() == 0 {
                    break;
                }
                // A line cut by the kill has no newline: not acknowledged.
                if let Some(rest) = line.strip_prefix(b"ack ")
                    && let Some(num) = rest.strip_suffix(b"\n")
                {
                    let seq: u64 = std::str::from_utf8(num).unwrap().parse().unwrap();
                    if tx.send(seq).is_err() {
                        break;
                    }
                }
            }
        });
        let mut acked = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (acked.len() as u64) < kill_after && Instant::now() < deadline {
            if let Ok(seq) = rx.recv_timeout(Duration::from_millis(100)) {
                assert!(acked.insert(seq), "seq {seq} acknowledged twice");
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());
        assert!(
            !acked.is_empty(),
            "round {round}: the child acknowledged nothing"
        );

        // Offline verification first: the file was not closed cleanly, so
        // verify_file must repair a private copy rather than the evidence.
        assert!(matches!(
            redb::ReadOnlyDatabase::open(&path),
            Err(redb::DatabaseError::RepairAborted)
        ));
        let report = Store::verify_file(&path).unwrap();
        assert!(report.is_clean(), "round {round}: {report:?}");

        let store = Store::open(&path, true).unwrap();
        let report = store.verify();
        assert!(report.is_clean(), "round {round}: {report:?}");
        let present: BTreeSet<u64> = store
            .events(&EventFilter::default())
            .unwrap()
            .iter()
            .filter(|e| e.payload.kind() == "issuance-intended")
            .map(|e| e.seq)
            .collect();
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but lost: {lost:?}"
        );
        println!(
            "round {round}: killed after {} acks, {} events on disk, {:?}",
            acked.len(),
            report.events,
            store.group_commit_stats()
        );
        assert!(acked.is_disjoint(&acked_all));
        acked_all.extend(acked);
    }
}

#[test]
fn events_are_selected_by_kind_actor_time_window_and_subject() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    commit(&store, Actor::System, vec![ca("issuing", None)]);
    std::thread::sleep(Duration::from_millis(30));
    commit(
        &store,
        bot(),
        vec![intent([1; 16], "web"), intent([2; 16], "db")],
    );
    std::thread::sleep(Duration::from_millis(30));
    commit(&store, Actor::System, vec![issued([1; 16], &[0xab, 0xcd])]);
    std::thread::sleep(Duration::from_millis(30));
    commit(&store, alice(), vec![refused("nope")]);

    let seqs =
        |f: EventFilter| -> Vec<u64> { store.events(&f).unwrap().iter().map(|e| e.seq).collect() };
    assert_eq!(
        seqs(EventFilter {
            kind: Some("issuance-intended".into()),
            ..Default::default()
        }),
        vec![1, 2]
    );
    assert_eq!(
        seqs(EventFilter {
            actor_contains: Some("alice".into()),
            ..Default::default()
        }),
        vec![4]
    );
    assert_eq!(
        seqs(EventFilter {
            actor_contains: Some("deploy-bot".into()),
            ..Default::default()
        }),
        vec![1, 2]
    );
    assert_eq!(
        seqs(EventFilter {
            subject: Some("ABCD".into()),
            ..Default::default()
        }),
        vec![3]
    );
    assert_eq!(
        seqs(EventFilter {
            subject: Some(hex::encode([1u8; 16])),
            ..Default::default()
        }),
        vec![1, 3]
    );
    assert_eq!(
        seqs(EventFilter {
            subject: Some("issuing".into()),
            ..Default::default()
        }),
        vec![0, 1, 2]
    );
    let all = store.events(&EventFilter::default()).unwrap();
    let t_intents = all[1].time_ms;
    assert_eq!(all[2].time_ms, t_intents, "one command, one batch time");
    assert_eq!(
        seqs(EventFilter {
            since_ms: Some(t_intents),
            until_ms: Some(all[3].time_ms),
            ..Default::default()
        }),
        vec![1, 2]
    );
    assert_eq!(
        seqs(EventFilter {
            since_ms: Some(t_intents),
            ..Default::default()
        }),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        seqs(EventFilter {
            from_seq: Some(2),
            limit: Some(2),
            ..Default::default()
        }),
        vec![2, 3]
    );
}

#[test]
fn a_new_store_file_is_private_and_a_foreign_file_is_refused_clearly() {
    let (dir, path) = temp();
    drop(Store::open(&path, true).unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let err = Store::open(&junk, true).err().unwrap().to_string();
    assert!(err.contains("junk.redb"), "{err}");
    assert!(err.contains("cannot be used"), "{err}");

    let store = Store::open(&path, true).unwrap();
    let err = Store::open(&path, true).err().unwrap().to_string();
    assert!(err.contains("open in another process"), "{err}");
    drop(store);
}

#[test]
fn the_ca_generation_changes_exactly_when_a_ca_is_registered_before_its_caller_hears() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    let g0 = store.ca_generation();
    commit(&store, alice(), vec![refused("not a CA event")]);
    commit(&store, alice(), vec![intent([1; 16], "a.example")]);
    assert_eq!(
        store.ca_generation(),
        g0,
        "issuance leaves cached CAs valid"
    );
    commit(&store, alice(), vec![ca("root-1", None)]);
    let g1 = store.ca_generation();
    assert_ne!(g1, g0, "a CA change is visible once its caller is answered");
    commit(&store, alice(), vec![ca("issuing-1", Some("root-1"))]);
    assert_ne!(store.ca_generation(), g1);
}

#[test]
fn certificate_pages_follow_their_cursor_to_exactly_the_unpaged_list() {
    let (_dir, path) = temp();
    let store = Store::open(&path, true).unwrap();
    commit(
        &store,
        alice(),
        vec![ca("root", None), ca("issuing", Some("root"))],
    );
    for i in 0..7u8 {
        let id = if i % 2 == 0 { "web" } else { "api" };
        commit(
            &store,
            alice(),
            vec![intent([i; 16], id), issued([i; 16], &[0x20, i])],
        );
    }
    for i in [1u8, 4, 5] {
        commit(
            &store,
            alice(),
            vec![EventPayload::CertificateRevoked {
                serial: vec![0x20, i],
                issuer: "issuing".into(),
                reason: RevocationReason::Superseded,
                revoked_at: 1_700_000_100,
                invalidity_date: None,
            }],
        );
    }
    let v = store.read().unwrap();
    let filters = [
        CertFilter::default(),
        CertFilter {
            issuer: Some("issuing".into()),
            ..CertFilter::default()
        },
        CertFilter {
            issuer: Some("issuing".into()),
            state: Some(CertState::Revoked),
            ..CertFilter::default()
        },
        CertFilter {
            identity: Some("web".into()),
            ..CertFilter::default()
        },
        CertFilter {
            state: Some(CertState::Issued),
            ..CertFilter::default()
        },
    ];
    for filter in filters {
        let whole: Vec<Vec<u8>> = v.certs(&filter).into_iter().map(|c| c.serial).collect();
        assert!(!whole.is_empty(), "{filter:?}");
        for size in [1, 2, 3, 100] {
            let mut paged = Vec::new();
            let mut after = None;
            let mut pages = 0;
            loop {
                let (page, next) = v.certs_page(&CertFilter {
                    limit: Some(size),
                    after: after.take(),
                    ..filter.clone()
                });
                assert!(page.len() <= size, "{filter:?}");
                paged.extend(page.into_iter().map(|c| c.serial));
                pages += 1;
                assert!(pages <= whole.len() + 1, "the cursor does not advance");
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(paged, whole, "{filter:?} in pages of {size}");
        }
    }
    assert!(v.error().is_none(), "{:?}", v.error());
}
