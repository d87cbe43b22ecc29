//! Revocation serving: the delegated OCSP responders, the pre-signed OCSP
//! cache, the full CRL of every CA, and the publish directory.
//!
//! **Pre-signed OCSP.** Every certificate that has not expired has a current
//! signed answer for its SHA-1 CertID (what browsers and most TLS stacks
//! send) in [`OcspCache`], re-signed when half of its validity has passed
//! or when the responder rotates. Each entry carries the event-log position
//! its status was read at, and an entry only ever replaces one read at the
//! same or an earlier position: an answer can never be older than the
//! revocation state it replaces. A revocation first puts a tombstone at its
//! own position (nothing older can be served from then on), then signs the
//! `revoked` answers, and only then is acknowledged.
//!
//! Answers with a nonce, several CertIDs, or a CertID not cached are signed
//! on demand (and single SHA-1/SHA-256 ones are kept, `unknown` ones too:
//! an issuance drops the cached `unknown` of its serial, and an `unknown`
//! read before an issuance is not kept). On-demand signing is bounded by
//! `http.ocsp_sign_rate` signatures per second: over it, a request with a
//! nonce gets the pre-signed answer without the nonce (RFC 5019; RFC 8954
//! §2.1) and one the cache cannot answer gets tryLater.
//!
//! **CRLs.** One full CRL per CA (no IssuingDistributionPoint: NSS refuses a
//! CRL that carries one and fails the whole chain). A revocation marks its
//! issuer dirty; the CRL task waits `crl.coalesce_ms` for more, then
//! publishes one CRL for all of them. A CRL is also published when half of
//! its validity has passed, and at once by `castellanctl crl emergency`
//! (which keeps a short validity until ended). The CRL number comes from the
//! log (`CrlPublished`) and the signer refuses any number not above the last
//! one it signed, so numbers only increase, across restarts too.
//!
//! **Publish directory** (`http.publish_dir`): `crl/{ca}.crl` (DER),
//! `crl/{ca}.pem`, `ca/{ca}.crt` and `ocsp/{ca}/{base64 request}` (the
//! standard base64 of the DER request of one SHA-1 CertID without nonce,
//! its `/` characters being directory separators) — the same bytes the HTTP
//! listener serves for the same paths, written atomically (temporary file,
//! fsync, rename, fsync of the directory).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use castellan_proto::{
    Algorithm, CertIdHash, CertStatus, CrlEntry, OcspBatch, OcspTemplate, Request, Response,
    RevocationReason, SingleStatus, Validity,
};

use super::{Daemon, bad, err, exec_err, now_ms, refused, x509_facts};
use crate::api::{ApiError, CrlView, ErrorKind, PublishCrl};
use crate::events::{Actor, EventPayload};
use crate::ocsp::HashAlg;
use crate::public_http::CachingHeaders;
use crate::signer_pool::{CrlToSign, PoolError};
use crate::store::records::{CaRecord, CertRecord, CrlRecord};
use crate::store::{Decision, ReadView};

// ---------------------------------------------------------------------------
// Answers

/// One OCSP answer: the DER OCSPResponse (successful and signed, or an
/// unsigned error status) and, for a signed one, its HTTP caching headers
/// (thisUpdate, nextUpdate, entity tag), made when it was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspAnswer {
    pub der: Bytes,
    pub caching: Option<Arc<CachingHeaders>>,
}

/// OCSPResponseStatus values (RFC 6960 §4.2.1) used for unsigned errors.
pub const OCSP_MALFORMED: u8 = 1;
pub const OCSP_INTERNAL_ERROR: u8 = 2;
pub const OCSP_TRY_LATER: u8 = 3;
pub const OCSP_UNAUTHORIZED: u8 = 6;

/// `OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED }` with no
/// responseBytes: the whole of an error answer.
pub fn ocsp_error_der(status: u8) -> Vec<u8> {
    vec![0x30, 0x03, 0x0a, 0x01, status]
}

impl OcspAnswer {
    fn error(status: u8) -> OcspAnswer {
        OcspAnswer {
            der: Bytes::from(ocsp_error_der(status)),
            caching: None,
        }
    }
}

fn etag_of(der: &[u8]) -> String {
    format!(
        "\"{}\"",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
    )
}

// ---------------------------------------------------------------------------
// State

