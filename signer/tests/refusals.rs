//! What the signer refuses to start on, and requests it refuses before
//! signing anything: a missing or older journal, an invalid stored
//! custodian set, checkpoints that would rewrite the audit trail, OCSP
//! batches whose answer cannot be framed, and arithmetic at the edges of
//! time.
//!
//! The start-up refusals run the real binary; the request refusals drive a
//! [`Signer`] in this process over a real software key store and journal
//! (the transport is covered by `suite.rs`).

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};

use castellan_proto::{
    Algorithm, CeremonyOp, CeremonyOutcome, CertIdHash, CertStatus, CheckpointRequest, CrlEntry,
    CrlRequest, CustodianSet, ErrorKind, OcspBatch, OcspTemplate, Request, ResponderParams,
    Response, RevocationReason, SignatureKind, SignedSubject, SignerError, SingleStatus,
};
use castellan_signer::backend::soft::SoftBackend;
use castellan_signer::journal::{Journal, NewRecord};
use castellan_signer::service::{Signer, initialise};
use common::{
    Backend, Custodians, SignerProcess, all_text, ceremony_id, intermediate_params, now,
    root_params, server_template, validity,
};
use secrecy::SecretString;

// ------------------------------------------------------------ in-process

/// A signer state directory with a software key store and 3 custodians, 2
/// of whom must approve.
// Shared with the daemon's integration tests.
#[allow(dead_code)]
#[path = "../../tests/common/tmpfs.rs"]
mod tmpfs;
use tmpfs::Tmpfs;

struct Lab {
    dir: tempfile::TempDir,
    custodians: Custodians,
}

/// The signer and custodian set approvals for `s` are made for.
fn context_of(s: &Signer) -> castellan_proto::CeremonyContext {
    match s.handle(Request::PublicKeys) {
        Response::PublicKeys(k) => {
            castellan_proto::CeremonyContext::new(&k.audit_spki_der, &k.custodians)
        }
        other => panic!("PublicKeys answered {other:?}"),
    }
}

fn pass() -> SecretString {
    SecretString::from("refusals store passphrase".to_string())
}

impl Lab {
    fn new() -> Lab {
        Lab::new_in(&std::env::temp_dir())
    }

