//! `audit verify`: re-walk the hash chain and check the checkpoints.
//!
//! The walk trusts nothing in the projections: it reads only the events
//! table, recomputes every hash, and takes the audit key from the latest
//! `SignerKeysObserved` *in the chain* before each checkpoint.
//!
//! A key recorded in the log proves nothing on its own: whoever can write
//! the file can record a key of their own, re-chain and re-sign. So the
//! walk is given the audit key from outside where it can be had (the
//! signer, or a file for offline checks) and every recorded audit key must
//! be that key.

use castellan_proto::{
    Algorithm, CHECKPOINT_MAX_SKEW_SECS, CheckpointRequest, LastSignedCheckpoint,
    checkpoint_message,
};
use der::Decode;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

use super::tables::{EVENTS, decode_event};
use crate::events::EventPayload;

/// The result of re-walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of events stored.
    pub events: u64,
    /// Hash of the last event that verified (zeros when none did).
    pub head_hash: [u8; 32],
    /// The first sequence number at which the chain is damaged, and why.
    /// The walk stops there: nothing after it can be trusted. A failure to
    /// read the file at all is reported here too, at the sequence number the
    /// walk had reached.
    pub first_bad: Option<(u64, String)>,
    /// Checkpoints whose signature and head hash verified.
    pub checkpoints_ok: u64,
    /// Checkpoints that did not verify: (sequence number of the
    /// `CheckpointSigned` event, why).
    pub checkpoints_bad: Vec<(u64, String)>,
    /// The highest event sequence number attested by a valid checkpoint:
    /// events after it are chained but not yet signed.
    pub last_checkpoint: Option<u64>,
    /// Audit keys recorded in the log (`SignerKeysObserved`) that are not
    /// the trusted audit key the walk was given: (sequence number, why).
    pub foreign_audit_keys: Vec<(u64, String)>,
}

impl VerifyReport {
    /// No damage and no bad checkpoint.
    pub fn is_clean(&self) -> bool {
        self.first_bad.is_none()
            && self.checkpoints_bad.is_empty()
            && self.foreign_audit_keys.is_empty()
    }
}

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Verifies an audit-key signature as a relying party would: parse the
/// SPKI, check that its algorithm is the recorded one, verify with ring.
pub(crate) fn verify_audit_signature(
    spki_der: &[u8],
    algorithm: Algorithm,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let spki = SubjectPublicKeyInfoRef::from_der(spki_der)
        .map_err(|e| format!("the recorded audit key is not a DER SubjectPublicKeyInfo ({e})"))?;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or("the recorded audit key's BIT STRING has unused bits")?;
    let oid = spki.algorithm.oid;
    let alg: &dyn ring::signature::VerificationAlgorithm = match algorithm {
        Algorithm::EcdsaP256 | Algorithm::EcdsaP384 => {
            let curve = spki
                .algorithm
                .parameters_oid()
                .map_err(|e| format!("the recorded audit key names no curve ({e})"))?;
            let (want, alg): (_, &dyn ring::signature::VerificationAlgorithm) =
                if algorithm == Algorithm::EcdsaP256 {
                    (SECP256R1, &ring::signature::ECDSA_P256_SHA256_ASN1)
                } else {
                    (SECP384R1, &ring::signature::ECDSA_P384_SHA384_ASN1)
                };
            if oid != ID_EC_PUBLIC_KEY || curve != want {
                return Err(format!(
                    "the recorded audit key ({oid}, {curve}) is not {}",
                    algorithm.as_str()
                ));
            }
            alg
        }
        Algorithm::Rsa3072 => {
            if oid != RSA_ENCRYPTION {
                return Err(format!("the recorded audit key ({oid}) is not RSA"));
            }
            &ring::signature::RSA_PKCS1_2048_8192_SHA256
        }
    };
    ring::signature::UnparsedPublicKey::new(alg, key)
        .verify(message, signature)
        .map_err(|_| "the signature does not verify with the recorded audit key".to_string())
}

