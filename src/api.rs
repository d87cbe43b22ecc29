//! The admin API's JSON types, shared by the daemon and `castellanctl`.
//!
//! Routes (all JSON; the actor is the peer's uid on the admin socket or the
//! mTLS client certificate; roles: auditor ⊂ operator ⊂ admin):
//!
//! | method | path | role | what |
//! |---|---|---|---|
//! | GET  | /healthz | none | process is up |
//! | GET  | /readyz | none | signer reachable and log writable (503 otherwise, with `log_problem`) |
//! | GET  | /metrics | auditor | Prometheus text |
//! | GET  | /v1/status | auditor | [`StatusView`] |
//! | GET  | /v1/ceremonies | auditor | list of [`CeremonyView`] |
//! | POST | /v1/ceremonies | admin | open: [`OpenCeremony`] → [`CeremonyView`] |
//! | GET  | /v1/ceremonies/{id} | auditor | [`CeremonyView`] |
//! | POST | /v1/ceremonies/{id}/approvals | operator | [`ApproveCeremony`] → [`CeremonyView`] |
//! | POST | /v1/ceremonies/{id}/execute | admin | → [`CeremonyView`] |
//! | GET  | /v1/cas | auditor | list of [`CaView`] |
//! | GET  | /v1/cas/{id} | auditor | [`CaView`] |
//! | POST | /v1/certificates | operator | [`IssueRequest`] → [`IssuedView`] |
//! | GET  | /v1/certificates?issuer=&state=&identity=&limit=&after= | auditor | [`CertPage`] |
//! | GET  | /v1/certificates/{serial} | auditor | [`CertView`] |
//! | POST | /v1/certificates/{serial}/revoke | operator | [`RevokeRequest`] → [`CertView`] |
//! | GET  | /v1/crls/{issuer} | auditor | [`CrlView`] of the current CRL |
//! | POST | /v1/crls/{issuer}/publish | operator | [`PublishCrl`] → [`CrlView`] |
//! | GET  | /v1/audit/verify | auditor | [`VerifyView`] |
//! | GET  | /v1/audit/log?actor=&kind=&since=&until=&subject=&limit=&from_seq= | auditor | [`EventPage`] |
//! | POST | /v1/audit/checkpoint | operator | → [`CheckpointView`] |
//!
//! Lists of events and certificates come in pages of at most `limit` items
//! ([`DEFAULT_PAGE`] by default, at most [`MAX_PAGE`]); `next` is the
//! cursor of the following page (`from_seq` for events, `after` for
//! certificates), absent on the last one.
//!
//! Errors are `{"error": ApiError}` with the HTTP status of its kind.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Auditor,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Auditor => "auditor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// 400: the request is malformed; the message says what to send instead.
    BadRequest,
    /// 401/403: unknown peer or insufficient role.
    Forbidden,
    /// 404
    NotFound,
    /// 409: refused by policy or state (quorum not met, already revoked…).
    Refused,
    /// 413
    TooLarge,
    /// 503: the signer is down; read-only requests still work.
    Unavailable,
    /// 500
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Refused => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// castellanctl's exit code for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::BadRequest => 2,
            ErrorKind::Forbidden => 77,
            ErrorKind::NotFound => 3,
            ErrorKind::Refused => 1,
            ErrorKind::TooLarge => 2,
            ErrorKind::Unavailable => 69,
            ErrorKind::Internal => 70,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatusView {
    pub version: String,
    pub events: u64,
    pub head_hash: String,
    pub signer_reachable: bool,
    pub signer_backend: Option<String>,
    pub cas: usize,
    pub certificates: usize,
    pub pending_intents: usize,
    pub last_checkpoint: Option<u64>,
    pub actor: String,
    pub role: Role,
    /// Whether the event log accepts writes (false after a failed commit,
    /// until castellan restarts).
    #[serde(default = "yes")]
    pub log_writable: bool,
    /// Why it does not, and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_problem: Option<String>,
    /// The custodian set as last observed from the signer (`None` until
    /// castellan has reached it once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custodians: Option<CustodiansView>,
    /// Set when the event log does not reach, or disagrees with, the last
    /// checkpoint the signer signed (cut short, an older copy, rewritten):
    /// what was found and what to do. Checkpoints are refused meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_problem: Option<String>,
}

fn yes() -> bool {
    true
}

