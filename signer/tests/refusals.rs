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
    Algorithm, CeremonyOp, CeremonyOutcome, CustodianSet, ErrorKind, Request, ResponderParams,
    Response, SignatureKind, SignedSubject, SignerError,
};
use castellan_signer::backend::soft::SoftBackend;
use castellan_signer::journal::{Journal, NewRecord};
use castellan_signer::service::{Signer, initialise};
use common::{
    Backend, Custodians, SignerProcess, all_text, ceremony_id, intermediate_params, now,
    root_params, validity,
};
use secrecy::SecretString;

// ------------------------------------------------------------ in-process

/// A signer state directory with a software key store and 3 custodians, 2
/// of whom must approve.
struct Lab {
    dir: tempfile::TempDir,
    custodians: Custodians,
}

fn pass() -> SecretString {
    SecretString::from("refusals store passphrase".to_string())
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().expect("temporary directory");
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
        let proof = self.custodians.proof(id, &op, &[0, 1]);
        s.handle(Request::Ceremony { op, proof })
    }

    /// A root and an intermediate ("inter") with a delegated OCSP responder.
    fn pki(&self, s: &Signer) {
        for op in [
            CeremonyOp::CreateRoot(root_params("root", Algorithm::EcdsaP256)),
            CeremonyOp::CreateIntermediate(intermediate_params(
                "inter",
                "root",
                Algorithm::EcdsaP256,
            )),
        ] {
            let r = self.ceremony(s, op);
            assert!(matches!(r, Response::Ceremony(CeremonyOutcome::Ca(_))), "{r:?}");
        }
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
    let proof = lab.custodians.proof(id, &op, &[0, 1]);
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
