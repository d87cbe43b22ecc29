//! castellan-proto: the only language spoken between the control daemon
//! (`castellan`) and the key holder (`castellan-signer`).
//!
//! The surface is deliberately closed: one [`Request`] enum and one
//! [`Response`] enum. postcard tags enum variants by their position, so
//! **variants and fields are append-only**: never reorder, remove or change the
//! type of an existing one. The golden encodings in `tests/golden/` fail the
//! build when that rule is broken.
//!
//! Every request is structured. There is no "sign these bytes" request: the
//! signer builds the DER itself from a template and checks it against its own
//! policy before any key is used.
#![forbid(unsafe_code)]

pub mod ceremony;
pub mod frame;
pub mod time;

/// `Vec<u8>` fields that can be large or numerous (CRL DER, CRL serials)
/// go through serde's bytes methods instead of one call per octet. postcard
/// writes a byte string and a sequence of `u8` identically (a varint length,
/// then the octets), so this changes no octet on the wire; the golden
/// encodings check that.
mod octets {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Octets)
    }

    struct Octets;

    impl<'de> Visitor<'de> for Octets {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("octets")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Bounded by what the frame holds, not by the announced size.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

use serde::{Deserialize, Serialize};

pub use ceremony::{CeremonyContext, checkpoint_message, statement, statement_digest};
pub use frame::{FrameError, decode_frame, encode_frame, read_frame, write_frame};

/// Name of a CA inside the signer (`[a-z0-9][a-z0-9._-]{0,62}`).
pub type CaId = String;

/// Whether `id` is a CA id the signer accepts: 1 to 63 characters of
/// `a-z 0-9 - _ .`, starting with a letter or digit (it names files and
/// URL path segments).
pub fn valid_ca_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
        })
}

/// Unix time in seconds (UTC). Certificates, CRLs and OCSP use seconds.
pub type UnixSeconds = i64;

/// Unix time in milliseconds (UTC). The signing journal uses milliseconds so
/// that "what was signed between T1 and T2" can be answered finely.
pub type UnixMillis = i64;

/// Key algorithms the signer can generate and sign with.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA 3072 with PKCS#1 v1.5 and SHA-256 (PKCS#11 tokens that support it).
    Rsa3072,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256 => "ecdsa-p256",
            Algorithm::EcdsaP384 => "ecdsa-p384",
            Algorithm::Rsa3072 => "rsa-3072",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "ecdsa-p256" | "p256" | "p-256" => Some(Algorithm::EcdsaP256),
            "ecdsa-p384" | "p384" | "p-384" => Some(Algorithm::EcdsaP384),
            "rsa-3072" | "rsa3072" => Some(Algorithm::Rsa3072),
            _ => None,
        }
    }
}

/// One attribute of a distinguished name; each becomes its own RDN, in order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum NameAttribute {
    CommonName(String),
    Organization(String),
    OrganizationalUnit(String),
    Country(String),
    Locality(String),
    State(String),
    SerialNumber(String),
    DomainComponent(String),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct DistinguishedName(pub Vec<NameAttribute>);

impl DistinguishedName {
    pub fn common_name(cn: &str) -> Self {
        DistinguishedName(vec![NameAttribute::CommonName(cn.to_string())])
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SubjectAltName {
    Dns(String),
    /// 4 octets (IPv4) or 16 octets (IPv6).
    Ip(Vec<u8>),
    Email(String),
    Uri(String),
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: UnixSeconds,
    pub not_after: UnixSeconds,
}

/// URLs the daemon wants in a certificate (AIA and CRL distribution points).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Urls {
    pub ocsp: Vec<String>,
    pub ca_issuers: Vec<String>,
    pub crl: Vec<String>,
}

/// What the daemon asks the signer to certify for an end entity. The signer
/// chooses the serial, the extensions (from the named profile) and the
/// signature algorithm itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CertificateTemplate {
    pub issuer: CaId,
    pub profile: String,
    pub subject: DistinguishedName,
    pub sans: Vec<SubjectAltName>,
    /// DER SubjectPublicKeyInfo of the subject's key.
    pub spki_der: Vec<u8>,
    pub validity: Validity,
    /// cA=TRUE was asked for. The signer always refuses this on
    /// `IssueCertificate`: CA certificates exist only through a ceremony.
    pub ca: bool,
    pub urls: Urls,
}

