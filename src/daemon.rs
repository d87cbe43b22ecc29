//! The control daemon's domain: ceremonies, issuance, revocation and audit,
//! on top of the event store and the signer pool. Each method is what one
//! admin API route does; the HTTP layer authenticates, checks the role and
//! maps errors.
//!
//! Issuance writes its intent before it asks the signer and its result
//! after; an intent without a result (the daemon crashed, the signer
//! connection broke mid-request) is reconciled against the signer's own
//! journal and, if the journal shows a signature, recorded as possibly
//! issued — revocable and listed.

mod revocation;

pub use revocation::{
    CrlMode, OCSP_INTERNAL_ERROR, OCSP_MALFORMED, OCSP_TRY_LATER, OCSP_UNAUTHORIZED, OcspAnswer,
    PublishedCrl, ocsp_error_der,
};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use castellan_proto::{
    Algorithm, CaParams, CeremonyContext, CeremonyId, CeremonyOp, CeremonyOutcome,
    CertificateTemplate, CrossSignParams, Custodian, CustodianSet, DistinguishedName, IntentFound,
    IntentQuery, IntentTemplate, MAX_INTENT_QUERY, NameAttribute, QuorumProof, Request, Response,
    RevocationReason, RotateParams, SubjectAltName, Urls, Validity, statement, statement_digest,
};
use ring::rand::SecureRandom;

use crate::api::*;
use crate::config::Config;
use crate::events::{Actor, Event, EventPayload, RequestId};
use crate::signer_pool::{PoolError, SignerPool};
use crate::store::records::{
    CaRecord, CeremonyRecord, CeremonyStatus, CertRecord, CertState, IntentRecord, SignerKeys,
};
use crate::store::{
    CertFilter, Decision, EventFilter, ExecError, ReadView, SignerCheckpointCheck, Store,
};

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub actor: Actor,
    pub role: Role,
}

#[derive(Default)]
struct Metrics {
    issued: AtomicU64,
    revoked: AtomicU64,
    refused: AtomicU64,
    signer_errors: AtomicU64,
    signer_latency_us_total: AtomicU64,
    signer_calls: AtomicU64,
}

pub struct Daemon {
    config: RwLock<Arc<Config>>,
    store: Store,
    pool: SignerPool,
    metrics: Metrics,
    rng: ring::rand::SystemRandom,
    /// Serialises responder rotations, so that concurrent OCSP requests
    /// meeting an expired responder rotate it once.
    responder_lock: tokio::sync::Mutex<()>,
    /// Pre-signed OCSP answers, CRLs, the publish directory.
    rev: Arc<revocation::RevocationState>,
    /// Issuer chosen and chain PEM per requested issuer, valid for one
    /// [`Store::ca_generation`].
    issuers: std::sync::Mutex<IssuerCache>,
    /// Issuance intents whose `issue` call is still running here: never
    /// reconciled against the signer's journal, their result is coming.
    in_flight: std::sync::Mutex<HashSet<RequestId>>,
    /// Admin requests hold it shared for their whole run; a reload holds
    /// it exclusively while it swaps the settings, so that a request sees
    /// the whole old or the whole new configuration.
    reload_gate: Arc<tokio::sync::RwLock<()>>,
    /// The runtime the daemon was made in: background work started from a
    /// public listener worker (which has its own event loop, see
    /// `public_http::start`) runs here.
    runtime: Option<tokio::runtime::Handle>,
}

/// Keeps an intent in [`Daemon::in_flight`] until dropped.
struct InFlight<'a> {
    set: &'a std::sync::Mutex<HashSet<RequestId>>,
    id: RequestId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        match self.set.lock() {
            Ok(mut s) => s.remove(&self.id),
            Err(p) => p.into_inner().remove(&self.id),
        };
    }
}

/// Which CA issues for a requested issuer (or none: the default) and its
/// chain PEM: a function of the CA table alone, so cached until the store
/// says the CAs changed instead of read and encoded per issuance.
#[derive(Default)]
struct IssuerCache {
    generation: u64,
    chosen: HashMap<Option<String>, (String, Arc<str>)>,
}

fn err(kind: ErrorKind, m: impl Into<String>) -> ApiError {
    ApiError::new(kind, m)
}

fn bad(m: impl Into<String>) -> ApiError {
    err(ErrorKind::BadRequest, m)
}

fn refused(m: impl Into<String>) -> ApiError {
    err(ErrorKind::Refused, m)
}

fn exec_err(e: ExecError) -> ApiError {
    match e {
        ExecError::Refused(m) => refused(m),
        ExecError::Storage(m) => err(ErrorKind::Internal, format!("event log: {m}")),
    }
}

fn pool_err(e: PoolError) -> ApiError {
    match e {
        PoolError::Refused(s) => refused(s.message),
        other => err(ErrorKind::Unavailable, other.to_string()),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub use crate::names::{format_subject, parse_subject};
pub use castellan_proto::time::{parse_time_ms, rfc3339, rfc3339_ms};

fn format_san(s: &SubjectAltName) -> String {
    match s {
        SubjectAltName::Dns(d) => format!("DNS:{d}"),
        SubjectAltName::Ip(ip) => match ip.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(ip);
                format!("IP:{}", std::net::Ipv6Addr::from(a))
            }
            _ => "IP:?".into(),
        },
        SubjectAltName::Email(e) => format!("email:{e}"),
        SubjectAltName::Uri(u) => format!("URI:{u}"),
    }
}

fn hex_id(s: &str) -> Result<CeremonyId, ApiError> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad(format!("{s:?} is not a ceremony id (32 hex digits)")))
}

fn serial_from_hex(s: &str) -> Result<Vec<u8>, ApiError> {
    crate::api::parse_serial(s).map_err(bad)
}

fn ca_view(r: &CaRecord) -> CaView {
    let (subject, nb, na) = x509_facts(&r.certificate_der).unwrap_or_default();
    CaView {
        id: r.ca_id.clone(),
        parent: r.parent.clone(),
        algorithm: r.algorithm.as_str().into(),
        status: match r.status {
            castellan_proto::CaStatus::Active => "active".into(),
            castellan_proto::CaStatus::Retired => "retired".into(),
        },
        subject,
        not_before: rfc3339(nb),
        not_after: rfc3339(na),
        certificate_pem: crate::pem::encode("CERTIFICATE", &r.certificate_der),
    }
}

/// Subject (as text), notBefore, notAfter of a DER certificate.
fn x509_facts(der: &[u8]) -> Option<(String, i64, i64)> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = cert.tbs_certificate();
    Some((
        tbs.subject().to_string(),
        tbs.validity().not_before.to_unix_duration().as_secs() as i64,
        tbs.validity().not_after.to_unix_duration().as_secs() as i64,
    ))
}

fn state_name(s: CertState) -> &'static str {
    match s {
        CertState::Issued => "issued",
        CertState::Revoked => "revoked",
        CertState::PossiblyIssued => "possibly-issued",
    }
}

fn cert_view(r: &CertRecord) -> CertView {
    CertView {
        serial: hex::encode(&r.serial),
        issuer: r.issuer.clone(),
        profile: r.profile.clone(),
        identity: r.identity.clone(),
        subject: format_subject(&r.subject),
        sans: r.sans.iter().map(format_san).collect(),
        not_before: rfc3339(r.not_before),
        not_after: rfc3339(r.not_after),
        state: state_name(r.state).into(),
        revocation: r.revocation.as_ref().map(|v| RevocationView {
            reason: v.reason.as_str().into(),
            revoked_at: rfc3339(v.revoked_at),
            invalidity_date: v.invalidity_date.map(rfc3339),
        }),
        certificate_pem: r
            .certificate_der
            .as_ref()
            .map(|d| crate::pem::encode("CERTIFICATE", d)),
        ocsp: None,
        crl: None,
    }
}

fn event_view(e: &Event) -> EventView {
    EventView {
        seq: e.seq,
        time: rfc3339_ms(e.time_ms),
        actor: e.actor.describe(),
        kind: e.payload.kind().into(),
        subjects: e.payload.subjects(),
        hash: hex::encode(e.hash),
        payload: e.payload.to_json(),
    }
}

