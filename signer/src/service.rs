//! The signer's request handling: policy, quorum, building, signing and
//! journaling. Transport-free: [`Signer::handle`] maps one [`Request`] to one
//! [`Response`]; `server` moves frames.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use castellan_proto::{
    Algorithm, CaInfo, CaParams, CaStatus, CeremonyId, CeremonyOp, CeremonyOutcome,
    CeremonyOutcomeQuery, CertificateTemplate, CheckpointRequest, CrlChunk, CrlEntry, CrlRequest,
    CrossSignParams, Custodian, CustodianSet, ErrorKind, IntentId, IntentQuery, IssuedCertificate,
    JournalWindow, LastSignedCheckpoint, MAX_CRL_PART, MAX_INLINE_CRL, MAX_INTENT_QUERY,
    MAX_STAGED_CRL_ENTRIES, OcspBatch, PublicKeySet, QuorumProof, Request, ResponderInfo,
    ResponderParams, Response, RotateParams, SignatureKind, SignedCheckpoint, SignedSubject,
    SignerError, StagedCrlRequest, StatusInfo, ceremony::statement_digest, checkpoint_message,
    frame::MAX_PAYLOAD,
};
use ring::rand::SystemRandom;

use crate::backend::{Backend, BackendError};
use crate::config::Profile;
use crate::journal::{Journal, JournalError, NewRecord};
use crate::quorum;
use crate::state::{
    JOURNAL_FILE, JournalFloor, Made, State, StoredCa, StoredCustodian, StoredOutcome,
    StoredResponder,
};
use crate::x509::{
    self, BuildError, CertKind, CertSpec, CheckedTbs, CrlEntries, CrlEntrySpec, IssuerKey,
    OcspIssuer, Signed, SingleSpec,
};

/// How far a checkpoint's time may differ from the signer's clock (the
/// daemon uses the same bound to find a checkpoint's time from its journal
/// time).
pub const CHECKPOINT_MAX_SKEW_SECS: i64 = castellan_proto::CHECKPOINT_MAX_SKEW_SECS;

/// The last checkpoint signed: no later one may have a lower sequence, and
/// one for the same sequence must name the same head.
#[derive(Debug, Clone, Copy)]
struct LastCheckpoint {
    sequence: u64,
    /// SHA-256 of the signed checkpoint message (as journaled).
    digest: [u8; 32],
    /// The checkpoint itself, when known: for checkpoints signed since the
    /// signer started (the journal keeps only the digest).
    request: Option<CheckpointRequest>,
    /// When it was journaled.
    journaled_ms: i64,
}

/// Longest validity of a delegated OCSP responder certificate.
pub const MAX_RESPONDER_VALIDITY: i64 = 90 * 86_400;
/// Most OCSP responses in one batch, and most singles in one response.
pub const MAX_OCSP_BATCH: usize = 10_000;
pub const MAX_OCSP_SINGLES: usize = 64;

fn err(kind: ErrorKind, message: impl Into<String>) -> SignerError {
    SignerError {
        kind,
        message: message.into(),
    }
}

fn policy(message: impl Into<String>) -> SignerError {
    err(ErrorKind::Policy, message)
}

fn bad(message: impl Into<String>) -> SignerError {
    err(ErrorKind::BadRequest, message)
}

impl From<BuildError> for SignerError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Invalid(m) => bad(m),
            BuildError::Lint(_) => err(ErrorKind::Internal, e.to_string()),
            BuildError::Backend(b) => b.into(),
        }
    }
}

impl From<BackendError> for SignerError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unsupported(_) => bad(e.to_string()),
            _ => err(ErrorKind::Backend, e.to_string()),
        }
    }
}

impl From<JournalError> for SignerError {
    fn from(e: JournalError) -> Self {
        if let JournalError::Invalid(m) = &e {
            return bad(m.clone());
        }
        err(
            ErrorKind::Backend,
            format!("signing journal unavailable, nothing was handed out: {e}"),
        )
    }
}

/// Entries of one CRL received so far, already checked and written as DER.
struct CrlStaging {
    crl_number: u64,
    entries: CrlEntries,
}

/// A signed CRL answered with `CrlStored`: held until the issuer's next CRL
/// or a restart.
struct StoredCrl {
    crl_number: u64,
    der: Vec<u8>,
}

fn crl_entry_spec(e: &CrlEntry) -> CrlEntrySpec<'_> {
    CrlEntrySpec {
        serial: &e.serial,
        revoked_at: e.revoked_at,
        reason_code: e.reason.map(|x| x.code()),
        invalidity_date: e.invalidity_date,
    }
}

/// Takes a lock whose value is only ever replaced whole, after the journal
/// write it depends on (last CRL numbers, stored CRLs, the last
/// checkpoint), so a panic in a holder (contained by the server) leaves it
/// consistent: a poisoned lock is taken over instead of refusing every
/// later request. The CRL staging, which a panic can leave half written, is
/// taken with [`Signer::lock_staging`].
fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> Result<std::sync::MutexGuard<'a, T>, SignerError> {
    Ok(m.lock().unwrap_or_else(|p| {
        tracing::warn!(
            "the {what} lock was held by a request that panicked; its data is whole, continuing"
        );
        m.clear_poison();
        p.into_inner()
    }))
}

/// A CA as the signer uses it at run time.
#[derive(Debug, Clone)]
struct Ca {
    info: CaInfo,
    key: IssuerKey,
    key_bits: Vec<u8>,
    not_before: i64,
    not_after: i64,
    path_len: Option<u8>,
}

#[derive(Debug, Clone)]
struct Responder {
    key: IssuerKey,
    not_before: i64,
    not_after: i64,
}

struct Inner {
    state: State,
    cas: HashMap<String, Ca>,
    responders: HashMap<String, Responder>,
    custodians: CustodianSet,
    used_ceremonies: HashSet<CeremonyId>,
}

pub struct Signer {
    dir: PathBuf,
    backend: Box<dyn Backend>,
    journal: Journal,
    profiles: BTreeMap<String, Profile>,
    inner: RwLock<Inner>,
    /// Serialises ceremonies and responder rotation (state writes).
    writer: Mutex<()>,
    /// Last CRL number signed per issuer; held across sign + journal.
    crl_numbers: Mutex<HashMap<String, u64>>,
    /// The CRL being staged in chunks per issuer (`StageCrlEntries`).
    /// Taken after `crl_numbers` when both are held.
    crl_staging: Mutex<HashMap<String, CrlStaging>>,
    /// The last CRL per issuer too large to answer inline, for `ReadCrl`.
    /// Taken after `crl_numbers` when both are held.
    crl_stored: Mutex<HashMap<String, StoredCrl>>,
    rng: SystemRandom,
    seccomp: AtomicBool,
    /// Held across checking, signing and journaling a checkpoint.
    last_checkpoint: Mutex<Option<LastCheckpoint>>,
    /// Intents being signed and intents reported unsigned (closed).
    intents: Mutex<IntentBook>,
}

/// How many closed intents the signer remembers. The daemon asks about an
/// intent only once it has given up waiting for it, and closes few; the
/// oldest are forgotten first (by then their requests are long gone: a
/// request waits for the signer at most the daemon's request timeout).
const MAX_CLOSED_INTENTS: usize = 65_536;

/// See [`Request::FindIntents`]: an intent is either being signed, or was
/// reported unsigned and may no longer be signed, or neither.
#[derive(Default)]
struct IntentBook {
    in_progress: HashSet<IntentId>,
    closed: HashSet<IntentId>,
    closed_order: std::collections::VecDeque<IntentId>,
}