/// Walks the log. With `trusted` (the DER SubjectPublicKeyInfo of the
/// signer's audit key, from the signer or an operator's file), every audit
/// key recorded in the log must be that key; without it, checkpoints are
/// checked only against the keys the log itself records.
pub(crate) fn verify_db(db: &impl ReadableDatabase, trusted: Option<&[u8]>) -> VerifyReport {
    let mut report = VerifyReport {
        events: 0,
        head_hash: [0; 32],
        first_bad: None,
        checkpoints_ok: 0,
        checkpoints_bad: Vec::new(),
        last_checkpoint: None,
        foreign_audit_keys: Vec::new(),
    };
    let read_failed = |report: &mut VerifyReport, at: u64, e: String| {
        report.first_bad = Some((
            at,
            format!("cannot read the event store ({e}); copy the file and run verify on the copy"),
        ));
    };
    let txn = match db.begin_read() {
        Ok(t) => t,
        Err(e) => {
            read_failed(&mut report, 0, e.to_string());
            return report;
        }
    };
    let events = match txn.open_table(EVENTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return report,
        Err(e) => {
            read_failed(&mut report, 0, e.to_string());
            return report;
        }
    };
    match events.len() {
        Ok(n) => report.events = n,
        Err(e) => {
            read_failed(&mut report, 0, e.to_string());
            return report;
        }
    }
    let range = match events.range::<u64>(..) {
        Ok(r) => r,
        Err(e) => {
            read_failed(&mut report, 0, e.to_string());
            return report;
        }
    };
    let mut expected: u64 = 0;
    let mut prev = [0u8; 32];
    let mut audit_key: Option<(Vec<u8>, Algorithm)> = None;
    for item in range {
        let (key, value) = match item {
            Ok(kv) => kv,
            Err(e) => {
                read_failed(&mut report, expected, e.to_string());
                return report;
            }
        };
        let key = key.value();
        if key != expected {
            report.first_bad = Some((
                expected,
                format!("event {expected} is missing (the next stored key is {key})"),
            ));
            return report;
        }
        let ev = match decode_event(value.value()) {
            Ok(ev) => ev,
            Err(e) => {
                report.first_bad = Some((key, format!("the stored event does not decode ({e})")));
                return report;
            }
        };
        if ev.seq != key {
            report.first_bad = Some((
                key,
                format!(
                    "the event stored under key {key} says it is event {}",
                    ev.seq
                ),
            ));
            return report;
        }
        if ev.computed_hash() != ev.hash {
            report.first_bad = Some((
                key,
                "the event's content does not match its hash (altered after it was written)"
                    .to_string(),
            ));
            return report;
        }
        if ev.prev_hash != prev {
            report.first_bad = Some((
                key,
                "the event's previous-hash does not match the hash of the event before it \
                 (an event was altered, removed or inserted)"
                    .to_string(),
            ));
            return report;
        }
        prev = ev.hash;
        report.head_hash = ev.hash;
        expected = key.saturating_add(1);

        match &ev.payload {
            EventPayload::SignerKeysObserved {
                audit_spki_der,
                audit_algorithm,
                ..
            } => {
                if let Some(trusted) = trusted
                    && trusted != audit_spki_der.as_slice()
                {
                    report.foreign_audit_keys.push((
                        ev.seq,
                        format!(
                            "the audit key recorded at event {} (SHA-256 of its \
                             SubjectPublicKeyInfo {}) is not the signer's audit key (SHA-256 \
                             {}): the checkpoints it signs prove nothing",
                            ev.seq,
                            spki_digest(audit_spki_der),
                            spki_digest(trusted)
                        ),
                    ));
                }
                audit_key = Some((audit_spki_der.clone(), *audit_algorithm));
            }
            EventPayload::CheckpointSigned {
                sequence,
                head_hash,
                time,
                signature,
            } => {
                match check_checkpoint(
                    &events,
                    ev.seq,
                    audit_key.as_ref(),
                    &CheckpointRequest {
                        sequence: *sequence,
                        head_hash: *head_hash,
                        time: *time,
                    },
                    signature,
                ) {
                    Ok(()) => {
                        report.checkpoints_ok += 1;
                        report.last_checkpoint = Some(
                            report
                                .last_checkpoint
                                .map_or(*sequence, |l| l.max(*sequence)),
                        );
                    }
                    Err(why) => report.checkpoints_bad.push((ev.seq, why)),
                }
            }
            _ => {}
        }
    }
    if expected != report.events {
        report.first_bad = Some((
            expected,
            format!(
                "the table says it holds {} events but the walk found {expected}",
                report.events
            ),
        ));
    }
    report
}

