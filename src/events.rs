//! The event log's vocabulary. Every state change of castellan is one of
//! these events; every state table is a projection of them.
//!
//! Events are encoded with postcard, which tags enum variants by position:
//! **variants and fields are append-only** (never reorder, remove or retype).
//! Kinds reserved for later capabilities (snapshots, incidents, delivery
//! connectors) are appended at the end when they are built.

use castellan_proto::{
    Algorithm, CaStatus, CeremonyId, CeremonyOp, CustodianSet, DistinguishedName, RevocationReason,
    SubjectAltName,
};
use serde::{Deserialize, Serialize};

/// Unix time in milliseconds.
pub type Millis = i64;

/// Who did it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// castellan itself (timers, start-up recovery).
    System,
    /// A local user on the admin socket (SO_PEERCRED).
    Unix { uid: u32, gid: u32, name: String },
    /// A remote client authenticated by mutual TLS.
    Mtls { subject: String, serial: Vec<u8> },
}

impl Actor {
    pub fn describe(&self) -> String {
        match self {
            Actor::System => "system".into(),
            Actor::Unix { uid, name, .. } => format!("{name} (uid {uid})"),
            Actor::Mtls { subject, .. } => format!("mtls:{subject}"),
        }
    }
}

/// A request id chosen by the daemon for one issuance (16 random octets).
pub type RequestId = [u8; 16];

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum EventPayload {
    /// The daemon started with this configuration digest.
    DaemonStarted {
        version: String,
        config_sha256: [u8; 32],
    },
    /// What the signer reported about its keys (recorded when it changes),
    /// so the audit key that signs checkpoints is itself in the log.
    SignerKeysObserved {
        audit_spki_der: Vec<u8>,
        audit_algorithm: Algorithm,
        custodians: CustodianSet,
    },
    CeremonyOpened {
        ceremony_id: CeremonyId,
        op: CeremonyOp,
    },
    /// A custodian's valid approval (checked against the custodian set and
    /// the ceremony statement before it is recorded).
    CeremonyApproved {
        ceremony_id: CeremonyId,
        custodian: [u8; 32],
        custodian_name: String,
        signature: Vec<u8>,
    },
    CeremonyExecuted {
        ceremony_id: CeremonyId,
    },
    CeremonyFailed {
        ceremony_id: CeremonyId,
        reason: String,
    },
    /// A CA the signer holds (from a ceremony, or first seen at start-up).
    CaRegistered {
        ca_id: String,
        parent: Option<String>,
        algorithm: Algorithm,
        status: CaStatus,
        certificate_der: Vec<u8>,
    },
    /// Written before the signer is asked: if no result follows, the
    /// certificate may exist (see `IssuanceRecovered`).
    IssuanceIntended {
        request_id: RequestId,
        issuer: String,
        profile: String,
        identity: String,
        subject: DistinguishedName,
        sans: Vec<SubjectAltName>,
        spki_sha256: [u8; 32],
        not_before: i64,
        not_after: i64,
    },
    CertificateIssued {
        request_id: RequestId,
        serial: Vec<u8>,
        certificate_der: Vec<u8>,
        signer_journal_seq: u64,
    },
    /// The signer refused or failed: nothing was issued.
    IssuanceFailed {
        request_id: RequestId,
        reason: String,
    },
    /// A request refused before the signer was asked (bad CSR, disallowed
    /// name). Leaves no other trace.
    IssuanceRefused {
        reason: String,
    },
    /// After a crash: an intent without a result, matched against the
    /// signer's journal. `serial` is `None` when the journal shows nothing.
    IssuanceRecovered {
        request_id: RequestId,
        serial: Option<Vec<u8>>,
    },
    CertificateRevoked {
        serial: Vec<u8>,
        issuer: String,
        reason: RevocationReason,
        revoked_at: i64,
        invalidity_date: Option<i64>,
    },
    /// The signer's audit key signed (sequence, head hash): the chain up to
    /// `sequence` is attested.
    CheckpointSigned {
        sequence: u64,
        head_hash: [u8; 32],
        time: i64,
        signature: Vec<u8>,
    },
    /// The signer certified a new delegated OCSP responder for `issuer`
    /// (rotated automatically before the previous one expires).
    ResponderRotated {
        issuer: String,
        certificate_der: Vec<u8>,
    },
    /// The signer signed CRL `crl_number` of `issuer`, listing `entries`
    /// revocations committed before log position `as_of`; `sha256` is the
    /// hash of its DER. `emergency_validity`: published in emergency mode
    /// (`castellanctl crl emergency`) with that validity in seconds.
    CrlPublished {
        issuer: String,
        crl_number: u64,
        this_update: i64,
        next_update: i64,
        entries: u64,
        sha256: [u8; 32],
        as_of: u64,
        emergency_validity: Option<i64>,
    },
    /// A SIGHUP reload put a new configuration in force (recorded before
    /// it took effect). `config_sha256` is the digest of the effective
    /// configuration as in `DaemonStarted`; `file_sha256` that of the file
    /// as read (`None`: no file, every setting at its default);
    /// `changed` the dotted names of the settings that changed (names
    /// only, never values).
    ConfigReloaded {
        config_sha256: [u8; 32],
        file_sha256: Option<[u8; 32]>,
        changed: Vec<String>,
    },
    /// A `cross-sign` ceremony's result: `issuer` certified another CA's
    /// name and key. Kept with the certificates `issuer` issued, so it is
    /// listed, answered by OCSP and revocable onto `issuer`'s CRL.
    CrossCertificateIssued {
        ceremony_id: CeremonyId,
        issuer: String,
        serial: Vec<u8>,
        subject: DistinguishedName,
        not_before: i64,
        not_after: i64,
        certificate_der: Vec<u8>,
        signer_journal_seq: u64,
    },
}

