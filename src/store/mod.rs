//! The control daemon's event store: an append-only, hash-chained log of
//! [`Event`]s in redb, and the projections (state tables) derived from it.
//!
//! # How a command becomes durable
//!
//! One writer thread owns every write transaction. A caller hands it a
//! `decide` closure ([`Store::execute`]); the writer takes every command
//! queued at that moment (up to [`MAX_BATCH`]), opens one write
//! transaction, and for each command in turn runs `decide` against the
//! projections *as changed by the earlier commands of the batch*, numbers
//! and chains the resulting events, appends them and applies them to the
//! projections. Then it commits once, durably (`Durability::Immediate`, one
//! fsync), and only then answers the callers. If the commit fails, every
//! caller of the batch gets [`ExecError::Storage`]: nothing is acknowledged
//! that is not on disk. With group commit disabled each batch holds one
//! command (for benchmarks).
//!
//! Applying an event (`apply.rs`) cannot fail for domain reasons and touches
//! nothing outside redb, so `rebuild_projections` (delete every projection
//! table, replay every event through the same code) gives the same bytes.
//!
//! # File layout (one redb file, mode 0600)
//!
//! `lp(s)` is `u32 big-endian length ‖ UTF-8 bytes of s`, so a prefix scan
//! for one name never meets a longer name that starts the same way. Values
//! marked postcard are the structs of [`records`] (field order is the
//! format: append-only). "(empty)" values make a table a set of keys.
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"layout_version"` | u32 little-endian, [`LAYOUT_VERSION`] |
//! | `events` | seq (redb u64: 8 bytes little-endian) | postcard([`Event`]) — append-only, never updated |
//! | `p.signer_keys` | `"current"` | postcard([`SignerKeys`]) |
//! | `p.cas` | CA id (UTF-8) | postcard([`CaRecord`]) |
//! | `p.certs` | serial (raw octets) | postcard([`CertRecord`]) |
//! | `p.certs_by_identity` | lp(identity) ‖ serial | (empty) |
//! | `p.certs_by_issuer` | lp(issuer) ‖ issued_seq (u64 big-endian) ‖ serial | (empty) |
//! | `p.revoked_by_issuer` | lp(issuer) ‖ serial | (empty) |
//! | `p.intents` | request id (16 octets) | postcard([`IntentRecord`]) |
//! | `p.ceremonies` | ceremony id (16 octets) | postcard([`CeremonyRecord`]) |
//! | `p.checkpoints` | seq of the `CheckpointSigned` event (u64 big-endian) | postcard([`CheckpointRecord`]) |
//! | `p.graph` | lp(node) ‖ child node (UTF-8) | (empty) |
//!
//! Graph nodes are `ca:<id>`, `cert:<serial hex>`, `identity:<name>`; edges
//! go CA → child CA (stored in `p.graph`), CA → certificate (read from
//! `p.certs_by_issuer`) and certificate → identity (read from the record).
//!
//! Every issuance dirties a few B-tree pages per table it touches, and a
//! group commit's cost is mostly those pages' bytes: keys are chosen so
//! that what grows with every issuance (events, the issuer index) appends
//! at a tail, and nothing is stored twice that can be read once.
//!
//! Every `p.*` table is a projection; `meta` and `events` are not.

mod apply;
pub mod records;
mod tables;
#[cfg(test)]
mod tests;
mod verify;

use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{JoinHandle, ThreadId};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Builder, Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageError,
};

use crate::events::{Actor, Event, EventPayload, Millis, RequestId};
use castellan_proto::CeremonyId;

pub use records::{
    ApprovalRecord, CaRecord, CeremonyRecord, CeremonyStatus, CertFilter, CertRecord, CertState,
    CheckpointRecord, CrlRecord, IntentRecord, ResponderRecord, Revocation, SignerKeys,
};
pub use tables::LAYOUT_VERSION;
pub use verify::{SignerCheckpointCheck, VerifyReport};

use tables::{
    EVENTS, META, META_LAYOUT, N_PROJECTIONS, NAMES, ReadTables, WriteTables, decode_event,
    projection,
};

/// The most commands that share one commit.
pub const MAX_BATCH: usize = 512;

/// How long the writer waits for more commands when it already has
/// several (a sign of load); a lone command is written at once.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);

/// redb's page cache. The working set is the recent tail of the log and
/// the projections; the default (1 GiB) is more than an appliance spares.
const CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Events replayed per read during `rebuild_projections`.
const REPLAY_CHUNK: usize = 1024;

/// What commands see: the projections at the point of the log where they
/// run. Errors met while answering are not silent: the writer aborts the
/// batch (see [`Snapshot::error`] for readers).
pub trait ReadView {
    /// (number of events, hash of the last event or zeros).
    fn head(&self) -> (u64, [u8; 32]);
    /// From the latest `SignerKeysObserved`.
    fn signer_keys(&self) -> Option<SignerKeys>;
    fn ca(&self, ca_id: &str) -> Option<CaRecord>;
    fn cas(&self) -> Vec<CaRecord>;
    /// The current delegated OCSP responder of a CA.
    fn responder(&self, issuer: &str) -> Option<ResponderRecord>;
    fn cert(&self, serial: &[u8]) -> Option<CertRecord>;
    fn certs(&self, filter: &CertFilter) -> Vec<CertRecord>;
    /// [`ReadView::certs`], at most `filter.limit` of them from
    /// `filter.after` on, and the cursor to pass as `after` for the next
    /// page (`None` when nothing follows). The cursor is a position in the
    /// table the filter selects (by serial, or the index's order).
    fn certs_page(&self, filter: &CertFilter) -> (Vec<CertRecord>, Option<Vec<u8>>);
    fn certs_by_identity(&self, identity: &str) -> Vec<CertRecord>;
    fn intent(&self, request_id: &RequestId) -> Option<IntentRecord>;
    /// Intents without a result, in request-id order.
    fn pending_intents(&self) -> Vec<IntentRecord>;
    fn ceremony(&self, id: &CeremonyId) -> Option<CeremonyRecord>;
    fn ceremonies(&self) -> Vec<CeremonyRecord>;
    /// Every revoked certificate of an issuer, in serial order.
    /// (`certs` with an issuer lists in issuance order.)
    fn revoked(&self, issuer: &str) -> Vec<CertRecord>;
    /// (serial, revocation) of every revoked certificate of an issuer, in
    /// serial order: what a CRL lists, without reading the certificates.
    fn revocations(&self, issuer: &str) -> Vec<(Vec<u8>, Revocation)>;
    /// The latest CRL published for a CA.
    fn crl(&self, issuer: &str) -> Option<CrlRecord>;
    /// Serials of the certificates of `issuer` whose notAfter is after
    /// `now` (Unix seconds), from the issuer index alone, in issuance order.
    fn unexpired_serials(&self, issuer: &str, now: i64) -> Vec<Vec<u8>>;
    /// How many certificate records there are (issued, revoked, possibly
    /// issued), without reading them.
    fn cert_count(&self) -> u64;
    fn latest_checkpoint(&self) -> Option<CheckpointRecord>;
    /// Credential graph: `ca:<id>` → child CAs (`ca:<id>`), then its
    /// certificates in issuance order (`cert:<serial hex>`);
    /// `cert:<serial hex>` → `identity:<name>`.
    fn children(&self, node: &str) -> Vec<String>;
}

/// What a command decided, given the current projections.
pub enum Decision<T> {
    /// Record `events`, then answer `Ok(output)`.
    Commit {
        events: Vec<EventPayload>,
        output: T,
    },
    /// Record `events` (e.g. `IssuanceRefused`) durably all the same, then
    /// answer `Err(ExecError::Refused(error))`.
    Refuse {
        events: Vec<EventPayload>,
        error: String,
    },
}

/// Why `execute` did not return the command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// Policy said no; the refusal's events are recorded. The text is the
    /// command's own, for the operator.
    Refused(String),
    /// The store could not record the command: nothing was acknowledged
    /// (the command may still have been written if the commit failed
    /// half-way; retrying is safe only for idempotent commands).
    Storage(String),
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::Refused(why) => write!(f, "refused: {why}"),
            ExecError::Storage(why) => write!(
                f,
                "the event store could not record the operation: {why}; it was not acknowledged \
                 — check the daemon log and the disk, then retry"
            ),
        }
    }
}

impl std::error::Error for ExecError {}

/// Errors opening or reading the store.
#[derive(Debug)]
pub enum StoreError {
    /// Another process (a running daemon?) has the file open.
    AlreadyOpen { path: PathBuf },
    /// The file cannot be created, opened or read (permissions, missing
    /// directory, I/O).
    Open { path: PathBuf, reason: String },
    /// The file is not a usable event store (not redb, damaged, or its last
    /// event is unreadable).
    Damaged { path: PathBuf, reason: String },
    /// Written by a castellan with another table layout.
    UnsupportedLayout { path: PathBuf, found: u32 },
    /// A storage operation failed while the store was open.
    Storage(String),
    /// An event in the log does not decode.
    CorruptEvent { seq: u64, reason: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::AlreadyOpen { path } => write!(
                f,
                "the event store {} is open in another process (a running castellan daemon?): \
                 stop it first, or work on a copy of the file",
                path.display()
            ),
            StoreError::Open { path, reason } => write!(
                f,
                "cannot open the event store {}: {reason}; check the path, that its directory \
                 exists, and that castellan's user may read and write it",
                path.display()
            ),
            StoreError::Damaged { path, reason } => write!(
                f,
                "the event store {} cannot be used: {reason}; keep the file, run `audit verify` \
                 on a copy, and restore the latest backup",
                path.display()
            ),
            StoreError::UnsupportedLayout { path, found } => write!(
                f,
                "the event store {} has table layout {found}, this castellan reads layout \
                 {LAYOUT_VERSION}: run the castellan version that wrote it",
                path.display()
            ),
            StoreError::Storage(why) => write!(
                f,
                "event store: {why}; check the disk (space, I/O errors in the kernel log) and \
                 the daemon log"
            ),
            StoreError::CorruptEvent { seq, reason } => write!(
                f,
                "event {seq} of the log does not decode ({reason}); run `audit verify` to find \
                 the first damaged event and restore the latest backup"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn storage(what: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Storage(format!("{what}: {e}"))
}

/// Which events `Store::events` returns. Every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// A substring of `Actor::describe()`.
    pub actor_contains: Option<String>,
    /// `EventPayload::kind()`, e.g. `certificate-issued`.
    pub kind: Option<String>,
    /// Inclusive lower bound on `time_ms`.
    pub since_ms: Option<Millis>,
    /// Exclusive upper bound on `time_ms`.
    pub until_ms: Option<Millis>,
    /// One of `EventPayload::subjects()` (hex compared without case).
    pub subject: Option<String>,
    /// First sequence number to consider.
    pub from_seq: Option<u64>,
    /// At most this many events.
    pub limit: Option<usize>,
}

impl EventFilter {
    fn matches(&self, ev: &Event) -> bool {
        self.since_ms.is_none_or(|s| ev.time_ms >= s)
            && self.kind.as_deref().is_none_or(|k| ev.payload.kind() == k)
            && self
                .actor_contains
                .as_deref()
                .is_none_or(|a| ev.actor.describe().contains(a))
            && self.subject.as_deref().is_none_or(|s| {
                ev.payload
                    .subjects()
                    .iter()
                    .any(|x| x == s || x.eq_ignore_ascii_case(s))
            })
    }
}

/// A consistent read-only view (one redb read transaction).
pub struct Snapshot {
    tables: ReadTables,
}

impl Snapshot {
    /// The first storage or decoding error met by a `ReadView` call on this
    /// snapshot, if any: answers given after it may be incomplete.
    pub fn error(&self) -> Option<String> {
        self.tables.peek_error()
    }
}

impl ReadView for Snapshot {
    fn head(&self) -> (u64, [u8; 32]) {
        self.tables.head()
    }
    fn signer_keys(&self) -> Option<SignerKeys> {
        self.tables.signer_keys()
    }
    fn ca(&self, ca_id: &str) -> Option<CaRecord> {
        self.tables.ca(ca_id)
    }
    fn cas(&self) -> Vec<CaRecord> {
        self.tables.cas()
    }
    fn responder(&self, issuer: &str) -> Option<ResponderRecord> {
        self.tables.responder(issuer)
    }
    fn cert(&self, serial: &[u8]) -> Option<CertRecord> {
        self.tables.cert(serial)
    }
    fn certs(&self, filter: &CertFilter) -> Vec<CertRecord> {
        self.tables.certs(filter)
    }
    fn certs_page(&self, filter: &CertFilter) -> (Vec<CertRecord>, Option<Vec<u8>>) {
        self.tables.certs_page(filter)
    }
    fn certs_by_identity(&self, identity: &str) -> Vec<CertRecord> {
        self.tables.certs_by_identity(identity)
    }
    fn intent(&self, request_id: &RequestId) -> Option<IntentRecord> {
        self.tables.intent(request_id)
    }
    fn pending_intents(&self) -> Vec<IntentRecord> {
        self.tables.pending_intents()
    }
    fn ceremony(&self, id: &CeremonyId) -> Option<CeremonyRecord> {
        self.tables.ceremony(id)
    }
    fn ceremonies(&self) -> Vec<CeremonyRecord> {
        self.tables.ceremonies()
    }
    fn revoked(&self, issuer: &str) -> Vec<CertRecord> {
        self.tables.revoked(issuer)
    }
    fn revocations(&self, issuer: &str) -> Vec<(Vec<u8>, Revocation)> {
        self.tables.revocations(issuer)
    }
    fn crl(&self, issuer: &str) -> Option<CrlRecord> {
        self.tables.crl(issuer)
    }
    fn unexpired_serials(&self, issuer: &str, now: i64) -> Vec<Vec<u8>> {
        self.tables.unexpired_serials(issuer, now)
    }
    fn cert_count(&self) -> u64 {
        self.tables.cert_count()
    }
    fn latest_checkpoint(&self) -> Option<CheckpointRecord> {
        self.tables.latest_checkpoint()
    }
    fn children(&self, node: &str) -> Vec<String> {
        self.tables.children(node)
    }
}

// ---------------------------------------------------------------------------
// Commands as the writer sees them.

type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

/// A decided command: its events, and how to answer once the batch's fate
/// is known (`None`: committed; `Some(why)`: not).
struct Prepared {
    actor: Actor,
    events: Vec<EventPayload>,
    finish: Finish,
}

trait Command: Send {
    fn decide(self: Box<Self>, view: &dyn ReadView) -> Prepared;
    fn fail(self: Box<Self>, why: String);
}

enum Reply<T> {
    Async(tokio::sync::oneshot::Sender<Result<T, ExecError>>),
    Blocking(mpsc::SyncSender<Result<T, ExecError>>),
}

impl<T> Reply<T> {
    fn send(self, r: Result<T, ExecError>) {
        // A caller that went away no longer wants the answer; the command
        // is recorded all the same.
        match self {
            Reply::Async(s) => {
                let _ = s.send(r);
            }
            Reply::Blocking(s) => {
                let _ = s.send(r);
            }
        }
    }
}

struct Typed<T, F> {
    actor: Actor,
    decide: F,
    reply: Reply<T>,
}

impl<T, F> Command for Typed<T, F>
where
    T: Send + 'static,
    F: FnOnce(&dyn ReadView) -> Decision<T> + Send + 'static,
{
    fn decide(self: Box<Self>, view: &dyn ReadView) -> Prepared {
        let Typed {
            actor,
            decide,
            reply,
        } = *self;
        let (events, answer) = match decide(view) {
            Decision::Commit { events, output } => (events, Ok(output)),
            Decision::Refuse { events, error } => (events, Err(ExecError::Refused(error))),
        };
        Prepared {
            actor,
            events,
            finish: Box::new(move |failed: Option<&str>| {
                reply.send(match failed {
                    None => answer,
                    Some(why) => Err(ExecError::Storage(why.to_string())),
                })
            }),
        }
    }

    fn fail(self: Box<Self>, why: String) {
        self.reply.send(Err(ExecError::Storage(why)))
    }
}

const DROPPED: &str = "the event store's writer dropped the command (it panicked, or the writer \
                       stopped); see the daemon log and restart the daemon";

// ---------------------------------------------------------------------------
// The writer.

#[derive(Clone, Copy, Debug)]
struct Head {
    next_seq: u64,
    hash: [u8; 32],
    time_ms: Millis,
}

#[derive(Default)]
struct Stats {
    commits: AtomicU64,
    commands: AtomicU64,
    /// See [`Store::ca_generation`].
    ca_generation: AtomicU64,
    /// Why the writer stopped accepting writes (see [`Writer::failed`]),
    /// for [`Store::writable`].
    failure: std::sync::Mutex<Option<String>>,
}

struct Writer {
    db: Arc<Database>,
    rx: mpsc::Receiver<Box<dyn Command>>,
    group_commit: bool,
    head: Head,
    stats: Arc<Stats>,
    /// Set after a failed commit: redb refuses further writes until the
    /// file is reopened, and the on-disk head is unknown.
    failed: Option<String>,
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Writer {
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut batch = Vec::with_capacity(if self.group_commit { 64 } else { 1 });
            batch.push(first);
            if self.group_commit {
                self.drain(&mut batch);
                if batch.len() > 1 && batch.len() < MAX_BATCH {
                    // Under load, callers answered by the last commit are
                    // about to send their next command: a short linger
                    // (small against an fsync) lets them join this batch.
                    std::thread::sleep(LINGER);
                    self.drain(&mut batch);
                }
            }
            self.run_batch(batch);
        }
    }

    fn drain(&self, batch: &mut Vec<Box<dyn Command>>) {
        while batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
    }

    fn run_batch(&mut self, batch: Vec<Box<dyn Command>>) {
        if let Some(why) = &self.failed {
            for c in batch {
                c.fail(why.clone());
            }
            return;
        }
        let n = batch.len() as u64;
        let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
        let mut cas_touched = false;
        let written = self.write_batch(batch, &mut finishes, &mut cas_touched);
        if cas_touched {
            // Before any caller is answered: whoever is told a CA changed
            // must not be served from a cache of the old CAs afterwards.
            // (Also bumped for a batch that did not commit: harmless.)
            self.stats.ca_generation.fetch_add(1, Ordering::SeqCst);
        }
        match written {
            Ok(head) => {
                self.head = head;
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.commands.fetch_add(n, Ordering::Relaxed);
                for f in finishes {
                    f(None);
                }
            }
            Err(why) => {
                tracing::error!(error = %why, commands = n, "event store batch not committed");
                for f in finishes {
                    f(Some(&why));
                }
            }
        }
    }

    /// Runs, appends and applies the batch, then commits. On error the
    /// commands not yet decided are failed here, the decided ones are left
    /// in `finishes` for the caller to fail.
    fn write_batch(
        &mut self,
        batch: Vec<Box<dyn Command>>,
        finishes: &mut Vec<Finish>,
        cas_touched: &mut bool,
    ) -> Result<Head, String> {
        let mut pending = batch.into_iter();
        let fail_rest = |rest: std::vec::IntoIter<Box<dyn Command>>, why: &str| {
            for c in rest {
                c.fail(why.to_string());
            }
        };
        let mut txn = match self.db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                let why = format!("cannot begin a write transaction: {e}");
                fail_rest(pending, &why);
                return Err(why);
            }
        };
        if let Err(e) = txn.set_durability(Durability::Immediate) {
            let why = format!("cannot make the transaction durable: {e}");
            fail_rest(pending, &why);
            return Err(why);
        }
        let mut head = self.head;
        let now = now_ms();
        let outcome = match WriteTables::open(&txn) {
            Err(e) => Err(format!("cannot open the tables: {e}")),
            Ok(mut tables) => {
                let mut outcome = Ok(());
                for cmd in pending.by_ref() {
                    let decided = catch_unwind(AssertUnwindSafe(|| cmd.decide(&tables)));
                    let read_error = tables.take_error();
                    let prepared = match decided {
                        Ok(p) => p,
                        Err(_) => {
                            // The command's reply went with the unwind: its
                            // caller gets DROPPED. Nothing of it was written.
                            tracing::error!("a command panicked in the event store's writer");
                            if let Some(why) = read_error {
                                outcome = Err(why);
                                break;
                            }
                            continue;
                        }
                    };
                    finishes.push(prepared.finish);
                    if let Some(why) = read_error {
                        outcome = Err(format!("a command met a read error: {why}"));
                        break;
                    }
                    *cas_touched |= prepared.events.iter().any(EventPayload::changes_cas);
                    if let Err(why) = append(
                        &mut tables,
                        &mut head,
                        now,
                        &prepared.actor,
                        prepared.events,
                    ) {
                        outcome = Err(why);
                        break;
                    }
                }
                outcome
            }
        };
        if let Err(why) = outcome {
            fail_rest(pending, &why);
            if let Err(e) = txn.abort() {
                tracing::error!(error = %e, "aborting the event store transaction failed");
            }
            return Err(why);
        }
        match txn.commit() {
            Ok(()) => Ok(head),
            Err(e) => {
                let why = format!(
                    "the commit failed ({e}); the store accepts no more writes until the daemon \
                     restarts (reopening repairs the file)"
                );
                self.failed = Some(why.clone());
                *self.stats.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                Err(why)
            }
        }
    }
}

/// Numbers, chains, appends and applies one command's events.
fn append(
    tables: &mut WriteTables<'_>,
    head: &mut Head,
    now: Millis,
    actor: &Actor,
    events: Vec<EventPayload>,
) -> Result<(), String> {
    for payload in events {
        let time_ms = now.max(head.time_ms);
        let (ev, bytes) = Event::sealed(head.next_seq, time_ms, actor.clone(), payload, head.hash)
            .map_err(|e| format!("encoding an event: {e}"))?;
        tables
            .events_mut()?
            .insert(ev.seq, bytes.as_slice())
            .map_err(|e| format!("appending event {}: {e}", ev.seq))?;
        apply::apply(tables, &ev)?;
        *head = Head {
            next_seq: ev.seq + 1,
            hash: ev.hash,
            time_ms,
        };
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The store.

/// The event store. Cheap to clone; all clones share one writer thread,
/// which stops (and closes the file) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    tx: Option<mpsc::Sender<Box<dyn Command>>>,
    writer: Option<JoinHandle<()>>,
    writer_id: ThreadId,
    stats: Arc<Stats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its current batch; wait
        // for it so that the file is closed when the last Store is gone
        // (unless the last clone is dropped on the writer itself).
        self.tx.take();
        if let Some(w) = self.writer.take()
            && std::thread::current().id() != self.writer_id
        {
            let _ = w.join();
        }
    }
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    let path = path.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path },
        DatabaseError::Storage(StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::Damaged {
                path,
                reason: format!("it is not a castellan event store ({e})"),
            }
        }
        DatabaseError::Storage(StorageError::Io(e)) => StoreError::Open {
            path,
            reason: e.to_string(),
        },
        DatabaseError::UpgradeRequired(v) => StoreError::Damaged {
            path,
            reason: format!("the file is in redb format {v}, which this castellan does not read"),
        },
        e => StoreError::Damaged {
            path,
            reason: format!("it is not a readable redb database ({e})"),
        },
    }
}

/// redb documents that a plain open of an altered file may panic; a
/// damaged file must give an error, not take the process down.
fn unpanic<R>(
    path: &Path,
    f: impl FnOnce() -> Result<R, DatabaseError>,
) -> Result<Result<R, DatabaseError>, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| StoreError::Damaged {
        path: path.to_path_buf(),
        reason: "redb failed while opening it (the file is damaged)".to_string(),
    })
}

fn guarded<R>(path: &Path, f: impl FnOnce() -> Result<R, DatabaseError>) -> Result<R, StoreError> {
    unpanic(path, f)?.map_err(|e| open_error(path, e))
}

fn ensure_file(path: &Path) -> Result<(), StoreError> {
    let open_err = |e: std::io::Error| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    // Created 0600 before redb sees it: the log names every identity.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(open_err)?;
    let meta = f.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            reason: "it is not a regular file".to_string(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "the event store is readable by other users; chmod 600 it"
        );
    }
    Ok(())
}

/// Creates the tables if missing, checks the layout, reads the head.
fn init(path: &Path, db: &Database) -> Result<Head, StoreError> {
    let damaged = |reason: String| StoreError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let mut txn = db
        .begin_write()
        .map_err(|e| storage("beginning a write transaction", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| storage("setting durability", e))?;
    let head = {
        let mut tables = WriteTables::open(&txn).map_err(|e| storage("opening the tables", e))?;
        let events = tables.events_mut().map_err(StoreError::Storage)?;
        let head = match events.last() {
            Ok(None) => Head {
                next_seq: 0,
                hash: [0; 32],
                time_ms: 0,
            },
            Ok(Some((k, v))) => {
                let seq = k.value();
                let ev = decode_event(v.value()).map_err(|e| {
                    damaged(format!(
                        "its last event ({seq}) does not decode ({e}), so nothing can be \
                         chained after it"
                    ))
                })?;
                if ev.seq != seq {
                    return Err(damaged(format!(
                        "its last event is stored under key {seq} but says it is event {}",
                        ev.seq
                    )));
                }
                Head {
                    next_seq: seq.saturating_add(1),
                    hash: ev.hash,
                    time_ms: ev.time_ms,
                }
            }
            Err(e) => return Err(storage("reading the last event", e)),
        };
        let mut meta = txn
            .open_table(META)
            .map_err(|e| storage("opening meta", e))?;
        let found = match meta.get(META_LAYOUT) {
            Ok(Some(v)) => Some(v.value().to_vec()),
            Ok(None) => None,
            Err(e) => return Err(storage("reading meta", e)),
        };
        match found {
            None if head.next_seq == 0 => {
                meta.insert(META_LAYOUT, LAYOUT_VERSION.to_le_bytes().as_slice())
                    .map_err(|e| storage("writing meta", e))?;
            }
            None => return Err(damaged("it holds events but no layout version".to_string())),
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_le_bytes)
                    .map_err(|_| damaged("its layout version is malformed".to_string()))?;
                if found != LAYOUT_VERSION {
                    return Err(StoreError::UnsupportedLayout {
                        path: path.to_path_buf(),
                        found,
                    });
                }
            }
        }
        head
    };
    txn.commit()
        .map_err(|e| storage("committing the table setup", e))?;
    Ok(head)
}

impl Store {
    /// Opens (creating, mode 0600, if missing) the event store at `path`
    /// and starts its writer thread. `group_commit: false` gives one commit
    /// per command (for benchmarks).
    pub fn open(path: &Path, group_commit: bool) -> Result<Store, StoreError> {
        ensure_file(path)?;
        let db = guarded(path, || {
            Builder::new().set_cache_size(CACHE_BYTES).create(path)
        })?;
        Store::start(path, db, group_commit)
    }

    /// Sets up the tables of an open database and starts the writer.
    fn start(path: &Path, db: Database, group_commit: bool) -> Result<Store, StoreError> {
        let head = init(path, &db)?;
        let db = Arc::new(db);
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            rx,
            group_commit,
            head,
            stats: stats.clone(),
            failed: None,
        };
        let handle = std::thread::Builder::new()
            .name("castellan-store".to_string())
            .spawn(move || writer.run())
            .map_err(|e| storage("starting the writer thread", e))?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                tx: Some(tx),
                writer_id: handle.thread().id(),
                writer: Some(handle),
                stats,
            }),
        })
    }

    fn submit(&self, cmd: Box<dyn Command>) -> Result<(), ExecError> {
        let Some(tx) = &self.inner.tx else {
            return Err(ExecError::Storage(DROPPED.to_string()));
        };
        tx.send(cmd)
            .map_err(|_| ExecError::Storage(DROPPED.to_string()))
    }

    /// Runs `decide` on the writer, inside the batch's write transaction,
    /// records its events, and returns once they are durable. Dropping the
    /// future does not cancel the command.
    ///
    /// `decide` must be quick and must not call the store (it runs on the
    /// writer thread: that would deadlock) nor do I/O; everything slow
    /// (the signer, the network) happens between two commands. A `decide`
    /// that panics writes nothing and its caller gets `Storage`.
    pub async fn execute<T: Send + 'static>(
        &self,
        actor: Actor,
        decide: impl FnOnce(&dyn ReadView) -> Decision<T> + Send + 'static,
    ) -> Result<T, ExecError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(Typed {
            actor,
            decide,
            reply: Reply::Async(tx),
        }))?;
        rx.await
            .map_err(|_| ExecError::Storage(DROPPED.to_string()))?
    }

    /// `execute` for callers outside an async runtime (blocks the thread).
    pub fn execute_blocking<T: Send + 'static>(
        &self,
        actor: Actor,
        decide: impl FnOnce(&dyn ReadView) -> Decision<T> + Send + 'static,
    ) -> Result<T, ExecError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Box::new(Typed {
            actor,
            decide,
            reply: Reply::Blocking(tx),
        }))?;
        rx.recv()
            .map_err(|_| ExecError::Storage(DROPPED.to_string()))?
    }

    /// Whether a write can succeed: no commit has failed and the writer
    /// thread is alive. A read can start on a store that refuses every
    /// write, so readiness is asked here, not with [`Store::read`]. The
    /// error says what happened and what to do.
    pub fn writable(&self) -> Result<(), String> {
        let failure = self
            .inner
            .stats
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(why) = failure {
            return Err(format!(
                "the event log accepts no writes: {why}; restart castellan \
                 (`systemctl restart castellan`)"
            ));
        }
        let stopped =
            self.inner.tx.is_none() || self.inner.writer.as_ref().is_none_or(|w| w.is_finished());
        if stopped {
            return Err(format!("the event log accepts no writes: {DROPPED}"));
        }
        Ok(())
    }

    /// A consistent read-only view of the committed state.
    /// Tables are opened as the view's calls need them; an error opening
    /// one is reported like any other read error (see [`Snapshot::error`]).
    pub fn read(&self) -> Result<Snapshot, StoreError> {
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| storage("beginning a read transaction", e))?;
        Ok(Snapshot {
            tables: ReadTables::lazy(txn),
        })
    }

    /// Events matching `filter`, in sequence order.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| storage("beginning a read transaction", e))?;
        let table = txn
            .open_table(EVENTS)
            .map_err(|e| storage("opening events", e))?;
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let range = table
            .range(filter.from_seq.unwrap_or(0)..)
            .map_err(|e| storage("reading events", e))?;
        for item in range {
            let (k, v) = item.map_err(|e| storage("reading events", e))?;
            let ev = decode_event(v.value()).map_err(|reason| StoreError::CorruptEvent {
                seq: k.value(),
                reason,
            })?;
            // Times never decrease along the log.
            if filter.until_ms.is_some_and(|u| ev.time_ms >= u) {
                break;
            }
            if filter.matches(&ev) {
                out.push(ev);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Re-walks the chain and checks the checkpoints against the audit
    /// keys recorded in the log itself (see [`Store::verify_against`]).
    pub fn verify(&self) -> VerifyReport {
        self.verify_against(None)
    }

    /// Re-walks the chain and checks the checkpoints; with `trusted` (the
    /// DER SubjectPublicKeyInfo of the signer's audit key), every audit key
    /// recorded in the log must be that key.
    pub fn verify_against(&self, trusted: Option<&[u8]>) -> VerifyReport {
        verify::verify_db(&*self.inner.db, trusted)
    }

    /// Compares the log with the signer's last signed checkpoint: a log
    /// cut short or replaced by an older copy does not reach it, a
    /// rewritten one disagrees with it.
    pub fn compare_with_signer(
        &self,
        last: &castellan_proto::LastSignedCheckpoint,
    ) -> SignerCheckpointCheck {
        verify::compare_with_signer(&*self.inner.db, last)
    }

    /// `verify` on a file no daemon has open. The file is opened read-only;
    /// if it was not closed cleanly (the daemon crashed), redb must repair
    /// it before it can be read, which this does on a private copy so that
    /// the evidence itself is never written to.
    pub fn verify_file(path: &Path) -> Result<VerifyReport, StoreError> {
        Store::verify_file_against(path, None)
    }

    /// [`Store::verify_file`] with the trusted audit key of
    /// [`Store::verify_against`].
    pub fn verify_file_against(
        path: &Path,
        trusted: Option<&[u8]>,
    ) -> Result<VerifyReport, StoreError> {
        let read_only = unpanic(path, || {
            Builder::new()
                .set_cache_size(CACHE_BYTES)
                .open_read_only(path)
        })?;
        match read_only {
            Ok(db) => Ok(verify::verify_db(&db, trusted)),
            Err(DatabaseError::RepairAborted) => {
                // Not closed cleanly: redb repairs on a read-write open.
                let copy = TempCopy::of(path)?;
                let db = guarded(path, || {
                    Builder::new().set_cache_size(CACHE_BYTES).open(&copy.path)
                })?;
                let report = verify::verify_db(&db, trusted);
                drop(db);
                Ok(report)
            }
            Err(e) => Err(open_error(path, e)),
        }
    }

    /// Deletes every projection table and replays every event into empty
    /// ones through the same apply code, in one transaction.
    pub fn rebuild_projections(&self) -> Result<(), StoreError> {
        let mut txn = self
            .inner
            .db
            .begin_write()
            .map_err(|e| storage("beginning a write transaction", e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| storage("setting durability", e))?;
        for (t, name) in NAMES.iter().enumerate() {
            txn.delete_table(projection(t))
                .map_err(|e| storage(&format!("deleting {name}"), e))?;
        }
        {
            let mut tables =
                WriteTables::open(&txn).map_err(|e| storage("opening the tables", e))?;
            let mut next = 0u64;
            loop {
                let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
                let range = tables
                    .events_mut()
                    .map_err(StoreError::Storage)?
                    .range(next..)
                    .map_err(|e| storage("reading events", e))?;
                for item in range.take(REPLAY_CHUNK) {
                    let (k, v) = item.map_err(|e| storage("reading events", e))?;
                    let ev =
                        decode_event(v.value()).map_err(|reason| StoreError::CorruptEvent {
                            seq: k.value(),
                            reason,
                        })?;
                    chunk.push(ev);
                }
                let Some(last) = chunk.last() else { break };
                next = last.seq.saturating_add(1);
                for ev in &chunk {
                    apply::apply(&mut tables, ev).map_err(StoreError::Storage)?;
                }
                if chunk.len() < REPLAY_CHUNK {
                    break;
                }
            }
        }
        let committed = txn
            .commit()
            .map_err(|e| storage("committing the rebuilt projections", e));
        self.inner
            .stats
            .ca_generation
            .fetch_add(1, Ordering::SeqCst);
        committed
    }

    /// A number that changes whenever a committed write may have changed
    /// the CA table (before the writer of that change is answered). Read
    /// it *before* opening the snapshot a cache of CA data is filled from;
    /// the cache is current while this number is unchanged.
    pub fn ca_generation(&self) -> u64 {
        self.inner.stats.ca_generation.load(Ordering::SeqCst)
    }

    /// Every projection table's raw entries in key order, tables in layout
    /// order (for the replay-equality test and for debugging).
    #[allow(clippy::type_complexity)]
    pub fn projection_dump(&self) -> Result<Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>, StoreError> {
        let txn = self
            .inner
            .db
            .begin_read()
            .map_err(|e| storage("beginning a read transaction", e))?;
        let mut out = Vec::with_capacity(N_PROJECTIONS);
        for (t, name) in NAMES.iter().enumerate() {
            let table = txn
                .open_table(projection(t))
                .map_err(|e| storage(&format!("opening {name}"), e))?;
            let mut rows = Vec::new();
            for item in table
                .range::<&[u8]>(..)
                .map_err(|e| storage(&format!("reading {name}"), e))?
            {
                let (k, v) = item.map_err(|e| storage(&format!("reading {name}"), e))?;
                rows.push((k.value().to_vec(), v.value().to_vec()));
            }
            out.push((name.to_string(), rows));
        }
        Ok(out)
    }

    /// (commits, commands) since open: commands / commits is the mean
    /// group-commit batch size.
    pub fn group_commit_stats(&self) -> (u64, u64) {
        (
            self.inner.stats.commits.load(Ordering::Relaxed),
            self.inner.stats.commands.load(Ordering::Relaxed),
        )
    }
}

/// A private copy of a store file, removed on drop.
struct TempCopy {
    path: PathBuf,
}

impl TempCopy {
    fn of(src: &Path) -> Result<TempCopy, StoreError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "castellan-verify-{}-{nanos}.redb",
            std::process::id()
        ));
        let io = |e: std::io::Error| StoreError::Open {
            path: src.to_path_buf(),
            reason: format!("copying it for verification to {}: {e}", path.display()),
        };
        let mut from = std::fs::File::open(src).map_err(io)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let copy = TempCopy { path: path.clone() };
        std::io::copy(&mut from, &mut to).map_err(io)?;
        Ok(copy)
    }
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// The daemon shares one Store between tasks, and may hold a Snapshot
// across an await.
const _: fn() = || {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    fn movable<T: Send + 'static>() {}
    shared::<Store>();
    movable::<Snapshot>();
};