/// Parameters of a new CA (root or intermediate).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CaParams {
    pub ca_id: CaId,
    /// `None` for a self-signed root; the issuing CA for an intermediate.
    pub parent: Option<CaId>,
    pub algorithm: Algorithm,
    pub subject: DistinguishedName,
    pub validity: Validity,
    pub path_len: Option<u8>,
    /// AIA / CRL URLs of the parent, put into an intermediate's certificate.
    pub urls: Urls,
}

/// Rotation: a new key and certificate for a CA; the old one stops issuing
/// but keeps signing CRLs and OCSP for what it issued.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RotateParams {
    pub ca_id: CaId,
    pub new_ca_id: CaId,
    pub algorithm: Algorithm,
    pub subject: DistinguishedName,
    pub validity: Validity,
    pub path_len: Option<u8>,
    pub urls: Urls,
}

/// Cross-signature: `issuer` certifies the subject name and key of another
/// CA certificate.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CrossSignParams {
    pub issuer: CaId,
    pub subject_certificate_der: Vec<u8>,
    pub validity: Validity,
    pub path_len: Option<u8>,
    pub urls: Urls,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Custodian {
    pub name: String,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CustodianSet {
    /// m: approvals needed.
    pub threshold: u8,
    /// the n custodians.
    pub custodians: Vec<Custodian>,
}

/// Everything that needs an m-of-n custodian quorum. The quorum statement
/// binds the exact postcard encoding of this value.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CeremonyOp {
    CreateRoot(CaParams),
    CreateIntermediate(CaParams),
    Rotate(RotateParams),
    CrossSign(CrossSignParams),
    ChangeCustodians(CustodianSet),
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    Root,
    Intermediate,
    Rotate,
    CrossSign,
    Custodians,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Root => "root",
            Purpose::Intermediate => "intermediate",
            Purpose::Rotate => "rotate",
            Purpose::CrossSign => "cross-sign",
            Purpose::Custodians => "custodians",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        match s {
            "root" => Some(Purpose::Root),
            "intermediate" => Some(Purpose::Intermediate),
            "rotate" => Some(Purpose::Rotate),
            "cross-sign" => Some(Purpose::CrossSign),
            "custodians" => Some(Purpose::Custodians),
            _ => None,
        }
    }

    pub fn tag(self) -> u8 {
        match self {
            Purpose::Root => 1,
            Purpose::Intermediate => 2,
            Purpose::Rotate => 3,
            Purpose::CrossSign => 4,
            Purpose::Custodians => 5,
        }
    }
}

impl CeremonyOp {
    pub fn purpose(&self) -> Purpose {
        match self {
            CeremonyOp::CreateRoot(_) => Purpose::Root,
            CeremonyOp::CreateIntermediate(_) => Purpose::Intermediate,
            CeremonyOp::Rotate(_) => Purpose::Rotate,
            CeremonyOp::CrossSign(_) => Purpose::CrossSign,
            CeremonyOp::ChangeCustodians(_) => Purpose::Custodians,
        }
    }
}

/// 128-bit ceremony identifier, chosen at random when a ceremony is opened.
pub type CeremonyId = [u8; 16];

/// The daemon's id of an issuance intent (the request id it recorded before
/// asking for the signature).
pub type IntentId = [u8; 16];

/// The most intents one [`Request::FindIntents`] may ask about.
pub const MAX_INTENT_QUERY: usize = 4096;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The custodian's Ed25519 public key.
    pub custodian: [u8; 32],
    /// Ed25519 signature (64 octets) over [`statement`].
    pub signature: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QuorumProof {
    pub ceremony_id: CeremonyId,
    pub approvals: Vec<Approval>,
}