impl IntentBook {
    fn close(&mut self, id: IntentId) {
        if self.closed.insert(id) {
            self.closed_order.push_back(id);
            while self.closed_order.len() > MAX_CLOSED_INTENTS {
                if let Some(old) = self.closed_order.pop_front() {
                    self.closed.remove(&old);
                }
            }
        }
    }
}

/// Marks an intent as being signed until dropped.
struct IntentGuard<'a> {
    book: &'a Mutex<IntentBook>,
    id: IntentId,
}

impl Drop for IntentGuard<'_> {
    fn drop(&mut self) {
        let mut book = match self.book.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        book.in_progress.remove(&self.id);
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Ca {
    fn from_stored(id: &str, s: &StoredCa) -> Result<Ca, String> {
        let cert = hex::decode(&s.certificate_hex)
            .map_err(|_| format!("state.json: CA {id}: bad certificate"))?;
        let facts =
            x509::certificate_facts(&cert).map_err(|e| format!("state.json: CA {id}: {e}"))?;
        let (_, key_bits) =
            x509::spki_parts(&facts.spki_der).map_err(|e| format!("state.json: CA {id}: {e}"))?;
        Ok(Ca {
            info: CaInfo {
                ca_id: id.to_string(),
                parent: s.parent.clone(),
                algorithm: s.algorithm,
                status: s.status,
                certificate_der: cert,
            },
            key: IssuerKey {
                key_label: s.key_label.clone(),
                key_id: id.to_string(),
                algorithm: s.algorithm,
                spki_der: facts.spki_der,
                name_der: facts.subject_der,
            },
            key_bits,
            not_before: facts.not_before,
            not_after: facts.not_after,
            path_len: facts.path_len,
        })
    }
}

impl Responder {
    fn from_stored(issuer: &str, s: &StoredResponder) -> Result<Responder, String> {
        let cert = hex::decode(&s.certificate_hex)
            .map_err(|_| format!("state.json: responder {issuer}: bad certificate"))?;
        let facts = x509::certificate_facts(&cert)
            .map_err(|e| format!("state.json: responder {issuer}: {e}"))?;
        Ok(Responder {
            key: IssuerKey::for_responder(
                s.key_label.clone(),
                format!("ocsp:{issuer}"),
                s.algorithm,
                facts.spki_der,
                cert,
            ),
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }
}

impl Signer {
    /// Opens an initialised signer: state, journal (fully verified) and the
    /// keys the state names. Refuses, never re-creates, what it cannot open.
    pub fn open(
        dir: &Path,
        backend: Box<dyn Backend>,
        profiles: BTreeMap<String, Profile>,
    ) -> Result<Signer, String> {
        let mut state = State::load(dir)?;
        let custodians = state.custodian_set()?;
        let journal_path = dir.join(JOURNAL_FILE);
        let (journal, records) = Journal::open(&journal_path).map_err(|e| e.to_string())?;
        match &state.journal_floor {
            Some(floor) => {
                let hashes: Vec<[u8; 32]> = records.iter().map(|r| r.hash).collect();
                floor.check(&hashes, &journal_path)?;
            }
            // A state written before it recorded a floor: record the
            // journal as it is now, so that from here on an older copy is
            // refused.
            None => {
                let (count, head) = journal.head();
                state.journal_floor = Some(JournalFloor::new(count, &head));
                state.save(dir)?;
            }
        }
        let mut crl_numbers = HashMap::new();
        let mut used = HashSet::new();
        let mut last_checkpoint: Option<LastCheckpoint> = None;
        for r in &records {
            if let SignedSubject::Checkpoint(sequence) = r.subject
                && last_checkpoint.is_none_or(|l| sequence >= l.sequence)
            {
                last_checkpoint = Some(LastCheckpoint {
                    sequence,
                    digest: r.tbs_sha256,
                    request: None,
                    journaled_ms: r.time_ms,
                });
            }
            if let SignedSubject::CrlNumber(n) = r.subject {
                let e = crl_numbers.entry(r.key_id.clone()).or_insert(0);
                *e = (*e).max(n);
            }
            if let Some(id) = r.ceremony_id {
                used.insert(id);
            }
        }
        let mut cas = HashMap::new();
        for (id, s) in &state.cas {
            let ca = Ca::from_stored(id, s)?;
            let (_, spki) = backend.public_key(&s.key_label).map_err(|e| {
                format!(
                    "CA {id}: its key is not in the key backend ({e}); check the token / key store"
                )
            })?;
            if spki != ca.key.spki_der {
                return Err(format!(
                    "CA {id}: the key in the backend does not match its certificate"
                ));
            }
            cas.insert(id.clone(), ca);
        }
        let mut responders = HashMap::new();
        for (issuer, s) in &state.responders {
            responders.insert(issuer.clone(), Responder::from_stored(issuer, s)?);
        }
        backend
            .public_key(&state.audit_key_label)
            .map_err(|e| format!("the audit key is not in the key backend ({e})"))?;
        Ok(Signer {
            dir: dir.to_path_buf(),
            backend,
            journal,
            profiles,
            inner: RwLock::new(Inner {
                state,
                cas,
                responders,
                custodians,
                used_ceremonies: used,
            }),
            writer: Mutex::new(()),
            crl_numbers: Mutex::new(crl_numbers),
            crl_staging: Mutex::new(HashMap::new()),
            crl_stored: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
            seccomp: AtomicBool::new(false),
            last_checkpoint: Mutex::new(last_checkpoint),
            intents: Mutex::new(IntentBook::default()),
        })
    }

    /// Registers `id` as being signed, unless the daemon was already told it
    /// was not signed.
    fn begin_intent(&self, id: IntentId) -> Result<IntentGuard<'_>, SignerError> {
        let mut book = match self.intents.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        if book.closed.contains(&id) {
            return Err(policy(format!(
                "issuance intent {} was already reported as not signed and can no longer be signed; ask for a new certificate",
                hex::encode(id)
            )));
        }
        if !book.in_progress.insert(id) {
            return Err(bad(format!(
                "issuance intent {} is already being signed; an intent is signed at most once",
                hex::encode(id)
            )));
        }
        Ok(IntentGuard {
            book: &self.intents,
            id,
        })
    }

    /// Saves `next` with the journal's current head as its floor (see
    /// [`crate::state::JournalFloor`]) and only then makes it the state in
    /// memory: what the signer holds is always what a restart loads, so a
    /// failed save (a full disk) leaves it working on the old state rather
    /// than on a CA, responder or custodian set that a restart would forget.
    /// Called after the records of the change were journaled, so the floor
    /// covers them.
    fn commit_state(&self, inner: &mut Inner, mut next: State) -> Result<(), SignerError> {
        let (records, head) = self.journal.head();
        next.journal_floor = Some(JournalFloor::new(records, &head));
        match next.save_checked(&self.dir) {
            Ok(()) => {}
            // The new state.json is the one in place: it is in force.
            Err(e) if e.replaced => tracing::error!(
                "state.json was replaced but its directory could not be synced ({}); a crash \
                 before the next successful save may bring back the previous state.json: \
                 check the disk",
                e.message
            ),
            Err(e) => return Err(err(ErrorKind::Backend, e.message)),
        }
        inner.state = next;
        Ok(())
    }

    /// Takes a fresh key label and keeps it in state.json before the key is
    /// made: a restart never hands out a label again whose key may exist.
    fn reserve_key_label(&self, inner: &mut Inner, prefix: &str) -> Result<String, SignerError> {
        let mut next = inner.state.clone();
        let label = next.next_key_label(prefix);
        self.commit_state(inner, next).map_err(|e| {
            err(
                ErrorKind::Backend,
                format!(
                    "{}; nothing was generated or signed: make the signer's state directory {} \
                     writable again (free space, check the disk and permissions) and retry",
                    e.message,
                    self.dir.display()
                ),
            )
        })?;
        Ok(label)
    }

    /// A ceremony whose record is in the journal is spent, whatever happens
    /// after: the journal makes it spent for every later start too.
    fn spend_ceremony(&self, id: Option<CeremonyId>) {
        if let Some(id) = id {
            let mut inner = match self.inner.write() {
                Ok(i) => i,
                Err(p) => p.into_inner(),
            };
            inner.used_ceremonies.insert(id);
        }
    }

    /// The CRL staging; if a request panicked while holding it, what was
    /// staged may be half written and is discarded (the daemon stages the
    /// CRL again from offset 0, as after any refused chunk).
    fn lock_staging(&self) -> std::sync::MutexGuard<'_, HashMap<String, CrlStaging>> {
        self.crl_staging.lock().unwrap_or_else(|p| {
            tracing::warn!(
                "the CRL staging lock was held by a request that panicked; discarding every staged CRL"
            );
            let mut g = p.into_inner();
            g.clear();
            self.crl_staging.clear_poison();
            g
        })
    }

    /// Serialises state writes. It guards no data of its own, so a panic
    /// of a holder leaves nothing to repair.
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| {
            self.writer.clear_poison();
            p.into_inner()
        })
    }

    pub fn set_seccomp_active(&self) {
        self.seccomp.store(true, Ordering::Relaxed);
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend.kind()
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Inner>, SignerError> {
        self.inner.read().map_err(|_| {
            err(
                ErrorKind::Internal,
                "internal error: a request panicked while changing the signer's CA state, which may now be half changed; the signer refuses every request until it is restarted (it then reloads state.json and the journal)",
            )
        })
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, Inner>, SignerError> {
        self.inner.write().map_err(|_| {
            err(
                ErrorKind::Internal,
                "internal error: a request panicked while changing the signer's CA state, which may now be half changed; the signer refuses every request until it is restarted (it then reloads state.json and the journal)",
            )
        })
    }

    pub fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Status => self.status().map(Response::Status),
            Request::PublicKeys => self.public_keys().map(Response::PublicKeys),
            Request::IssueCertificate(t) => self.issue(&t, None).map(Response::Certificate),
            Request::IssueCertificateForIntent(t) => self.begin_intent(t.intent).and_then(|_g| {
                self.issue(&t.template, Some(t.intent))
                    .map(Response::Certificate)
            }),
            Request::FindIntents(q) => self.find_intents(&q),
            Request::Ceremony { op, proof } => self.ceremony(&op, &proof).map(Response::Ceremony),
            Request::CeremonyOutcome(q) => self.ceremony_outcome(&q).map(Response::Ceremony),
            Request::SignCrl(r) => self.sign_crl(&r),
            Request::StageCrlEntries(c) => self.stage_crl(&c),
            Request::SignStagedCrl(r) => self.sign_staged_crl(&r),
            Request::ReadCrl {
                issuer,
                crl_number,
                offset,
                length,
            } => self.read_crl(&issuer, crl_number, offset, length),
            Request::SignOcsp(b) => self
                .sign_ocsp(&b)
                .map(|responses| Response::Ocsp { responses }),
            Request::RotateOcspResponder(p) => self.rotate_responder(&p).map(Response::Responder),
            Request::SignCheckpoint(c) => self.checkpoint(c).map(Response::Checkpoint),
            Request::LastCheckpoint => self.last_checkpoint().map(Response::LastCheckpoint),
            Request::ExportJournal(w) => {
                self.export(w).map(|records| Response::Journal { records })
            }
        };
        match result {
            Ok(r) => r,
            Err(e) => Response::Error(e),
        }
    }

    fn status(&self) -> Result<StatusInfo, SignerError> {
        let inner = self.read()?;
        let (records, head) = self.journal.head();
        Ok(StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: self.backend.kind().to_string(),
            seccomp: self.seccomp.load(Ordering::Relaxed),
            journal_records: records,
            journal_head: head,
            ca_count: inner.cas.len() as u32,
            custodian_threshold: inner.custodians.threshold,
            custodian_count: inner.custodians.custodians.len() as u8,
        })
    }

    fn public_keys(&self) -> Result<PublicKeySet, SignerError> {
        let inner = self.read()?;
        let (alg, audit) = self.backend.public_key(&inner.state.audit_key_label)?;
        let mut cas: Vec<CaInfo> = inner.cas.values().map(|c| c.info.clone()).collect();
        cas.sort_by(|a, b| a.ca_id.cmp(&b.ca_id));
        let mut responders: Vec<ResponderInfo> = inner
            .responders
            .iter()
            .map(|(issuer, r)| ResponderInfo {
                issuer: issuer.clone(),
                certificate_der: r.key.name_der.clone(),
            })
            .collect();
        responders.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        Ok(PublicKeySet {
            audit_spki_der: audit,
            audit_algorithm: alg,
            cas,
            responders,
            custodians: inner.custodians.clone(),
        })
    }

    /// Signs a checked TBS and journals it before anything is returned.
    fn sign_and_journal(
        &self,
        tbs: CheckedTbs,
        key: &IssuerKey,
        ceremony_id: Option<CeremonyId>,
    ) -> Result<(Signed, u64), SignerError> {
        self.sign_and_journal_for(tbs, key, ceremony_id, None)
    }

    /// [`Self::sign_and_journal`], the record naming the daemon's intent.
    fn sign_and_journal_for(
        &self,
        tbs: CheckedTbs,
        key: &IssuerKey,
        ceremony_id: Option<CeremonyId>,
        intent: Option<IntentId>,
    ) -> Result<(Signed, u64), SignerError> {
        let signed = tbs.sign(self.backend.as_ref(), key)?;
        let rec = self.journal.append(NewRecord {
            kind: signed.kind,
            key_id: key.key_id.clone(),
            subject: signed.subject.clone(),
            tbs_sha256: signed.tbs_sha256,
            ceremony_id,
            intent,
        })?;
        self.spend_ceremony(ceremony_id);
        Ok((signed, rec.seq))
    }

    fn active_issuer(&self, inner: &Inner, issuer: &str) -> Result<Ca, SignerError> {
        let ca = inner.cas.get(issuer).ok_or_else(|| {
            policy(format!(
                "issuer {issuer:?} is not a CA held by this signer; known CAs: {}",
                known(inner.cas.keys())
            ))
        })?;
        if ca.info.status != CaStatus::Active {
            return Err(policy(format!(
                "CA {issuer:?} was rotated out and no longer issues certificates; issue from its successor"
            )));
        }
        Ok(ca.clone())
    }

    fn issue(
        &self,
        t: &CertificateTemplate,
        intent: Option<IntentId>,
    ) -> Result<IssuedCertificate, SignerError> {
        if t.ca {
            return Err(policy(
                "a certificate with cA=TRUE needs a custodian quorum: open an `intermediate` ceremony instead of issuing it",
            ));
        }
        let profile = self.profiles.get(&t.profile).ok_or_else(|| {
            policy(format!(
                "profile {:?} is not known to the signer; known profiles: {}",
                t.profile,
                known(self.profiles.keys())
            ))
        })?;
        let ca = self.active_issuer(&*self.read()?, &t.issuer)?;
        let v = t.validity;
        let period = validity_period(v.not_before, v.not_after)?;
        if period > profile.max_validity_secs {
            return Err(policy(format!(
                "validity of {period} s ({} days and {} s; notAfter counts as valid, RFC 5280 §4.1.2.5) exceeds the {} s ({} days) profile {:?} allows; the latest notAfter is notBefore + {}",
                period / 86_400,
                period % 86_400,
                profile.max_validity_secs,
                profile.max_validity_secs / 86_400,
                profile.name,
                profile.max_validity_secs - 1
            )));
        }
        if v.not_before < ca.not_before || v.not_after > ca.not_after {
            return Err(policy(format!(
                "validity must lie inside the issuing CA {:?}'s validity; shorten the certificate",
                t.issuer
            )));
        }
        let subject_der = x509::encode_name(&t.subject)?;
        let serial = x509::random_serial(&self.rng)?;
        let tbs = x509::build_certificate(&CertSpec {
            serial: &serial,
            issuer: &ca.key,
            subject_der: &subject_der,
            subject_spki_der: &t.spki_der,
            not_before: v.not_before,
            not_after: v.not_after,
            sans: &t.sans,
            kind: CertKind::Leaf {
                key_usage: profile.key_usage,
                eku: profile.eku.clone(),
            },
            urls: &t.urls,
        })?;
        let (signed, seq) = self.sign_and_journal_for(tbs, &ca.key, None, intent)?;
        Ok(IssuedCertificate {
            der: signed.der,
            serial,
            journal_seq: seq,
        })
    }

    fn ceremony(
        &self,
        op: &CeremonyOp,
        proof: &QuorumProof,
    ) -> Result<CeremonyOutcome, SignerError> {
        let _writer = self.lock_writer();
        {
            let inner = self.read()?;
            let (_, audit) = self.backend.public_key(&inner.state.audit_key_label)?;
            quorum::verify(&audit, &inner.custodians, op, proof, &inner.used_ceremonies)?;
        }
        let id = proof.ceremony_id;
        let outcome = match op {
            CeremonyOp::CreateRoot(p) => {
                if p.parent.is_some() {
                    return Err(bad(
                        "a root ceremony creates a self-signed CA: parent must be empty",
                    ));
                }
                CeremonyOutcome::Ca(self.create_ca(p, id, None)?)
            }
            CeremonyOp::CreateIntermediate(p) => {
                let Some(parent) = &p.parent else {
                    return Err(bad("an intermediate ceremony needs the parent CA"));
                };
                CeremonyOutcome::Ca(self.create_ca(p, id, Some(parent.clone()))?)
            }
            CeremonyOp::Rotate(r) => CeremonyOutcome::Ca(self.rotate(r, id)?),
            CeremonyOp::CrossSign(c) => CeremonyOutcome::CrossCertificate(self.cross_sign(c, id)?),
            CeremonyOp::ChangeCustodians(set) => {
                CeremonyOutcome::Custodians(self.change_custodians(set, id)?)
            }
        };
        let made = match &outcome {
            CeremonyOutcome::Ca(info) => Made::Ca {
                ca_id: info.ca_id.clone(),
            },
            CeremonyOutcome::CrossCertificate(c) => Made::CrossCertificate {
                serial_hex: hex::encode(&c.serial),
                certificate_hex: hex::encode(&c.der),
                journal_seq: c.journal_seq,
            },
            CeremonyOutcome::Custodians(set) => Made::Custodians {
                threshold: set.threshold,
                custodians: set
                    .custodians
                    .iter()
                    .map(|c| StoredCustodian {
                        name: c.name.clone(),
                        public_key_hex: hex::encode(c.public_key),
                    })
                    .collect(),
            },
        };
        let mut inner = self.write()?;
        inner.used_ceremonies.insert(id);
        let mut next = inner.state.clone();
        next.ceremonies.insert(
            hex::encode(id),
            StoredOutcome {
                parameters_sha256: hex::encode(statement_digest(op)),
                made,
            },
        );
        // The ceremony is done and journaled: a failure to keep its outcome
        // only costs the answer to a later `CeremonyOutcome`.
        if let Err(e) = self.commit_state(&mut inner, next) {
            tracing::error!(
                ceremony = %hex::encode(id),
                "executed, but its outcome could not be kept in state.json: {}",
                e.message
            );
        }
        Ok(outcome)
    }

    /// What executed ceremony `q.ceremony_id` made, if it was executed with
    /// the parameters `q` names. Signs nothing.
    fn ceremony_outcome(&self, q: &CeremonyOutcomeQuery) -> Result<CeremonyOutcome, SignerError> {
        let inner = self.read()?;
        let id = hex::encode(q.ceremony_id);
        let Some(kept) = inner.state.ceremonies.get(&id) else {
            return Err(bad(if inner.used_ceremonies.contains(&q.ceremony_id) {
                format!(
                    "ceremony {id} was executed (the journal says so) but this signer did not keep its outcome; see `castellan-signer journal export` for what it signed"
                )
            } else {
                format!("this signer has not executed ceremony {id}")
            }));
        };
        if kept.parameters_sha256 != hex::encode(q.parameters_sha256) {
            return Err(policy(format!(
                "ceremony {id} was executed with other parameters (SHA-256 {}) than those asked about",
                kept.parameters_sha256
            )));
        }
        let damaged = || {
            err(
                ErrorKind::Internal,
                format!("state.json: the kept outcome of ceremony {id} is malformed"),
            )
        };
        Ok(match &kept.made {
            Made::Ca { ca_id } => CeremonyOutcome::Ca(
                inner
                    .cas
                    .get(ca_id)
                    .map(|c| c.info.clone())
                    .ok_or_else(damaged)?,
            ),
            Made::CrossCertificate {
                serial_hex,
                certificate_hex,
                journal_seq,
            } => CeremonyOutcome::CrossCertificate(IssuedCertificate {
                serial: hex::decode(serial_hex).map_err(|_| damaged())?,
                der: hex::decode(certificate_hex).map_err(|_| damaged())?,
                journal_seq: *journal_seq,
            }),
            Made::Custodians {
                threshold,
                custodians,
            } => {
                let mut set = Vec::new();
                for c in custodians {
                    let public_key = hex::decode(&c.public_key_hex)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(damaged)?;
                    set.push(Custodian {
                        name: c.name.clone(),
                        public_key,
                    });
                }
                CeremonyOutcome::Custodians(CustodianSet {
                    threshold: *threshold,
                    custodians: set,
                })
            }
        })
    }

    /// Makes a new CA key and its certificate, self-signed or by `parent`.
    fn create_ca(
        &self,
        p: &CaParams,
        id: CeremonyId,
        parent: Option<String>,
    ) -> Result<CaInfo, SignerError> {
        self.new_ca(
            &p.ca_id,
            parent,
            p.algorithm,
            &p.subject,
            p.validity.not_before,
            p.validity.not_after,
            p.path_len,
            &p.urls,
            id,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn new_ca(
        &self,
        ca_id: &str,
        parent: Option<String>,
        algorithm: Algorithm,
        subject: &castellan_proto::DistinguishedName,
        not_before: i64,
        not_after: i64,
        path_len: Option<u8>,
        urls: &castellan_proto::Urls,
        id: CeremonyId,
    ) -> Result<CaInfo, SignerError> {
        if !castellan_proto::valid_ca_id(ca_id) {
            return Err(bad(format!(
                "CA id {ca_id:?} must be 1-63 characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
            )));
        }
        if not_after <= not_before {
            return Err(bad("notAfter must be after notBefore"));
        }
        let subject_der = x509::encode_name(subject)?;
        if subject.0.is_empty() {
            return Err(bad("a CA needs a subject name"));
        }
        let (parent_ca, label) = {
            let mut inner = self.write()?;
            if inner.cas.contains_key(ca_id) {
                return Err(bad(format!(
                    "a CA named {ca_id:?} exists already; choose another id"
                )));
            }
            let parent_ca = match &parent {
                Some(pid) => {
                    let pca = self.active_issuer(&inner, pid)?;
                    if not_before < pca.not_before || not_after > pca.not_after {
                        return Err(policy(format!(
                            "the new CA's validity must lie inside its parent {pid:?}'s validity"
                        )));
                    }
                    if let Some(pl) = pca.path_len {
                        if pl == 0 {
                            return Err(policy(format!(
                                "CA {pid:?} has pathLenConstraint 0 and cannot certify sub-CAs"
                            )));
                        }
                        if path_len.is_none_or(|c| c >= pl) {
                            return Err(policy(format!(
                                "the new CA's pathLenConstraint must be below its parent's ({pl}); set path_len to at most {}",
                                pl - 1
                            )));
                        }
                    }
                    Some(pca)
                }
                None => None,
            };
            let label = self.reserve_key_label(&mut inner, &format!("ca-{ca_id}"))?;
            (parent_ca, label)
        };
        let spki = self.backend.generate(&label, algorithm)?;
        let own = IssuerKey {
            key_label: label.clone(),
            key_id: ca_id.to_string(),
            algorithm,
            spki_der: spki.clone(),
            name_der: subject_der.clone(),
        };
        let issuer = parent_ca.as_ref().map_or(&own, |p| &p.key);
        let serial = x509::random_serial(&self.rng)?;
        let no_urls = castellan_proto::Urls::default();
        let tbs = x509::build_certificate(&CertSpec {
            serial: &serial,
            issuer,
            subject_der: &subject_der,
            subject_spki_der: &spki,
            not_before,
            not_after,
            sans: &[],
            kind: CertKind::Ca { path_len },
            urls: if parent_ca.is_some() { urls } else { &no_urls },
        })?;
        let (signed, seq) = self.sign_and_journal(tbs, issuer, Some(id))?;
        let stored = StoredCa {
            key_label: label,
            parent: parent.clone(),
            algorithm,
            status: CaStatus::Active,
            certificate_hex: hex::encode(&signed.der),
        };
        let ca = Ca::from_stored(ca_id, &stored).map_err(|e| err(ErrorKind::Internal, e))?;
        let mut inner = self.write()?;
        let mut next = inner.state.clone();
        next.cas.insert(ca_id.to_string(), stored);
        self.commit_state(&mut inner, next).map_err(|e| {
            err(
                ErrorKind::Backend,
                format!(
                    "the certificate of CA {ca_id:?} was signed and journaled (journal record \
                     {seq}, ceremony {}), but the CA could not be kept: {}; the CA was not \
                     created and this ceremony is spent: make the signer's state directory {} \
                     writable again (free space, check the disk and permissions), then open a \
                     new ceremony",
                    hex::encode(id),
                    e.message,
                    self.dir.display()
                ),
            )
        })?;
        inner.cas.insert(ca_id.to_string(), ca.clone());
        Ok(ca.info)
    }

    fn rotate(&self, r: &RotateParams, id: CeremonyId) -> Result<CaInfo, SignerError> {
        let parent = {
            let inner = self.read()?;
            let old = self.active_issuer(&inner, &r.ca_id)?;
            old.info.parent.clone()
        };
        let info = self.new_ca(
            &r.new_ca_id,
            parent,
            r.algorithm,
            &r.subject,
            r.validity.not_before,
            r.validity.not_after,
            r.path_len,
            &r.urls,
            id,
        )?;
        let mut inner = self.write()?;
        let mut next = inner.state.clone();
        if let Some(s) = next.cas.get_mut(&r.ca_id) {
            s.status = CaStatus::Retired;
        }
        self.commit_state(&mut inner, next).map_err(|e| {
            err(
                ErrorKind::Backend,
                format!(
                    "the successor CA {:?} was created, but {:?} could not be marked retired: {}; \
                     it still issues: make the signer's state directory {} writable again (free \
                     space, check the disk and permissions), then rotate it in a new ceremony",
                    r.new_ca_id,
                    r.ca_id,
                    e.message,
                    self.dir.display()
                ),
            )
        })?;
        if let Some(c) = inner.cas.get_mut(&r.ca_id) {
            c.info.status = CaStatus::Retired;
        }
        Ok(info)
    }

    fn cross_sign(
        &self,
        c: &CrossSignParams,
        id: CeremonyId,
    ) -> Result<IssuedCertificate, SignerError> {
        let issuer = self.active_issuer(&*self.read()?, &c.issuer)?;
        let facts = x509::certificate_facts(&c.subject_certificate_der)?;
        if !facts.is_ca {
            return Err(policy("only a CA certificate can be cross-signed"));
        }
        if c.validity.not_before < issuer.not_before || c.validity.not_after > issuer.not_after {
            return Err(policy(
                "the cross-certificate's validity must lie inside the issuer's validity",
            ));
        }
        if let Some(pl) = issuer.path_len
            && (pl == 0 || c.path_len.is_none_or(|p| p >= pl))
        {
            return Err(policy(format!(
                "the cross-certificate's pathLenConstraint must be below the issuer's ({pl})"
            )));
        }
        let serial = x509::random_serial(&self.rng)?;
        let tbs = x509::build_certificate(&CertSpec {
            serial: &serial,
            issuer: &issuer.key,
            subject_der: &facts.subject_der,
            subject_spki_der: &facts.spki_der,
            not_before: c.validity.not_before,
            not_after: c.validity.not_after,
            sans: &[],
            kind: CertKind::Ca {
                path_len: c.path_len,
            },
            urls: &c.urls,
        })?;
        let (signed, seq) = self.sign_and_journal(tbs, &issuer.key, Some(id))?;
        Ok(IssuedCertificate {
            der: signed.der,
            serial,
            journal_seq: seq,
        })
    }

    fn change_custodians(
        &self,
        set: &CustodianSet,
        id: CeremonyId,
    ) -> Result<CustodianSet, SignerError> {
        quorum::validate_set(set).map_err(bad)?;
        let encoded =
            postcard::to_stdvec(set).map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &encoded)
            .as_ref()
            .try_into()
            .map_err(|_| err(ErrorKind::Internal, "digest length"))?;
        // Journal first: the journal is what proves the change was authorised.
        let rec = self.journal.append(NewRecord {
            kind: SignatureKind::CustodianChange,
            key_id: "custodians".into(),
            subject: SignedSubject::None,
            tbs_sha256: digest,
            ceremony_id: Some(id),
            intent: None,
        })?;
        self.spend_ceremony(Some(id));
        let mut inner = self.write()?;
        let mut next = inner.state.clone();
        next.set_custodians(set);
        self.commit_state(&mut inner, next).map_err(|e| {
            err(
                ErrorKind::Backend,
                format!(
                    "the custodian change was journaled (journal record {}, ceremony {}), but \
                     the new set could not be kept: {}; the old custodian set stays in force \
                     and this ceremony is spent: make the signer's state directory {} writable \
                     again (free space, check the disk and permissions), then open a new \
                     ceremony",
                    rec.seq,
                    hex::encode(id),
                    e.message,
                    self.dir.display()
                ),
            )
        })?;
        inner.custodians = set.clone();
        Ok(set.clone())
    }

    fn issuer_any_status(&self, issuer: &str) -> Result<Ca, SignerError> {
        let inner = self.read()?;
        inner.cas.get(issuer).cloned().ok_or_else(|| {
            policy(format!(
                "issuer {issuer:?} is not a CA held by this signer; known CAs: {}",
                known(inner.cas.keys())
            ))
        })
    }

    /// A CRL in one request: its entries are all in `r`.
    fn sign_crl(&self, r: &CrlRequest) -> Result<Response, SignerError> {
        let mut entries = CrlEntries::new();
        entries.reserve(r.entries.len());
        for (i, e) in r.entries.iter().enumerate() {
            entries
                .push(&crl_entry_spec(e))
                .map_err(|e| bad(format!("CRL entry #{i}: {e}")))?;
        }
        self.sign_crl_entries(r, entries)
    }

    fn last_crl_number(&self, issuer: &str) -> Result<Option<u64>, SignerError> {
        Ok(lock(&self.crl_numbers, "CRL number")?.get(issuer).copied())
    }

    /// Appends a chunk to the issuer's staged CRL (a chunk at offset 0
    /// starts a new one). A chunk that does not continue what is staged is
    /// refused and changes nothing; a chunk with a bad entry discards the
    /// staging, since what follows it cannot be trusted to line up.
    fn stage_crl(&self, c: &CrlChunk) -> Result<Response, SignerError> {
        self.issuer_any_status(&c.issuer)?;
        if let Some(last) = self.last_crl_number(&c.issuer)?
            && c.crl_number <= last
        {
            return Err(policy(format!(
                "CRL number {} for {:?} is not above the last one signed ({last}); CRL numbers only increase; stage the CRL under a higher number",
                c.crl_number, c.issuer
            )));
        }
        let mut staging = self.lock_staging();
        if c.offset == 0 {
            staging.insert(
                c.issuer.clone(),
                CrlStaging {
                    crl_number: c.crl_number,
                    entries: CrlEntries::new(),
                },
            );
        }
        let st = match staging.get_mut(&c.issuer) {
            Some(st) if st.crl_number == c.crl_number && st.entries.len() == c.offset => st,
            other => {
                return Err(bad(format!(
                    "a chunk of CRL {} for {:?} at offset {} does not continue what is staged ({}); nothing was changed; stage the whole CRL again from offset 0",
                    c.crl_number,
                    c.issuer,
                    c.offset,
                    describe_staging(other.map(|s| &*s))
                )));
            }
        };
        let total = st.entries.len().saturating_add(c.entries.len() as u64);
        if total > MAX_STAGED_CRL_ENTRIES {
            staging.remove(&c.issuer);
            return Err(bad(format!(
                "CRL {} for {:?} would have {total} entries, more than the {MAX_STAGED_CRL_ENTRIES} a CRL may have; the staged entries were discarded; partition the issuer's revocations",
                c.crl_number, c.issuer
            )));
        }
        st.entries.reserve(c.entries.len());
        for (i, e) in c.entries.iter().enumerate() {
            if let Err(e) = st.entries.push(&crl_entry_spec(e)) {
                staging.remove(&c.issuer);
                return Err(bad(format!(
                    "CRL entry #{} of CRL {} for {:?}: {e}; the staged entries were discarded; fix the entry and stage the CRL again from offset 0",
                    c.offset.saturating_add(i as u64),
                    c.crl_number,
                    c.issuer
                )));
            }
        }
        // Read back while the next chunk is on its way, not all at signing.
        if let Err(e) = st.entries.read_back() {
            staging.remove(&c.issuer);
            return Err(SignerError::from(e));
        }
        Ok(Response::CrlStaged {
            crl_number: c.crl_number,
            staged: total,
        })
    }

    /// Signs the staged entries of (issuer, CRL number) followed by the
    /// request's own. The staging of that CRL ends here, signed or refused.
    fn sign_staged_crl(&self, r: &StagedCrlRequest) -> Result<Response, SignerError> {
        let crl = &r.crl;
        let st = {
            let mut staging = self.lock_staging();
            match staging.get(&crl.issuer) {
                Some(st) if st.crl_number == crl.crl_number => staging.remove(&crl.issuer),
                _ => None,
            }
        };
        let mut st = match st {
            Some(st) if st.entries.len() == r.staged => st,
            other => {
                let held = match &other {
                    Some(st) => describe_staging(Some(st)),
                    None => describe_staging(self.lock_staging().get(&crl.issuer)),
                };
                return Err(bad(format!(
                    "CRL {} for {:?} was to be signed with {} staged entries, but the signer holds {held}{}; stage the whole CRL again from offset 0",
                    crl.crl_number,
                    crl.issuer,
                    r.staged,
                    if other.is_some() {
                        " (now discarded)"
                    } else {
                        ""
                    }
                )));
            }
        };
        let total = st.entries.len().saturating_add(crl.entries.len() as u64);
        if total > MAX_STAGED_CRL_ENTRIES {
            return Err(bad(format!(
                "CRL {} for {:?} would have {total} entries, more than the {MAX_STAGED_CRL_ENTRIES} a CRL may have; the staged entries were discarded; partition the issuer's revocations",
                crl.crl_number, crl.issuer
            )));
        }
        st.entries.reserve(crl.entries.len());
        for (i, e) in crl.entries.iter().enumerate() {
            st.entries.push(&crl_entry_spec(e)).map_err(|e| {
                bad(format!(
                    "CRL entry #{} of CRL {} for {:?}: {e}; the staged entries were discarded; fix the entry and stage the CRL again from offset 0",
                    r.staged.saturating_add(i as u64),
                    crl.crl_number,
                    crl.issuer
                ))
            })?;
        }
        self.sign_crl_entries(crl, st.entries)
    }

    /// Policy, build, check, sign, verify and journal, once, for a CRL
    /// whose entries are written; a CRL too large for one frame is kept for
    /// `ReadCrl` and answered with `CrlStored`.
    fn sign_crl_entries(
        &self,
        r: &CrlRequest,
        entries: CrlEntries,
    ) -> Result<Response, SignerError> {
        let ca = self.issuer_any_status(&r.issuer)?;
        if r.next_update <= r.this_update {
            return Err(bad("nextUpdate must be after thisUpdate"));
        }
        let mut numbers = lock(&self.crl_numbers, "CRL number")?;
        let last = numbers.get(&r.issuer).copied();
        if let Some(last) = last
            && r.crl_number <= last
        {
            return Err(policy(format!(
                "CRL number {} for {:?} is not above the last one signed ({last}); CRL numbers only increase",
                r.crl_number, r.issuer
            )));
        }
        let tbs =
            x509::build_crl_from(&ca.key, r.crl_number, r.this_update, r.next_update, entries)?;
        let signed = tbs.sign(self.backend.as_ref(), &ca.key)?;
        let inline = signed.der.len() <= MAX_INLINE_CRL;
        // The digest a large CRL is read back against (made while it was
        // verified).
        let sha256 = (!inline).then(|| {
            signed
                .der_sha256
                .unwrap_or_else(|| x509::sha256(&signed.der))
        });
        self.journal.append(NewRecord {
            kind: signed.kind,
            key_id: ca.key.key_id.clone(),
            subject: signed.subject.clone(),
            tbs_sha256: signed.tbs_sha256,
            ceremony_id: None,
            intent: None,
        })?;
        numbers.insert(r.issuer.clone(), r.crl_number);
        // A staging of this number or below can never be signed now.
        {
            let mut staging = self.lock_staging();
            if staging
                .get(&r.issuer)
                .is_some_and(|st| st.crl_number <= r.crl_number)
            {
                staging.remove(&r.issuer);
            }
        }
        let mut stored = lock(&self.crl_stored, "stored CRL")?;
        let Some(sha256) = sha256 else {
            stored.remove(&r.issuer);
            return Ok(Response::Crl { der: signed.der });
        };
        let length = signed.der.len() as u64;
        stored.insert(
            r.issuer.clone(),
            StoredCrl {
                crl_number: r.crl_number,
                der: signed.der,
            },
        );
        Ok(Response::CrlStored {
            crl_number: r.crl_number,
            length,
            sha256,
        })
    }

    fn read_crl(
        &self,
        issuer: &str,
        crl_number: u64,
        offset: u64,
        length: u32,
    ) -> Result<Response, SignerError> {
        let stored = lock(&self.crl_stored, "stored CRL")?;
        let crl = stored
            .get(issuer)
            .filter(|s| s.crl_number == crl_number)
            .ok_or_else(|| {
                let held = match stored.get(issuer) {
                    Some(s) => format!("it holds CRL {} for it", s.crl_number),
                    None => "it holds none for it".to_string(),
                };
                bad(format!(
                    "the signer holds no CRL {crl_number} for {issuer:?} to read ({held}); it keeps only the last CRL per issuer that was too large to answer in one frame, in memory, until the issuer's next CRL or a restart; sign a new CRL with a higher number"
                ))
            })?;
        if length == 0 || length > MAX_CRL_PART {
            return Err(bad(format!(
                "a ReadCrl may ask for 1 to {MAX_CRL_PART} octets, not {length}"
            )));
        }
        let total = crl.der.len() as u64;
        let end = offset.saturating_add(u64::from(length));
        if end > total {
            return Err(bad(format!(
                "octets {offset}..{end} are beyond the end of CRL {crl_number} for {issuer:?}, which has {total} octets; read at most {} octets at offset {offset}",
                total.saturating_sub(offset)
            )));
        }
        // In range of a Vec held in memory, so both fit a usize.
        let (start, end) = (offset as usize, end as usize);
        Ok(Response::CrlPart {
            bytes: crl.der[start..end].to_vec(),
        })
    }

    fn sign_ocsp(&self, b: &OcspBatch) -> Result<Vec<Vec<u8>>, SignerError> {
        if b.responses.len() > MAX_OCSP_BATCH {
            return Err(bad(format!(
                "at most {MAX_OCSP_BATCH} OCSP responses per batch"
            )));
        }
        let ca = self.issuer_any_status(&b.issuer)?;
        let responder = self.read()?.responders.get(&b.issuer).cloned().ok_or_else(|| {
            policy(format!(
                "no delegated OCSP responder for {:?}; rotate one in (RotateOcspResponder) first",
                b.issuer
            ))
        })?;
        if b.produced_at < responder.not_before || b.produced_at >= responder.not_after {
            return Err(policy(format!(
                "the OCSP responder certificate of {:?} is not valid at producedAt; rotate the responder",
                b.issuer
            )));
        }
        let issuer = OcspIssuer {
            ca_name_der: &ca.key.name_der,
            ca_key_bits: &ca.key_bits,
        };
        // Built first, signed once the whole answer is known to fit one
        // frame: a response signed and journaled but not delivered would be
        // a signature nobody can account for.
        let mut built = Vec::with_capacity(b.responses.len());
        // The answer's frame: id, variant and list length (varints).
        let mut answer_len: usize = 32;
        for t in &b.responses {
            if t.singles.len() > MAX_OCSP_SINGLES {
                return Err(bad(format!(
                    "at most {MAX_OCSP_SINGLES} single responses per OCSP response"
                )));
            }
            let singles: Vec<SingleSpec<'_>> = t
                .singles
                .iter()
                .map(|s| SingleSpec {
                    hash: s.hash,
                    serial: &s.serial,
                    status: s.status,
                    this_update: s.this_update,
                    next_update: s.next_update,
                })
                .collect();
            for s in &singles {
                if s.next_update.is_some_and(|n| n > responder.not_after) {
                    return Err(policy(
                        "OCSP nextUpdate must not be after the responder certificate expires",
                    ));
                }
            }
            let tbs = x509::build_ocsp(
                &responder.key,
                &issuer,
                b.produced_at,
                &singles,
                t.nonce.as_deref(),
            )?;
            // Each response: its length as a varint (at most 10 octets), then
            // the response.
            answer_len =
                answer_len
                    .saturating_add(10)
                    .saturating_add(x509::ocsp_response_len_bound(
                        tbs.tbs().len(),
                        &responder.key,
                    ));
            if answer_len > MAX_PAYLOAD as usize {
                return Err(bad(format!(
                    "the answer to this batch of {} OCSP responses would take more than the {MAX_PAYLOAD} octets one frame carries (the first {} already take up to {answer_len}); nothing was signed; send fewer responses (or fewer singles per response) per batch",
                    b.responses.len(),
                    built.len() + 1
                )));
            }
            built.push(tbs);
        }
        let mut out = Vec::with_capacity(built.len());
        let mut records = Vec::with_capacity(built.len());
        for tbs in built {
            let signed = tbs.sign(self.backend.as_ref(), &responder.key)?;
            records.push(NewRecord {
                kind: signed.kind,
                key_id: responder.key.key_id.clone(),
                subject: signed.subject.clone(),
                tbs_sha256: signed.tbs_sha256,
                ceremony_id: None,
                intent: None,
            });
            out.push(signed.der);
        }
        self.journal.append_batch(records)?;
        Ok(out)
    }

    fn rotate_responder(&self, p: &ResponderParams) -> Result<ResponderInfo, SignerError> {
        let _writer = self.lock_writer();
        let ca = self.issuer_any_status(&p.issuer)?;
        let v = p.validity;
        let period = validity_period(v.not_before, v.not_after)?;
        if period > MAX_RESPONDER_VALIDITY {
            return Err(policy(format!(
                "a delegated OCSP responder certificate may be valid for at most {} days ({MAX_RESPONDER_VALIDITY} s, notAfter included), not {period} s",
                MAX_RESPONDER_VALIDITY / 86_400
            )));
        }
        if v.not_before < ca.not_before || v.not_after > ca.not_after {
            return Err(policy(
                "the responder's validity must lie inside the CA's validity",
            ));
        }
        let label = {
            let mut inner = self.write()?;
            self.reserve_key_label(&mut inner, &format!("ocsp-{}", p.issuer))?
        };
        let spki = self.backend.generate(&label, p.algorithm)?;
        let mut cn = String::from("OCSP responder for ");
        cn.push_str(&p.issuer);
        let subject_der = x509::encode_name(&castellan_proto::DistinguishedName::common_name(&cn))?;
        let serial = x509::random_serial(&self.rng)?;
        let tbs = x509::build_certificate(&CertSpec {
            serial: &serial,
            issuer: &ca.key,
            subject_der: &subject_der,
            subject_spki_der: &spki,
            not_before: v.not_before,
            not_after: v.not_after,
            sans: &[],
            kind: CertKind::OcspResponder,
            urls: &castellan_proto::Urls::default(),
        })?;
        let (signed, seq) = self.sign_and_journal(tbs, &ca.key, None)?;
        let stored = StoredResponder {
            key_label: label,
            algorithm: p.algorithm,
            certificate_hex: hex::encode(&signed.der),
        };
        let responder =
            Responder::from_stored(&p.issuer, &stored).map_err(|e| err(ErrorKind::Internal, e))?;
        let mut inner = self.write()?;
        let mut next = inner.state.clone();
        next.responders.insert(p.issuer.clone(), stored);
        self.commit_state(&mut inner, next).map_err(|e| {
            err(
                ErrorKind::Backend,
                format!(
                    "the new OCSP responder certificate of {:?} was signed and journaled \
                     (journal record {seq}), but could not be kept: {}; the previous responder \
                     stays in use: make the signer's state directory {} writable again (free \
                     space, check the disk and permissions), then rotate the responder again",
                    p.issuer,
                    e.message,
                    self.dir.display()
                ),
            )
        })?;
        inner.responders.insert(p.issuer.clone(), responder);
        Ok(ResponderInfo {
            issuer: p.issuer.clone(),
            certificate_der: signed.der,
        })
    }

    fn checkpoint(&self, c: CheckpointRequest) -> Result<SignedCheckpoint, SignerError> {
        let clock = now();
        if c.time.abs_diff(clock) > CHECKPOINT_MAX_SKEW_SECS.unsigned_abs() {
            return Err(policy(format!(
                "checkpoint time {} differs from the signer's clock ({clock}) by more than {CHECKPOINT_MAX_SKEW_SECS} s; a checkpoint is signed for the present only: send the current time (and check both clocks if this repeats)",
                c.time
            )));
        }
        let label = self.read()?.state.audit_key_label.clone();
        let message = checkpoint_message(&c);
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &message)
            .as_ref()
            .try_into()
            .map_err(|_| err(ErrorKind::Internal, "digest length"))?;
        let mut last = lock(&self.last_checkpoint, "checkpoint")?;
        if let Some(l) = *last {
            if c.sequence < l.sequence {
                return Err(policy(format!(
                    "checkpoint sequence {} is below the last one signed ({}); checkpoints only move forward: checkpoint the current head of the event log",
                    c.sequence, l.sequence
                )));
            }
            if c.sequence == l.sequence && digest != l.digest {
                match l.request.map(|r| r.head_hash) {
                    Some(head) if head != c.head_hash => {
                        return Err(policy(format!(
                            "sequence {} was checkpointed already with head {}, and this request names head {}: one sequence has one head; the event log differs from what was checkpointed, check it with `castellanctl audit verify`",
                            c.sequence,
                            hex::encode(head),
                            hex::encode(c.head_hash)
                        )));
                    }
                    Some(_) => {}
                    None => {
                        return Err(policy(format!(
                            "sequence {} was checkpointed already (before the signer's last start) with a different head or time; the signer keeps only that checkpoint's digest, so it cannot tell which: checkpoint again once the event log has grown",
                            c.sequence
                        )));
                    }
                }
            }
        }
        let signature = self.backend.sign(&label, &message)?;
        let (alg, spki) = self.backend.public_key(&label)?;
        x509::verify_signature(alg, &spki, &message, &signature)?;
        let record = self.journal.append(NewRecord {
            kind: SignatureKind::Checkpoint,
            key_id: "audit".into(),
            subject: SignedSubject::Checkpoint(c.sequence),
            tbs_sha256: digest,
            ceremony_id: None,
            intent: None,
        })?;
        *last = Some(LastCheckpoint {
            sequence: c.sequence,
            digest,
            request: Some(c),
            journaled_ms: record.time_ms,
        });
        Ok(SignedCheckpoint {
            request: c,
            signature,
        })
    }

    /// What the journal (and, since the last start, memory) holds of the
    /// last checkpoint: an event log that does not reach it was cut short
    /// or replaced by an older copy.
    fn last_checkpoint(&self) -> Result<Option<LastSignedCheckpoint>, SignerError> {
        let last = lock(&self.last_checkpoint, "last checkpoint")?;
        Ok(last.map(|l| LastSignedCheckpoint {
            sequence: l.sequence,
            message_sha256: l.digest,
            request: l.request,
            journaled_ms: l.journaled_ms,
        }))
    }

    fn export(&self, w: JournalWindow) -> Result<Vec<castellan_proto::JournalRecord>, SignerError> {
        if w.until <= w.since {
            return Err(bad("the export window's end must be after its start"));
        }
        Ok(self.journal.export(w)?)
    }

    fn find_intents(&self, q: &IntentQuery) -> Result<Response, SignerError> {
        if q.intents.is_empty() || q.intents.len() > MAX_INTENT_QUERY {
            return Err(bad(format!(
                "ask about 1 to {MAX_INTENT_QUERY} intents at a time, not {}",
                q.intents.len()
            )));
        }
        let mut wanted: HashSet<IntentId> = q.intents.iter().copied().collect();
        let mut in_progress = Vec::new();
        {
            // Close what is not being signed before reading the journal: a
            // request for it arriving from now on is refused, and one that
            // finished before is durable in the journal read below.
            let mut book = match self.intents.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            wanted.retain(|id| {
                if book.in_progress.contains(id) {
                    in_progress.push(*id);
                    false
                } else {
                    true
                }
            });
            for id in &wanted {
                book.close(*id);
            }
        }
        let found = if wanted.is_empty() {
            Vec::new()
        } else {
            self.journal.find_intents(q.since, &wanted)?
        };
        Ok(Response::IntentsFound { found, in_progress })
    }
}