impl EventPayload {
    /// A stable kind name for filters and display.
    pub fn kind(&self) -> &'static str {
        match self {
            EventPayload::DaemonStarted { .. } => "daemon-started",
            EventPayload::SignerKeysObserved { .. } => "signer-keys-observed",
            EventPayload::CeremonyOpened { .. } => "ceremony-opened",
            EventPayload::CeremonyApproved { .. } => "ceremony-approved",
            EventPayload::CeremonyExecuted { .. } => "ceremony-executed",
            EventPayload::CeremonyFailed { .. } => "ceremony-failed",
            EventPayload::CaRegistered { .. } => "ca-registered",
            EventPayload::IssuanceIntended { .. } => "issuance-intended",
            EventPayload::CertificateIssued { .. } => "certificate-issued",
            EventPayload::IssuanceFailed { .. } => "issuance-failed",
            EventPayload::IssuanceRefused { .. } => "issuance-refused",
            EventPayload::IssuanceRecovered { .. } => "issuance-recovered",
            EventPayload::CertificateRevoked { .. } => "certificate-revoked",
            EventPayload::CheckpointSigned { .. } => "checkpoint-signed",
            EventPayload::CrossCertificateIssued { .. } => "cross-certificate-issued",
            EventPayload::ResponderRotated { .. } => "responder-rotated",
            EventPayload::CrlPublished { .. } => "crl-published",
            EventPayload::ConfigReloaded { .. } => "config-reloaded",
        }
    }

    /// The payload as the admin API shows it: JSON with every octet string
    /// (hashes, serials, ids, DER, signatures, IP addresses) as lowercase
    /// hex instead of an array of numbers. Payloads hold integers in
    /// sequences only as octets (`Vec<u8>`, `[u8; N]`), so every non-empty
    /// array of integers 0–255 is one; a test holds this for each kind.
    pub fn to_json(&self) -> serde_json::Value {
        fn hex_octets(v: serde_json::Value) -> serde_json::Value {
            use serde_json::Value;
            match v {
                Value::Array(items)
                    if !items.is_empty()
                        && items.iter().all(|i| i.as_u64().is_some_and(|n| n <= 255)) =>
                {
                    let octets: Vec<u8> = items
                        .iter()
                        .filter_map(|i| i.as_u64().and_then(|n| u8::try_from(n).ok()))
                        .collect();
                    Value::String(hex::encode(octets))
                }
                Value::Array(items) => Value::Array(items.into_iter().map(hex_octets).collect()),
                Value::Object(m) => {
                    Value::Object(m.into_iter().map(|(k, v)| (k, hex_octets(v))).collect())
                }
                other => other,
            }
        }
        hex_octets(serde_json::to_value(self).unwrap_or(serde_json::Value::Null))
    }

    /// What the event is about, for `audit log --subject` (a serial in hex,
    /// a CA id, a ceremony id in hex, an identity).
    /// Whether applying this event may change the CA table (`p.cas`):
    /// caches of CA data are invalidated by these.
    pub fn changes_cas(&self) -> bool {
        matches!(self, EventPayload::CaRegistered { .. })
    }

    pub fn subjects(&self) -> Vec<String> {
        match self {
            EventPayload::CeremonyOpened { ceremony_id, .. }
            | EventPayload::CeremonyApproved { ceremony_id, .. }
            | EventPayload::CeremonyExecuted { ceremony_id }
            | EventPayload::CeremonyFailed { ceremony_id, .. } => vec![hex::encode(ceremony_id)],
            EventPayload::CaRegistered { ca_id, .. } => vec![ca_id.clone()],
            EventPayload::ResponderRotated { issuer, .. }
            | EventPayload::CrlPublished { issuer, .. } => vec![issuer.clone()],
            EventPayload::IssuanceIntended {
                request_id,
                issuer,
                identity,
                ..
            } => vec![hex::encode(request_id), issuer.clone(), identity.clone()],
            EventPayload::CertificateIssued {
                request_id, serial, ..
            } => {
                vec![hex::encode(request_id), hex::encode(serial)]
            }
            EventPayload::IssuanceFailed { request_id, .. } => vec![hex::encode(request_id)],
            EventPayload::IssuanceRecovered { request_id, serial } => {
                let mut v = vec![hex::encode(request_id)];
                v.extend(serial.iter().map(hex::encode));
                v
            }
            EventPayload::CertificateRevoked { serial, issuer, .. } => {
                vec![hex::encode(serial), issuer.clone()]
            }
            EventPayload::CrossCertificateIssued {
                ceremony_id,
                issuer,
                serial,
                ..
            } => vec![
                hex::encode(ceremony_id),
                hex::encode(serial),
                issuer.clone(),
            ],
            _ => vec![],
        }
    }
}