/// Hex SHA-256 of a key's DER, to name it in a report.
pub(crate) fn spki_digest(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

fn check_checkpoint(
    events: &impl ReadableTable<u64, &'static [u8]>,
    at: u64,
    audit_key: Option<&(Vec<u8>, Algorithm)>,
    req: &CheckpointRequest,
    signature: &[u8],
) -> Result<(), String> {
    if req.sequence >= at {
        return Err(format!(
            "it attests event {} which is not before it",
            req.sequence
        ));
    }
    // Already verified by the walk, which reached `at`.
    let stored = match events.get(req.sequence) {
        Ok(Some(v)) => decode_event(v.value())
            .map_err(|e| format!("event {} does not decode ({e})", req.sequence))?,
        Ok(None) => return Err(format!("event {} is missing", req.sequence)),
        Err(e) => return Err(format!("cannot read event {}: {e}", req.sequence)),
    };
    if stored.hash != req.head_hash {
        return Err(format!(
            "its head hash is not the hash of event {}",
            req.sequence
        ));
    }
    let Some((spki, algorithm)) = audit_key else {
        return Err("no signer audit key is recorded before it".to_string());
    };
    verify_audit_signature(spki, *algorithm, &checkpoint_message(req), signature)
}

/// How the event log compares with the last checkpoint the signer signed.
///
/// The signer keeps its own journal, out of reach of whoever can write the
/// daemon's files: a log cut short, or replaced by an older copy, keeps an
/// intact chain and valid checkpoints, but no longer reaches (or no longer
/// agrees with) the signer's last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerCheckpointCheck {
    /// The log holds the checkpointed event, and it is the one the signer
    /// checkpointed.
    Matches { sequence: u64 },
    /// The log holds only `events` events (it ends at `events - 1`), fewer
    /// than the signer checkpointed.
    LogBehind { sequence: u64, events: u64 },
    /// The log holds the checkpointed sequence but not the history the
    /// signer checkpointed there.
    Differs { sequence: u64, why: String },
    /// The log could not be read to compare.
    Unreadable(String),
}

const PRESERVE: &str = "preserve both files (the event log and the signer's journal) as evidence \
     before anything else writes to them, and restore the newest copy of the log that the \
     signer's checkpoint agrees with";

impl SignerCheckpointCheck {
    /// The log disagrees with the signer: events were removed or rewritten.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            SignerCheckpointCheck::LogBehind { .. } | SignerCheckpointCheck::Differs { .. }
        )
    }

    /// What an operator reads.
    pub fn message(&self) -> String {
        match self {
            SignerCheckpointCheck::Matches { sequence } => format!(
                "the event log reaches at least the signer's last checkpoint (event {sequence}) \
                 and agrees with it"
            ),
            SignerCheckpointCheck::LogBehind { sequence, events } => {
                let end = match events.checked_sub(1) {
                    Some(last) => format!("the event log ends at event {last}"),
                    None => "the event log is empty".to_string(),
                };
                format!(
                    "the signer checkpointed event {sequence}, but {end}: events were removed \
                     or this is an older copy of the log (rolled back); {PRESERVE}"
                )
            }
            SignerCheckpointCheck::Differs { sequence, why } => format!(
                "the event log's history differs from what the signer checkpointed at event \
                 {sequence} ({why}): events up to it were rewritten or this is another copy of \
                 the log; {PRESERVE}"
            ),
            SignerCheckpointCheck::Unreadable(why) => format!(
                "the event log could not be read to compare it with the signer's last \
                 checkpoint ({why})"
            ),
        }
    }
}