/// RFC 5280 CRLReason values (7 is unused by the RFC).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    RemoveFromCrl,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl RevocationReason {
    /// The CRLReason enumerated value.
    pub fn code(self) -> u8 {
        match self {
            RevocationReason::Unspecified => 0,
            RevocationReason::KeyCompromise => 1,
            RevocationReason::CaCompromise => 2,
            RevocationReason::AffiliationChanged => 3,
            RevocationReason::Superseded => 4,
            RevocationReason::CessationOfOperation => 5,
            RevocationReason::CertificateHold => 6,
            RevocationReason::RemoveFromCrl => 8,
            RevocationReason::PrivilegeWithdrawn => 9,
            RevocationReason::AaCompromise => 10,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::CertificateHold => "certificateHold",
            RevocationReason::RemoveFromCrl => "removeFromCRL",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            RevocationReason::AaCompromise => "aACompromise",
        }
    }

    pub const ALL: [RevocationReason; 10] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// Accepts the RFC names case-insensitively and with `-`/`_`.
    pub fn parse(s: &str) -> Option<RevocationReason> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str().to_lowercase() == norm)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// Serial number, big-endian unsigned magnitude as in the certificate.
    #[serde(with = "octets")]
    pub serial: Vec<u8>,
    pub revoked_at: UnixSeconds,
    pub reason: Option<RevocationReason>,
    pub invalidity_date: Option<UnixSeconds>,
}

/// The entries of a CRL request or chunk, in order. On the wire exactly a
/// `Vec<CrlEntry>` (a length, then the entries); a sender may build it as
/// a range of a list it shares ([`CrlEntryList::shared`]), so staging a
/// million entries copies none of them before they are encoded.
#[derive(Clone)]
pub struct CrlEntryList(EntryListRepr);

#[derive(Clone)]
enum EntryListRepr {
    Owned(Vec<CrlEntry>),
    Shared {
        all: std::sync::Arc<Vec<CrlEntry>>,
        from: usize,
        to: usize,
    },
}

impl CrlEntryList {
    /// `all[range]`, without copying; a range reaching beyond `all` is cut
    /// at its end.
    pub fn shared(all: std::sync::Arc<Vec<CrlEntry>>, range: std::ops::Range<usize>) -> Self {
        let to = range.end.min(all.len());
        let from = range.start.min(to);
        CrlEntryList(EntryListRepr::Shared { all, from, to })
    }
}

impl std::ops::Deref for CrlEntryList {
    type Target = [CrlEntry];

    fn deref(&self) -> &[CrlEntry] {
        match &self.0 {
            EntryListRepr::Owned(v) => v,
            EntryListRepr::Shared { all, from, to } => &all[*from..*to],
        }
    }
}

impl From<Vec<CrlEntry>> for CrlEntryList {
    fn from(v: Vec<CrlEntry>) -> Self {
        CrlEntryList(EntryListRepr::Owned(v))
    }
}