fn ceremony_view(
    r: &CeremonyRecord,
    keys: Option<&SignerKeys>,
    ca: Option<CaView>,
    certificate: Option<CeremonyCertificateView>,
) -> CeremonyView {
    let threshold = keys.map_or(0, |k| usize::from(k.custodians.threshold));
    let ctx = keys.map(|k| CeremonyContext::new(&k.audit_spki_der, &k.custodians));
    CeremonyView {
        id: hex::encode(r.ceremony_id),
        purpose: r.op.purpose().as_str().into(),
        description: crate::names::describe_ceremony(&r.op),
        op: serde_json::to_value(&r.op).unwrap_or(serde_json::Value::Null),
        parameters_sha256: hex::encode(statement_digest(&r.op)),
        opened_by: r.opened_by.describe(),
        opened_at: rfc3339(r.opened_ms / 1000),
        approvals: r
            .approvals
            .iter()
            .map(|a| ApprovalView {
                custodian: hex::encode(a.custodian),
                name: a.name.clone(),
                actor: a.actor.describe(),
                time: rfc3339(a.time_ms / 1000),
            })
            .collect(),
        approved: r.approvals.len(),
        threshold,
        state: if r.status.is_open() {
            "open".into()
        } else {
            "executed".into()
        },
        last_error: r.last_error.clone(),
        ca,
        certificate,
        signer_id: ctx.map(|c| hex::encode(c.signer_id)),
        custodians_sha256: ctx.map(|c| hex::encode(c.custodians_sha256)),
    }
}

/// The events that record an executed ceremony and what it made.
fn ceremony_result_events(
    v: &dyn ReadView,
    ceremony_id: CeremonyId,
    op: &CeremonyOp,
    outcome: CeremonyOutcome,
) -> Vec<EventPayload> {
    let mut events = vec![EventPayload::CeremonyExecuted { ceremony_id }];
    match outcome {
        CeremonyOutcome::Ca(ca) => {
            events.push(EventPayload::CaRegistered {
                ca_id: ca.ca_id,
                parent: ca.parent,
                algorithm: ca.algorithm,
                status: ca.status,
                certificate_der: ca.certificate_der,
            });
            // The signer retired the rotated CA in the same step.
            if let CeremonyOp::Rotate(r) = op
                && let Some(old) = v.ca(&r.ca_id)
                && old.status != castellan_proto::CaStatus::Retired
            {
                events.push(EventPayload::CaRegistered {
                    ca_id: old.ca_id,
                    parent: old.parent,
                    algorithm: old.algorithm,
                    status: castellan_proto::CaStatus::Retired,
                    certificate_der: old.certificate_der,
                });
            }
        }
        CeremonyOutcome::CrossCertificate(c) => {
            let issuer = match op {
                CeremonyOp::CrossSign(p) => p.issuer.clone(),
                _ => String::new(),
            };
            let (subject, not_before, not_after) = cross_certificate_facts(&c.der);
            events.push(EventPayload::CrossCertificateIssued {
                ceremony_id,
                issuer,
                serial: c.serial,
                subject,
                not_before,
                not_after,
                certificate_der: c.der,
                signer_journal_seq: c.journal_seq,
            });
        }
        CeremonyOutcome::Custodians(set) => {
            if let Some(keys) = v.signer_keys() {
                events.push(EventPayload::SignerKeysObserved {
                    audit_spki_der: keys.audit_spki_der,
                    audit_algorithm: keys.audit_algorithm,
                    custodians: set,
                });
            }
        }
    }
    events
}

/// Subject, notBefore and notAfter of a cross-certificate the signer made.
/// A subject castellan cannot express attribute by attribute (another
/// organisation's CA) is kept as its text in one CN: the DER in the event
/// is what counts.
fn cross_certificate_facts(der: &[u8]) -> (DistinguishedName, i64, i64) {
    use der::Decode;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return (DistinguishedName(Vec::new()), 0, 0);
    };
    let tbs = cert.tbs_certificate();
    let subject = crate::csr::distinguished_name(tbs.subject()).unwrap_or_else(|_| {
        DistinguishedName(vec![castellan_proto::NameAttribute::CommonName(
            tbs.subject().to_string(),
        )])
    });
    (
        subject,
        tbs.validity().not_before.to_unix_duration().as_secs() as i64,
        tbs.validity().not_after.to_unix_duration().as_secs() as i64,
    )
}

/// Which CA a ceremony made, if any.
fn ceremony_ca_id(op: &CeremonyOp) -> Option<&str> {
    match op {
        CeremonyOp::CreateRoot(p) | CeremonyOp::CreateIntermediate(p) => Some(&p.ca_id),
        CeremonyOp::Rotate(r) => Some(&r.new_ca_id),
        _ => None,
    }
}