/// Compares the log with the signer's last checkpoint `last`. The hash
/// chain itself is checked by [`verify_db`]; this reads the checkpointed
/// event and, when needed, the checkpoints recorded after it.
pub(crate) fn compare_with_signer(
    db: &impl ReadableDatabase,
    last: &LastSignedCheckpoint,
) -> SignerCheckpointCheck {
    let unreadable = |e: String| SignerCheckpointCheck::Unreadable(e);
    let sequence = last.sequence;
    let txn = match db.begin_read() {
        Ok(t) => t,
        Err(e) => return unreadable(e.to_string()),
    };
    let events = match txn.open_table(EVENTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return SignerCheckpointCheck::LogBehind {
                sequence,
                events: 0,
            };
        }
        Err(e) => return unreadable(e.to_string()),
    };
    let stored = match events.get(sequence) {
        Ok(Some(v)) => v,
        Ok(None) => {
            return match events.last() {
                Ok(Some((k, _))) if k.value() >= sequence => SignerCheckpointCheck::Differs {
                    sequence,
                    why: format!("event {sequence} is missing from the log"),
                },
                Ok(Some((k, _))) => SignerCheckpointCheck::LogBehind {
                    sequence,
                    events: k.value().saturating_add(1),
                },
                Ok(None) => SignerCheckpointCheck::LogBehind {
                    sequence,
                    events: 0,
                },
                Err(e) => unreadable(e.to_string()),
            };
        }
        Err(e) => return unreadable(e.to_string()),
    };
    let head = match decode_event(stored.value()) {
        Ok(ev) => ev.hash,
        Err(e) => return unreadable(format!("event {sequence} does not decode ({e})")),
    };
    let checkpointed = |time: i64| {
        crate::sha256(&checkpoint_message(&CheckpointRequest {
            sequence,
            head_hash: head,
            time,
        }))
    };
    // Signed since the signer started: it still has the head it signed.
    if let Some(signed) = &last.request {
        return if signed.head_hash == head {
            SignerCheckpointCheck::Matches { sequence }
        } else {
            SignerCheckpointCheck::Differs {
                sequence,
                why: format!(
                    "the signer signed head {} for it, the log's event {sequence} has hash {}",
                    hex::encode(signed.head_hash),
                    hex::encode(head)
                ),
            }
        };
    }
    // After a restart the signer has only the digest of the message, which
    // covers the head and the checkpoint's time; that time was within the
    // skew bound of the signer's clock when it journaled the checkpoint
    // (allowing as much again for a slow key backend).
    let journaled = last.journaled_ms.div_euclid(1000);
    let skew = CHECKPOINT_MAX_SKEW_SECS.saturating_add(1);
    let from = journaled.saturating_sub(skew.saturating_mul(2));
    let to = journaled.saturating_add(skew);
    if (from..=to).any(|time| checkpointed(time) == last.message_sha256) {
        return SignerCheckpointCheck::Matches { sequence };
    }
    // A checkpoint of this head recorded in the log whose message the
    // signer signed (its time outside the window above).
    let after = match events.range(sequence.saturating_add(1)..) {
        Ok(r) => r,
        Err(e) => return unreadable(e.to_string()),
    };
    for item in after {
        let ev = match item {
            Ok((_, v)) => match decode_event(v.value()) {
                Ok(ev) => ev,
                Err(_) => continue,
            },
            Err(e) => return unreadable(e.to_string()),
        };
        if let EventPayload::CheckpointSigned {
            sequence: s,
            head_hash,
            time,
            ..
        } = ev.payload
            && s == sequence
            && head_hash == head
            && checkpointed(time) == last.message_sha256
        {
            return SignerCheckpointCheck::Matches { sequence };
        }
    }
    SignerCheckpointCheck::Differs {
        sequence,
        why: format!(
            "no checkpoint of the log's event {sequence} (hash {}) has the digest the signer \
             journaled for it ({})",
            hex::encode(head),
            hex::encode(last.message_sha256)
        ),
    }
}