impl PartialEq for CrlEntryList {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for CrlEntryList {}

impl std::fmt::Debug for CrlEntryList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for CrlEntryList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for CrlEntryList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<CrlEntry>::deserialize(d).map(CrlEntryList::from)
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CrlRequest {
    pub issuer: CaId,
    /// Must be above the last CRL number the signer signed for this issuer.
    pub crl_number: u64,
    pub this_update: UnixSeconds,
    pub next_update: UnixSeconds,
    pub entries: CrlEntryList,
}

/// Most entries one CRL may have when staged in chunks
/// ([`Request::StageCrlEntries`] plus the final [`Request::SignStagedCrl`]).
pub const MAX_STAGED_CRL_ENTRIES: u64 = 20_000_000;

/// Largest CRL DER answered inline as [`Response::Crl`]; a larger one is
/// answered with [`Response::CrlStored`] and read back with
/// [`Request::ReadCrl`]. Leaves room for the frame's id, tags and lengths.
pub const MAX_INLINE_CRL: usize = frame::MAX_PAYLOAD as usize - 64 * 1024;

/// Most octets one [`Request::ReadCrl`] may ask for.
pub const MAX_CRL_PART: u32 = 8 * 1024 * 1024;

/// Most entries per chunk of a staged CRL (see [`crl_chunks`]).
pub const CRL_CHUNK_ENTRIES: usize = 200_000;

/// Most octets of encoded entries per chunk of a staged CRL, half of
/// [`frame::MAX_PAYLOAD`] (see [`crl_chunks`]).
pub const CRL_CHUNK_OCTETS: usize = frame::MAX_PAYLOAD as usize / 2;

/// Octets of a varint of `v` in postcard.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros()).div_ceil(7) as usize
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Octets of an entry's postcard encoding: the serial with its length, the
/// revocation time (a zigzag varint), the reason and the invalidity date
/// with their option tags (a reason's variant index is one octet).
pub fn crl_entry_encoded_len(e: &CrlEntry) -> usize {
    varint_len(e.serial.len() as u64)
        + e.serial.len()
        + varint_len(zigzag(e.revoked_at))
        + if e.reason.is_some() { 2 } else { 1 }
        + 1
        + e.invalidity_date.map_or(0, |t| varint_len(zigzag(t)))
}

/// Splits a CRL's entries, in order, into chunks of at most
/// [`CRL_CHUNK_ENTRIES`] entries and [`CRL_CHUNK_OCTETS`] of encoded entries
/// each, so every chunk's frame stays well under [`frame::MAX_PAYLOAD`] (an
/// entry whose serial alone is larger than that gets a chunk of its own,
/// which the signer refuses anyway). Returns at least one chunk, possibly empty:
/// one chunk means the CRL fits one `SignCrl` request.
pub fn crl_chunks(entries: &[CrlEntry]) -> Vec<&[CrlEntry]> {
    let mut out = Vec::new();
    let mut rest = entries;
    loop {
        let (chunk, after) = rest.split_at(crl_chunk_len(rest));
        out.push(chunk);
        if after.is_empty() {
            return out;
        }
        rest = after;
    }
}

/// How many of `entries` the first of their [`crl_chunks`] holds (0 only
/// when there are none): lets a sender cut the next chunk only when it is
/// about to encode it.
pub fn crl_chunk_len(entries: &[CrlEntry]) -> usize {
    let mut octets = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let bound = crl_entry_encoded_len(e);
        if i > 0 && (i >= CRL_CHUNK_ENTRIES || octets.saturating_add(bound) > CRL_CHUNK_OCTETS) {
            return i;
        }
        octets = octets.saturating_add(bound);
    }
    entries.len()
}

/// One chunk of a large CRL's entries, for [`Request::StageCrlEntries`].
///
/// Large CRLs cannot travel in one frame (see [`frame::MAX_PAYLOAD`]): the
/// daemon stages their entries in chunks, in order, then sends the rest with
/// [`Request::SignStagedCrl`]. The signer keeps one staging area per issuer,
/// in memory; it is lost when the signer restarts.
///
/// Why chunks rather than shards of the CRL: one full CRL per issuer keeps
/// one CRL-number sequence and needs no issuing distribution point (which
/// NSS refuses), and every certificate keeps one CRL URL; the frame bound
/// holds (a chunk is at most half a frame, see [`crl_chunks`]) while the
/// signer still builds and checks the whole CRL it signs, writing each
/// entry's DER as its chunk arrives. Figures: `signer/benches/crl.rs`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CrlChunk {
    pub issuer: CaId,
    /// The number of the CRL being staged; must be above the last CRL
    /// number the signer signed for this issuer.
    pub crl_number: u64,
    /// How many entries of this CRL the sender staged before this chunk.
    /// 0 starts the CRL afresh and discards whatever the issuer had staged;
    /// any other value must equal what the signer holds for this
    /// (issuer, CRL number), so a lost, repeated or interleaved chunk is
    /// refused instead of signed.
    pub offset: u64,
    pub entries: CrlEntryList,
}

/// The final request of a staged CRL: signs the staged entries followed by
/// `crl.entries`, in order, and ends the staging whatever the outcome.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StagedCrlRequest {
    pub crl: CrlRequest,
    /// How many entries the sender staged for (`crl.issuer`,
    /// `crl.crl_number`); must equal what the signer holds.
    pub staged: u64,
}