/// Serial octets as an OCSP CertID carries them: no leading zero octets.
fn magnitude(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    let m = &serial[start..];
    if m.is_empty() { vec![0] } else { m.to_vec() }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OcspKey {
    issuer: String,
    /// Magnitude (see [`magnitude`]).
    serial: Vec<u8>,
    hash: HashAlg,
}

/// One pre-signed answer, or a tombstone (`der` empty) that only blocks
/// older answers.
#[derive(Debug)]
struct CachedOcsp {
    der: Bytes,
    /// What a GET answer carries besides `der`, made once here rather than
    /// per request; `None` for a tombstone.
    caching: Option<Arc<CachingHeaders>>,
    this_update: i64,
    next_update: i64,
    /// Event-log position (number of events) the status was read at.
    log_pos: u64,
    /// Sequence number of the responder record that signed it.
    responder_seq: u64,
    status: Option<CertStatus>,
}

impl CachedOcsp {
    fn servable(&self, now: i64) -> bool {
        !self.der.is_empty() && now < self.next_update
    }
}

/// A CA's CertID hashes, precomputed.
struct CaKeys {
    ca_id: String,
    sha1: (Vec<u8>, Vec<u8>),
    sha256: (Vec<u8>, Vec<u8>),
}

impl CaKeys {
    fn matches(&self, id: &crate::ocsp::CertId) -> bool {
        let (name, key) = match id.hash.canonical() {
            HashAlg::Sha1 => &self.sha1,
            _ => &self.sha256,
        };
        ct_eq(&id.issuer_name_hash, name) & ct_eq(&id.issuer_key_hash, key)
    }
}

/// Equality without an early exit on the first differing octet.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// The last CRL of a CA, as served.
#[derive(Debug)]
pub struct PublishedCrl {
    pub record: CrlRecord,
    pub der: Bytes,
    /// The PEM form, made once, when first asked for (in the background
    /// right after the CRL is served, so that the publish returns without
    /// waiting for it).
    pem: std::sync::OnceLock<Bytes>,
    pub etag: String,
}

impl PublishedCrl {
    /// The CRL in PEM (RFC 7468 `X509 CRL`).
    pub fn pem(&self) -> Bytes {
        self.pem
            .get_or_init(|| Bytes::from(pem_crl(&self.der)))
            .clone()
    }

    /// The PEM form if it is made already.
    pub fn pem_made(&self) -> Option<Bytes> {
        self.pem.get().cloned()
    }
}

/// An issuer's CRL entries as of a log position (the number of events and
/// the hash of the last one), in the order of the revocation index.
#[derive(Clone)]
struct CrlSource {
    seq: u64,
    hash: [u8; 32],
    entries: Arc<Vec<CrlEntry>>,
}

/// Beyond this many events since an issuer's last CRL, its revocations are
/// read again in full: one scan of the index is cheaper than decoding every
/// event.
const CRL_DELTA_EVENTS: u64 = 100_000;

/// Everything revocation serving keeps in memory.
pub(crate) struct RevocationState {
    ocsp: RwLock<HashMap<OcspKey, Arc<CachedOcsp>>>,
    cas: RwLock<(Instant, Arc<Vec<CaKeys>>)>,
    crls: RwLock<HashMap<String, Arc<PublishedCrl>>>,
    /// Certificates issued since the OCSP task last ran: pre-sign them.
    pending: Mutex<Vec<(String, Vec<u8>)>>,
    crl_dirty: Mutex<BTreeSet<String>>,
    /// Each issuer's CRL entries as of its last CRL: the next CRL reads
    /// only the revocations logged since.
    crl_sources: Mutex<HashMap<String, CrlSource>>,
    /// Held while an issuer's CRL entries are read ([`Daemon::crl_source`]).
    crl_reads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Cache misses waiting to be signed, per issuer.
    misses: Mutex<HashMap<String, MissQueue>>,
    pub(crate) ocsp_wake: tokio::sync::Notify,
    pub(crate) crl_wake: tokio::sync::Notify,
    /// One CRL is produced at a time (the CRL number is read, then used).
    crl_lock: tokio::sync::Mutex<()>,
    /// Serialises writes into the publish directory, so the file left is the
    /// one of the newest entry.
    publish_lock: Mutex<()>,
    /// Published OCSP files whose write or removal failed: retried on every
    /// OCSP tick until the publish directory holds the current entry.
    unpublished: Mutex<Vec<(OcspKey, String)>>,
    /// Counts issuances (and CA changes): an `unknown` status read before
    /// one may be out of date and is not kept.
    issued_epoch: std::sync::atomic::AtomicU64,
    /// Cached `unknown` answers, as of the last OCSP tick.
    unknowns: std::sync::atomic::AtomicUsize,
    /// Tokens for on-demand signing ([`SignBucket`]).
    sign_bucket: Mutex<SignBucket>,
    /// CRL files being written in the background; a stopping daemon waits
    /// for them ([`Daemon::finish_writes`]).
    writes: std::sync::atomic::AtomicUsize,
    /// Set once the start-up pre-signing pass has run.
    warmed: std::sync::atomic::AtomicBool,
    /// A CA was registered or changed: re-read the CAs before the next
    /// OCSP answer.
    cas_stale: std::sync::atomic::AtomicBool,
}

impl RevocationState {
    pub(crate) fn new() -> RevocationState {
        RevocationState {
            ocsp: RwLock::new(HashMap::new()),
            cas: RwLock::new((Instant::now(), Arc::new(Vec::new()))),
            crls: RwLock::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            crl_dirty: Mutex::new(BTreeSet::new()),
            crl_sources: Mutex::new(HashMap::new()),
            crl_reads: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            ocsp_wake: tokio::sync::Notify::new(),
            crl_wake: tokio::sync::Notify::new(),
            crl_lock: tokio::sync::Mutex::new(()),
            publish_lock: Mutex::new(()),
            unpublished: Mutex::new(Vec::new()),
            issued_epoch: std::sync::atomic::AtomicU64::new(0),
            unknowns: std::sync::atomic::AtomicUsize::new(0),
            sign_bucket: Mutex::new(SignBucket {
                tokens: 0.0,
                at: None,
            }),
            writes: std::sync::atomic::AtomicUsize::new(0),
            warmed: std::sync::atomic::AtomicBool::new(false),
            cas_stale: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn get(&self, key: &OcspKey) -> Option<Arc<CachedOcsp>> {
        self.ocsp.read().ok()?.get(key).cloned()
    }

    /// Puts `entry` unless the cache holds one read at a later log position
    /// — for a CertID written with absent parameters, also under the same
    /// CertID with NULL parameters, where a revocation leaves its tombstone.
    /// Returns whether it was put.
    fn put(&self, key: OcspKey, entry: CachedOcsp) -> bool {
        let Ok(mut map) = self.ocsp.write() else {
            return false;
        };
        if let Some(old) = map.get(&key)
            && old.log_pos > entry.log_pos
        {
            return false;
        }
        let canonical = key.hash.canonical();
        if canonical != key.hash
            && let Some(old) = map.get(&OcspKey {
                issuer: key.issuer.clone(),
                serial: key.serial.clone(),
                hash: canonical,
            })
            && old.log_pos > entry.log_pos
        {
            return false;
        }
        map.insert(key, Arc::new(entry));
        true
    }

    pub(crate) fn invalidate_cas(&self) {
        self.cas_stale
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // A new CA certificate may be the serial of a cached `unknown`.
        self.issued_epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut map) = self.ocsp.write() {
            map.retain(|_, e| e.status != Some(CertStatus::Unknown));
        }
    }

    /// A ceremony made or changed a CA: its responder and first CRL are
    /// made now, not at the next tick, since certificates already name their
    /// URLs.
    pub(crate) fn wake_publishers(&self) {
        self.ocsp_wake.notify_one();
        self.crl_wake.notify_one();
    }

    pub(crate) fn note_issued(&self, issuer: &str, serial: &[u8]) {
        self.issued_epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // The serial's cached `unknown` (if someone asked before it was
        // issued) goes now, not when the new answer is signed.
        let m = magnitude(serial);
        if let Ok(mut map) = self.ocsp.write() {
            for hash in HashAlg::ALL {
                let key = OcspKey {
                    issuer: issuer.to_string(),
                    serial: m.clone(),
                    hash,
                };
                if map
                    .get(&key)
                    .is_some_and(|e| e.status == Some(CertStatus::Unknown))
                {
                    map.remove(&key);
                }
            }
        }
        if let Ok(mut p) = self.pending.lock() {
            p.push((issuer.to_string(), serial.to_vec()));
        }
        self.ocsp_wake.notify_one();
    }

    /// Takes one on-demand signature from the bucket of `rate` per second
    /// (holding at most one second's worth); false when it is empty.
    fn take_sign_token(&self, rate: u32) -> bool {
        let Ok(mut b) = self.sign_bucket.lock() else {
            return false;
        };
        let now = Instant::now();
        let rate = f64::from(rate);
        b.tokens = match b.at {
            None => rate,
            Some(at) => (b.tokens + now.duration_since(at).as_secs_f64() * rate).min(rate),
        };
        b.at = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn mark_crl_dirty(&self, issuer: &str) {
        if let Ok(mut d) = self.crl_dirty.lock() {
            d.insert(issuer.to_string());
        }
        self.crl_wake.notify_one();
    }

    pub fn crl(&self, issuer: &str) -> Option<Arc<PublishedCrl>> {
        self.crls.read().ok()?.get(issuer).cloned()
    }

    pub fn cached_entries(&self) -> usize {
        self.ocsp.read().map(|m| m.len()).unwrap_or(0)
    }
}

/// (subject Name DER, subjectPublicKey bits) of a CA certificate: what
/// CertID hashes are computed over.
fn issuer_keys(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = cert.tbs_certificate();
    let name = tbs.subject().to_der().ok()?;
    let key = tbs
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    Some((name, key))
}

fn ca_keys(cas: &[CaRecord]) -> Vec<CaKeys> {
    cas.iter()
        .filter_map(|c| {
            let (name, key) = issuer_keys(&c.certificate_der)?;
            Some(CaKeys {
                ca_id: c.ca_id.clone(),
                sha1: crate::ocsp::issuer_hashes(&name, &key, &HashAlg::Sha1),
                sha256: crate::ocsp::issuer_hashes(&name, &key, &HashAlg::Sha256),
            })
        })
        .collect()
}

/// Whether a signer refusal says the responder is missing or not valid now
/// (the daemon then rotates one in and tries once more).
fn responder_refusal(e: &PoolError) -> bool {
    matches!(e, PoolError::Refused(s) if s.message.contains("responder"))
}

/// Why an OCSP signing round failed, as the OCSP status to answer.
fn failure_status(e: &PoolError) -> u8 {
    match e {
        PoolError::Unavailable(_) | PoolError::Timeout(_) => OCSP_TRY_LATER,
        _ => OCSP_INTERNAL_ERROR,
    }
}

/// One answer signed by [`Daemon::sign_answers`].
struct Signed {
    der: Vec<u8>,
    this_update: i64,
    next_update: i64,
    statuses: Vec<CertStatus>,
}

/// One OCSP request to sign: (serial magnitude, CertID hash) of each
/// CertID, and the nonce to echo.
type Template = (Vec<(Vec<u8>, HashAlg)>, Option<Vec<u8>>);

/// A cache miss waiting for a signer request.
struct Miss {
    request: Template,
    reply: tokio::sync::oneshot::Sender<Result<SignedAt, u8>>,
}

/// The misses of one issuer and how many signing rounds run for them.
#[derive(Default)]
struct MissQueue {
    waiting: Vec<Miss>,
    rounds: usize,
}

/// One answer of a round with the round's log position and responder.
struct SignedAt {
    der: Vec<u8>,
    this_update: i64,
    next_update: i64,
    statuses: Vec<CertStatus>,
    log_pos: u64,
    responder_seq: u64,
    epoch: u64,
}

impl From<SignedAt> for Signed {
    fn from(s: SignedAt) -> Signed {
        Signed {
            der: s.der,
            this_update: s.this_update,
            next_update: s.next_update,
            statuses: s.statuses,
        }
    }
}

/// A token bucket for on-demand signatures.
struct SignBucket {
    tokens: f64,
    at: Option<Instant>,
}

/// Most `unknown` answers kept in the cache (each came from a request for a
/// serial castellan never issued; more are signed but not kept).
const MAX_UNKNOWNS: usize = 100_000;

/// Signing rounds for cache misses running at once per issuer.
const MISS_ROUNDS: usize = 4;
/// Most cache misses signed in one signer request.
const MISS_BATCH: usize = 64;

/// The result of one signing round: the answers, the log position the
/// statuses were read at and the responder that signed.
struct Round {
    answers: Vec<Signed>,
    log_pos: u64,
    responder_seq: u64,
    /// [`RevocationState::issued_epoch`] before the statuses were read.
    epoch: u64,
}

/// The status of `serial` (a DER INTEGER magnitude) under `issuer`.
fn cert_status(view: &dyn ReadView, issuer: &str, serial: &[u8]) -> CertStatus {
    // Serials are stored as the signer drew them (16 octets, possibly with
    // leading zero octets that DER drops).
    let record = view.cert(serial).or_else(|| {
        (serial.len() < 16).then(|| {
            let mut padded = vec![0u8; 16 - serial.len()];
            padded.extend_from_slice(serial);
            view.cert(&padded)
        })?
    });
    match record {
        Some(c) if c.issuer == issuer => match &c.revocation {
            // `unspecified` is never sent: RFC 5280 §5.3.1 (the CRL omits
            // it too).
            Some(r) => CertStatus::Revoked {
                at: r.revoked_at,
                reason: (r.reason != RevocationReason::Unspecified).then_some(r.reason),
            },
            None => CertStatus::Good,
        },
        Some(_) => CertStatus::Unknown,
        // A CA certificate (an intermediate, a cross-signature) is not in
        // the certificates table: good if a CA castellan holds has this
        // parent and serial. (CA revocation goes through the CRL, not here.)
        None if view.cas().iter().any(|ca| {
            ca.parent.as_deref() == Some(issuer)
                && cert_serial(&ca.certificate_der).is_some_and(|s| magnitude(&s) == serial)
        }) =>
        {
            CertStatus::Good
        }
        None => CertStatus::Unknown,
    }
}

/// The serial number octets of a certificate.
pub(crate) fn cert_serial(der: &[u8]) -> Option<Vec<u8>> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate().serial_number().as_bytes().to_vec())
}

/// What a status says, in words.
fn status_words(s: &CertStatus) -> String {
    match s {
        CertStatus::Good => "good".into(),
        CertStatus::Unknown => "unknown".into(),
        CertStatus::Revoked { at, reason } => format!(
            "revoked at {} ({})",
            castellan_proto::time::rfc3339(*at),
            reason.map_or("no reason", |r| r.as_str())
        ),
    }
}

// ---------------------------------------------------------------------------
// DER of the canonical GET request

fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = (n as u64).to_be_bytes();
        let skip = bytes.iter().position(|b| *b != 0).unwrap_or(7);
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    out.push(tag);
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

/// The DER OCSPRequest a client sends for one SHA-1 CertID without nonce
/// (sha1 AlgorithmIdentifier with NULL parameters, as OpenSSL and NSS
/// encode it): its base64 is the GET path of the published answer.
fn canonical_request(keys: &CaKeys, serial: &[u8]) -> Vec<u8> {
    const SHA1_ALG: [u8; 11] = [
        0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00,
    ];
    let mut int = serial.to_vec();
    if int.first().is_some_and(|b| b & 0x80 != 0) {
        int.insert(0, 0);
    }
    let mut cert_id = SHA1_ALG.to_vec();
    cert_id.extend(der_tlv(0x04, &keys.sha1.0));
    cert_id.extend(der_tlv(0x04, &keys.sha1.1));
    cert_id.extend(der_tlv(0x02, &int));
    let request = der_tlv(0x30, &der_tlv(0x30, &cert_id));
    let list = der_tlv(0x30, &request);
    der_tlv(0x30, &der_tlv(0x30, &list))
}

/// `ocsp/{ca}/{standard base64}` of the canonical request.
fn published_ocsp_path(keys: &CaKeys, serial: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(canonical_request(keys, serial));
    format!("ocsp/{}/{b64}", keys.ca_id)
}

// ---------------------------------------------------------------------------
// Publish directory

/// Writes `bytes` to `dir/rel` atomically: temporary file, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_atomically(dir: &Path, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
    let parent = write_renamed(dir, rel, bytes)?;
    std::fs::File::open(&parent)?.sync_all()
}