    /// A lab whose state directory is created under `root`.
    fn new_in(root: &Path) -> Lab {
        let dir = tempfile::tempdir_in(root).expect("temporary directory");
        let custodians = Custodians::generate(3);
        let set = CustodianSet {
            threshold: 2,
            custodians: (0..3)
                .map(|i| castellan_proto::Custodian {
                    name: custodians.names[i].clone(),
                    public_key: custodians.public_key(i),
                })
                .collect(),
        };
        let backend = SoftBackend::create(&dir.path().join("keys"), &pass()).expect("key store");
        initialise(dir.path(), &backend, &set).expect("initialise");
        Lab { dir, custodians }
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    fn try_open(&self) -> Result<Signer, String> {
        let backend = SoftBackend::open(&self.dir.path().join("keys"), &pass())
            .map_err(|e| format!("key store: {e}"))?;
        Signer::open(
            self.dir.path(),
            Box::new(backend),
            castellan_signer::config::default_profiles(),
        )
    }

    fn open(&self) -> Signer {
        self.try_open().expect("the signer opens")
    }

    fn ceremony(&self, s: &Signer, op: CeremonyOp) -> Response {
        let id = ceremony_id();
        let proof = self.custodians.proof_for(&context_of(s), id, &op, &[0, 1]);
        s.handle(Request::Ceremony { op, proof })
    }

    /// A CA-making ceremony that must succeed.
    fn make_ca(&self, s: &Signer, op: CeremonyOp) {
        let r = self.ceremony(s, op);
        assert!(
            matches!(r, Response::Ceremony(CeremonyOutcome::Ca(_))),
            "{r:?}"
        );
    }

    /// The root CA "root".
    fn root(&self, s: &Signer) {
        self.make_ca(
            s,
            CeremonyOp::CreateRoot(root_params("root", Algorithm::EcdsaP256)),
        );
    }

    /// A root and an intermediate ("inter") with a delegated OCSP responder.
    fn pki(&self, s: &Signer) {
        self.root(s);
        self.make_ca(
            s,
            CeremonyOp::CreateIntermediate(intermediate_params(
                "inter",
                "root",
                Algorithm::EcdsaP256,
            )),
        );
        let t = now();
        let r = s.handle(Request::RotateOcspResponder(ResponderParams {
            issuer: "inter".into(),
            algorithm: Algorithm::EcdsaP256,
            validity: validity(t - 3_600, t + 30 * 86_400),
        }));
        assert!(matches!(r, Response::Responder(_)), "{r:?}");
    }
}

fn refused(r: Response) -> SignerError {
    match r {
        Response::Error(e) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn expect(e: &SignerError, kind: ErrorKind, needles: &[&str]) {
    assert_eq!(e.kind, kind, "wrong kind: {}", e.message);
    for n in needles {
        assert!(e.message.contains(n), "{n:?} missing from: {}", e.message);
    }
}

fn open_refused(lab: &Lab) -> String {
    match lab.try_open() {
        Ok(_) => panic!("the signer was expected to refuse to open"),
        Err(e) => e,
    }
}

fn journal_records(s: &Signer) -> u64 {
    match s.handle(Request::Status) {
        Response::Status(st) => st.journal_records,
        other => panic!("status: {other:?}"),
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy journal");
}

// ---------------------------------------------------------- 1. journal

#[test]
fn a_missing_journal_is_refused_not_recreated() {
    let lab = Lab::new();
    drop(lab.open());
    std::fs::remove_file(lab.journal()).expect("remove journal");
    let e = open_refused(&lab);
    assert!(
        e.contains("is missing") && e.contains("refuses to start") && e.contains("restore"),
        "{e}"
    );
    assert!(!lab.journal().exists(), "no journal may be created on open");
}

#[test]
fn a_journal_replaced_by_an_older_copy_is_refused_and_a_spent_ceremony_cannot_replay() {
    let lab = Lab::new();
    let s = lab.open();
    lab.pki(&s);
    let older = lab.dir.path().join("journal.older");
    copy(&lab.journal(), &older);
    // A ceremony that changes the state: lower the threshold to 1.
    let Response::PublicKeys(keys) = s.handle(Request::PublicKeys) else {
        panic!("public keys")
    };
    let mut set = keys.custodians;
    set.threshold = 1;
    let op = CeremonyOp::ChangeCustodians(set);
    let id = ceremony_id();
    let proof = lab.custodians.proof_for(&context_of(&s), id, &op, &[0, 1]);
    let r = s.handle(Request::Ceremony {
        op: op.clone(),
        proof: proof.clone(),
    });
    assert!(matches!(r, Response::Ceremony(_)), "{r:?}");
    drop(s);
    // Spent across a restart with its own journal.
    let s = lab.open();
    let e = refused(s.handle(Request::Ceremony {
        op: op.clone(),
        proof: proof.clone(),
    }));
    expect(&e, ErrorKind::QuorumInvalid, &["already executed"]);
    drop(s);
    // The journal from before the ceremony: it does not know the ceremony
    // was spent, so the signer must not start on it.
    copy(&older, &lab.journal());
    let e = open_refused(&lab);
    assert!(
        e.contains("older copy") && e.contains("saved when it held") && e.contains("restore"),
        "{e}"
    );
}

#[test]
fn a_journal_of_the_same_length_from_elsewhere_is_refused() {
    let lab = Lab::new();
    let s = lab.open();
    lab.pki(&s);
    let Response::Status(st) = s.handle(Request::Status) else {
        panic!("status")
    };
    let records = st.journal_records;
    drop(s);
    // Another journal with as many records.
    let other = lab.dir.path().join("other.journal");
    {
        let (j, _) = Journal::create(&other).expect("create");
        for i in 0..records {
            j.append(NewRecord {
                kind: SignatureKind::Checkpoint,
                key_id: "audit".into(),
                subject: SignedSubject::Checkpoint(i),
                tbs_sha256: [7; 32],
                ceremony_id: None,
                intent: None,
            })
            .expect("append");
        }
    }
    copy(&other, &lab.journal());
    let e = open_refused(&lab);
    assert!(
        e.contains("does not belong") && e.contains(&format!("record {}", records - 1)),
        "{e}"
    );
}

#[test]
fn on_a_full_disk_the_signer_returns_no_signature_it_could_not_journal_and_recovers() {
    let mut s = SignerProcess::start(Backend::Soft);
    s.pki(Algorithm::EcdsaP256, Algorithm::EcdsaP256);
    s.stop();
    // The state directory (journal, state.json, key store) moves onto a
    // small file system of its own.
    let saved = s.dir.path().join("state-saved");
    std::fs::rename(&s.state_dir, &saved).expect("move the state directory");
    std::fs::create_dir(&s.state_dir).expect("mount point");
    let fs = Tmpfs::mount_at(&s.state_dir, "1m");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(saved.join("."))
        .arg(&s.state_dir)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copy the state directory");
    s.restart();

    fs.fill_leaving(0);
    let template = || server_template("inter", "full.example.test");
    let mut acknowledged = 0u64;
    let e = loop {
        match s.call(Request::IssueCertificate(template())) {
            Ok(Response::Certificate(_)) => acknowledged += 1,
            Ok(other) => panic!("IssueCertificate answered {other:?}"),
            Err(e) => break e,
        }
        // The journal's last block fills after a few dozen records.
        assert!(acknowledged < 10_000, "the journal never hit the full disk");
    };
    expect(
        &e,
        ErrorKind::Backend,
        &[
            "No space left on device",
            "no record of this batch was acknowledged",
        ],
    );
    let records = s.status().journal_records;
    // Still refused, still answering.
    let e = s.refused(Request::IssueCertificate(template()));
    assert!(
        e.message.contains("No space left on device"),
        "{}",
        e.message
    );
    assert_eq!(s.status().journal_records, records);

    fs.free();
    let issued = s.issue(template());
    assert_eq!(
        issued.journal_seq, records,
        "the failed records were undone"
    );
    s.stop();
    let journal = s.state_dir.join("journal");
    let journal_arg = journal.to_str().expect("utf-8 path");
    let out = s.cli(&["journal", "verify", "--journal", journal_arg]);
    assert!(out.status.success(), "{}", all_text(&out));
    assert!(
        all_text(&out).contains(&format!("{} records", records + 1)),
        "{}",
        all_text(&out)
    );
    s.restart();
    s.issue(template());
}

#[test]
fn a_journal_tail_left_by_a_crash_is_refused_with_the_way_out_which_works() {
    let mut s = SignerProcess::start(Backend::Soft);
    s.pki(Algorithm::EcdsaP256, Algorithm::EcdsaP256);
    s.issue(server_template("inter", "kept.example.test"));
    let records = s.status().journal_records;
    s.stop();
    let journal = s.state_dir.join("journal");
    let journal_arg = journal.to_str().expect("utf-8 path").to_string();
    let len = std::fs::metadata(&journal).expect("journal").len();
    // A record cut short, and blocks allocated but never written: the two
    // tails a crash during an append leaves.
    for name in ["cut short", "zeros"] {
        if name == "cut short" {
            s.restart();
            s.issue(server_template("inter", "lost.example.test"));
            s.stop();
            let whole = std::fs::metadata(&journal).expect("journal").len();
            assert!(whole > len + 20);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&journal)
                .and_then(|f| f.set_len(whole - 20))
                .expect("cut the journal short");
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&journal)
                .and_then(|f| f.set_len(len + 4096))
                .expect("extend the journal with zeros");
        }
        let out = s.start_refused();
        let text = all_text(&out);
        assert!(
            text.contains(&format!("journal record {records} (byte offset {len})"))
                && text.contains("journal recover-torn-tail"),
            "{name}: {text}"
        );
        let out = s.cli(&["journal", "verify", "--journal", &journal_arg]);
        assert!(!out.status.success(), "{name}: {}", all_text(&out));
        assert!(
            all_text(&out).contains("journal recover-torn-tail"),
            "{name}: {}",
            all_text(&out)
        );
        let out = s.cli(&["journal", "recover-torn-tail", "--journal", &journal_arg]);
        assert!(out.status.success(), "{name}: {}", all_text(&out));
        assert!(
            s.state_dir.join(format!("journal.torn-{len}")).exists(),
            "{name}: the removed tail was not kept"
        );
        std::fs::remove_file(s.state_dir.join(format!("journal.torn-{len}"))).expect("rm");
        assert_eq!(std::fs::metadata(&journal).expect("journal").len(), len);
        s.restart();
        assert_eq!(s.status().journal_records, records, "{name}");
        s.stop();
    }
    s.restart();
    s.issue(server_template("inter", "after.example.test"));
}

fn custodian_set_of(s: &Signer) -> CustodianSet {
    match s.handle(Request::PublicKeys) {
        Response::PublicKeys(k) => k.custodians,
        other => panic!("PublicKeys answered {other:?}"),
    }
}

#[test]
fn a_custodian_change_that_state_json_could_not_keep_leaves_the_old_set_in_force() {
    let fs = Tmpfs::mount("1m");
    let lab = Lab::new_in(&fs.path);
    let s = lab.open();
    let old = custodian_set_of(&s);
    assert_eq!(old.threshold, 2);
    let stricter = CustodianSet {
        threshold: 3,
        custodians: old.custodians.clone(),
    };
    // The journal's block has room for the change's record; state.json
    // cannot be rewritten.
    fs.fill_leaving(0);
    let e = refused(lab.ceremony(&s, CeremonyOp::ChangeCustodians(stricter)));
    expect(
        &e,
        ErrorKind::Backend,
        &[
            "No space left on device",
            "journaled",
            "the old custodian set stays in force",
        ],
    );
    // In force is what a restart loads: the old set, 2 of 3.
    assert_eq!(custodian_set_of(&s), old);
    fs.free();
    lab.root(&s);
    drop(s);
    assert_eq!(custodian_set_of(&lab.open()), old);
}

fn responders_of(s: &Signer) -> Vec<castellan_proto::ResponderInfo> {
    match s.handle(Request::PublicKeys) {
        Response::PublicKeys(k) => k.responders,
        other => panic!("PublicKeys answered {other:?}"),
    }
}

#[test]
fn a_responder_that_state_json_could_not_keep_is_not_used() {
    let fs = Tmpfs::mount("1m");
    let lab = Lab::new_in(&fs.path);
    let s = lab.open();
    lab.root(&s);
    let before = responders_of(&s);
    assert!(before.is_empty());
    let t = now();
    let rotate = |s: &Signer| {
        s.handle(Request::RotateOcspResponder(ResponderParams {
            issuer: "root".into(),
            algorithm: Algorithm::EcdsaP256,
            validity: validity(t - 3_600, t + 30 * 86_400),
        }))
    };
    // Room for the key file (and state.json with the key's label, whose old
    // copy's block the rename frees), not for the larger state.json that
    // names the responder as well.
    fs.fill_leaving(1);
    expect(
        &refused(rotate(&s)),
        ErrorKind::Backend,
        &[
            "No space left on device",
            "the previous responder stays in use",
        ],
    );
    assert_eq!(responders_of(&s), before);
    fs.free();
    drop(s);
    let s = lab.open();
    assert_eq!(responders_of(&s), before);
    assert!(matches!(rotate(&s), Response::Responder(_)));
    assert_ne!(responders_of(&s), before);
}

fn issue_from(s: &Signer, issuer: &str) -> Response {
    s.handle(Request::IssueCertificate(server_template(
        issuer,
        "www.example.test",
    )))
}

#[test]
fn a_ca_that_state_json_could_not_keep_is_not_used_and_its_key_label_is_not_reused() {
    let fs = Tmpfs::mount("1m");
    let lab = Lab::new_in(&fs.path);
    let s = lab.open();
    lab.root(&s);
    let before = journal_records(&s);
    // One free block: enough for the new key file (and state.json with the
    // key's label, whose old copy's block the rename frees), not for the
    // state.json that names the new CA as well.
    fs.fill_leaving(1);
    let op =
        CeremonyOp::CreateIntermediate(intermediate_params("inter", "root", Algorithm::EcdsaP256));
    let id = ceremony_id();
    let proof = lab.custodians.proof_for(&context_of(&s), id, &op, &[0, 1]);
    let e = refused(s.handle(Request::Ceremony {
        op: op.clone(),
        proof: proof.clone(),
    }));
    expect(
        &e,
        ErrorKind::Backend,
        &[
            "state.json",
            "No space left on device",
            "journaled",
            "was not created",
            "open a new ceremony",
        ],
    );
    assert_eq!(
        journal_records(&s),
        before + 1,
        "the CA certificate is journaled"
    );
    // What the signer uses is what a restart would load: no CA "inter".
    expect(
        &refused(issue_from(&s, "inter")),
        ErrorKind::Policy,
        &["not a CA held by this signer"],
    );
    // The journal holds the ceremony: it is spent now as after a restart.
    expect(
        &refused(s.handle(Request::Ceremony { op, proof })),
        ErrorKind::QuorumInvalid,
        &["already executed"],
    );
    assert!(
        !lab.dir.path().join("state.tmp").exists(),
        "a partial state.tmp was left behind on the full disk"
    );

    fs.free();
    drop(s);
    let s = lab.open();
    expect(
        &refused(issue_from(&s, "inter")),
        ErrorKind::Policy,
        &["not a CA held by this signer"],
    );
    // A new ceremony makes the CA; its key gets a label no key has yet.
    let r = lab.ceremony(
        &s,
        CeremonyOp::CreateIntermediate(intermediate_params("inter", "root", Algorithm::EcdsaP256)),
    );
    assert!(
        matches!(r, Response::Ceremony(CeremonyOutcome::Ca(_))),
        "{r:?}"
    );
    assert!(matches!(issue_from(&s, "inter"), Response::Certificate(_)));
    drop(s);
    let s = lab.open();
    assert!(matches!(issue_from(&s, "inter"), Response::Certificate(_)));
    assert_eq!(journal_records(&s), before + 4);
}

#[test]
fn a_state_written_without_a_journal_floor_gets_one_on_open() {
    let lab = Lab::new();
    let s = lab.open();
    lab.pki(&s);
    drop(s);
    let older = lab.dir.path().join("journal.older");
    copy(&lab.journal(), &older);
    // A state.json as written before the floor existed.
    let text = std::fs::read_to_string(lab.state()).expect("read state");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v.as_object_mut().expect("object").remove("journal_floor");
    std::fs::write(lab.state(), serde_json::to_vec(&v).expect("json")).expect("write state");
    let s = lab.open();
    let text = std::fs::read_to_string(lab.state()).expect("read state");
    assert!(text.contains("journal_floor"), "{text}");
    let r = lab.ceremony(
        &s,
        CeremonyOp::CreateRoot(root_params("root2", Algorithm::EcdsaP256)),
    );
    assert!(matches!(r, Response::Ceremony(_)), "{r:?}");
    drop(s);
    copy(&older, &lab.journal());
    let e = open_refused(&lab);
    assert!(e.contains("older copy"), "{e}");
}

// ------------------------------------------------- 9. custodian set

#[test]
fn a_stored_threshold_of_zero_is_refused_at_start() {
    let lab = Lab::new();
    drop(lab.open());
    let text = std::fs::read_to_string(lab.state()).expect("read state");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["threshold"] = serde_json::json!(0);
    std::fs::write(lab.state(), serde_json::to_vec(&v).expect("json")).expect("write state");
    let e = open_refused(&lab);
    assert!(
        e.contains("custodian set is not valid") && e.contains("threshold 0"),
        "{e}"
    );
    // Twice the same key is refused too.
    v["threshold"] = serde_json::json!(1);
    let first = v["custodians"][0]["public_key_hex"].clone();
    v["custodians"][1]["public_key_hex"] = first;
    std::fs::write(lab.state(), serde_json::to_vec(&v).expect("json")).expect("write state");
    let e = open_refused(&lab);
    assert!(e.contains("listed twice"), "{e}");
}

// ------------------------------------------------------- real binary

#[test]
fn the_binary_refuses_to_start_without_its_journal() {
    let mut s = SignerProcess::start(Backend::Soft);
    s.pki(Algorithm::EcdsaP256, Algorithm::EcdsaP256);
    s.stop();
    std::fs::remove_file(s.state_dir.join("journal")).expect("remove journal");
    let out = s.start_refused();
    let text = all_text(&out);
    assert!(
        text.contains("is missing") && text.contains("refuses to start"),
        "{text}"
    );
    assert!(!s.state_dir.join("journal").exists());
}

// ------------------------------------------------- 4. checkpoints

fn checkpoint(sequence: u64, head: u8, time: i64) -> Request {
    Request::SignCheckpoint(CheckpointRequest {
        sequence,
        head_hash: [head; 32],
        time,
    })
}

fn signed(r: Response) {
    assert!(matches!(r, Response::Checkpoint(_)), "{r:?}");
}

#[test]
fn a_checkpoint_off_the_signers_clock_is_refused() {
    let lab = Lab::new();
    let s = lab.open();
    let before = journal_records(&s);
    // Backdated a day and ten minutes, ten minutes ahead, the extremes.
    for time in [
        now() - 86_400,
        now() - 10 * 60,
        now() + 10 * 60,
        i64::MIN,
        i64::MAX,
    ] {
        let e = refused(s.handle(checkpoint(5, 1, time)));
        expect(
            &e,
            ErrorKind::Policy,
            &["differs from the signer's clock", "120 s"],
        );
    }
    assert_eq!(journal_records(&s), before, "nothing was signed");
    signed(s.handle(checkpoint(5, 1, now() - 30)));
}

#[test]
fn checkpoints_only_move_forward_and_one_sequence_has_one_head() {
    let lab = Lab::new();
    let s = lab.open();
    signed(s.handle(checkpoint(10, 0xaa, now())));
    // The same checkpoint again (a retry) is fine, also at another time.
    signed(s.handle(checkpoint(10, 0xaa, now())));
    signed(s.handle(checkpoint(10, 0xaa, now() - 5)));
    let e = refused(s.handle(checkpoint(10, 0xbb, now())));
    expect(
        &e,
        ErrorKind::Policy,
        &["checkpointed already with head", "aaaa", "bbbb"],
    );
    let e = refused(s.handle(checkpoint(9, 0xcc, now())));
    expect(&e, ErrorKind::Policy, &["below the last one signed (10)"]);
    signed(s.handle(checkpoint(11, 0xdd, now())));
    let t = now();
    signed(s.handle(checkpoint(12, 0xee, t)));
    drop(s);
    // After a restart the journal still knows: lower refused, a different
    // head for 12 refused, the identical request and higher ones fine.
    let s = lab.open();
    let e = refused(s.handle(checkpoint(11, 0xdd, now())));
    expect(&e, ErrorKind::Policy, &["below the last one signed (12)"]);
    let e = refused(s.handle(checkpoint(12, 0x11, t)));
    expect(
        &e,
        ErrorKind::Policy,
        &["checkpointed already", "before the signer's last start"],
    );
    signed(s.handle(checkpoint(12, 0xee, t)));
    signed(s.handle(checkpoint(13, 0x13, now())));
}

fn last_checkpoint(s: &Signer) -> Option<castellan_proto::LastSignedCheckpoint> {
    match s.handle(Request::LastCheckpoint) {
        Response::LastCheckpoint(l) => l,
        other => panic!("LastCheckpoint answered {other:?}"),
    }
}

#[test]
fn the_last_checkpoint_is_answered_before_and_after_a_restart_and_signs_nothing() {
    let lab = Lab::new();
    let s = lab.open();
    assert_eq!(last_checkpoint(&s), None, "no checkpoint signed yet");
    let t = now();
    signed(s.handle(checkpoint(7, 0x77, t)));
    signed(s.handle(checkpoint(12, 0xee, t)));
    let message = castellan_proto::checkpoint_message(&CheckpointRequest {
        sequence: 12,
        head_hash: [0xee; 32],
        time: t,
    });
    let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &message)
        .as_ref()
        .try_into()
        .expect("32 octets");
    let before = journal_records(&s);
    let last = last_checkpoint(&s).expect("a checkpoint was signed");
    assert_eq!(last.sequence, 12);
    assert_eq!(last.message_sha256, digest);
    assert_eq!(
        last.request,
        Some(CheckpointRequest {
            sequence: 12,
            head_hash: [0xee; 32],
            time: t,
        }),
        "signed since the start: the signer still has the checkpoint itself"
    );
    assert_eq!(journal_records(&s), before, "asking signs nothing");
    let journaled_ms = last.journaled_ms;
    drop(s);
    // After a restart the journal gives the sequence, digest and time.
    let s = lab.open();
    let last = last_checkpoint(&s).expect("the journal holds the checkpoint");
    assert_eq!(last.sequence, 12);
    assert_eq!(last.message_sha256, digest);
    assert_eq!(last.request, None, "the journal keeps only the digest");
    assert_eq!(last.journaled_ms, journaled_ms);
    signed(s.handle(checkpoint(13, 0x13, now())));
    assert_eq!(last_checkpoint(&s).map(|l| l.sequence), Some(13));
}

// ---------------------------------------------- 3. OCSP answer size

fn ocsp_single(
    serial: u8,
    status: CertStatus,
    this_update: i64,
    next: Option<i64>,
) -> SingleStatus {
    SingleStatus {
        hash: CertIdHash::Sha256,
        serial: vec![0x40, serial, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
        status,
        this_update,
        next_update: next,
    }
}

fn ocsp(produced_at: i64, responses: Vec<OcspTemplate>) -> Request {
    Request::SignOcsp(OcspBatch {
        issuer: "inter".into(),
        produced_at,
        responses,
    })
}

#[test]
fn an_ocsp_batch_whose_answer_cannot_be_framed_is_refused_before_anything_is_signed() {
    let lab = Lab::new();
    let s = lab.open();
    lab.pki(&s);
    let t = now();
    let template = OcspTemplate {
        singles: (0..64)
            .map(|i| ocsp_single(i, CertStatus::Good, t - 60, Some(t + 3_600)))
            .collect(),
        nonce: None,
    };
    let before = journal_records(&s);
    let e = refused(s.handle(ocsp(t, vec![template.clone(); 10_000])));
    expect(
        &e,
        ErrorKind::BadRequest,
        &[
            "more than the 16777216 octets one frame carries",
            "nothing was signed",
        ],
    );
    assert_eq!(
        journal_records(&s),
        before,
        "nothing was signed or journaled"
    );
    // A batch that fits is signed.
    match s.handle(ocsp(t, vec![template; 100])) {
        Response::Ocsp { responses } => assert_eq!(responses.len(), 100),
        other => panic!("{other:?}"),
    }
    assert_eq!(journal_records(&s), before + 100);
}

// ------------------------------------------------- 5. times encoded

#[test]
fn ocsp_times_outside_1950_to_9999_or_out_of_order_are_refused() {
    let lab = Lab::new();
    let s = lab.open();
    lab.pki(&s);
    let t = now();
    let year_10000 = 253_402_300_800;
    let before = journal_records(&s);
    let one = |single: SingleStatus| {
        vec![OcspTemplate {
            singles: vec![single],
            nonce: None,
        }]
    };
    let cases = [
        (
            one(ocsp_single(1, CertStatus::Good, year_10000, None)),
            t,
            "OCSP thisUpdate",
        ),
        (
            one(ocsp_single(
                1,
                CertStatus::Revoked {
                    at: -70_000_000_000,
                    reason: None,
                },
                t - 60,
                Some(t + 60),
            )),
            t,
            "OCSP revocationTime",
        ),
        (
            one(ocsp_single(
                1,
                CertStatus::Revoked {
                    at: i64::MIN,
                    reason: Some(RevocationReason::KeyCompromise),
                },
                t - 60,
                Some(t + 60),
            )),
            t,
            "OCSP revocationTime",
        ),
        (
            one(ocsp_single(1, CertStatus::Good, t + 3_600, Some(t + 7_200))),
            t,
            "is after producedAt",
        ),
        (
            one(ocsp_single(1, CertStatus::Good, t - 60, Some(t - 60))),
            t,
            "nextUpdate must be after thisUpdate",
        ),
    ];
    for (responses, produced_at, needle) in cases {
        let e = refused(s.handle(ocsp(produced_at, responses)));
        expect(&e, ErrorKind::BadRequest, &[needle]);
    }
    assert_eq!(journal_records(&s), before, "nothing was signed");
    // thisUpdate a few seconds after producedAt is within the skew.
    match s.handle(ocsp(
        t,
        one(ocsp_single(1, CertStatus::Good, t + 5, Some(t + 60))),
    )) {
        Response::Ocsp { responses } => assert_eq!(responses.len(), 1),
        other => panic!("{other:?}"),
    }
}

fn crl(number: u64, this_update: i64, next_update: i64, entries: Vec<CrlEntry>) -> Request {
    Request::SignCrl(CrlRequest {
        issuer: "inter".into(),
        crl_number: number,
        this_update,
        next_update,
        entries: entries.into(),
    })
}

fn entry(revoked_at: i64, reason: Option<RevocationReason>, invalidity: Option<i64>) -> CrlEntry {
    CrlEntry {
        serial: vec![0x41; 16],
        revoked_at,
        reason,
        invalidity_date: invalidity,
    }
}

// --------------------------------- 6. and 8. edges of time, RFC rules

#[test]
fn extreme_times_are_refused_with_errors_not_panics() {
    let lab = Lab::new();
    let s = lab.open();
    lab.pki(&s);
    let t = now();
    let before = journal_records(&s);
    // Issuance: the subtraction of the validity ends used to overflow.
    let mut leaf = server_template("inter", "edge.refusals.test");
    leaf.validity = validity(i64::MIN, i64::MAX);
    let e = refused(s.handle(Request::IssueCertificate(leaf.clone())));
    expect(&e, ErrorKind::BadRequest, &["notBefore", "to 9999"]);
    leaf.validity = validity(t, i64::MAX);
    let e = refused(s.handle(Request::IssueCertificate(leaf)));
    expect(&e, ErrorKind::BadRequest, &["notAfter", "to 9999"]);
    // Responder rotation.
    let e = refused(s.handle(Request::RotateOcspResponder(ResponderParams {
        issuer: "inter".into(),
        algorithm: Algorithm::EcdsaP256,
        validity: validity(i64::MIN, i64::MAX),
    })));
    expect(&e, ErrorKind::BadRequest, &["to 9999"]);
    // CRLs: entry times and the CRL's own.
    for (req, needle) in [
        (
            crl(1, t - 60, t + 60, vec![entry(i64::MIN, None, None)]),
            "revocation time",
        ),
        (
            crl(1, t - 60, t + 60, vec![entry(i64::MAX, None, None)]),
            "revocation time",
        ),
        (
            crl(1, t - 60, t + 60, vec![entry(t - 60, None, Some(i64::MIN))]),
            "invalidity date",
        ),
        (crl(1, i64::MIN, t + 60, vec![]), "thisUpdate"),
        (crl(1, t - 60, i64::MAX, vec![]), "nextUpdate"),
    ] {
        let e = refused(s.handle(req));
        expect(&e, ErrorKind::BadRequest, &[needle, "to 9999"]);
    }
    assert_eq!(journal_records(&s), before, "nothing was signed");
    // Still serving.
    assert!(matches!(
        s.handle(crl(1, t - 60, t + 60, vec![])),
        Response::Crl { .. }
    ));
}

#[test]
fn remove_from_crl_is_refused_in_a_full_crl() {
    let lab = Lab::new();
    let s = lab.open();
    lab.pki(&s);
    let t = now();
    let e = refused(s.handle(crl(
        1,
        t - 60,
        t + 60,
        vec![entry(t - 60, Some(RevocationReason::RemoveFromCrl), None)],
    )));
    expect(
        &e,
        ErrorKind::BadRequest,
        &["removeFromCRL (8)", "delta CRLs"],
    );
    assert!(matches!(
        s.handle(crl(
            1,
            t - 60,
            t + 60,
            vec![entry(t - 60, Some(RevocationReason::KeyCompromise), None)]
        )),
        Response::Crl { .. }
    ));
}

#[test]
fn the_profile_maximum_counts_not_after_as_valid() {
    let lab = Lab::new();
    let s = lab.open();
    lab.pki(&s);
    let max = 397 * 86_400; // the default server profile
    let nb = now() - 60;
    let mut leaf = server_template("inter", "max.refusals.test");
    // notAfter - notBefore = max: max + 1 seconds of validity.
    leaf.validity = validity(nb, nb + max);
    let e = refused(s.handle(Request::IssueCertificate(leaf.clone())));
    expect(
        &e,
        ErrorKind::Policy,
        &["exceeds", "notAfter counts as valid"],
    );
    leaf.validity = validity(nb, nb + max - 1);
    assert!(matches!(
        s.handle(Request::IssueCertificate(leaf)),
        Response::Certificate(_)
    ));
    // Delegated responders likewise (90 days).
    let responder = |not_after| {
        s.handle(Request::RotateOcspResponder(ResponderParams {
            issuer: "inter".into(),
            algorithm: Algorithm::EcdsaP256,
            validity: validity(nb, not_after),
        }))
    };
    let e = refused(responder(nb + 90 * 86_400));
    expect(&e, ErrorKind::Policy, &["at most 90 days"]);
    assert!(matches!(
        responder(nb + 90 * 86_400 - 1),
        Response::Responder(_)
    ));
}

// ------------------------------------------- 6. stalled half frames

/// Sends the first octets of a frame and stops: the signer drops that
/// connection once `FRAME_DEADLINE` has passed since the first octet, while
/// an idle connection (no octet of a frame sent) and new connections keep
/// working.
#[test]
fn a_connection_stalled_in_the_middle_of_a_frame_is_dropped_and_others_keep_working() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    let deadline = castellan_signer::server::FRAME_DEADLINE;
    let mut s = SignerProcess::start(Backend::Soft);
    let mut idle = common::Conn::open(&s.socket).expect("idle connection");
    let mut stalled = UnixStream::connect(&s.socket).expect("connect");
    stalled
        .set_read_timeout(Some(deadline * 4))
        .expect("client timeout");
    // Half a header: magic and part of the version.
    stalled.write_all(b"CSTL\x01").expect("half a frame");
    let started = Instant::now();
    // Meanwhile the signer serves the other connections.
    s.status();
    assert!(matches!(
        idle.call(Request::Status),
        Ok(Response::Status(_))
    ));
    // The stalled connection gets an error frame and is closed.
    let mut answer = Vec::new();
    let read = stalled.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(
        read.is_ok(),
        "the signer should close the stalled connection: {read:?}"
    );
    assert!(
        waited + Duration::from_millis(200) >= deadline && waited < deadline * 3,
        "dropped after {waited:?}, the deadline is {deadline:?}"
    );
    let frame: castellan_proto::ResponseFrame =
        castellan_proto::decode_frame(&answer).expect("one error frame before the close");
    match frame.response {
        Response::Error(e) => expect(&e, ErrorKind::Protocol, &["part of a frame"]),
        other => panic!("expected an error, got {other:?}"),
    }
    // The idle connection, silent for longer than the deadline, still works.
    assert!(matches!(
        idle.call(Request::Status),
        Ok(Response::Status(_))
    ));
    s.status();
    assert!(
        s.log_text().contains("part of a frame"),
        "the drop is logged:\n{}",
        s.log_text()
    );
}