/// The hash algorithm of a CertID and how its AlgorithmIdentifier is
/// written: the answer echoes the request's CertID exactly (RFC 6960
/// §4.2.1), and clients send the parameters both ways (OpenSSL NULL, RFC
/// 5754 generators for SHA-2 absent).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertIdHash {
    /// SHA-1, parameters NULL.
    Sha1,
    /// SHA-256, parameters NULL.
    Sha256,
    /// SHA-1, parameters absent.
    Sha1NoParams,
    /// SHA-256, parameters absent.
    Sha256NoParams,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    Revoked {
        at: UnixSeconds,
        reason: Option<RevocationReason>,
    },
    Unknown,
}

/// One SingleResponse. The signer computes the CertID's issuer name and key
/// hashes itself from the issuer it holds, in the algorithm asked.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SingleStatus {
    pub hash: CertIdHash,
    pub serial: Vec<u8>,
    pub status: CertStatus,
    pub this_update: UnixSeconds,
    pub next_update: Option<UnixSeconds>,
}

/// One OCSPResponse to build and sign (one signature).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OcspTemplate {
    pub singles: Vec<SingleStatus>,
    /// RFC 8954 nonce to echo (1..=32 octets).
    pub nonce: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OcspBatch {
    pub issuer: CaId,
    pub produced_at: UnixSeconds,
    pub responses: Vec<OcspTemplate>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ResponderParams {
    pub issuer: CaId,
    pub validity: Validity,
    pub algorithm: Algorithm,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRequest {
    pub sequence: u64,
    pub head_hash: [u8; 32],
    pub time: UnixSeconds,
}

/// `IssueCertificate` for an intent the daemon recorded: the signer journals
/// `intent` with the signature, so that after a crash or a lost answer
/// [`Request::FindIntents`] says exactly which certificate, if any, the
/// intent became.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IntentTemplate {
    pub intent: IntentId,
    pub template: CertificateTemplate,
}

/// Which of these intents were signed, looking at journal records with
/// `time_ms >= since` (1 to [`MAX_INTENT_QUERY`] intents). An intent the
/// answer reports as not signed is closed: a later `IssueCertificateForIntent`
/// for it is refused, so the answer cannot be overtaken by a request that
/// was still on its way.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IntentQuery {
    pub since: UnixMillis,
    pub intents: Vec<IntentId>,
}

/// Which ceremony's outcome is asked for, and the SHA-256 of the
/// parameters the caller recorded for it ([`ceremony::statement_digest`]):
/// the signer answers only when they are the parameters it executed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CeremonyOutcomeQuery {
    pub ceremony_id: CeremonyId,
    pub parameters_sha256: [u8; 32],
}

/// How far a checkpoint's time may differ from the signer's clock when it
/// signs it. The daemon and the signer run on one host and read the same
/// clock, so a larger difference means a backdated (or postdated)
/// checkpoint.
pub const CHECKPOINT_MAX_SKEW_SECS: i64 = 120;

/// The last checkpoint the signer signed (the highest sequence; of several
/// for that sequence, the latest).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LastSignedCheckpoint {
    pub sequence: u64,
    /// SHA-256 of the signed [`checkpoint_message`], as journaled.
    pub message_sha256: [u8; 32],
    /// The checkpoint as signed, when the signer signed it since it last
    /// started; after a restart its journal gives only the digest.
    pub request: Option<CheckpointRequest>,
    /// When the signer journaled it. The checkpoint's own time was within
    /// [`CHECKPOINT_MAX_SKEW_SECS`] of the signer's clock then.
    pub journaled_ms: UnixMillis,
}

/// A journaled certificate signature made for an intent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IntentFound {
    pub intent: IntentId,
    /// The issuing CA (the record's key id).
    pub issuer: CaId,
    pub serial: Vec<u8>,
    pub journal_seq: u64,
    pub time_ms: UnixMillis,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalWindow {
    /// Inclusive lower bound (unix milliseconds).
    pub since: UnixMillis,
    /// Exclusive upper bound (unix milliseconds).
    pub until: UnixMillis,
}