/// Temporary file, fsync, rename; returns the directory to fsync.
fn write_renamed(dir: &Path, rel: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join(rel);
    let parent = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.to_path_buf());
    std::fs::create_dir_all(&parent)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        // A partial temporary would hold on to space a full disk lacks (and
        // stay for good if its answer is never published again).
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    Ok(parent)
}

fn pem_crl(der: &[u8]) -> Vec<u8> {
    crate::pem::encode_bytes("X509 CRL", der)
}

// ---------------------------------------------------------------------------
// The daemon's side

/// How [`Daemon::publish_crl`] was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlMode {
    /// After revocations or when due; keeps emergency mode if it is on.
    Regular,
    /// Publish now with this validity (seconds) and keep it until ended.
    Emergency(i64),
    /// Publish now with the configured validity; emergency mode ends.
    EndEmergency,
}

/// The OCSP task's period.
const OCSP_TICK: Duration = Duration::from_secs(2);
/// The CRL task's period (due CRLs, missing CRLs).
const CRL_TICK: Duration = Duration::from_secs(5);
/// Answers per signer request when pre-signing.
const PRESIGN_BATCH: usize = 256;
/// Pre-signing requests in flight at once.
const PRESIGN_PARALLEL: usize = 4;
/// How often an OCSP request for an issuer castellan does not know may make
/// it re-read the CAs (a new CA is served within this time at most).
const CA_REFRESH: Duration = Duration::from_secs(1);

impl Daemon {
    /// Whether this daemon serves revocation at all: a public listener or a
    /// publish directory. (An offline root host with neither signs no CRLs
    /// and no responders unless asked.)
    pub fn serves_revocation(&self) -> bool {
        let c = self.config();
        c.http.enabled || c.http.publish_dir.is_some()
    }

    fn publish_dir(&self) -> Option<PathBuf> {
        self.config().http.publish_dir.clone()
    }