/// The validity period of [`not_before`, `not_after`] in seconds, both ends
/// included (RFC 5280 §4.1.2.5: the certificate is valid at notAfter), after
/// checking that both can be encoded and notAfter is after notBefore.
fn validity_period(not_before: i64, not_after: i64) -> Result<i64, SignerError> {
    crate::der::check_time_range(not_before, "notBefore").map_err(bad)?;
    crate::der::check_time_range(not_after, "notAfter").map_err(bad)?;
    if not_after <= not_before {
        return Err(bad("notAfter must be after notBefore"));
    }
    // Both lie in 1950..=9999, so neither the difference nor + 1 overflows.
    Ok(not_after - not_before + 1)
}

fn describe_staging(st: Option<&CrlStaging>) -> String {
    match st {
        Some(st) => format!(
            "CRL {} with {} entries staged",
            st.crl_number,
            st.entries.len()
        ),
        None => "nothing staged for this issuer".to_string(),
    }
}

fn known<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let mut v: Vec<&str> = keys.map(String::as_str).collect();
    v.sort_unstable();
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(", ")
    }
}

/// Creates a new signer's state: the audit key and the custodian set. The
/// backend must already be initialised (a new soft store or a token).
pub fn initialise(dir: &Path, backend: &dyn Backend, set: &CustodianSet) -> Result<(), String> {
    quorum::validate_set(set)?;
    if dir.join(crate::state::STATE_FILE).exists() {
        return Err(format!(
            "{} is already initialised; refusing to overwrite an existing signer",
            dir.display()
        ));
    }
    // The journal first: state.json names the journal it belongs to. An
    // empty journal left by an init that stopped before writing the state is
    // reused; one with records belongs to another signer and is kept.
    let journal_path = dir.join(JOURNAL_FILE);
    let (journal, records) = if journal_path.exists() {
        Journal::open(&journal_path).map_err(|e| e.to_string())?
    } else {
        Journal::create(&journal_path).map_err(|e| e.to_string())?
    };
    if !records.is_empty() {
        return Err(format!(
            "{} holds a journal with {} records but no state.json; refusing to initialise over another signer's journal: restore its state.json, or move the journal away if it is truly unwanted",
            journal_path.display(),
            records.len()
        ));
    }
    let label = format!("castellan-audit-{}", now());
    backend
        .generate(&label, Algorithm::EcdsaP256)
        .map_err(|e| format!("cannot generate the audit key: {e}"))?;
    let mut state = State::new(set, label, Algorithm::EcdsaP256);
    let (count, head) = journal.head();
    state.journal_floor = Some(JournalFloor::new(count, &head));
    state.save(dir)?;
    Ok(())
}