/// The closed set of things the daemon may ask the signer.
/// Append-only: see the crate documentation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    PublicKeys,
    IssueCertificate(CertificateTemplate),
    Ceremony {
        op: CeremonyOp,
        proof: QuorumProof,
    },
    SignCrl(CrlRequest),
    SignOcsp(OcspBatch),
    RotateOcspResponder(ResponderParams),
    SignCheckpoint(CheckpointRequest),
    ExportJournal(JournalWindow),
    /// Appends a chunk of a large CRL's entries to the issuer's staging
    /// area; answered with [`Response::CrlStaged`].
    StageCrlEntries(CrlChunk),
    /// Signs a staged CRL; answered like `SignCrl`.
    SignStagedCrl(StagedCrlRequest),
    /// Reads `length` octets (1 to [`MAX_CRL_PART`], not beyond the end)
    /// at `offset` of the CRL a `SignCrl` or `SignStagedCrl` answered with
    /// [`Response::CrlStored`]; answered with [`Response::CrlPart`]. The
    /// signer holds only the last such CRL per issuer, until it restarts.
    ReadCrl {
        issuer: CaId,
        crl_number: u64,
        offset: u64,
        length: u32,
    },
    /// `IssueCertificate`, journaled with the daemon's intent id; answered
    /// like it.
    IssueCertificateForIntent(IntentTemplate),
    /// Answered with [`Response::IntentsFound`].
    FindIntents(IntentQuery),
    /// What an executed ceremony made, answered with [`Response::Ceremony`]
    /// as the execution was; for a caller that lost that answer (a crash
    /// between the signer's answer and its own record). Signs nothing.
    CeremonyOutcome(CeremonyOutcomeQuery),
    /// The last checkpoint the signer signed, answered with
    /// [`Response::LastCheckpoint`]; for checking that the event log still
    /// reaches it (a log cut short or replaced by an older copy does not).
    /// Signs nothing.
    LastCheckpoint,
}

impl Request {
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::PublicKeys => "public-keys",
            Request::IssueCertificate(_) => "issue-certificate",
            Request::Ceremony { .. } => "ceremony",
            Request::SignCrl(_) => "sign-crl",
            Request::SignOcsp(_) => "sign-ocsp",
            Request::RotateOcspResponder(_) => "rotate-ocsp-responder",
            Request::SignCheckpoint(_) => "sign-checkpoint",
            Request::ExportJournal(_) => "export-journal",
            Request::StageCrlEntries(_) => "stage-crl-entries",
            Request::SignStagedCrl(_) => "sign-staged-crl",
            Request::ReadCrl { .. } => "read-crl",
            Request::IssueCertificateForIntent(_) => "issue-certificate-for-intent",
            Request::FindIntents(_) => "find-intents",
            Request::CeremonyOutcome(_) => "ceremony-outcome",
            Request::LastCheckpoint => "last-checkpoint",
        }
    }
}

/// Whose fault an error is, so each edge can map it once (exit code, HTTP
/// status, OCSP status).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something that does not exist.
    BadRequest,
    /// The signer's policy refuses it.
    Policy,
    /// Not enough valid, distinct custodian approvals.
    QuorumNotMet,
    /// The quorum proof itself is wrong (unknown custodian, duplicate,
    /// signature over other parameters, ceremony already used).
    QuorumInvalid,
    /// The key backend (token, TPM, disk) failed.
    Backend,
    /// A bug or broken invariant inside the signer.
    Internal,
    /// The frame could not be decoded.
    Protocol,
}

