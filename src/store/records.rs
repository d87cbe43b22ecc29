//! Projection records: what the state tables hold, each a postcard encoding
//! of one of these structs.
//!
//! postcard tags enum variants and lays out struct fields by position, so
//! **variants and fields are append-only**: a change of these types changes
//! the bytes of the projections, and the replay-equality test and files
//! written by earlier versions depend on them. Projections can always be
//! rebuilt from the events (`Store::rebuild_projections`), the events never.

use castellan_proto::{
    Algorithm, CaStatus, CeremonyId, CeremonyOp, CustodianSet, DistinguishedName, RevocationReason,
    SubjectAltName,
};
use serde::{Deserialize, Serialize};

use crate::events::{Actor, Millis, RequestId};

/// The profile name under which a cross-certificate (made by a `cross-sign`
/// ceremony) is kept with the certificates its issuer issued. Not a
/// configurable profile: the configuration refuses this name.
pub const CROSS_CERTIFICATE_PROFILE: &str = "cross-certificate";

/// The signer's keys as last observed (`SignerKeysObserved`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SignerKeys {
    /// DER SubjectPublicKeyInfo of the audit key that signs checkpoints.
    pub audit_spki_der: Vec<u8>,
    pub audit_algorithm: Algorithm,
    pub custodians: CustodianSet,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    pub ca_id: String,
    pub parent: Option<String>,
    pub algorithm: Algorithm,
    pub status: CaStatus,
    pub certificate_der: Vec<u8>,
    /// Sequence number of the event that first registered this CA (a later
    /// `CaRegistered` for the same id updates the record, not this).
    pub registered_seq: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertState {
    Issued,
    Revoked,
    /// Recovered from the signer's journal after a crash: the signer may
    /// have signed it, the DER is unknown. Revocable, shows in blast radius.
    PossiblyIssued,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub reason: RevocationReason,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Unix seconds.
    pub invalidity_date: Option<i64>,
    /// Sequence number of the `CertificateRevoked` event.
    pub seq: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// The serial number's raw octets (the key of the certificates table).
    pub serial: Vec<u8>,
    pub issuer: String,
    pub profile: String,
    pub identity: String,
    pub subject: DistinguishedName,
    pub sans: Vec<SubjectAltName>,
    pub not_before: i64,
    pub not_after: i64,
    /// `None` for `PossiblyIssued`.
    pub certificate_der: Option<Vec<u8>>,
    pub state: CertState,
    pub request_id: RequestId,
    /// Sequence number of the event that created the record.
    pub issued_seq: u64,
    pub revocation: Option<Revocation>,
}

/// An issuance written before the signer was asked, without a result yet.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IntentRecord {
    pub request_id: RequestId,
    pub issuer: String,
    pub profile: String,
    pub identity: String,
    pub subject: DistinguishedName,
    pub sans: Vec<SubjectAltName>,
    pub spki_sha256: [u8; 32],
    pub not_before: i64,
    pub not_after: i64,
    /// Sequence number and time of the `IssuanceIntended` event.
    pub seq: u64,
    pub time_ms: Millis,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// The custodian's Ed25519 public key.
    pub custodian: [u8; 32],
    pub name: String,
    pub signature: Vec<u8>,
    /// Who submitted the approval.
    pub actor: Actor,
    pub time_ms: Millis,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CeremonyStatus {
    Open,
    /// Executed by the event with this sequence number.
    Executed {
        seq: u64,
    },
    /// Executed by the event with sequence number `seq`, making the
    /// certificate with this serial (a cross-signature; it is in the
    /// certificates table).
    ExecutedWithCertificate {
        seq: u64,
        serial: Vec<u8>,
    },
}

impl CeremonyStatus {
    pub fn is_open(&self) -> bool {
        matches!(self, CeremonyStatus::Open)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CeremonyRecord {
    pub ceremony_id: CeremonyId,
    pub op: CeremonyOp,
    pub opened_by: Actor,
    pub opened_ms: Millis,
    /// At most one per custodian, in the order they were recorded.
    pub approvals: Vec<ApprovalRecord>,
    pub status: CeremonyStatus,
    /// The reason of the last `CeremonyFailed` (the ceremony stays open).
    pub last_error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// The attested event: the chain up to and including `sequence`.
    pub sequence: u64,
    /// The hash of event `sequence`.
    pub head_hash: [u8; 32],
    /// Unix seconds, as signed.
    pub time: i64,
    pub signature: Vec<u8>,
    /// Sequence number of the `CheckpointSigned` event.
    pub seq: u64,
}

/// The current delegated OCSP responder of one CA (`ResponderRotated`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ResponderRecord {
    pub issuer: String,
    pub certificate_der: Vec<u8>,
    /// Unix seconds, from the certificate (0 if it does not parse).
    pub not_before: i64,
    pub not_after: i64,
    /// Sequence number of the `ResponderRotated` event.
    pub seq: u64,
}

/// The latest CRL of one CA (`CrlPublished`). The DER itself is kept as a
/// file beside the database and in the publish directory; this record says
/// which bytes (`sha256`) are current.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    pub issuer: String,
    pub crl_number: u64,
    /// Unix seconds.
    pub this_update: i64,
    pub next_update: i64,
    /// Revoked certificates listed.
    pub entries: u64,
    pub sha256: [u8; 32],
    /// The revocations listed are those committed before this log position.
    pub as_of: u64,
    /// Emergency mode: every CRL is published with this short validity
    /// (seconds) until the operator ends it.
    pub emergency_validity: Option<i64>,
    /// Sequence number of the `CrlPublished` event.
    pub seq: u64,
}

/// Selects certificates in `ReadView::certs`. Every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFilter {
    pub issuer: Option<String>,
    pub state: Option<CertState>,
    pub identity: Option<String>,
    pub limit: Option<usize>,
    /// Start after this position: the cursor a previous page returned
    /// ([`crate::store::ReadView::certs_page`]).
    pub after: Option<Vec<u8>>,
}