/// Open a ceremony. `purpose` is root | intermediate | custodians.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OpenCeremony {
    pub purpose: String,
    pub ca_id: Option<String>,
    pub parent: Option<String>,
    /// e.g. "CN=Example Root CA,O=Example"
    pub subject: Option<String>,
    pub days: Option<u32>,
    pub algorithm: Option<String>,
    pub path_len: Option<u8>,
    /// For purpose custodians: (name, ed25519 public key hex) and threshold.
    #[serde(default)]
    pub custodians: Vec<(String, String)>,
    pub threshold: Option<u8>,
    /// For purpose rotate: the id of the successor CA (`ca_id` is the CA
    /// being rotated).
    #[serde(default)]
    pub new_ca_id: Option<String>,
    /// For purpose cross-sign: the CA certificate to certify (PEM); `parent`
    /// is the issuing CA.
    #[serde(default)]
    pub certificate_pem: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApproveCeremony {
    /// Ed25519 public key, hex.
    pub custodian: String,
    /// Ed25519 signature over the ceremony statement, hex.
    pub signature: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ApprovalView {
    pub custodian: String,
    pub name: String,
    pub actor: String,
    pub time: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CeremonyView {
    pub id: String,
    pub purpose: String,
    pub description: String,
    /// The exact operation (castellan_proto::CeremonyOp as JSON): custodians
    /// sign the statement computed from it, never a digest sent to them.
    pub op: serde_json::Value,
    pub parameters_sha256: String,
    pub opened_by: String,
    pub opened_at: String,
    pub approvals: Vec<ApprovalView>,
    pub approved: usize,
    pub threshold: usize,
    pub state: String,
    pub last_error: Option<String>,
    /// The CA made by the ceremony, once executed.
    pub ca: Option<CaView>,
    /// Which signer approvals are for (SHA-256 of its audit key, hex), and
    /// under which custodian set (SHA-256, hex): both are part of the
    /// statement custodians sign. `None` until castellan knows the signer.
    #[serde(default)]
    pub signer_id: Option<String>,
    #[serde(default)]
    pub custodians_sha256: Option<String>,
    /// The certificate the ceremony made, once executed: the new CA's
    /// (root, intermediate, rotate) or the cross-certificate (cross-sign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CeremonyCertificateView>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CeremonyCertificateView {
    /// Serial number in hex.
    pub serial: String,
    /// The CA that signed it (the CA itself for a root).
    pub issuer: String,
    pub certificate_pem: String,
}

/// The custodian set the signer enforces.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CustodiansView {
    /// Approvals a ceremony needs.
    pub threshold: u8,
    pub members: Vec<CustodianView>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CustodianView {
    pub name: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CaView {
    pub id: String,
    pub parent: Option<String>,
    pub algorithm: String,
    pub status: String,
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    pub certificate_pem: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// PKCS#10 CSR in PEM.
    pub csr_pem: String,
    pub profile: String,
    /// Defaults to the profile's default validity.
    pub ttl_days: Option<u32>,
    /// Defaults to the configured default issuer (or the only active CA).
    pub issuer: Option<String>,
    /// Who or what the certificate is for (defaults to the first SAN or CN).
    pub identity: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IssuedView {
    pub serial: String,
    pub issuer: String,
    pub certificate_pem: String,
    /// Issuer chain up to (not including) the root, PEM.
    pub chain_pem: String,
    pub not_after: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// RFC 5280 reason name, e.g. keyCompromise, superseded.
    pub reason: String,
    /// RFC 3339 time since when the key is suspect (optional).
    pub invalidity_date: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RevocationView {
    pub reason: String,
    pub revoked_at: String,
    pub invalidity_date: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CertView {
    pub serial: String,
    pub issuer: String,
    pub profile: String,
    pub identity: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// issued | revoked | possibly-issued
    pub state: String,
    pub revocation: Option<RevocationView>,
    pub certificate_pem: Option<String>,
    /// What OCSP answers for it now (absent where revocation is not
    /// served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp: Option<String>,
    /// Whether the CA's current CRL lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<String>,
}

/// The current CRL of a CA.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CrlView {
    pub issuer: String,
    pub crl_number: u64,
    pub this_update: String,
    pub next_update: String,
    /// Revoked certificates listed.
    pub entries: u64,
    /// Of the DER.
    pub sha256: String,
    /// Set while emergency mode is on: every CRL is published with this
    /// validity.
    pub emergency_validity_secs: Option<i64>,
    /// Where relying parties fetch it (the CRL distribution point).
    pub url: String,
    /// Sequence number of the `CrlPublished` event.
    pub seq: u64,
}

/// `POST /v1/crls/{issuer}/publish`: publish a new CRL now.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublishCrl {
    /// Emergency mode: nextUpdate this many seconds after thisUpdate (60 s
    /// to 7 days), kept for every later CRL until `end_emergency`.
    #[serde(default)]
    pub emergency_next_update_secs: Option<i64>,
    /// End emergency mode (publish with the configured validity).
    #[serde(default)]
    pub end_emergency: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VerifyView {
    pub ok: bool,
    pub events: u64,
    pub head_hash: String,
    pub first_bad_sequence: Option<u64>,
    pub problem: Option<String>,
    pub checkpoints_ok: u64,
    pub checkpoints_bad: Vec<(u64, String)>,
    pub last_checkpoint: Option<u64>,
    /// Audit keys recorded in the log that are not the signer's:
    /// (sequence number of the `signer-keys-observed` event, why).
    #[serde(default)]
    pub foreign_audit_keys: Vec<(u64, String)>,
    /// What the checkpoint signatures were checked against: `signer` (the
    /// audit key the signer reports; every recorded key is it), `file` (an
    /// audit key given to offline verify), or `log-only` (only the keys
    /// recorded in the log itself — not confirmed; `checkpoint_keys_note`
    /// says why).
    #[serde(default = "log_only")]
    pub checkpoint_keys: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_keys_note: Option<String>,
    /// How the log compares with the last checkpoint the signer signed:
    /// `matches` (the log reaches it and agrees), `log-behind` (the log
    /// ends before it: cut short or an older copy), `differs` (the log
    /// holds another history there), `none` (the signer has signed no
    /// checkpoint yet) or `not-checked` (the signer was not asked, or could
    /// not answer; `signer_checkpoint_note` says why). `log-behind` and
    /// `differs` make `ok` false.
    #[serde(default = "not_checked")]
    pub signer_checkpoint: String,
    /// The event sequence number of the signer's last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_checkpoint_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_checkpoint_note: Option<String>,
}

fn log_only() -> String {
    "log-only".into()
}

fn not_checked() -> String {
    "not-checked".into()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    pub seq: u64,
    pub time: String,
    pub actor: String,
    pub kind: String,
    pub subjects: Vec<String>,
    pub hash: String,
    pub payload: serde_json::Value,
}

/// A certificate serial number as an admin pastes it, as the octets of its
/// magnitude without leading zero octets: hex in either case, with or
/// without colons (`openssl x509 -text`), with the `serial=` prefix of
/// `openssl x509 -serial` or a `0x` prefix, with leading zeros, with an odd
/// number of digits. The error says what to give instead.
pub fn parse_serial(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    if t.starts_with("pending:") {
        return Err(format!(
            "{s:?} is an issuance whose result castellan has not recorded (possibly issued), \
             not a certificate: it has no serial yet; castellan settles it with the signer's \
             journal, and `castellanctl cert list --status possibly-issued` lists it until then"
        ));
    }
    let t = t.strip_prefix("serial=").unwrap_or(t);
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let mut digits: String = t
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    let mut v = hex::decode(&digits).map_err(|_| {
        format!(
            "{s:?} is not a serial number: give its hex digits as `castellanctl cert list` or \
             `openssl x509 -noout -serial` show them, e.g. 5f3a09c1d2 (colons and a serial= \
             prefix are fine)"
        )
    })?;
    while v.len() > 1 && v[0] == 0 {
        v.remove(0);
    }
    if v.is_empty() || v.len() > 20 {
        return Err(format!(
            "{s:?} is not a serial number: a serial number has 1 to 20 octets (up to 40 hex \
             digits); copy it from `castellanctl cert list`"
        ));
    }
    Ok(v)
}

/// Page size of event and certificate lists when `limit` is not given.
pub const DEFAULT_PAGE: usize = 1_000;
/// Largest page of event and certificate lists.
pub const MAX_PAGE: usize = 10_000;

/// One page of `GET /v1/audit/log`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<EventView>,
    /// `from_seq` of the next page; absent when no later event matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// One page of `GET /v1/certificates`. Issuances without a result
/// (`possibly-issued`, serial `pending:<request id>`) come on the last page.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CertPage {
    pub certificates: Vec<CertView>,
    /// `after` of the next page (an opaque cursor); absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CheckpointView {
    pub sequence: u64,
    pub head_hash: String,
    pub time: String,
    pub signature: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct CertQuery {
    pub issuer: Option<String>,
    /// issued | revoked | possibly-issued
    pub state: Option<String>,
    pub identity: Option<String>,
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LogQuery {
    pub actor: Option<String>,
    pub kind: Option<String>,
    /// RFC 3339 or unix milliseconds.
    pub since: Option<String>,
    pub until: Option<String>,
    pub subject: Option<String>,
    pub limit: Option<usize>,
    /// First sequence number to consider (the `next` of the previous page).
    #[serde(default)]
    pub from_seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::parse_serial;

    #[test]
    fn serials_are_read_as_openssl_and_admins_write_them() {
        let want = vec![0x07, 0xb8, 0x93];
        for s in [
            "07b893",
            "07B893",
            "7b893",
            "serial=07B893",
            "0x7b893",
            "0X07B893",
            "07:b8:93",
            "00:07:b8:93",
            " 0007b893\n",
        ] {
            assert_eq!(parse_serial(s), Ok(want.clone()), "{s:?}");
        }
        assert_eq!(parse_serial("00"), Ok(vec![0]));
        let e = parse_serial("pending:0a1b").unwrap_err();
        assert!(e.contains("possibly issued"), "{e}");
        for s in ["", "serial=", "zz", "07b8 93g", &"ab".repeat(21)] {
            let e = parse_serial(s).unwrap_err();
            assert!(e.contains("castellanctl cert list"), "{s:?}: {e}");
        }
    }
}