/// An error the signer reports. Messages name what was wrong and what to do,
/// and never carry PINs, paths or key handles.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SignerError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for SignerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SignerError {}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaStatus {
    /// Issues certificates, signs CRLs and OCSP.
    Active,
    /// Rotated out: signs CRLs and OCSP for what it issued, issues nothing.
    Retired,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CaInfo {
    pub ca_id: CaId,
    pub parent: Option<CaId>,
    pub algorithm: Algorithm,
    pub status: CaStatus,
    pub certificate_der: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ResponderInfo {
    pub issuer: CaId,
    pub certificate_der: Vec<u8>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PublicKeySet {
    /// DER SubjectPublicKeyInfo of the audit (checkpoint) key.
    pub audit_spki_der: Vec<u8>,
    pub audit_algorithm: Algorithm,
    pub cas: Vec<CaInfo>,
    pub responders: Vec<ResponderInfo>,
    pub custodians: CustodianSet,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    pub version: String,
    pub backend: String,
    pub seccomp: bool,
    pub journal_records: u64,
    pub journal_head: [u8; 32],
    pub ca_count: u32,
    pub custodian_threshold: u8,
    pub custodian_count: u8,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureKind {
    Certificate,
    CaCertificate,
    CrossCertificate,
    ResponderCertificate,
    Crl,
    Ocsp,
    Checkpoint,
    CustodianChange,
}

impl SignatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureKind::Certificate => "certificate",
            SignatureKind::CaCertificate => "ca-certificate",
            SignatureKind::CrossCertificate => "cross-certificate",
            SignatureKind::ResponderCertificate => "responder-certificate",
            SignatureKind::Crl => "crl",
            SignatureKind::Ocsp => "ocsp",
            SignatureKind::Checkpoint => "checkpoint",
            SignatureKind::CustodianChange => "custodian-change",
        }
    }
}

/// What a signature covered, for the journal.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SignedSubject {
    None,
    Serial(Vec<u8>),
    CrlNumber(u64),
    Checkpoint(u64),
}

/// One record of the signer's own journal: one per signature made.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub seq: u64,
    pub time_ms: UnixMillis,
    pub kind: SignatureKind,
    /// Which key signed (CA id, `ocsp:<issuer>`, `audit`).
    pub key_id: String,
    pub subject: SignedSubject,
    /// SHA-256 of the exact to-be-signed bytes.
    pub tbs_sha256: [u8; 32],
    pub ceremony_id: Option<CeremonyId>,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    pub serial: Vec<u8>,
    pub journal_seq: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CeremonyOutcome {
    /// A new CA (root, intermediate or the successor of a rotation).
    Ca(CaInfo),
    CrossCertificate(IssuedCertificate),
    Custodians(CustodianSet),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub request: CheckpointRequest,
    /// DER ECDSA signature over [`checkpoint_message`] with the audit key.
    pub signature: Vec<u8>,
}

/// Answers, one per request. Append-only.
///
/// `SignCrl` and `SignStagedCrl` are answered with `Crl` when the DER is at
/// most [`MAX_INLINE_CRL`] octets, with `CrlStored` otherwise.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Error(SignerError),
    Status(StatusInfo),
    PublicKeys(PublicKeySet),
    Certificate(IssuedCertificate),
    Ceremony(CeremonyOutcome),
    Crl {
        #[serde(with = "octets")]
        der: Vec<u8>,
    },
    Ocsp {
        responses: Vec<Vec<u8>>,
    },
    Responder(ResponderInfo),
    Checkpoint(SignedCheckpoint),
    Journal {
        records: Vec<JournalRecord>,
    },
    /// Entries of a CRL staged so far (the total, this chunk included).
    CrlStaged {
        crl_number: u64,
        staged: u64,
    },
    /// The CRL was signed (and journaled) but its DER is larger than
    /// [`MAX_INLINE_CRL`]: the signer holds it in memory, as the issuer's
    /// last large CRL, to be read with [`Request::ReadCrl`].
    CrlStored {
        crl_number: u64,
        length: u64,
        sha256: [u8; 32],
    },
    CrlPart {
        #[serde(with = "octets")]
        bytes: Vec<u8>,
    },
    /// Answer to [`Request::FindIntents`]: the intents found, in journal
    /// order, and those still being signed (ask again later). Any other
    /// intent asked about was not signed since `since`, and never will be:
    /// the signer refuses to sign it from now on.
    IntentsFound {
        found: Vec<IntentFound>,
        in_progress: Vec<IntentId>,
    },
    /// Answer to [`Request::LastCheckpoint`]: `None` when the signer never
    /// signed a checkpoint.
    LastCheckpoint(Option<LastSignedCheckpoint>),
}

/// A request as sent on the wire: the id is echoed in the response so a
/// client may pipeline several requests on one connection.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame {
    pub id: u64,
    pub response: Response,
}