impl Daemon {
    pub fn new(config: Arc<Config>, store: Store, pool: SignerPool) -> Daemon {
        Daemon {
            config: RwLock::new(config),
            store,
            pool,
            metrics: Metrics::default(),
            rng: ring::rand::SystemRandom::new(),
            responder_lock: tokio::sync::Mutex::new(()),
            rev: Arc::new(revocation::RevocationState::new()),
            issuers: std::sync::Mutex::new(IssuerCache::default()),
            in_flight: std::sync::Mutex::new(HashSet::new()),
            reload_gate: Arc::new(tokio::sync::RwLock::new(())),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Runs `task` on the daemon's runtime, whichever thread asks.
    pub(crate) fn spawn_background<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.runtime {
            Some(h) => drop(h.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<RequestId>> {
        match self.in_flight.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Held by an admin request for its whole run (see [`Daemon::reload`]).
    pub async fn request_gate(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        Arc::clone(&self.reload_gate).read_owned().await
    }

    /// Puts a reloaded configuration in force: records a `ConfigReloaded`
    /// event first, then — with no admin request running — has `apply`
    /// replace the settings the servers hold and replaces the daemon's
    /// own. If the event cannot be recorded nothing changes. Returns the
    /// names of the settings that changed.
    pub async fn reload(
        &self,
        new: Config,
        file_sha256: Option<[u8; 32]>,
        apply: impl FnOnce(&Config),
    ) -> Result<Vec<String>, ApiError> {
        let _gate = self.reload_gate.write().await;
        let changed = self.config().changed_settings(&new);
        let event = EventPayload::ConfigReloaded {
            config_sha256: new.sha256(),
            file_sha256,
            changed: changed.clone(),
        };
        self.store
            .execute(Actor::System, move |_| Decision::Commit {
                events: vec![event],
                output: (),
            })
            .await
            .map_err(exec_err)?;
        apply(&new);
        self.replace_config(Arc::new(new));
        Ok(changed)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => Arc::clone(&c),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Replaces the reloadable part of the configuration (SIGHUP).
    pub fn replace_config(&self, new: Arc<Config>) {
        match self.config.write() {
            Ok(mut c) => *c = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    async fn signer(&self, request: Request) -> Result<Response, ApiError> {
        let started = std::time::Instant::now();
        let r = self.pool.call(request).await;
        self.metrics.signer_calls.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .signer_latency_us_total
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if r.is_err() {
            self.metrics.signer_errors.fetch_add(1, Ordering::Relaxed);
        }
        r.map_err(pool_err)
    }

    /// Start-up: record the start, learn the signer's keys and CAs, and
    /// reconcile issuance intents left without a result.
    pub async fn startup(&self) -> Result<(), ApiError> {
        let config_sha256 = self.config().sha256();
        self.store
            .execute(Actor::System, move |_| Decision::Commit {
                events: vec![EventPayload::DaemonStarted {
                    version: env!("CARGO_PKG_VERSION").into(),
                    config_sha256,
                }],
                output: (),
            })
            .await
            .map_err(exec_err)?;
        if let Err(e) = self.sync_signer().await {
            tracing::warn!(
                "signer not synchronised at start-up: {e}; issuance is refused until it is reachable"
            );
        } else {
            if let Ok(Some(check)) = self.compare_with_signer().await
                && check.is_failure()
            {
                tracing::error!(
                    "the event log does not match the signer's last checkpoint: {}; run `castellanctl audit verify`; checkpoints are refused until this is resolved",
                    check.message()
                );
            }
            if let Err(e) = self.ensure_responders().await {
                tracing::warn!("OCSP responder rotation at start-up: {e}");
            }
        }
        self.load_crls().await;
        Ok(())
    }

    /// Records what the signer holds (audit key, custodians, CAs) when it
    /// differs from the log, then reconciles pending intents.
    pub async fn sync_signer(&self) -> Result<(), ApiError> {
        let Response::PublicKeys(keys) = self.signer(Request::PublicKeys).await? else {
            return Err(err(ErrorKind::Internal, "unexpected answer to PublicKeys"));
        };
        self.store
            .execute(Actor::System, move |v: &dyn ReadView| {
                let mut events = Vec::new();
                let current = v.signer_keys();
                let changed = current.as_ref().is_none_or(|k| {
                    k.audit_spki_der != keys.audit_spki_der || k.custodians != keys.custodians
                });
                if changed {
                    events.push(EventPayload::SignerKeysObserved {
                        audit_spki_der: keys.audit_spki_der.clone(),
                        audit_algorithm: keys.audit_algorithm,
                        custodians: keys.custodians.clone(),
                    });
                }
                for ca in &keys.cas {
                    let known = v.ca(&ca.ca_id);
                    if known.as_ref().is_none_or(|k| {
                        k.status != ca.status || k.certificate_der != ca.certificate_der
                    }) {
                        events.push(EventPayload::CaRegistered {
                            ca_id: ca.ca_id.clone(),
                            parent: ca.parent.clone(),
                            algorithm: ca.algorithm,
                            status: ca.status,
                            certificate_der: ca.certificate_der.clone(),
                        });
                    }
                }
                Decision::Commit { events, output: () }
            })
            .await
            .map_err(exec_err)?;
        self.rev.invalidate_cas();
        self.reconcile_intents().await
    }

    /// Intents without a result whose `issue` is no longer running here
    /// (the daemon crashed, or the signer's answer was lost): the signer's
    /// journal says exactly which certificate each became, if any. The signer
    /// closes every intent it reports unsigned, so a request for it still on
    /// its way is refused rather than signed after the log says "not issued";
    /// intents it is still signing are left for the next round.
    pub async fn reconcile_intents(&self) -> Result<(), ApiError> {
        let pending = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
            .pending_intents();
        let candidates: Vec<IntentRecord> = {
            let running = self.in_flight();
            pending
                .into_iter()
                .filter(|i| !running.contains(&i.request_id))
                .collect()
        };
        if candidates.is_empty() {
            return Ok(());
        }
        let mut found: HashMap<RequestId, IntentFound> = HashMap::new();
        let mut busy: HashSet<RequestId> = HashSet::new();
        for chunk in candidates.chunks(MAX_INTENT_QUERY) {
            let since = chunk.iter().map(|i| i.time_ms).min().unwrap_or(0) - 5_000;
            let query = IntentQuery {
                since,
                intents: chunk.iter().map(|i| i.request_id).collect(),
            };
            let Response::IntentsFound {
                found: f,
                in_progress,
            } = self.signer(Request::FindIntents(query)).await?
            else {
                return Err(err(ErrorKind::Internal, "unexpected answer to FindIntents"));
            };
            busy.extend(in_progress);
            for x in f {
                found.insert(x.intent, x);
            }
        }
        let asked: HashSet<RequestId> = candidates.iter().map(|i| i.request_id).collect();
        self.store
            .execute(Actor::System, move |v: &dyn ReadView| {
                let mut events = Vec::new();
                let mut intents = v.pending_intents();
                intents.sort_by_key(|i| i.seq);
                for intent in intents {
                    let id = intent.request_id;
                    if !asked.contains(&id) || busy.contains(&id) {
                        continue;
                    }
                    let serial = found
                        .get(&id)
                        .filter(|f| f.issuer == intent.issuer && v.cert(&f.serial).is_none())
                        .map(|f| f.serial.clone());
                    events.push(EventPayload::IssuanceRecovered {
                        request_id: id,
                        serial,
                    });
                }
                Decision::Commit { events, output: () }
            })
            .await
            .map_err(exec_err)
    }

    pub async fn status(&self, c: &Caller) -> Result<StatusView, ApiError> {
        let reachable = self.pool.is_reachable().await;
        let backend = if reachable {
            match self.pool.call(Request::Status).await {
                Ok(Response::Status(s)) => Some(s.backend),
                _ => None,
            }
        } else {
            None
        };
        let checkpoint_problem = if reachable {
            match self.compare_with_signer().await {
                Ok(Some(check)) if check.is_failure() => Some(format!(
                    "{}; run `castellanctl audit verify`",
                    check.message()
                )),
                _ => None,
            }
        } else {
            None
        };
        let v = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let (events, head) = v.head();
        let log_problem = self.log_problem();
        Ok(StatusView {
            log_writable: log_problem.is_none(),
            log_problem,
            version: env!("CARGO_PKG_VERSION").into(),
            events,
            head_hash: hex::encode(head),
            signer_reachable: reachable,
            signer_backend: backend,
            cas: v.cas().len(),
            certificates: v.cert_count() as usize,
            pending_intents: v.pending_intents().len(),
            last_checkpoint: v.latest_checkpoint().map(|c| c.sequence),
            actor: c.actor.describe(),
            role: c.role,
            custodians: v.signer_keys().map(|k| CustodiansView {
                threshold: k.custodians.threshold,
                members: k
                    .custodians
                    .custodians
                    .iter()
                    .map(|m| CustodianView {
                        name: m.name.clone(),
                        public_key: hex::encode(m.public_key),
                    })
                    .collect(),
            }),
            checkpoint_problem,
        })
    }

    /// (signer reachable, log writable). A store whose commit failed
    /// still starts reads but refuses every write: not ready.
    pub async fn ready(&self) -> (bool, bool) {
        let signer = self.pool.is_reachable().await;
        let log = self.store.writable().is_ok() && self.store.read().is_ok();
        (signer, log)
    }

    /// Why the event log cannot be written, and what to do, if it cannot.
    pub fn log_problem(&self) -> Option<String> {
        self.store.writable().err()
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let m = &self.metrics;
        let (commits, commands) = self.store.group_commit_stats();
        let ps = self.pool.stats();
        let calls = m.signer_calls.load(Ordering::Relaxed);
        let lat = m.signer_latency_us_total.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "castellan_certificates_issued_total",
            "counter",
            "Certificates issued.",
            m.issued.load(Ordering::Relaxed) as f64,
        );
        metric(
            "castellan_certificates_revoked_total",
            "counter",
            "Certificates revoked.",
            m.revoked.load(Ordering::Relaxed) as f64,
        );
        metric(
            "castellan_ocsp_cached_answers",
            "gauge",
            "Pre-signed OCSP answers (and revocation tombstones) held.",
            self.rev.cached_entries() as f64,
        );
        metric(
            "castellan_requests_refused_total",
            "counter",
            "Issuance requests refused.",
            m.refused.load(Ordering::Relaxed) as f64,
        );
        metric(
            "castellan_signer_calls_total",
            "counter",
            "Calls to the signer.",
            calls as f64,
        );
        metric(
            "castellan_signer_errors_total",
            "counter",
            "Failed calls to the signer.",
            m.signer_errors.load(Ordering::Relaxed) as f64,
        );
        metric(
            "castellan_signer_latency_seconds_avg",
            "gauge",
            "Mean signer round trip.",
            if calls == 0 {
                0.0
            } else {
                lat as f64 / calls as f64 / 1e6
            },
        );
        metric(
            "castellan_signer_in_flight",
            "gauge",
            "Signer requests in flight (queue depth).",
            ps.in_flight as f64,
        );
        metric(
            "castellan_signer_connections",
            "gauge",
            "Open signer connections.",
            ps.connections_open as f64,
        );
        metric(
            "castellan_log_writable",
            "gauge",
            "1 while the event log accepts writes; 0 after a failed commit (restart castellan).",
            if self.store.writable().is_ok() {
                1.0
            } else {
                0.0
            },
        );
        metric(
            "castellan_log_commits_total",
            "counter",
            "Durable event-log commits.",
            commits as f64,
        );
        metric(
            "castellan_log_commands_total",
            "counter",
            "Commands committed.",
            commands as f64,
        );
        metric(
            "castellan_log_commit_batch_size_avg",
            "gauge",
            "Mean commands per durable commit (group commit).",
            if commits == 0 {
                0.0
            } else {
                commands as f64 / commits as f64
            },
        );
        out
    }

    pub async fn ceremonies(&self, _c: &Caller) -> Result<Vec<CeremonyView>, ApiError> {
        let v = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let keys = v.signer_keys();
        Ok(v.ceremonies()
            .iter()
            .map(|r| ceremony_view(r, keys.as_ref(), None, None))
            .collect())
    }

    pub async fn open_ceremony(
        &self,
        c: &Caller,
        r: OpenCeremony,
    ) -> Result<CeremonyView, ApiError> {
        let op = {
            let config = self.config();
            let v = self
                .store
                .read()
                .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
            build_op(&r, &config.issuance.urls, |ca| {
                v.ca(ca).and_then(|c| c.parent)
            })?
        };
        let mut id = [0u8; 16];
        self.rng
            .fill(&mut id)
            .map_err(|_| err(ErrorKind::Internal, "no randomness for a ceremony id"))?;
        let op2 = op.clone();
        self.store
            .execute(c.actor.clone(), move |_| Decision::Commit {
                events: vec![EventPayload::CeremonyOpened {
                    ceremony_id: id,
                    op: op2,
                }],
                output: (),
            })
            .await
            .map_err(exec_err)?;
        self.ceremony(c, &hex::encode(id)).await
    }

    pub async fn ceremony(&self, _c: &Caller, id: &str) -> Result<CeremonyView, ApiError> {
        let id = hex_id(id)?;
        let v = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let r = v.ceremony(&id).ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                format!(
                    "no ceremony {}; list them with `castellanctl ceremony list`",
                    hex::encode(id)
                ),
            )
        })?;
        let made = match (&r.status, ceremony_ca_id(&r.op)) {
            (CeremonyStatus::Executed { .. }, Some(ca_id)) => v.ca(ca_id),
            _ => None,
        };
        let certificate = match (&r.status, &made) {
            (CeremonyStatus::ExecutedWithCertificate { serial, .. }, _) => {
                v.cert(serial).and_then(|c| {
                    Some(CeremonyCertificateView {
                        serial: hex::encode(&c.serial),
                        issuer: c.issuer,
                        certificate_pem: crate::pem::encode("CERTIFICATE", &c.certificate_der?),
                    })
                })
            }
            (_, Some(ca)) => Some(CeremonyCertificateView {
                serial: revocation::cert_serial(&ca.certificate_der)
                    .map_or_else(String::new, hex::encode),
                issuer: ca.parent.clone().unwrap_or_else(|| ca.ca_id.clone()),
                certificate_pem: crate::pem::encode("CERTIFICATE", &ca.certificate_der),
            }),
            _ => None,
        };
        let ca = made.as_ref().map(ca_view);
        Ok(ceremony_view(&r, v.signer_keys().as_ref(), ca, certificate))
    }

    pub async fn approve_ceremony(
        &self,
        c: &Caller,
        id: &str,
        r: ApproveCeremony,
    ) -> Result<CeremonyView, ApiError> {
        let cid = hex_id(id)?;
        let custodian: [u8; 32] = hex::decode(&r.custodian)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("custodian must be an Ed25519 public key in hex (64 digits)"))?;
        let signature = hex::decode(&r.signature).map_err(|_| bad("signature must be hex"))?;
        self.store
            .execute(c.actor.clone(), move |v: &dyn ReadView| {
                let Some(cer) = v.ceremony(&cid) else {
                    return Decision::Refuse {
                        events: vec![],
                        error: format!("no ceremony {}", hex::encode(cid)),
                    };
                };
                if !matches!(cer.status, CeremonyStatus::Open) {
                    return Decision::Refuse {
                        events: vec![],
                        error: format!("ceremony {} was already executed; open a new one", hex::encode(cid)),
                    };
                }
                let Some(keys) = v.signer_keys() else {
                    return Decision::Refuse {
                        events: vec![],
                        error: "the signer's custodian set is not known yet: is castellan-signer running?".into(),
                    };
                };
                let Some(member) = keys.custodians.custodians.iter().find(|m| m.public_key == custodian) else {
                    return Decision::Refuse {
                        events: vec![],
                        error: format!("key {}… is not in the signer's custodian set", &hex::encode(custodian)[..16]),
                    };
                };
                let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, custodian);
                let ctx = CeremonyContext::new(&keys.audit_spki_der, &keys.custodians);
                if pk.verify(&statement(&ctx, &cid, &cer.op), &signature).is_err() {
                    return Decision::Refuse {
                        events: vec![],
                        error: format!(
                            "the approval of {} does not verify for ceremony {}: it was made for different parameters, another ceremony, another signer or another custodian set",
                            member.name,
                            hex::encode(cid)
                        ),
                    };
                }
                // Approving twice with one key counts once.
                if cer.approvals.iter().any(|a| a.custodian == custodian) {
                    return Decision::Commit { events: vec![], output: () };
                }
                Decision::Commit {
                    events: vec![EventPayload::CeremonyApproved {
                        ceremony_id: cid,
                        custodian,
                        custodian_name: member.name.clone(),
                        signature,
                    }],
                    output: (),
                }
            })
            .await
            .map_err(exec_err)?;
        self.ceremony(c, id).await
    }

    pub async fn execute_ceremony(&self, c: &Caller, id: &str) -> Result<CeremonyView, ApiError> {
        let cid = hex_id(id)?;
        let (op, proof) = {
            let v = self
                .store
                .read()
                .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
            let r = v
                .ceremony(&cid)
                .ok_or_else(|| err(ErrorKind::NotFound, format!("no ceremony {id}")))?;
            if !matches!(r.status, CeremonyStatus::Open) {
                return Err(refused(format!(
                    "ceremony {id} was already executed; a ceremony authorises one operation — open a new one"
                )));
            }
            let m = v
                .signer_keys()
                .map_or(0, |k| usize::from(k.custodians.threshold));
            let k = r.approvals.len();
            if k < m {
                return Err(refused(format!(
                    "quorum not met: {k} of {m} custodian approvals for ceremony {id}; custodians approve with `castellanctl ceremony approve {id} --key <custodian key file> --passphrase-file <file>`"
                )));
            }
            let approvals = r
                .approvals
                .iter()
                .map(|a| castellan_proto::Approval {
                    custodian: a.custodian,
                    signature: a.signature.clone(),
                })
                .collect();
            (
                r.op.clone(),
                QuorumProof {
                    ceremony_id: cid,
                    approvals,
                },
            )
        };
        let op_done = op.clone();
        let outcome = match self.signer(Request::Ceremony { op, proof }).await {
            Ok(Response::Ceremony(o)) => o,
            Ok(_) => return Err(err(ErrorKind::Internal, "unexpected answer to a ceremony")),
            Err(e) => {
                // Refused because the signer already executed it (its answer
                // was lost before it was recorded here): record what it made.
                if e.kind == ErrorKind::Refused
                    && let Some(o) = self.executed_outcome(cid, &op_done).await
                {
                    tracing::warn!(
                        ceremony = id,
                        "the signer had already executed this ceremony; recording its outcome now"
                    );
                    return self.record_ceremony(c, id, cid, op_done, o).await;
                }
                if e.kind == ErrorKind::Refused {
                    let reason = e.message.clone();
                    let _ = self
                        .store
                        .execute(c.actor.clone(), move |_| Decision::Commit {
                            events: vec![EventPayload::CeremonyFailed {
                                ceremony_id: cid,
                                reason,
                            }],
                            output: (),
                        })
                        .await;
                }
                return Err(e);
            }
        };
        self.record_ceremony(c, id, cid, op_done, outcome).await
    }

    /// What the signer made for ceremony `cid` if it executed it with `op`.
    async fn executed_outcome(&self, cid: CeremonyId, op: &CeremonyOp) -> Option<CeremonyOutcome> {
        let q = castellan_proto::CeremonyOutcomeQuery {
            ceremony_id: cid,
            parameters_sha256: statement_digest(op),
        };
        match self.signer(Request::CeremonyOutcome(q)).await {
            Ok(Response::Ceremony(o)) => Some(o),
            _ => None,
        }
    }

    /// Records an executed ceremony and what it made.
    async fn record_ceremony(
        &self,
        c: &Caller,
        id: &str,
        cid: CeremonyId,
        op: CeremonyOp,
        outcome: CeremonyOutcome,
    ) -> Result<CeremonyView, ApiError> {
        // Everything the ceremony changed goes into the log with it, in one
        // commit: the new CA, the CA a rotation retired, the new custodian
        // set, the cross-certificate.
        self.store
            .execute(c.actor.clone(), move |v: &dyn ReadView| {
                if !v.ceremony(&cid).is_some_and(|r| r.status.is_open()) {
                    return Decision::Refuse {
                        events: vec![],
                        error: format!(
                            "ceremony {} was already recorded as executed",
                            hex::encode(cid)
                        ),
                    };
                }
                let events = ceremony_result_events(v, cid, &op, outcome);
                Decision::Commit { events, output: () }
            })
            .await
            .map_err(exec_err)?;
        self.rev.invalidate_cas();
        self.rev.wake_publishers();
        // A rotation retires the old CA and a custodian change replaces the
        // set: take the signer's view of both into the log.
        if let Err(e) = self.sync_signer().await {
            tracing::warn!("after ceremony {id}: {e}");
        }
        self.ceremony(c, id).await
    }

    pub async fn cas(&self, _c: &Caller) -> Result<Vec<CaView>, ApiError> {
        let v = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        Ok(v.cas().iter().map(ca_view).collect())
    }

    pub async fn ca(&self, _c: &Caller, id: &str) -> Result<CaView, ApiError> {
        let v = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        v.ca(id).map(|c| ca_view(&c)).ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                format!("no CA {id:?}; list them with `castellanctl ca list`"),
            )
        })
    }

    /// The issuer for `chosen` (a CA id, or `None` for the only issuing
    /// CA) and its chain PEM, from the cache while the CAs are unchanged.
    fn issuer_and_chain(&self, chosen: Option<String>) -> Result<(String, Arc<str>), ApiError> {
        // Read before the snapshot: if the CAs change meanwhile, what is
        // cached below is at least as new as this generation says.
        let generation = self.store.ca_generation();
        {
            let cache = self.issuers.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation == generation
                && let Some((issuer, chain)) = cache.chosen.get(&chosen)
            {
                return Ok((issuer.clone(), chain.clone()));
            }
        }
        let found = self.read_issuer_and_chain(chosen.as_deref())?;
        let mut cache = self.issuers.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation != generation {
            cache.generation = generation;
            cache.chosen.clear();
        }
        cache.chosen.insert(chosen, found.clone());
        Ok(found)
    }

    /// [`Self::issuer_and_chain`] read from the store, in one snapshot: a
    /// CA keeps its certificate under its id (a rotation registers a new
    /// id), so the chain read before signing is the one that goes with
    /// the certificate.
    fn read_issuer_and_chain(&self, chosen: Option<&str>) -> Result<(String, Arc<str>), ApiError> {
        let v = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let issuer = match chosen {
            Some(i) => {
                if !v
                    .ca(i)
                    .is_some_and(|c| c.status == castellan_proto::CaStatus::Active)
                {
                    return Err(refused(format!(
                        "issuer {i:?} is not an active CA; see `castellanctl ca list`"
                    )));
                }
                i.to_string()
            }
            None => {
                let active: Vec<CaRecord> = v
                    .cas()
                    .into_iter()
                    .filter(|c| c.status == castellan_proto::CaStatus::Active)
                    .collect();
                // Leaf issuance defaults to the only active CA without
                // children of its own… keep it explicit when ambiguous.
                let issuing: Vec<&CaRecord> = active
                    .iter()
                    .filter(|c| {
                        !active
                            .iter()
                            .any(|d| d.parent.as_deref() == Some(c.ca_id.as_str()))
                    })
                    .collect();
                match issuing.as_slice() {
                    [one] => one.ca_id.clone(),
                    [] => {
                        return Err(refused(
                            "no active CA yet: create one with a ceremony (`castellanctl ceremony open --purpose root …`)",
                        ));
                    }
                    many => {
                        return Err(bad(format!(
                            "several CAs could issue ({}); choose one with --issuer",
                            many.iter()
                                .map(|c| c.ca_id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
        };
        let mut pem = String::new();
        let mut next = Some(issuer.clone());
        while let Some(id) = next {
            match v.ca(&id) {
                Some(ca) if ca.parent.is_some() => {
                    pem.push_str(&crate::pem::encode("CERTIFICATE", &ca.certificate_der));
                    next = ca.parent;
                }
                _ => next = None,
            }
        }
        if let Some(e) = v.error() {
            return Err(err(ErrorKind::Internal, format!("event log: {e}")));
        }
        Ok((issuer, Arc::from(pem)))
    }

    async fn refuse_issuance(&self, c: &Caller, reason: String) -> ApiError {
        self.refuse_issuance_as(c, ErrorKind::BadRequest, reason)
            .await
    }

    /// Records an issuance refused before the signer was asked and
    /// answers with `kind`.
    async fn refuse_issuance_as(&self, c: &Caller, kind: ErrorKind, reason: String) -> ApiError {
        self.metrics.refused.fetch_add(1, Ordering::Relaxed);
        let r = reason.clone();
        let _ = self
            .store
            .execute(c.actor.clone(), move |_| Decision::<()>::Refuse {
                events: vec![EventPayload::IssuanceRefused { reason: r.clone() }],
                error: r,
            })
            .await;
        err(kind, reason)
    }

    pub async fn issue(&self, c: &Caller, r: IssueRequest) -> Result<IssuedView, ApiError> {
        let config = self.config();
        let parsed = match crate::csr::parse(r.csr_pem.as_bytes()) {
            Ok(p) => p,
            Err(e) => return Err(self.refuse_issuance(c, format!("CSR refused: {e}")).await),
        };
        let Some(profile) = config.profiles.get(&r.profile) else {
            let names: Vec<&String> = config.profiles.keys().collect();
            return Err(self
                .refuse_issuance(
                    c,
                    format!(
                        "unknown profile {:?}; configured profiles: {names:?}",
                        r.profile
                    ),
                )
                .await);
        };
        // A profile whose certificates carry a role on the mTLS admin
        // listener mints admin credentials: only a caller holding that
        // role (or more) may have one issued, or an operator could make
        // itself an admin.
        let carried = config
            .admin
            .https
            .as_ref()
            .and_then(|h| h.roles.get(&r.profile).copied());
        // And only on the admin socket: a client certificate that could
        // have another one issued would renew its own access forever, and
        // whoever stole one would keep access after its revocation.
        if carried.is_some()
            && let Actor::Mtls { .. } = c.actor
        {
            return Err(self
                .refuse_issuance_as(
                    c,
                    ErrorKind::Forbidden,
                    format!(
                        "profile {:?} issues admin-listener credentials ([admin.https] roles); \
                         they are issued on the admin socket only, never to a caller \
                         authenticated by a client certificate ({}); ask an admin to issue it",
                        r.profile,
                        c.actor.describe()
                    ),
                )
                .await);
        }
        if let Some(need) = carried
            && c.role < need
        {
            return Err(self
                .refuse_issuance_as(
                    c,
                    ErrorKind::Forbidden,
                    format!(
                        "profile {:?} issues admin-listener credentials with role {} \
                         ([admin.https] roles); issuing under it needs role {} or above, and {} \
                         has role {}; ask an admin to issue it",
                        r.profile,
                        need.as_str(),
                        need.as_str(),
                        c.actor.describe(),
                        c.role.as_str()
                    ),
                )
                .await);
        }
        if let Err(e) = check_request(profile, &parsed) {
            return Err(self
                .refuse_issuance(
                    c,
                    format!("profile {:?} refuses this request: {e}", r.profile),
                )
                .await);
        }
        let days = r.ttl_days.unwrap_or(profile.default_validity_days);
        if days == 0 || days > profile.max_validity_days {
            return Err(self
                .refuse_issuance(
                    c,
                    format!(
                        "--ttl {days} days is outside profile {:?}'s 1..={} days",
                        r.profile, profile.max_validity_days
                    ),
                )
                .await);
        }
        let chosen = r
            .issuer
            .clone()
            .or_else(|| config.issuance.default_issuer.clone());
        let (issuer, chain_pem) = match self.issuer_and_chain(chosen) {
            Ok(found) => found,
            // An unknown, inactive or ambiguous issuer is a refused request
            // like any other: it leaves its trace in the log.
            Err(e) if matches!(e.kind, ErrorKind::Refused | ErrorKind::BadRequest) => {
                return Err(self.refuse_issuance_as(c, e.kind, e.message).await);
            }
            Err(e) => return Err(e),
        };
        let identity = r.identity.clone().unwrap_or_else(|| {
            parsed
                .sans
                .iter()
                .find_map(|s| match s {
                    SubjectAltName::Dns(d) => Some(d.clone()),
                    _ => None,
                })
                .or_else(|| {
                    parsed.subject.0.iter().find_map(|a| match a {
                        NameAttribute::CommonName(cn) => Some(cn.clone()),
                        _ => None,
                    })
                })
                .unwrap_or_else(|| "(unnamed)".into())
        });
        let now = now_ms() / 1000;
        let validity = Validity {
            not_before: now - 60,
            // notAfter is itself a valid second (RFC 5280 4.1.2.5).
            not_after: now - 60 + i64::from(days) * 86_400 - 1,
        };
        let mut request_id: RequestId = [0u8; 16];
        self.rng
            .fill(&mut request_id)
            .map_err(|_| err(ErrorKind::Internal, "no randomness"))?;
        let spki_sha256 = crate::sha256(&parsed.spki_der);
        let urls = config.issuance.urls.expand(&issuer);
        let template = CertificateTemplate {
            issuer: issuer.clone(),
            profile: profile.kind.signer_profile().to_string(),
            subject: parsed.subject.clone(),
            sans: parsed.sans.clone(),
            spki_der: parsed.spki_der.clone(),
            validity,
            ca: false,
            urls,
        };
        // Intent before sign. While this call runs, the intent is not
        // reconciled: its result is coming from here.
        let _running = {
            self.in_flight().insert(request_id);
            InFlight {
                set: &self.in_flight,
                id: request_id,
            }
        };
        let intent = EventPayload::IssuanceIntended {
            request_id,
            issuer: issuer.clone(),
            profile: r.profile.clone(),
            identity,
            subject: parsed.subject,
            sans: parsed.sans,
            spki_sha256,
            not_before: validity.not_before,
            not_after: validity.not_after,
        };
        self.store
            .execute(c.actor.clone(), move |_| Decision::Commit {
                events: vec![intent],
                output: (),
            })
            .await
            .map_err(exec_err)?;
        let cert = match self
            .signer(Request::IssueCertificateForIntent(IntentTemplate {
                intent: request_id,
                template,
            }))
            .await
        {
            Ok(Response::Certificate(cert)) => cert,
            Ok(_) => {
                return Err(err(
                    ErrorKind::Internal,
                    "unexpected answer to IssueCertificate",
                ));
            }
            Err(e) if e.kind == ErrorKind::Refused => {
                let reason = e.message.clone();
                let _ = self
                    .store
                    .execute(c.actor.clone(), move |_| Decision::Commit {
                        events: vec![EventPayload::IssuanceFailed { request_id, reason }],
                        output: (),
                    })
                    .await;
                self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            // The signer may or may not have signed: the intent stays and is
            // reconciled against the signer's journal when it is back.
            Err(e) => {
                return Err(err(
                    ErrorKind::Unavailable,
                    format!(
                        "{}; issuance refused (request {} is recorded and will be reconciled)",
                        e.message,
                        hex::encode(request_id)
                    ),
                ));
            }
        };
        let serial = cert.serial.clone();
        let der = cert.der.clone();
        self.store
            .execute(c.actor.clone(), move |_| Decision::Commit {
                events: vec![EventPayload::CertificateIssued {
                    request_id,
                    serial: cert.serial,
                    certificate_der: cert.der,
                    signer_journal_seq: cert.journal_seq,
                }],
                output: (),
            })
            .await
            .map_err(exec_err)?;
        self.metrics.issued.fetch_add(1, Ordering::Relaxed);
        if self.serves_revocation() {
            self.rev.note_issued(&issuer, &serial);
        }
        Ok(IssuedView {
            serial: hex::encode(&serial),
            issuer,
            certificate_pem: crate::pem::encode("CERTIFICATE", &der),
            chain_pem: chain_pem.to_string(),
            not_after: rfc3339(validity.not_after),
        })
    }

    pub async fn certificates(&self, _c: &Caller, q: CertQuery) -> Result<CertPage, ApiError> {
        let limit = page_size(q.limit)?;
        let after = match &q.after {
            None => None,
            Some(a) => Some(hex::decode(a).map_err(|_| {
                bad(format!(
                    "after={a:?} is not a cursor; send the `next` of the previous page"
                ))
            })?),
        };
        let state = match q.state.as_deref() {
            None => None,
            Some("issued") => Some(CertState::Issued),
            Some("revoked") => Some(CertState::Revoked),
            Some("possibly-issued") => Some(CertState::PossiblyIssued),
            Some(other) => {
                return Err(bad(format!(
                    "unknown state {other:?}; use issued, revoked or possibly-issued"
                )));
            }
        };
        let v = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        // A mistyped CA id would list nothing, as if the CA had issued nothing.
        if let Some(issuer) = &q.issuer
            && v.ca(issuer).is_none()
        {
            let known: Vec<String> = v.cas().into_iter().map(|c| c.ca_id).collect();
            return Err(err(
                ErrorKind::NotFound,
                format!(
                    "no CA {issuer:?}; known CAs: {} (castellanctl ca list)",
                    if known.is_empty() {
                        "none yet".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let filter = CertFilter {
            issuer: q.issuer,
            state,
            identity: q.identity,
            limit: Some(limit),
            after,
        };
        let (records, next) = v.certs_page(&filter);
        let mut out: Vec<CertView> = records.iter().map(cert_view).collect();
        // Intents without a result are possibly issued too: list them, on
        // the last page.
        if next.is_none()
            && (filter.state.is_none() || filter.state == Some(CertState::PossiblyIssued))
        {
            for i in v.pending_intents() {
                if filter.issuer.as_ref().is_some_and(|x| *x != i.issuer) {
                    continue;
                }
                out.push(CertView {
                    serial: format!("pending:{}", hex::encode(i.request_id)),
                    issuer: i.issuer.clone(),
                    profile: i.profile.clone(),
                    identity: i.identity.clone(),
                    subject: format_subject(&i.subject),
                    sans: i.sans.iter().map(format_san).collect(),
                    not_before: rfc3339(i.not_before),
                    not_after: rfc3339(i.not_after),
                    state: "possibly-issued".into(),
                    revocation: None,
                    certificate_pem: None,
                    ocsp: None,
                    crl: None,
                });
            }
        }
        if let Some(e) = v.error() {
            return Err(err(ErrorKind::Internal, format!("event log: {e}")));
        }
        Ok(CertPage {
            certificates: out,
            next: next.map(hex::encode),
        })
    }

    pub async fn certificate(&self, _c: &Caller, serial_hex: &str) -> Result<CertView, ApiError> {
        let serial = serial_from_hex(serial_hex)?;
        let v = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let record = v.cert(&serial).ok_or_else(|| {
            err(
                ErrorKind::NotFound,
                format!("castellan never issued serial {}", hex::encode(&serial)),
            )
        })?;
        drop(v);
        let mut view = cert_view(&record);
        (view.ocsp, view.crl) = self.revocation_words(&record);
        Ok(view)
    }

    pub async fn revoke(
        &self,
        c: &Caller,
        serial_hex: &str,
        r: RevokeRequest,
    ) -> Result<CertView, ApiError> {
        let serial = serial_from_hex(serial_hex)?;
        let reason = RevocationReason::parse(&r.reason).ok_or_else(|| {
            bad(format!(
                "unknown reason {:?}; use one of: {}",
                r.reason,
                RevocationReason::ALL
                    .iter()
                    .filter(|x| **x != RevocationReason::RemoveFromCrl)
                    .map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if reason == RevocationReason::RemoveFromCrl {
            return Err(bad(
                "removeFromCRL is only for delta CRLs and is not a revocation reason",
            ));
        }
        let invalidity_date = match &r.invalidity_date {
            Some(t) => Some(
                parse_time_ms(t).ok_or_else(|| {
                    bad(format!(
                        "invalidity date {t:?}: use RFC 3339, e.g. 2026-11-23T17:00:00Z"
                    ))
                })? / 1000,
            ),
            None => None,
        };
        // Published in every CRL and OCSP answer for good: a date still to
        // come (a mistyped year) is refused, not recorded.
        if let Some(d) = invalidity_date
            && d > now_ms() / 1000
        {
            return Err(bad(format!(
                "invalidity date {} is in the future; it is when the key was (or may have \
                 been) compromised, at the latest now",
                rfc3339(d)
            )));
        }
        // An unknown serial is not found (castellanctl exits 3), not a
        // refusal (exit 1): a script tells a mistyped serial from one that
        // cannot be revoked.
        let known = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
            .cert(&serial)
            .is_some();
        if !known {
            return Err(err(
                ErrorKind::NotFound,
                format!(
                    "castellan never issued serial {}; find the serial with `castellanctl cert \
                     list --identity <name>`",
                    hex::encode(&serial)
                ),
            ));
        }
        let revoked_at = now_ms() / 1000;
        let s2 = serial.clone();
        let revoked = self
            .store
            .execute(c.actor.clone(), move |v: &dyn ReadView| {
                let Some(cert) = v.cert(&s2) else {
                    return Decision::Refuse {
                        events: vec![],
                        error: format!("castellan never issued serial {}", hex::encode(&s2)),
                    };
                };
                if let Some(rv) = &cert.revocation {
                    return Decision::Refuse {
                        events: vec![],
                        error: format!(
                            "serial {} was already revoked at {} ({})",
                            hex::encode(&s2),
                            rfc3339(rv.revoked_at),
                            rv.reason.as_str()
                        ),
                    };
                }
                Decision::Commit {
                    events: vec![EventPayload::CertificateRevoked {
                        serial: s2.clone(),
                        issuer: cert.issuer.clone(),
                        reason,
                        revoked_at,
                        invalidity_date,
                    }],
                    // The event's sequence number is the head before it.
                    output: (cert.issuer, v.head().0),
                }
            })
            .await
            .map_err(exec_err)?;
        self.metrics.revoked.fetch_add(1, Ordering::Relaxed);
        // Acknowledged only once OCSP answers `revoked` (or, with the signer
        // down, no longer answers `good`).
        let (issuer, seq) = revoked;
        let ocsp_now = self.after_revoke(&issuer, &serial, seq + 1).await;
        let mut view = self.certificate(c, &hex::encode(&serial)).await?;
        if self.serves_revocation() {
            view.ocsp = Some(ocsp_now);
        }
        Ok(view)
    }

    /// Walks the log and checks every recorded audit key against the one
    /// the signer reports: a key recorded in the log proves nothing by
    /// itself (whoever can write the file can record their own and
    /// re-sign). Without the signer the report says the checkpoint keys
    /// are unconfirmed.
    pub async fn audit_verify(&self, _c: &Caller) -> Result<VerifyView, ApiError> {
        let trusted = match self.signer(Request::PublicKeys).await {
            Ok(Response::PublicKeys(keys)) => Ok(keys.audit_spki_der),
            Ok(_) => Err("it gave an unexpected answer to PublicKeys".to_string()),
            Err(e) => Err(e.message),
        };
        let store = self.store.clone();
        let key = trusted.as_ref().ok().cloned();
        let report = tokio::task::spawn_blocking(move || store.verify_against(key.as_deref()))
            .await
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let mut view = verify_view(&report);
        match self.compare_with_signer().await {
            Ok(None) => {
                view.signer_checkpoint = "none".into();
                view.signer_checkpoint_note =
                    Some("the signer has signed no checkpoint yet: nothing to compare".into());
            }
            Ok(Some(check)) => {
                view.signer_checkpoint = match &check {
                    SignerCheckpointCheck::Matches { .. } => "matches",
                    SignerCheckpointCheck::LogBehind { .. } => "log-behind",
                    SignerCheckpointCheck::Differs { .. } => "differs",
                    SignerCheckpointCheck::Unreadable(_) => "not-checked",
                }
                .into();
                view.signer_checkpoint_sequence = match &check {
                    SignerCheckpointCheck::Matches { sequence }
                    | SignerCheckpointCheck::LogBehind { sequence, .. }
                    | SignerCheckpointCheck::Differs { sequence, .. } => Some(*sequence),
                    SignerCheckpointCheck::Unreadable(_) => None,
                };
                if check.is_failure() {
                    view.ok = false;
                }
                view.signer_checkpoint_note = Some(check.message());
            }
            Err(why) => {
                view.signer_checkpoint_note = Some(format!(
                    "whether the log was cut short or replaced by an older copy could not be checked: the signer's last checkpoint could not be read ({why}); run `castellanctl audit verify` again once castellan-signer is reachable"
                ))
            }
        }
        match trusted {
            Ok(_) => view.checkpoint_keys = "signer".into(),
            Err(why) => {
                view.checkpoint_keys_note = Some(format!(
                    "the checkpoint keys could not be confirmed against the signer ({why}): \
                     checkpoint signatures were checked only against the audit keys recorded \
                     in the log itself, which whoever can write the log could have replaced; \
                     run `castellanctl audit verify` again once castellan-signer is reachable"
                ))
            }
        }
        Ok(view)
    }

    /// Asks the signer for its last checkpoint and compares the log with
    /// it; `None` when the signer never signed one.
    async fn compare_with_signer(&self) -> Result<Option<SignerCheckpointCheck>, String> {
        let last = match self.signer(Request::LastCheckpoint).await {
            Ok(Response::LastCheckpoint(last)) => last,
            Ok(_) => return Err("it gave an unexpected answer to LastCheckpoint".to_string()),
            Err(e) => return Err(e.message),
        };
        let Some(last) = last else {
            return Ok(None);
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.compare_with_signer(&last))
            .await
            .map(Some)
            .map_err(|e| format!("the comparison did not finish ({e})"))
    }

    pub async fn audit_log(&self, _c: &Caller, q: LogQuery) -> Result<EventPage, ApiError> {
        let limit = page_size(q.limit)?;
        let since_ms =
            match &q.since {
                Some(t) => Some(parse_time_ms(t).ok_or_else(|| {
                    bad(format!("--since {t:?}: use RFC 3339 or unix milliseconds"))
                })?),
                None => None,
            };
        let until_ms =
            match &q.until {
                Some(t) => Some(parse_time_ms(t).ok_or_else(|| {
                    bad(format!("--until {t:?}: use RFC 3339 or unix milliseconds"))
                })?),
                None => None,
            };
        let filter = EventFilter {
            actor_contains: q.actor,
            kind: q.kind,
            since_ms,
            until_ms,
            subject: q.subject,
            from_seq: q.from_seq,
            // One more than the page: whether another page follows.
            limit: Some(limit.saturating_add(1)),
        };
        let mut events = self
            .store
            .events(&filter)
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?;
        let next = if events.len() > limit {
            events.truncate(limit);
            events.last().map(|e| e.seq.saturating_add(1))
        } else {
            None
        };
        Ok(EventPage {
            events: events.iter().map(event_view).collect(),
            next,
        })
    }

    pub async fn checkpoint(&self, c: &Caller) -> Result<CheckpointView, ApiError> {
        let (count, head) = self
            .store
            .read()
            .map_err(|e| err(ErrorKind::Internal, e.to_string()))?
            .head();
        if count == 0 {
            return Err(refused("the event log is empty; nothing to checkpoint"));
        }
        // Checkpointing a log that does not reach, or disagrees with, the
        // signer's last checkpoint would make the signer's record agree
        // with it and erase the evidence of the rollback.
        if let Ok(Some(check)) = self.compare_with_signer().await
            && check.is_failure()
        {
            return Err(refused(format!(
                "not checkpointing: {}; run `castellanctl audit verify`",
                check.message()
            )));
        }
        let req = castellan_proto::CheckpointRequest {
            sequence: count - 1,
            head_hash: head,
            time: now_ms() / 1000,
        };
        let Response::Checkpoint(signed) = self.signer(Request::SignCheckpoint(req)).await? else {
            return Err(err(
                ErrorKind::Internal,
                "unexpected answer to SignCheckpoint",
            ));
        };
        let view = CheckpointView {
            sequence: signed.request.sequence,
            head_hash: hex::encode(signed.request.head_hash),
            time: rfc3339(signed.request.time),
            signature: hex::encode(&signed.signature),
        };
        self.store
            .execute(c.actor.clone(), move |_| Decision::Commit {
                events: vec![EventPayload::CheckpointSigned {
                    sequence: signed.request.sequence,
                    head_hash: signed.request.head_hash,
                    time: signed.request.time,
                    signature: signed.signature,
                }],
                output: (),
            })
            .await
            .map_err(exec_err)?;
        Ok(view)
    }
}

pub fn verify_view(r: &crate::store::VerifyReport) -> VerifyView {
    VerifyView {
        ok: r.is_clean(),
        events: r.events,
        head_hash: hex::encode(r.head_hash),
        first_bad_sequence: r.first_bad.as_ref().map(|(s, _)| *s),
        problem: r.first_bad.as_ref().map(|(_, w)| w.clone()),
        checkpoints_ok: r.checkpoints_ok,
        checkpoints_bad: r.checkpoints_bad.clone(),
        last_checkpoint: r.last_checkpoint,
        foreign_audit_keys: r.foreign_audit_keys.clone(),
        checkpoint_keys: "log-only".into(),
        checkpoint_keys_note: None,
        signer_checkpoint: "not-checked".into(),
        signer_checkpoint_sequence: None,
        signer_checkpoint_note: None,
    }
}

/// The page size asked for, or the default; more than [`MAX_PAGE`] is
/// refused rather than cut silently.
fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(bad("limit=0 asks for nothing; send 1 to 10000")),
        Some(n) if n > MAX_PAGE => Err(bad(format!(
            "limit={n} is above the largest page ({MAX_PAGE}); page through with the `next` \
             cursor of each answer"
        ))),
        Some(n) => Ok(n),
    }
}

/// The profile's rules for key type, key size and names.
fn check_request(
    profile: &crate::config::Profile,
    csr: &crate::csr::ParsedCsr,
) -> Result<(), String> {
    use crate::config::KeyType;
    use crate::csr::CsrKey;
    let key = match csr.key {
        CsrKey::EcdsaP256 => KeyType::EcdsaP256,
        CsrKey::EcdsaP384 => KeyType::EcdsaP384,
        CsrKey::Rsa(bits) => {
            if (bits as u64) < u64::from(profile.min_rsa_bits) {
                return Err(format!(
                    "RSA key of {bits} bits is below the profile's minimum of {}",
                    profile.min_rsa_bits
                ));
            }
            match bits {
                2048 => KeyType::Rsa2048,
                3072 => KeyType::Rsa3072,
                4096 => KeyType::Rsa4096,
                other => {
                    return Err(format!(
                        "RSA keys of {other} bits are not issued; use 2048, 3072 or 4096"
                    ));
                }
            }
        }
    };
    profile.key_allowed(key)?;
    profile.sans_allowed(&csr.sans)?;
    check_subject(profile, csr)
}

/// The subject's attributes: bounded lengths (RFC 5280's upper bounds),
/// no control characters, and a common name that reads as a host name or
/// address passes the profile's name rules like a SAN — and, for server
/// profiles, is one of the SANs (CA/Browser Forum BR 7.1.4.3) — so that a
/// subject cannot name a host the SANs were not allowed to.
fn check_subject(
    profile: &crate::config::Profile,
    csr: &crate::csr::ParsedCsr,
) -> Result<(), String> {
    use crate::config::ProfileKind;
    for a in &csr.subject.0 {
        let (name, value, max) = match a {
            NameAttribute::CommonName(v) => ("CN (commonName)", v, 64),
            NameAttribute::Organization(v) => ("O (organizationName)", v, 64),
            NameAttribute::OrganizationalUnit(v) => ("OU (organizationalUnitName)", v, 64),
            NameAttribute::Country(v) => ("C (countryName)", v, 2),
            NameAttribute::Locality(v) => ("L (localityName)", v, 128),
            NameAttribute::State(v) => ("ST (stateOrProvinceName)", v, 128),
            NameAttribute::SerialNumber(v) => ("serialNumber", v, 64),
            NameAttribute::DomainComponent(v) => ("DC (domainComponent)", v, 63),
        };
        if value.is_empty() {
            return Err(format!(
                "subject attribute {name} is empty; leave it out instead"
            ));
        }
        if let Some(ch) = value.chars().find(|ch| ch.is_control()) {
            return Err(format!(
                "subject attribute {name} holds a control character (U+{:04X}); names carry \
                 printable text only",
                u32::from(ch)
            ));
        }
        let len = value.chars().count();
        if len > max {
            return Err(format!(
                "subject attribute {name} has {len} characters; at most {max} are allowed \
                 (RFC 5280 upper bound)"
            ));
        }
        if matches!(a, NameAttribute::Country(_))
            && !(len == 2 && value.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(format!(
                "subject attribute {name} {value:?} is not a two-letter ISO 3166 code like \"DE\""
            ));
        }
    }
    let server = matches!(
        profile.kind,
        ProfileKind::Server | ProfileKind::ServerClient
    );
    for a in &csr.subject.0 {
        let NameAttribute::CommonName(cn) = a else {
            continue;
        };
        let as_name = if let Ok(ip) = cn.parse::<std::net::IpAddr>() {
            SubjectAltName::Ip(match ip {
                std::net::IpAddr::V4(v) => v.octets().to_vec(),
                std::net::IpAddr::V6(v) => v.octets().to_vec(),
            })
        } else if looks_like_dns_name(cn) {
            SubjectAltName::Dns(cn.clone())
        } else {
            continue;
        };
        profile.name_allowed(&as_name).map_err(|e| {
            format!("subject CN {cn:?} names a host, so it must pass the profile's name rules: {e}")
        })?;
        if server && !csr.sans.iter().any(|s| same_name(s, &as_name)) {
            return Err(format!(
                "subject CN {cn:?} is not among the subject alternative names [{}]; a server \
                 certificate's CN must repeat one of its SANs (add it with --san or change the CN)",
                csr.sans
                    .iter()
                    .map(format_san)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

/// A common name that a relying party could take for a host name: a dot
/// and only the characters of host names (and a wildcard).
fn looks_like_dns_name(cn: &str) -> bool {
    cn.contains('.')
        && cn
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._*".contains(&b))
}

fn same_name(a: &SubjectAltName, b: &SubjectAltName) -> bool {
    match (a, b) {
        (SubjectAltName::Dns(x), SubjectAltName::Dns(y)) => x.eq_ignore_ascii_case(y),
        (SubjectAltName::Ip(x), SubjectAltName::Ip(y)) => x == y,
        _ => false,
    }
}

/// The ceremony operation an admin asked for. A certificate signed by
/// another CA (intermediate, rotation's successor, cross-certificate)
/// carries that CA's OCSP, caIssuers and CRL URLs, as leaves do, so relying
/// parties can check its revocation too; a root carries none. `parent_of`
/// names a CA's parent, for a rotation.
fn build_op(
    r: &OpenCeremony,
    urls: &crate::config::UrlTemplates,
    parent_of: impl Fn(&str) -> Option<String>,
) -> Result<CeremonyOp, ApiError> {
    let purpose = castellan_proto::Purpose::parse(&r.purpose).ok_or_else(|| {
        bad(format!(
            "unknown purpose {:?}; use root, intermediate, rotate, cross-sign or custodians",
            r.purpose
        ))
    })?;
    let algorithm = match &r.algorithm {
        Some(a) => Algorithm::parse(a).ok_or_else(|| {
            bad(format!(
                "unknown algorithm {a:?}; use ecdsa-p256, ecdsa-p384 or rsa-3072"
            ))
        })?,
        None => Algorithm::EcdsaP256,
    };
    // What the signer would refuse only after the custodians approved is
    // refused now, before they are called.
    let days = i64::from(r.days.unwrap_or(3650));
    if days == 0 {
        return Err(bad("--days must be at least 1 (the CA's validity in days)"));
    }
    for (flag, id) in [("--ca-id", &r.ca_id), ("--new-ca-id", &r.new_ca_id)] {
        if let Some(id) = id
            && !castellan_proto::valid_ca_id(id)
        {
            return Err(bad(format!(
                "{flag} {id:?}: a CA id is 1-63 characters of a-z, 0-9, '-', '_', '.', \
                 starting with a letter or digit (e.g. root, issuing-2026)"
            )));
        }
    }
    // Backdated an hour so certificates issued right after fit inside.
    let nb = now_ms() / 1000 - 3600;
    let validity = Validity {
        not_before: nb,
        not_after: nb + days * 86_400,
    };
    let subject = || -> Result<DistinguishedName, ApiError> {
        parse_subject(r.subject.as_deref().unwrap_or("")).map_err(bad)
    };
    let ca_id = || {
        r.ca_id
            .clone()
            .ok_or_else(|| bad("--ca-id is required for this purpose"))
    };
    Ok(match purpose {
        castellan_proto::Purpose::Root => {
            if r.parent.is_some() {
                return Err(bad(
                    "a root has no --parent; did you mean --purpose intermediate?",
                ));
            }
            CeremonyOp::CreateRoot(CaParams {
                ca_id: ca_id()?,
                parent: None,
                algorithm,
                subject: subject()?,
                validity,
                path_len: r.path_len,
                urls: Urls::default(),
            })
        }
        castellan_proto::Purpose::Intermediate => {
            let parent = r
                .parent
                .clone()
                .ok_or_else(|| bad("an intermediate needs --parent <issuing CA id>"))?;
            CeremonyOp::CreateIntermediate(CaParams {
                ca_id: ca_id()?,
                urls: urls.expand(&parent),
                parent: Some(parent),
                algorithm,
                subject: subject()?,
                validity,
                path_len: r.path_len,
            })
        }
        castellan_proto::Purpose::Rotate => CeremonyOp::Rotate(RotateParams {
            urls: ca_id()
                .ok()
                .and_then(|id| parent_of(&id))
                .map_or_else(Urls::default, |p| urls.expand(&p)),
            ca_id: ca_id()?,
            new_ca_id: r
                .new_ca_id
                .clone()
                .ok_or_else(|| bad("a rotation needs --new-ca-id for the successor CA"))?,
            algorithm,
            subject: subject()?,
            validity,
            path_len: r.path_len,
        }),
        castellan_proto::Purpose::CrossSign => {
            let pem = r.certificate_pem.as_deref().ok_or_else(|| {
                bad("a cross-signature needs the CA certificate to certify (--certificate FILE)")
            })?;
            let der = crate::pem::decode(pem.as_bytes(), &["CERTIFICATE"]).map_err(bad)?;
            let issuer = r
                .parent
                .clone()
                .ok_or_else(|| bad("a cross-signature needs --parent <issuing CA id>"))?;
            CeremonyOp::CrossSign(CrossSignParams {
                urls: urls.expand(&issuer),
                issuer,
                subject_certificate_der: der,
                validity,
                path_len: r.path_len,
            })
        }
        castellan_proto::Purpose::Custodians => {
            let mut custodians = Vec::new();
            for (name, key) in &r.custodians {
                let k = key.trim();
                let public_key: [u8; 32] = hex::decode(k.strip_prefix("ed25519:").unwrap_or(k))
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "custodian {name}: not an Ed25519 public key in hex"
                        ))
                    })?;
                custodians.push(Custodian {
                    name: name.clone(),
                    public_key,
                });
            }
            CeremonyOp::ChangeCustodians(CustodianSet {
                threshold: r
                    .threshold
                    .ok_or_else(|| bad("--threshold is required for a custodian change"))?,
                custodians,
            })
        }
    })
}