/// One event as stored: the payload and its place in the hash chain.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub time_ms: Millis,
    pub actor: Actor,
    pub payload: EventPayload,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

const EVENT_DOMAIN: &[u8] = b"castellan event v1\0";

/// SHA-256 over the canonical encoding: domain | postcard(seq, time, actor,
/// payload, prev_hash).
pub fn event_hash(
    seq: u64,
    time_ms: Millis,
    actor: &Actor,
    payload: &EventPayload,
    prev_hash: &[u8; 32],
) -> [u8; 32] {
    let body = postcard::to_stdvec(&(seq, time_ms, actor, payload, prev_hash)).unwrap_or_default();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(EVENT_DOMAIN);
    ctx.update(&body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Event {
    pub fn new(
        seq: u64,
        time_ms: Millis,
        actor: Actor,
        payload: EventPayload,
        prev_hash: [u8; 32],
    ) -> Event {
        let hash = event_hash(seq, time_ms, &actor, &payload, &prev_hash);
        Event {
            seq,
            time_ms,
            actor,
            payload,
            prev_hash,
            hash,
        }
    }

    /// The event and its stored encoding (postcard of [`Event`]), encoded
    /// once: postcard writes a struct as its fields in order, so the
    /// stored form is the hashed body followed by the 32 octets of the
    /// hash (a test holds both equal to the separate encodings).
    pub fn sealed(
        seq: u64,
        time_ms: Millis,
        actor: Actor,
        payload: EventPayload,
        prev_hash: [u8; 32],
    ) -> Result<(Event, Vec<u8>), postcard::Error> {
        let mut bytes = postcard::to_stdvec(&(seq, time_ms, &actor, &payload, &prev_hash))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(EVENT_DOMAIN);
        ctx.update(&bytes);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(ctx.finish().as_ref());
        bytes.extend_from_slice(&hash);
        let ev = Event {
            seq,
            time_ms,
            actor,
            payload,
            prev_hash,
            hash,
        };
        Ok((ev, bytes))
    }

    /// The hash recomputed from the content.
    pub fn computed_hash(&self) -> [u8; 32] {
        event_hash(
            self.seq,
            self.time_ms,
            &self.actor,
            &self.payload,
            &self.prev_hash,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_json_of_a_payload_shows_octets_as_hex_and_numbers_as_numbers() {
        let issued = EventPayload::CertificateIssued {
            request_id: [0xab; 16],
            serial: vec![0x01, 0xff],
            certificate_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
            signer_journal_seq: 7,
        };
        let v = issued.to_json();
        let body = &v["CertificateIssued"];
        assert_eq!(body["request_id"], "ab".repeat(16));
        assert_eq!(body["serial"], "01ff");
        assert_eq!(body["certificate_der"], "3003020100");
        assert_eq!(body["signer_journal_seq"], 7);

        let crl = EventPayload::CrlPublished {
            issuer: "issuing".into(),
            crl_number: 300,
            this_update: 1,
            next_update: 2,
            entries: 3,
            sha256: [0; 32],
            as_of: 4,
            emergency_validity: Some(60),
        };
        let v = crl.to_json();
        assert_eq!(v["CrlPublished"]["sha256"], "00".repeat(32));
        assert_eq!(v["CrlPublished"]["entries"], 3);
        assert_eq!(v["CrlPublished"]["emergency_validity"], 60);

        let reloaded = EventPayload::ConfigReloaded {
            config_sha256: [1; 32],
            file_sha256: None,
            changed: vec!["admin.roles.operator".into()],
        };
        let v = reloaded.to_json();
        assert_eq!(v["ConfigReloaded"]["config_sha256"], "01".repeat(32));
        assert_eq!(v["ConfigReloaded"]["changed"][0], "admin.roles.operator");
        assert!(!v.to_string().contains("[1,"), "{v}");
    }

    #[test]
    fn an_event_encoded_once_is_byte_for_byte_the_separate_hash_and_encoding() {
        let actors = [
            Actor::System,
            Actor::Unix {
                uid: 1000,
                gid: 1000,
                name: "alice".into(),
            },
        ];
        let payloads = [
            EventPayload::IssuanceRefused {
                reason: "no".into(),
            },
            EventPayload::CertificateIssued {
                request_id: [7; 16],
                serial: vec![1, 2, 3],
                certificate_der: (0..700u32).map(|i| i as u8).collect(),
                signer_journal_seq: 300,
            },
            EventPayload::CaRegistered {
                ca_id: "issuing-1".into(),
                parent: Some("root-1".into()),
                algorithm: Algorithm::EcdsaP256,
                status: CaStatus::Active,
                certificate_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
            },
        ];
        for (i, payload) in payloads.iter().enumerate() {
            for actor in &actors {
                let seq = 1 << (7 * i);
                let prev = [i as u8; 32];
                let (ev, bytes) =
                    Event::sealed(seq, 1_700_000_000_000, actor.clone(), payload.clone(), prev)
                        .expect("encodes");
                let separate =
                    Event::new(seq, 1_700_000_000_000, actor.clone(), payload.clone(), prev);
                assert_eq!(ev, separate);
                assert_eq!(ev.hash, ev.computed_hash());
                assert_eq!(bytes, postcard::to_stdvec(&separate).expect("encodes"));
                let back: Event = postcard::from_bytes(&bytes).expect("decodes");
                assert_eq!(back, separate);
            }
        }
    }
}