    /// The CAs' CertID hashes; re-read from the store when `refresh` and
    /// the copy is older than [`CA_REFRESH`].
    fn ca_index(&self, refresh: bool) -> Arc<Vec<CaKeys>> {
        // A plain load first: the swap writes a shared cache line, which
        // every OCSP request would otherwise contend on.
        if self
            .rev
            .cas_stale
            .load(std::sync::atomic::Ordering::Acquire)
            && self
                .rev
                .cas_stale
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return self.reload_ca_index();
        }
        if let Ok(g) = self.rev.cas.read()
            && (!refresh || g.0.elapsed() < CA_REFRESH)
            && !(refresh && g.1.is_empty())
        {
            return Arc::clone(&g.1);
        }
        self.reload_ca_index()
    }

    fn reload_ca_index(&self) -> Arc<Vec<CaKeys>> {
        let cas = match self.store.read() {
            Ok(v) => v.cas(),
            Err(e) => {
                tracing::warn!("OCSP: reading the CAs: {e}");
                return self
                    .rev
                    .cas
                    .read()
                    .map(|g| Arc::clone(&g.1))
                    .unwrap_or_default();
            }
        };
        let keys = Arc::new(ca_keys(&cas));
        if let Ok(mut g) = self.rev.cas.write() {
            *g = (Instant::now(), Arc::clone(&keys));
        }
        keys
    }

    // -- responders ---------------------------------------------------------

    /// Every CA (active or retired) gets a delegated OCSP responder valid
    /// for at least a third of its lifetime (`http.responder_validity_secs`):
    /// one is rotated in when there is none or less than that remains. Runs
    /// at start-up and from the OCSP task; no operator step.
    ///
    /// With `http.enabled = false` (an offline root host, nothing serves
    /// OCSP) nothing is rotated: the CA keys sign no responder certificates
    /// that no one would use.
    pub async fn ensure_responders(&self) -> Result<(), ApiError> {
        if !self.config().http.enabled {
            return Ok(());
        }
        let cas = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
            .cas();
        let mut first_error = None;
        for ca in cas {
            if let Err(e) = self.rotate_responder_if_needed(&ca.ca_id, None).await {
                tracing::warn!(ca = %ca.ca_id, "OCSP responder rotation: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Rotates the responder of `ca_id` when it is missing or due, or —
    /// with `stale_seq` — when the record with that sequence number is still
    /// the current one (the signer refused it).
    async fn rotate_responder_if_needed(
        &self,
        ca_id: &str,
        stale_seq: Option<u64>,
    ) -> Result<(), ApiError> {
        let _guard = self.responder_lock.lock().await;
        let view = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let Some(ca) = view.ca(ca_id) else {
            return Err(bad(format!("no CA {ca_id:?}")));
        };
        let now = now_ms() / 1000;
        let current = view.responder(ca_id);
        drop(view);
        let (ca_nb, ca_na) = x509_facts(&ca.certificate_der)
            .map(|(_, a, b)| (a, b))
            .ok_or_else(|| err(ErrorKind::Internal, "the CA certificate does not parse"))?;
        if ca_na <= now {
            // An expired CA gets no new responder; its answers stay as
            // they are until they expire.
            return Ok(());
        }
        let secs = i64::from(self.config().http.responder_validity_secs);
        let due = match &current {
            None => true,
            Some(r) if stale_seq == Some(r.seq) => true,
            // A third of the configured lifetime left (unless the CA itself
            // ends first: a new responder would end at the same time).
            Some(r) => (r.not_after - now < secs / 3 && r.not_after < ca_na) || now < r.not_before,
        };
        if !due {
            return Ok(());
        }
        let not_before = (now - 60).max(ca_nb);
        // The lifetime, notAfter itself included (RFC 5280 4.1.2.5), is
        // at most the configured one: the signer holds responders to it.
        let not_after = (not_before + secs - 1).min(ca_na);
        if not_after <= now + 10 {
            return Err(refused(format!(
                "CA {ca_id:?} expires too soon for an OCSP responder"
            )));
        }
        let algorithm = match ca.algorithm {
            Algorithm::EcdsaP384 => Algorithm::EcdsaP384,
            _ => Algorithm::EcdsaP256,
        };
        let Response::Responder(info) = self
            .signer(Request::RotateOcspResponder(
                castellan_proto::ResponderParams {
                    issuer: ca_id.to_string(),
                    validity: Validity {
                        not_before,
                        not_after,
                    },
                    algorithm,
                },
            ))
            .await?
        else {
            return Err(err(
                ErrorKind::Internal,
                "unexpected answer to RotateOcspResponder",
            ));
        };
        self.store
            .execute(Actor::System, move |_| Decision::Commit {
                events: vec![EventPayload::ResponderRotated {
                    issuer: info.issuer,
                    certificate_der: info.certificate_der,
                }],
                output: (),
            })
            .await
            .map_err(exec_err)?;
        tracing::info!(ca = %ca_id, not_after, "OCSP responder rotated");
        // Every answer signed by the old responder is re-signed now.
        self.rev.ocsp_wake.notify_one();
        Ok(())
    }

    // -- signing ------------------------------------------------------------

    /// Signs one OCSP answer per element of `requests` (each a list of
    /// (serial magnitude, CertID hash) and a nonce to echo), with the
    /// statuses as of now, in one signer request. Rotates the responder
    /// once if the signer refuses it.
    async fn sign_answers(&self, issuer: &str, requests: &[Template]) -> Result<Round, PoolError> {
        let mut rotated = false;
        loop {
            let epoch = self
                .rev
                .issued_epoch
                .load(std::sync::atomic::Ordering::SeqCst);
            let view = self
                .store
                .read()
                .map_err(|e| PoolError::Unavailable(format!("reading the store: {e}")))?;
            let log_pos = view.head().0;
            let responder = view.responder(issuer);
            let now = now_ms() / 1000;
            let validity = i64::from(self.config().http.ocsp_validity_secs);
            // thisUpdate a little in the past for relying parties whose
            // clocks are behind; at most a quarter of the validity, so that
            // a short-lived answer is not past its half-life when signed.
            let this_update = now - (validity / 4).min(60);
            let mut next_update = this_update + validity;
            if let Some(r) = &responder
                && r.not_after > now
            {
                // An answer is never valid longer than the certificate that
                // verifies it.
                next_update = next_update.min(r.not_after);
            }
            // A revoked answer's thisUpdate is not before its revocation
            // time (RFC 6960 §4.2.2.1); it stays before nextUpdate, as a
            // revocation time is never after now.
            let single_update = |status: &CertStatus| match status {
                CertStatus::Revoked { at, .. } => this_update.max((*at).min(now)),
                _ => this_update,
            };
            let templates: Vec<OcspTemplate> = requests
                .iter()
                .map(|(singles, nonce)| OcspTemplate {
                    singles: singles
                        .iter()
                        .map(|(serial, hash)| {
                            let status = cert_status(&view, issuer, serial);
                            SingleStatus {
                                hash: CertIdHash::from(*hash),
                                serial: serial.clone(),
                                this_update: single_update(&status),
                                status,
                                next_update: Some(next_update),
                            }
                        })
                        .collect(),
                    nonce: nonce.clone(),
                })
                .collect();
            drop(view);
            // Per answer: its statuses, and the earliest thisUpdate of its
            // singles (the only one of a single-CertID answer).
            let statuses: Vec<(Vec<CertStatus>, i64)> = templates
                .iter()
                .map(|t| {
                    let first = t.singles.iter().map(|s| s.this_update).min();
                    (
                        t.singles.iter().map(|s| s.status).collect(),
                        first.unwrap_or(this_update),
                    )
                })
                .collect();
            let batch = OcspBatch {
                issuer: issuer.to_string(),
                produced_at: now,
                responses: templates,
            };
            let result = self.pool.call(Request::SignOcsp(batch)).await;
            match result {
                Ok(Response::Ocsp { responses }) if responses.len() == statuses.len() => {
                    return Ok(Round {
                        answers: responses
                            .into_iter()
                            .zip(statuses)
                            .map(|(der, (statuses, this_update))| Signed {
                                der,
                                this_update,
                                next_update,
                                statuses,
                            })
                            .collect(),
                        log_pos,
                        responder_seq: responder.map_or(0, |r| r.seq),
                        epoch,
                    });
                }
                Ok(_) => {
                    return Err(PoolError::Protocol(
                        "unexpected answer to SignOcsp".to_string(),
                    ));
                }
                Err(e) if !rotated && responder_refusal(&e) => {
                    tracing::info!(ca = %issuer, "OCSP: the signer refused the responder ({e}); rotating");
                    rotated = true;
                    if let Err(e) = self
                        .rotate_responder_if_needed(issuer, responder.map(|r| r.seq))
                        .await
                    {
                        tracing::warn!(ca = %issuer, "OCSP responder rotation: {e}");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Keeps the single-CertID answers of a round in the cache (statuses
    /// other than `unknown`) and publishes the SHA-1 ones. An error says
    /// which published files could not be written (they are retried on
    /// every OCSP tick).
    async fn keep(
        &self,
        issuer: &str,
        keys: &[(Vec<u8>, HashAlg)],
        round: Round,
    ) -> Result<(), String> {
        let mut published = Vec::new();
        let index = self.ca_index(false);
        let ca = index.iter().find(|k| k.ca_id == issuer);
        let mut caching: Option<Arc<CachingHeaders>> = None;
        for ((serial, hash), signed) in keys.iter().zip(round.answers) {
            let Some(status) = signed.statuses.first().copied() else {
                continue;
            };
            let unknown = status == CertStatus::Unknown;
            // An `unknown` is kept only if no issuance happened since its
            // status was read, and while there are not too many.
            if unknown
                && (self
                    .rev
                    .issued_epoch
                    .load(std::sync::atomic::Ordering::SeqCst)
                    != round.epoch
                    || self.rev.unknowns.load(std::sync::atomic::Ordering::Relaxed) >= MAX_UNKNOWNS)
            {
                continue;
            }
            let der = Bytes::from(signed.der);
            // An `unknown` is never cached by HTTP caches (no caching
            // headers: the listener says no-store).
            let headers = if unknown {
                None
            } else {
                caching = CachingHeaders::new_like(
                    caching.as_deref(),
                    &etag_of(&der),
                    signed.this_update,
                    signed.next_update,
                )
                .map(Arc::new);
                caching.clone()
            };
            let key = OcspKey {
                issuer: issuer.to_string(),
                serial: serial.clone(),
                hash: *hash,
            };
            let put = self.rev.put(
                key.clone(),
                CachedOcsp {
                    caching: headers,
                    der,
                    this_update: signed.this_update,
                    next_update: signed.next_update,
                    log_pos: round.log_pos,
                    responder_seq: round.responder_seq,
                    status: Some(status),
                },
            );
            if put
                && !unknown
                && *hash == HashAlg::Sha1
                && let Some(ca) = ca
            {
                published.push((key, published_ocsp_path(ca, serial)));
            }
        }
        self.publish_ocsp(published).await
    }

    /// Brings the files of `items` in the publish directory up to the
    /// current cache entries (each entry is read again under the lock, so
    /// the file left behind is always the newest answer): a signed answer is
    /// written, a tombstone (a revocation not signed yet) removes the file,
    /// so that nothing older than the revocation is served from there. The
    /// items that failed are kept for the next OCSP tick; the error names
    /// them.
    async fn publish_ocsp(&self, items: Vec<(OcspKey, String)>) -> Result<(), String> {
        let Some(dir) = self.publish_dir() else {
            return Ok(());
        };
        if items.is_empty() {
            return Ok(());
        }
        let rev = Arc::clone(&self.rev);
        let r = tokio::task::spawn_blocking(move || {
            let _g = rev.publish_lock.lock();
            let mut failed: Vec<(OcspKey, String)> = Vec::new();
            let mut first: Option<String> = None;
            let mut writes: Vec<(OcspKey, String, Bytes)> = Vec::new();
            let mut removed_from = BTreeSet::new();
            for (key, rel) in items {
                let Some(entry) = rev.get(&key) else { continue };
                if !entry.der.is_empty() {
                    writes.push((key, rel, entry.der.clone()));
                    continue;
                }
                let path = dir.join(&rel);
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        if let Some(p) = path.parent() {
                            removed_from.insert(p.to_path_buf());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        first.get_or_insert_with(|| format!("removing {}: {e}", path.display()));
                        failed.push((key, rel));
                    }
                }
            }
            for p in removed_from {
                if let Err(e) = std::fs::File::open(&p).and_then(|f| f.sync_all()) {
                    first.get_or_insert_with(|| format!("syncing {}: {e}", p.display()));
                }
            }
            // One fsync per directory, not per file.
            let mut parents: HashMap<PathBuf, Vec<(OcspKey, String)>> = HashMap::new();
            for (key, rel, der) in writes {
                match write_renamed(&dir, &rel, &der) {
                    Ok(p) => parents.entry(p).or_default().push((key, rel)),
                    Err(e) => {
                        first.get_or_insert_with(|| format!("{}: {e}", dir.join(&rel).display()));
                        failed.push((key, rel));
                    }
                }
            }
            for (p, written) in parents {
                if let Err(e) = std::fs::File::open(&p).and_then(|f| f.sync_all()) {
                    first.get_or_insert_with(|| format!("syncing {}: {e}", p.display()));
                    failed.extend(written);
                }
            }
            if !failed.is_empty()
                && let Ok(mut u) = rev.unpublished.lock()
            {
                u.extend(failed);
            }
            first.map_or(Ok(()), Err)
        })
        .await;
        let r = r.map_err(|e| e.to_string()).and_then(|r| r);
        if let Err(e) = &r {
            tracing::error!(
                dir = %self.publish_dir().map(|d| d.display().to_string()).unwrap_or_default(),
                "publishing OCSP answers: {e}; the publish directory may still hold older answers: fix it (space, permissions); castellan retries every {} s",
                OCSP_TICK.as_secs()
            );
        }
        r
    }

    /// Retries the publish-directory writes and removals that failed.
    async fn republish_failed(&self) {
        let items = self
            .rev
            .unpublished
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default();
        if !items.is_empty() && self.publish_ocsp(items).await.is_ok() {
            tracing::info!("publishing OCSP answers: the publish directory is up to date again");
        }
    }

    /// Answers one OCSPRequest (DER). `issuer_hint` (from `/ocsp/{issuer}`)
    /// restricts matching to that CA.
    ///
    /// - Malformed request → malformedRequest; a CertID in a hash other
    ///   than SHA-1/SHA-256, or matching no CA castellan holds →
    ///   unauthorized.
    /// - All CertIDs of one request must name one issuer: one delegated
    ///   responder signs one response, and each CA has its own. A request
    ///   mixing issuers → unauthorized (clients ask per issuer in practice).
    /// - One CertID, no nonce: the pre-signed answer when there is a
    ///   current one; otherwise signed now (and kept).
    /// - Status: a serial this CA never issued → unknown; issued → good;
    ///   revoked → revoked with time and reason. A possibly-issued
    ///   certificate (recovered from the signer's journal after a crash,
    ///   DER unknown) → good unless revoked: the signer did sign it.
    /// - Signer unreachable and nothing cached → tryLater.
    pub async fn ocsp(self: &Arc<Self>, body: &[u8], issuer_hint: Option<&str>) -> OcspAnswer {
        let req = match crate::ocsp::parse_request(body) {
            Ok(r) => r,
            Err(e) => return OcspAnswer::error(e.answer().code()),
        };
        let mut issuer: Option<String> = None;
        for refresh in [false, true] {
            let index = self.ca_index(refresh);
            issuer = None;
            let mut ok = true;
            for id in &req.cert_ids {
                let Some(ca) = index
                    .iter()
                    .filter(|k| issuer_hint.is_none_or(|h| h == k.ca_id))
                    .find(|k| k.matches(id))
                else {
                    ok = false;
                    break;
                };
                match &issuer {
                    None => issuer = Some(ca.ca_id.clone()),
                    Some(i) if *i == ca.ca_id => {}
                    Some(_) => return OcspAnswer::error(OCSP_UNAUTHORIZED),
                }
            }
            if ok {
                break;
            }
            issuer = None;
        }
        let Some(issuer) = issuer else {
            return OcspAnswer::error(OCSP_UNAUTHORIZED);
        };
        let keys: Vec<(Vec<u8>, HashAlg)> = req
            .cert_ids
            .iter()
            .map(|id| (magnitude(&id.serial), id.hash))
            .collect();
        let has_nonce = req.nonce.is_some();
        let single = keys.len() == 1 && !has_nonce;
        // The current pre-signed answer for a one-CertID request, if any.
        let cached = || -> Option<OcspAnswer> {
            if keys.len() != 1 {
                return None;
            }
            let key = OcspKey {
                issuer: issuer.clone(),
                serial: keys[0].0.clone(),
                hash: keys[0].1,
            };
            self.rev
                .get(&key)
                .filter(|e| e.servable(now_ms() / 1000))
                .map(|e| OcspAnswer {
                    der: e.der.clone(),
                    caching: e.caching.clone(),
                })
        };
        if single && let Some(answer) = cached() {
            return answer;
        }
        // Signing on demand costs a signature and a signer journal record:
        // bounded. Over the rate, the pre-signed answer (without the nonce)
        // if there is one, else tryLater.
        if !self.rev.take_sign_token(self.config().http.ocsp_sign_rate) {
            return cached().unwrap_or_else(|| OcspAnswer::error(OCSP_TRY_LATER));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = match self.rev.misses.lock() {
            Ok(mut m) => {
                let q = m.entry(issuer.clone()).or_default();
                q.waiting.push(Miss {
                    request: (keys.clone(), req.nonce),
                    reply: tx,
                });
                let lead = q.rounds < MISS_ROUNDS;
                if lead {
                    q.rounds += 1;
                }
                lead
            }
            Err(_) => return OcspAnswer::error(OCSP_INTERNAL_ERROR),
        };
        if lead {
            // In its own task: a client that goes away must not strand the
            // requests queued behind it.
            self.spawn_background(Arc::clone(self).sign_misses(issuer.clone()));
        }
        match rx.await {
            Ok(Ok(signed)) => {
                // An answer with a nonce or an `unknown` is for this request
                // only: no caching headers (the listener says no-store).
                let cacheable = !has_nonce && !signed.statuses.contains(&CertStatus::Unknown);
                let answer = OcspAnswer {
                    der: Bytes::from(signed.der.clone()),
                    caching: if cacheable {
                        CachingHeaders::new(
                            &etag_of(&signed.der),
                            signed.this_update,
                            signed.next_update,
                        )
                        .map(Arc::new)
                    } else {
                        None
                    },
                };
                if single {
                    let (log_pos, responder_seq, epoch) =
                        (signed.log_pos, signed.responder_seq, signed.epoch);
                    let round = Round {
                        answers: vec![signed.into()],
                        log_pos,
                        responder_seq,
                        epoch,
                    };
                    // A failed publish is logged and retried by the OCSP task.
                    let _ = self.keep(&issuer, &keys, round).await;
                }
                answer
            }
            // The signer cannot sign the nonce in: the pre-signed answer
            // (without the nonce, as RFC 5019 responders answer) is still
            // signed and current, and better than tryLater.
            Ok(Err(OCSP_TRY_LATER)) => {
                cached().unwrap_or_else(|| OcspAnswer::error(OCSP_TRY_LATER))
            }
            Ok(Err(status)) => OcspAnswer::error(status),
            Err(_) => OcspAnswer::error(OCSP_INTERNAL_ERROR),
        }
    }

    /// Signs the queued cache misses of `issuer`, up to [`MISS_BATCH`] per
    /// signer request, until none is left. At most [`MISS_ROUNDS`] run per
    /// issuer at once; requests arriving meanwhile wait and share the next
    /// signer request (the busier, the larger the batches).
    async fn sign_misses(self: Arc<Self>, issuer: String) {
        loop {
            let batch: Vec<Miss> = match self.rev.misses.lock() {
                Ok(mut m) => {
                    let Some(q) = m.get_mut(&issuer) else { return };
                    if q.waiting.is_empty() {
                        q.rounds = q.rounds.saturating_sub(1);
                        return;
                    }
                    let n = q.waiting.len().min(MISS_BATCH);
                    q.waiting.drain(..n).collect()
                }
                Err(_) => return,
            };
            let (requests, replies): (Vec<Template>, Vec<_>) =
                batch.into_iter().map(|m| (m.request, m.reply)).unzip();
            match self.sign_answers(&issuer, &requests).await {
                Ok(round) => {
                    for (signed, reply) in round.answers.into_iter().zip(replies) {
                        let _ = reply.send(Ok(SignedAt {
                            der: signed.der,
                            this_update: signed.this_update,
                            next_update: signed.next_update,
                            statuses: signed.statuses,
                            log_pos: round.log_pos,
                            responder_seq: round.responder_seq,
                            epoch: round.epoch,
                        }));
                    }
                }
                Err(e) => {
                    tracing::warn!(ca = %issuer, "OCSP: signing failed: {e}");
                    let status = failure_status(&e);
                    for reply in replies {
                        let _ = reply.send(Err(status));
                    }
                }
            }
        }
    }

    /// After a revocation committed at log position `pos`: no answer read
    /// before it is served any more, and the `revoked` answers (SHA-1 and
    /// SHA-256 CertIDs) are signed and cached. Returns what OCSP answers
    /// now, for the operator.
    pub(crate) async fn after_revoke(&self, issuer: &str, serial: &[u8], pos: u64) -> String {
        self.rev.mark_crl_dirty(issuer);
        if !self.serves_revocation() {
            return "not served (http.enabled = false and no publish_dir)".into();
        }
        let m = magnitude(serial);
        for hash in [HashAlg::Sha1, HashAlg::Sha256] {
            self.rev.put(
                OcspKey {
                    issuer: issuer.to_string(),
                    serial: m.clone(),
                    hash,
                },
                CachedOcsp {
                    der: Bytes::new(),
                    caching: None,
                    this_update: 0,
                    next_update: 0,
                    log_pos: pos,
                    responder_seq: 0,
                    status: None,
                },
            );
        }
        // Answers for CertIDs written with absent parameters go: the
        // tombstones above also block any such answer read before the
        // revocation (see `put`).
        if let Ok(mut map) = self.rev.ocsp.write() {
            for hash in [HashAlg::Sha1NoParams, HashAlg::Sha256NoParams] {
                map.remove(&OcspKey {
                    issuer: issuer.to_string(),
                    serial: m.clone(),
                    hash,
                });
            }
        }
        let keys = vec![(m.clone(), HashAlg::Sha1), (m.clone(), HashAlg::Sha256)];
        let requests: Vec<Template> = keys.iter().map(|k| (vec![k.clone()], None)).collect();
        match self.sign_answers(issuer, &requests).await {
            Ok(round) => {
                let words = round
                    .answers
                    .first()
                    .and_then(|a| a.statuses.first())
                    .map(status_words)
                    .unwrap_or_default();
                match self.keep(issuer, &keys, round).await {
                    Ok(()) => format!("{words} (pre-signed, served from now on)"),
                    Err(e) => format!(
                        "{words} (pre-signed, served over HTTP by castellan from now on); the publish directory could not be updated ({e}) and may still hold the previous answer for this certificate until its nextUpdate: fix the directory (space, permissions), castellan retries every {} s",
                        OCSP_TICK.as_secs()
                    ),
                }
            }
            Err(e) => {
                tracing::warn!(ca = %issuer, "OCSP: signing the revoked answer: {e}");
                // The published `good` answer must not outlive the
                // acknowledgement: the tombstone removes its file.
                let published = match self.published_paths(issuer, &m) {
                    Some(items) => self.publish_ocsp(items).await,
                    None => Ok(()),
                };
                let publish = match published {
                    Ok(()) if self.publish_dir().is_some() => {
                        "; the publish directory holds no answer for it (any published one was removed) until the revoked answer is signed and published".to_string()
                    }
                    Ok(()) => String::new(),
                    Err(e) => format!(
                        "; the publish directory could not be updated ({e}) and may still hold a good answer for this certificate until its nextUpdate: remove it or fix the directory (space, permissions), castellan retries every {} s",
                        OCSP_TICK.as_secs()
                    ),
                };
                format!(
                    "not yet signed ({e}); OCSP answers tryLater for this certificate until the signer is back, never good{publish}"
                )
            }
        }
    }

    /// The (cache key, file) of every answer the publish directory may hold
    /// for `serial` (a magnitude) of `issuer`; `None` without a publish
    /// directory or when the CA is not known.
    fn published_paths(&self, issuer: &str, serial: &[u8]) -> Option<Vec<(OcspKey, String)>> {
        self.publish_dir()?;
        let index = self.ca_index(false);
        let ca = index.iter().find(|k| k.ca_id == issuer)?;
        let key = OcspKey {
            issuer: issuer.to_string(),
            serial: serial.to_vec(),
            hash: HashAlg::Sha1,
        };
        Some(vec![(key, published_ocsp_path(ca, serial))])
    }

    /// What OCSP and the CRL say about a certificate now (for `cert show`).
    pub(crate) fn revocation_words(&self, cert: &CertRecord) -> (Option<String>, Option<String>) {
        if !self.serves_revocation() {
            return (None, None);
        }
        let now = now_ms() / 1000;
        let key = OcspKey {
            issuer: cert.issuer.clone(),
            serial: magnitude(&cert.serial),
            hash: HashAlg::Sha1,
        };
        let ocsp = match self.rev.get(&key) {
            Some(e) if e.servable(now) => format!(
                "{} (pre-signed {}, next update {})",
                e.status.as_ref().map(status_words).unwrap_or_default(),
                castellan_proto::time::rfc3339(e.this_update),
                castellan_proto::time::rfc3339(e.next_update)
            ),
            _ => "not pre-signed yet: signed on request".to_string(),
        };
        let crl = match self.rev.crl(&cert.issuer) {
            None => "no CRL published yet".to_string(),
            Some(c) => {
                let listed = cert
                    .revocation
                    .as_ref()
                    .is_some_and(|r| r.seq < c.record.as_of);
                format!(
                    "{} CRL {} of {} (published {}, next update {})",
                    if listed { "listed in" } else { "not listed in" },
                    c.record.crl_number,
                    cert.issuer,
                    castellan_proto::time::rfc3339(c.record.this_update),
                    castellan_proto::time::rfc3339(c.record.next_update)
                )
            }
        };
        (Some(ocsp), Some(crl))
    }

    // -- the OCSP task ------------------------------------------------------

    /// Runs forever: rotates responders, pre-signs answers for new
    /// certificates and re-signs the ones that are half-way to their
    /// nextUpdate or signed by a rotated responder.
    pub async fn ocsp_task(self: Arc<Self>) {
        loop {
            if self.config().http.enabled {
                if let Err(e) = self.ensure_responders().await {
                    tracing::debug!("OCSP responders: {e}");
                }
                self.reload_ca_index();
                if let Err(e) = self.presign_round().await {
                    tracing::warn!("OCSP pre-signing: {e}");
                }
            }
            self.republish_failed().await;
            tokio::select! {
                _ = self.rev.ocsp_wake.notified() => {}
                _ = tokio::time::sleep(OCSP_TICK) => {}
            }
        }
    }

    /// One pre-signing pass. The first pass after start-up covers every
    /// certificate that has not expired.
    async fn presign_round(self: &Arc<Self>) -> Result<(), PoolError> {
        let now = now_ms() / 1000;
        let mut work: HashMap<String, BTreeSet<Vec<u8>>> = HashMap::new();
        let first = !self.rev.warmed.load(std::sync::atomic::Ordering::Relaxed);
        let pending = self
            .rev
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        let view = self
            .store
            .read()
            .map_err(|e| PoolError::Unavailable(format!("reading the store: {e}")))?;
        let responders: HashMap<String, u64> = view
            .cas()
            .iter()
            .filter_map(|c| view.responder(&c.ca_id).map(|r| (c.ca_id.clone(), r.seq)))
            .collect();
        if first {
            for ca in view.cas() {
                let serials = view.unexpired_serials(&ca.ca_id, now);
                work.entry(ca.ca_id)
                    .or_default()
                    .extend(serials.iter().map(|s| magnitude(s)));
            }
        }
        drop(view);
        for (issuer, serial) in pending {
            work.entry(issuer).or_default().insert(magnitude(&serial));
        }
        let mut expired_unknowns = Vec::new();
        let mut unknowns = 0;
        if let Ok(map) = self.rev.ocsp.read() {
            for (k, e) in map.iter() {
                if k.hash != HashAlg::Sha1 && e.der.is_empty() {
                    continue;
                }
                // A cached `unknown` is not re-signed: it goes when it
                // expires (asked again, it is signed again).
                if e.status == Some(CertStatus::Unknown) {
                    if now >= e.next_update {
                        expired_unknowns.push(k.clone());
                    } else {
                        unknowns += 1;
                    }
                    continue;
                }
                // Half of the answer's own window passed (a window cut short
                // by the responder's end is judged as it is, not against
                // the configured validity: that re-signed it on every tick).
                let stale = e.der.is_empty()
                    || now >= e.this_update + (e.next_update - e.this_update) / 2
                    || responders
                        .get(&k.issuer)
                        .is_some_and(|seq| *seq != e.responder_seq && !e.der.is_empty());
                // A tombstone left by a revocation the signer could not
                // sign yet is retried too.
                if stale && (e.status.is_some() || e.der.is_empty()) {
                    work.entry(k.issuer.clone())
                        .or_default()
                        .insert(k.serial.clone());
                }
            }
        }
        self.rev
            .unknowns
            .store(unknowns, std::sync::atomic::Ordering::Relaxed);
        if !expired_unknowns.is_empty()
            && let Ok(mut map) = self.rev.ocsp.write()
        {
            for k in expired_unknowns {
                if map
                    .get(&k)
                    .is_some_and(|e| e.status == Some(CertStatus::Unknown) && now >= e.next_update)
                {
                    map.remove(&k);
                }
            }
        }
        // A failing CA (expired, signer refusing) does not hold up the
        // others; its answers are retried on the next round.
        let mut failed = None;
        for (issuer, serials) in work {
            if !responders.contains_key(&issuer) {
                continue;
            }
            let serials: Vec<Vec<u8>> = serials.into_iter().collect();
            let mut chunks = serials.chunks(PRESIGN_BATCH);
            loop {
                // PRESIGN_PARALLEL signer requests at once: the signer
                // serves each connection on its own thread.
                let mut set = tokio::task::JoinSet::new();
                for chunk in chunks.by_ref().take(PRESIGN_PARALLEL) {
                    let keys: Vec<(Vec<u8>, HashAlg)> =
                        chunk.iter().map(|s| (s.clone(), HashAlg::Sha1)).collect();
                    let daemon = Arc::clone(self);
                    let issuer = issuer.clone();
                    set.spawn(async move {
                        let requests: Vec<Template> =
                            keys.iter().map(|k| (vec![k.clone()], None)).collect();
                        let round = daemon.sign_answers(&issuer, &requests).await?;
                        // A failed publish is logged and retried each tick.
                        let _ = daemon.keep(&issuer, &keys, round).await;
                        Ok::<(), PoolError>(())
                    });
                }
                if set.is_empty() {
                    break;
                }
                let mut ok = true;
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(ca = %issuer, "OCSP pre-signing: {e}");
                            ok = false;
                            failed.get_or_insert(e);
                        }
                        Err(e) => {
                            tracing::warn!(ca = %issuer, "OCSP pre-signing task: {e}");
                            ok = false;
                        }
                    }
                }
                if !ok {
                    break;
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if first {
            self.rev
                .warmed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    // -- CRLs ---------------------------------------------------------------

    fn crl_file(&self, issuer: &str) -> PathBuf {
        self.config()
            .state_dir
            .join("crl")
            .join(format!("{issuer}.crl"))
    }

    /// At start-up: the last CRL of every CA from its file (if the file is
    /// what the log says was published), and the publish directory brought
    /// up to date.
    pub(crate) async fn load_crls(&self) {
        let Ok(view) = self.store.read() else { return };
        let cas = view.cas();
        let records: Vec<CrlRecord> = cas.iter().filter_map(|c| view.crl(&c.ca_id)).collect();
        drop(view);
        for record in records {
            let path = self.crl_file(&record.issuer);
            let der = match std::fs::read(&path) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "the last CRL is not readable ({e}); publishing a new one");
                    self.rev.mark_crl_dirty(&record.issuer);
                    continue;
                }
            };
            if ring::digest::digest(&ring::digest::SHA256, &der).as_ref() != record.sha256 {
                tracing::warn!(path = %path.display(), "the last CRL file is not the one the log recorded; publishing a new one");
                self.rev.mark_crl_dirty(&record.issuer);
                continue;
            }
            let issuer = record.issuer.clone();
            self.serve_crl(record, Bytes::from(der), false);
            if let Some(ca) = cas.iter().find(|c| c.ca_id == issuer) {
                self.publish_ca(ca).await;
            }
        }
    }

    async fn publish_ca(&self, ca: &CaRecord) {
        let Some(dir) = self.publish_dir() else {
            return;
        };
        let rel = format!("ca/{}.crt", ca.ca_id);
        let der = ca.certificate_der.clone();
        // Asked for at every CRL: written (and synced) only when the file
        // is missing or differs.
        let r = tokio::task::spawn_blocking(move || {
            if std::fs::read(dir.join(&rel)).is_ok_and(|d| d == der) {
                return Ok(());
            }
            write_atomically(&dir, &rel, &der)
        })
        .await;
        if let Ok(Err(e)) | Err(e) = r.map_err(std::io::Error::other) {
            tracing::warn!(ca = %ca.ca_id, "publishing the CA certificate: {e}");
        }
    }

    /// Serves `der` as the CRL of its issuer from now on, and writes it in
    /// the background: into the state directory (`keep`, for the next
    /// start) and, DER and PEM, into the publish directory. The files left
    /// are always the newest CRL's, whatever order writes finish in.
    fn serve_crl(&self, record: CrlRecord, der: Bytes, keep: bool) {
        let issuer = record.issuer.clone();
        let published = Arc::new(PublishedCrl {
            // The entity tag of a DER answer is the SHA-256 of its bytes,
            // which the record already holds.
            etag: format!("\"{}\"", hex::encode(record.sha256)),
            record,
            der,
            pem: std::sync::OnceLock::new(),
        });
        if let Ok(mut m) = self.rev.crls.write() {
            m.insert(issuer.clone(), Arc::clone(&published));
        }
        let dir = self.publish_dir();
        let state_dir = self.config().state_dir.clone();
        let rev = Arc::clone(&self.rev);
        rev.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            let p = &published;
            // Made here, off the runtime, before anybody asks for it.
            let pem = p.pem();
            let _g = rev.publish_lock.lock();
            let current = rev
                .crl(&issuer)
                .is_some_and(|c| c.record.crl_number == published.record.crl_number);
            if current && keep {
                let rel = format!("crl/{issuer}.crl");
                if let Err(e) = write_atomically(&state_dir, &rel, &p.der) {
                    tracing::warn!(
                        ca = %issuer,
                        path = %state_dir.join(&rel).display(),
                        "keeping the CRL beside the database: {e}; it is served, but a restart will sign a new one"
                    );
                }
            }
            if let (true, Some(dir)) = (current, dir) {
                let r = write_atomically(&dir, &format!("crl/{issuer}.crl"), &p.der)
                    .and_then(|()| write_atomically(&dir, &format!("crl/{issuer}.pem"), &pem));
                if let Err(e) = r {
                    tracing::warn!(ca = %issuer, "publishing the CRL: {e}");
                }
            }
            rev.writes.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Waits (at most 30 s) for CRL files being written in the background:
    /// a stopping daemon leaves the newest CRL on disk.
    pub async fn finish_writes(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.rev.writes.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                tracing::warn!("CRL files still being written after 30 s; stopping anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `POST /v1/crls/{issuer}/publish`: a new CRL now, optionally
    /// entering or leaving emergency mode (seed runbook 004: "short
    /// validity!").
    pub async fn publish_crl_now(
        &self,
        c: &super::Caller,
        issuer: &str,
        r: PublishCrl,
    ) -> Result<CrlView, ApiError> {
        let mode = match (r.emergency_next_update_secs, r.end_emergency) {
            (Some(_), true) => {
                return Err(bad(
                    "give either an emergency nextUpdate or end_emergency, not both",
                ));
            }
            (Some(s), false) if !(60..=7 * 86_400).contains(&s) => {
                return Err(bad(format!(
                    "emergency nextUpdate of {s} s: must be 60 s to 7 days (e.g. 1h)"
                )));
            }
            (Some(s), false) => CrlMode::Emergency(s),
            (None, true) => CrlMode::EndEmergency,
            (None, false) => CrlMode::Regular,
        };
        self.publish_crl(issuer, mode, c.actor.clone()).await
    }

    /// Publishes a new full CRL of `issuer` now.
    pub async fn publish_crl(
        &self,
        issuer: &str,
        mode: CrlMode,
        actor: Actor,
    ) -> Result<CrlView, ApiError> {
        let _g = self.rev.crl_lock.lock().await;
        let started = Instant::now();
        let (ca, last, source) = self.crl_source(issuer).await?;
        let as_of = source.seq;
        let entries = source.entries;
        let emergency_validity = match mode {
            CrlMode::Regular => last.as_ref().and_then(|l| l.emergency_validity),
            CrlMode::Emergency(s) => Some(s),
            CrlMode::EndEmergency => None,
        };
        let validity =
            emergency_validity.unwrap_or_else(|| i64::from(self.config().crl.validity_secs));
        let this_update = now_ms() / 1000;
        let next_update = this_update + validity;
        let count = entries.len() as u64;
        let read = started.elapsed();
        let mut number = last.as_ref().map_or(1, |l| l.crl_number + 1);
        let request = CrlToSign {
            issuer: issuer.to_string(),
            crl_number: number,
            this_update,
            next_update,
            entries,
        };
        let der = match self.pool.sign_crl(request.clone()).await {
            Ok(d) => d,
            Err(PoolError::Refused(s)) if s.message.contains("CRL numbers only increase") => {
                // The signer signed a later CRL the log does not know of
                // (the daemon stopped between the two): continue after it.
                let signed = last_signed_number(&s.message).ok_or_else(|| {
                    err(
                        ErrorKind::Internal,
                        format!("the signer refused the CRL number: {}", s.message),
                    )
                })?;
                number = signed + 1;
                let request = CrlToSign {
                    crl_number: number,
                    ..request
                };
                self.pool.sign_crl(request).await.map_err(super::pool_err)?
            }
            Err(e) => return Err(super::pool_err(e)),
        };
        let signed = started.elapsed();
        let (der, sha256) = der;
        // The event names the hash; the DER is kept beside the database
        // afterwards, in the background (a restart that finds no such
        // file, or another one, signs a new CRL).
        let der = Bytes::from(der);
        let record = self
            .store
            .execute(actor, {
                let issuer = issuer.to_string();
                move |v: &dyn ReadView| {
                    let seq = v.head().0;
                    let record = CrlRecord {
                        issuer: issuer.clone(),
                        crl_number: number,
                        this_update,
                        next_update,
                        entries: count,
                        sha256,
                        as_of,
                        emergency_validity,
                        seq,
                    };
                    Decision::Commit {
                        events: vec![EventPayload::CrlPublished {
                            issuer,
                            crl_number: number,
                            this_update,
                            next_update,
                            entries: count,
                            sha256,
                            as_of,
                            emergency_validity,
                        }],
                        output: record,
                    }
                }
            })
            .await
            .map_err(exec_err)?;
        let stored = started.elapsed();
        self.serve_crl(record.clone(), der, true);
        self.publish_ca(&ca).await;
        let ms = |d: Duration| d.as_millis() as u64;
        tracing::info!(
            ca = %issuer,
            crl_number = number,
            entries = count,
            next_update,
            read_ms = ms(read),
            sign_ms = ms(signed - read),
            store_ms = ms(stored - signed),
            total_ms = ms(started.elapsed()),
            "CRL published"
        );
        Ok(crl_view(&record, &self.config()))
    }

    /// Whether `ca_id` names a CA castellan holds (from the in-memory CA
    /// index, without a store read).
    pub fn holds_ca(&self, ca_id: &str) -> bool {
        self.ca_index(false).iter().any(|k| k.ca_id == ca_id)
    }

    /// The CRL the public listener serves for `issuer`.
    pub fn published_crl(&self, issuer: &str) -> Option<Arc<PublishedCrl>> {
        self.rev.crl(issuer)
    }

    /// The last CRL of a CA.
    pub fn crl_status(&self, issuer: &str) -> Result<CrlView, ApiError> {
        let view = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        if view.ca(issuer).is_none() {
            return Err(err(ErrorKind::NotFound, format!("no CA {issuer:?}")));
        }
        view.crl(issuer)
            .map(|r| crl_view(&r, &self.config()))
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    format!("no CRL of {issuer:?} has been published yet"),
                )
            })
    }

    /// Runs forever: publishes the CRLs of issuers with new revocations
    /// (after `crl.coalesce_ms`), and every CRL that is missing or half-way
    /// to its nextUpdate.
    pub async fn crl_task(self: Arc<Self>) {
        let mut woken = false;
        let mut read_all = false;
        loop {
            if woken {
                let ms = u64::from(self.config().crl.coalesce_ms);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if self.serves_revocation() {
                self.crl_round().await;
                if !read_all {
                    read_all = true;
                    self.read_crl_sources().await;
                }
            }
            woken = tokio::select! {
                _ = self.rev.crl_wake.notified() => true,
                _ = tokio::time::sleep(CRL_TICK) => false,
            };
        }
    }

    /// What a CRL of `issuer` lists now, brought up to the log's head from
    /// the entries kept for it (see [`read_crl_entries`]), and kept for the
    /// next CRL. The revocations since (all of them the first time: a
    /// million is CPU work, and disk reads on a cold page cache) are read
    /// off the async runtime, so OCSP answers keep flowing meanwhile; one
    /// read per issuer at a time, so that a CRL asked for while the entries
    /// are read ahead at start waits for that read instead of repeating it.
    async fn crl_source(
        &self,
        issuer: &str,
    ) -> Result<(CaRecord, Option<CrlRecord>, CrlSource), ApiError> {
        let reading = {
            let mut m = self
                .rev
                .crl_reads
                .lock()
                .map_err(|_| err(ErrorKind::Internal, "CRL source lock poisoned"))?;
            Arc::clone(m.entry(issuer.to_string()).or_default())
        };
        let _reading = reading.lock().await;
        let store = self.store.clone();
        let id = issuer.to_string();
        let known = self
            .rev
            .crl_sources
            .lock()
            .ok()
            .and_then(|m| m.get(issuer).cloned());
        let (ca, last, source) =
            tokio::task::spawn_blocking(move || read_crl_entries(&store, &id, known))
                .await
                .map_err(|e| err(ErrorKind::Internal, e.to_string()))??;
        if let Ok(mut m) = self.rev.crl_sources.lock() {
            m.insert(issuer.to_string(), source.clone());
        }
        Ok((ca, last, source))
    }

    /// Reads, once after start, the CRL entries of every CA whose CRL was
    /// not just published: the first CRL after a restart (an emergency
    /// one, say) then reads only the revocations since, not the whole
    /// index (seconds for a million entries on a cold page cache).
    async fn read_crl_sources(&self) {
        let Ok(view) = self.store.read() else { return };
        let now = now_ms() / 1000;
        let cas: Vec<String> = view
            .cas()
            .into_iter()
            .filter(|ca| x509_facts(&ca.certificate_der).is_some_and(|(_, _, na)| na > now))
            .map(|ca| ca.ca_id)
            .collect();
        drop(view);
        for issuer in cas {
            let kept = self
                .rev
                .crl_sources
                .lock()
                .map_or(true, |m| m.contains_key(&issuer));
            if kept {
                continue;
            }
            match self.crl_source(&issuer).await {
                Ok((_, _, s)) => {
                    tracing::debug!(ca = %issuer, entries = s.entries.len(), "CRL entries read ahead");
                }
                Err(e) => tracing::debug!(ca = %issuer, "reading CRL entries ahead: {e}"),
            }
        }
    }

    async fn crl_round(&self) {
        let dirty = self
            .rev
            .crl_dirty
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        let Ok(view) = self.store.read() else { return };
        let now = now_ms() / 1000;
        let mut due = Vec::new();
        for ca in view.cas() {
            let expired = x509_facts(&ca.certificate_der).is_none_or(|(_, _, na)| na <= now);
            if expired {
                continue;
            }
            let record = view.crl(&ca.ca_id);
            let stale = match &record {
                None => true,
                Some(r) => now >= r.this_update + (r.next_update - r.this_update) / 2,
            };
            let loaded = self.rev.crl(&ca.ca_id).is_some();
            if dirty.contains(&ca.ca_id) || stale || !loaded {
                due.push(ca.ca_id);
            }
        }
        drop(view);
        for issuer in due {
            if let Err(e) = self
                .publish_crl(&issuer, CrlMode::Regular, Actor::System)
                .await
            {
                tracing::warn!(ca = %issuer, "publishing the CRL: {e}");
                // Try again on the next round.
                if let Ok(mut d) = self.rev.crl_dirty.lock() {
                    d.insert(issuer);
                }
            }
        }
    }
}

/// What a CRL of `issuer` lists now: (the CA, its last CRL, its entries as
/// of the log's head). From `known` and the events after it when that is
/// cheap and `known` is a position of this very log; from the whole
/// revocation index otherwise.
fn read_crl_entries(
    store: &crate::store::Store,
    issuer: &str,
    known: Option<CrlSource>,
) -> Result<(CaRecord, Option<CrlRecord>, CrlSource), ApiError> {
    let view = store
        .read()
        .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
    let Some(ca) = view.ca(issuer) else {
        let known: Vec<String> = view.cas().into_iter().map(|c| c.ca_id).collect();
        return Err(err(
            ErrorKind::NotFound,
            format!(
                "no CA {issuer:?}; known CAs: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    let last = view.crl(issuer);
    let (seq, hash) = view.head();
    let entries = match known.and_then(|k| revoked_since(store, &view, issuer, k, (seq, hash))) {
        Some(e) => e,
        None => Arc::new(
            view.revocations(issuer)
                .into_iter()
                .map(|(serial, r)| crl_entry(serial, &r))
                .collect(),
        ),
    };
    if let Some(e) = view.error() {
        return Err(err(ErrorKind::Internal, e));
    }
    Ok((ca, last, CrlSource { seq, hash, entries }))
}

/// The CRL entry of a revoked certificate (`serial` as the index holds it).
fn crl_entry(serial: Vec<u8>, r: &crate::store::records::Revocation) -> CrlEntry {
    CrlEntry {
        serial: if serial.first() == Some(&0) {
            magnitude(&serial)
        } else {
            serial
        },
        revoked_at: r.revoked_at,
        // RFC 5280 §5.3.1: the code unspecified should be absent.
        reason: (r.reason != RevocationReason::Unspecified).then_some(r.reason),
        invalidity_date: r.invalidity_date,
    }
}

/// `known`'s entries brought up to `head` with the revocations logged
/// after it, or `None` when that is not cheap or the events do not chain
/// from `known` to `head` (another log: read everything again).
fn revoked_since(
    store: &crate::store::Store,
    view: &dyn ReadView,
    issuer: &str,
    known: CrlSource,
    head: (u64, [u8; 32]),
) -> Option<Arc<Vec<CrlEntry>>> {
    let behind = head.0.checked_sub(known.seq)?;
    if behind == 0 {
        return (head.1 == known.hash).then_some(known.entries);
    }
    if behind > CRL_DELTA_EVENTS {
        return None;
    }
    // A position is a count of events (the next sequence number) and the
    // hash of the last one.
    let events = store
        .events(&crate::store::EventFilter {
            from_seq: Some(known.seq),
            limit: Some(behind as usize),
            ..Default::default()
        })
        .ok()?;
    let first = events.first()?;
    let end = events.last()?;
    if first.seq != known.seq
        || first.prev_hash != known.hash
        || (end.seq.saturating_add(1), end.hash) != head
    {
        return None;
    }
    let mut added = Vec::new();
    for ev in &events {
        let EventPayload::CertificateRevoked {
            serial, issuer: of, ..
        } = &ev.payload
        else {
            continue;
        };
        if of != issuer {
            continue;
        }
        // The projection says whether this event revoked the certificate
        // (a repeated or misdirected revocation is logged but skipped).
        if let Some(c) = view.cert(serial)
            && c.issuer == issuer
            && let Some(r) = c.revocation.filter(|r| r.seq == ev.seq)
        {
            added.push(crl_entry(serial.clone(), &r));
        }
    }
    if added.is_empty() {
        return Some(known.entries);
    }
    added.sort_by(|a, b| index_order(&a.serial, &b.serial));
    Some(Arc::new(merge_entries(&known.entries, added)))
}

/// The order of the revocation index (raw serial octets: minimal DER, so
/// a magnitude with its high bit set has a leading zero) for two serial
/// magnitudes.
fn index_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    fn raw(m: &[u8]) -> impl Iterator<Item = u8> + '_ {
        let pad = m.first().is_none_or(|x| x & 0x80 != 0);
        std::iter::once(0u8)
            .filter(move |_| pad)
            .chain(m.iter().copied())
    }
    raw(a).cmp(raw(b))
}

/// `old` and `added` (each in index order, no serial in both) as one list
/// in index order.
fn merge_entries(old: &[CrlEntry], added: Vec<CrlEntry>) -> Vec<CrlEntry> {
    let mut out = Vec::with_capacity(old.len() + added.len());
    let mut old = old.iter().peekable();
    for e in added {
        while let Some(o) = old.next_if(|o| index_order(&o.serial, &e.serial).is_lt()) {
            out.push(o.clone());
        }
        out.push(e);
    }
    out.extend(old.cloned());
    out
}

/// The number in the signer's refusal "… is not above the last one signed
/// (N); CRL numbers only increase".
fn last_signed_number(message: &str) -> Option<u64> {
    let (_, rest) = message.split_once("last one signed (")?;
    let (n, _) = rest.split_once(')')?;
    n.parse().ok()
}

fn crl_view(r: &CrlRecord, config: &crate::config::Config) -> CrlView {
    CrlView {
        issuer: r.issuer.clone(),
        crl_number: r.crl_number,
        this_update: castellan_proto::time::rfc3339(r.this_update),
        next_update: castellan_proto::time::rfc3339(r.next_update),
        entries: r.entries,
        sha256: hex::encode(r.sha256),
        emergency_validity_secs: r.emergency_validity,
        url: config.issuance.urls.crl.replace("{issuer}", &r.issuer),
        seq: r.seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_request_is_what_the_parser_reads_back() {
        let keys = CaKeys {
            ca_id: "issuing".into(),
            sha1: (vec![1; 20], vec![2; 20]),
            sha256: (vec![3; 32], vec![4; 32]),
        };
        for serial in [vec![0x01], vec![0x80, 0x01], vec![0x7f; 16]] {
            let der = canonical_request(&keys, &serial);
            let req = crate::ocsp::parse_request(&der).expect("parses");
            assert_eq!(req.cert_ids.len(), 1);
            assert_eq!(req.nonce, None);
            assert_eq!(req.cert_ids[0].serial, serial);
            assert!(keys.matches(&req.cert_ids[0]));
        }
    }

    #[test]
    fn the_signer_refusal_names_its_last_crl_number() {
        assert_eq!(
            last_signed_number(
                "CRL number 3 for \"issuing\" is not above the last one signed (7); CRL numbers only increase"
            ),
            Some(7)
        );
        assert_eq!(last_signed_number("something else"), None);
    }

    #[test]
    fn entries_merged_since_a_crl_are_in_the_order_a_full_scan_reads() {
        // Raw serials as the index holds them (minimal DER contents, so a
        // leading zero exactly when the high bit is set), sorted as redb
        // sorts keys.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut raw: Vec<Vec<u8>> = (0..2000)
            .map(|i| {
                let len = 1 + (next() % 20) as usize;
                let mut m: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if i % 7 == 0 {
                    m[0] |= 0x80;
                }
                if m[0] == 0 {
                    m[0] = 1;
                }
                if m[0] & 0x80 != 0 {
                    m.insert(0, 0);
                }
                m
            })
            .collect();
        raw.push(vec![0]);
        raw.sort();
        raw.dedup();
        let revocation = crate::store::records::Revocation {
            reason: RevocationReason::KeyCompromise,
            revoked_at: 1_700_000_000,
            invalidity_date: None,
            seq: 1,
        };
        let full: Vec<CrlEntry> = raw
            .iter()
            .map(|r| crl_entry(r.clone(), &revocation))
            .collect();
        for w in full.windows(2) {
            assert!(index_order(&w[0].serial, &w[1].serial).is_lt());
        }
        // Every third entry "revoked since the last CRL", arriving shuffled.
        let (mut added, old): (Vec<_>, Vec<_>) = full
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 3 == 1);
        added.reverse();
        let mut added: Vec<CrlEntry> = added.into_iter().map(|(_, e)| e).collect();
        added.sort_by(|a, b| index_order(&a.serial, &b.serial));
        let old: Vec<CrlEntry> = old.into_iter().map(|(_, e)| e).collect();
        assert_eq!(merge_entries(&old, added), full);
        assert_eq!(merge_entries(&full, Vec::new()), full);
        assert_eq!(merge_entries(&[], full.clone()), full);
    }

    #[test]
    fn magnitudes_drop_leading_zeros() {
        assert_eq!(magnitude(&[0, 0, 5, 0]), vec![5, 0]);
        assert_eq!(magnitude(&[0, 0]), vec![0]);
    }

    #[test]
    fn an_entry_read_earlier_never_replaces_a_later_one() {
        let s = RevocationState::new();
        let key = OcspKey {
            issuer: "i".into(),
            serial: vec![1],
            hash: HashAlg::Sha1,
        };
        let entry = |pos: u64, der: &'static [u8]| CachedOcsp {
            der: Bytes::from_static(der),
            caching: None,
            this_update: 0,
            next_update: i64::MAX,
            log_pos: pos,
            responder_seq: 0,
            status: Some(CertStatus::Good),
        };
        assert!(s.put(key.clone(), entry(5, b"revoked")));
        assert!(!s.put(key.clone(), entry(4, b"good")));
        assert_eq!(
            s.get(&key).map(|e| e.der.clone()),
            Some(Bytes::from_static(b"revoked"))
        );
        assert!(s.put(key.clone(), entry(5, b"revoked-again")));
    }
}
