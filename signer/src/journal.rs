//! The signing journal: one record per signature the signer makes, durable
//! (written and `fdatasync`ed) before the signer answers the request that
//! caused the signature.
//!
//! # On-disk format, version 1
//!
//! All integers are little-endian; nothing here depends on the in-memory
//! layout of a Rust type or on postcard.
//!
//! ```text
//! file header (10 octets)
//!   0   8  magic "CSTLJRNL"
//!   8   2  format version u16 = 1
//!
//! record (immediately after the header or the previous record)
//!   0   4  record magic "CJR1"
//!   4   4  body_len u32, MIN_BODY_LEN ..= MAX_BODY_LEN (64 KiB)
//!   8   body_len  body
//!   8+body_len  32  hash = SHA-256("castellan journal record v1\0" || body)
//!
//! body
//!   seq          u64    0 for the first record, then +1 per record
//!   time_ms      i64    unix milliseconds, non-decreasing along the file
//!   kind         u8     1 certificate, 2 ca-certificate, 3 cross-certificate,
//!                       4 responder-certificate, 5 crl, 6 ocsp, 7 checkpoint,
//!                       8 custodian-change (explicit codes, not enum positions)
//!   key_id_len   u16    <= MAX_KEY_ID_LEN, then key_id_len octets of UTF-8
//!   subject      u8 tag 0 none
//!                       1 serial:      u16 length (<= MAX_SERIAL_LEN), octets
//!                       2 crl number:  u64
//!                       3 checkpoint:  u64
//!   tbs_sha256   [32]   SHA-256 of the exact to-be-signed octets
//!   reference    u8     0 = none, 1 = followed by the 16-octet ceremony id,
//!                       2 = followed by the 16-octet issuance intent id
//!                           (the daemon's, see `IssueCertificateForIntent`)
//!   prev_hash    [32]   hash of the previous record; 32 zero octets for seq 0
//! ```
//!
//! The body is self-delimiting and must be consumed exactly by `body_len`.
//!
//! # What readers check
//!
//! Every reader ([`Journal::open`], [`Journal::export`], [`verify_file`],
//! [`read_window`]) checks the whole chain as it reads: magic, a bounded
//! length (checked before anything is allocated), the hash, the body's
//! structure, contiguous `seq`, `prev_hash` linkage and non-decreasing time.
//! The first failure is reported as [`JournalError::Corrupt`] naming the record
//! number and its byte offset. The chain makes any in-place edit visible;
//! cutting whole records off the end, or rewriting the chain from some record
//! on, is only visible against a head hash signed earlier (the audit
//! checkpoints), which is what they are for.
//!
//! # Durability and group commit
//!
//! Appenders encode their records under one mutex, chaining them onto the
//! last *assigned* record, and wait. One of them (the leader) takes every
//! record encoded so far, writes them with one `pwrite` at the end of the
//! durable part and calls `fdatasync` once, while others already fill the
//! next batch. An appender returns only after its own batch is durable, so
//! throughput with many concurrent signers is far above one fsync per record.
//!
//! If the write fails (disk full), the file is cut back to the last durable
//! length and every appender of that batch *and* of the batch being filled
//! (which chains onto the failed one) gets the error; nothing unwritten is
//! ever acknowledged. If `fdatasync` fails, or the file cannot be cut back,
//! the journal refuses every later append until the signer is restarted and
//! re-verifies the file: after a failed fsync the kernel may have dropped the
//! dirty pages, so nothing about the unsynced part can be trusted.
//!
//! # Torn tails
//!
//! A crash (power loss) during a write can leave the last record incomplete.
//! Such a record was never acknowledged, but [`Journal::open`] still refuses
//! the file, naming the record: silently dropping bytes from a security
//! journal is an operator decision. [`Journal::open_truncating_torn_tail`]
//! makes it: it removes the tail only if it is an incomplete record (the file
//! ends before the record its header announces, and the bytes present do not
//! hold a complete, hash-valid record) or consists of zero octets only (blocks
//! allocated but never written). The removed bytes are saved beside the
//! journal as evidence first. Any other damage is refused by both.
//!
//! The file is created with mode 0600 (written under a temporary name and
//! linked into place, so it never exists without its header) and is held
//! with an exclusive `flock` while a [`Journal`] is open; the offline readers
//! take a shared lock, so they refuse to read a journal a running signer is
//! appending to.
//!
//! System calls used after start-up (for the seccomp policy): `pwrite64`,
//! `fdatasync`, `pread64` (export), `ftruncate` and `fsync` (only after a
//! failed write), `futex`, `clock_gettime`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use castellan_proto::{
    CeremonyId, IntentFound, IntentId, JournalRecord, JournalWindow, SignatureKind, SignedSubject,
    UnixMillis,
};
use sha2::{Digest, Sha256};

/// File header magic.
pub const FILE_MAGIC: [u8; 8] = *b"CSTLJRNL";
/// On-disk format version written and read by this code.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the file header.
pub const FILE_HEADER_LEN: u64 = 10;
/// Magic at the start of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"CJR1";
/// Domain separation of the record hash.
pub const HASH_DOMAIN: &[u8] = b"castellan journal record v1\0";
/// Upper bound of a record body; a larger announced length is damage, and is
/// refused before anything is allocated.
pub const MAX_BODY_LEN: u32 = 64 * 1024;
/// Longest key id accepted (CA ids are at most 63 octets; `ocsp:<ca>`).
pub const MAX_KEY_ID_LEN: usize = 1024;
/// Longest serial accepted (RFC 5280 allows 20 octets; generous bound).
pub const MAX_SERIAL_LEN: usize = 1024;

const RECORD_HEADER_LEN: usize = 8;
const HASH_LEN: usize = 32;
/// seq, time, kind, key id length, subject tag, tbs hash, ceremony flag,
/// prev hash: the smallest body there can be.
const MIN_BODY_LEN: u32 = 8 + 8 + 1 + 2 + 1 + 32 + 1 + 32;

/// A record as the signer asks for it; the journal assigns `seq`,
/// `time_ms`, `prev_hash` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub kind: SignatureKind,
    pub key_id: String,
    pub subject: SignedSubject,
    pub tbs_sha256: [u8; 32],
    pub ceremony_id: Option<CeremonyId>,
    /// The daemon's issuance intent (never together with a ceremony id).
    pub intent: Option<IntentId>,
}

/// Result of [`verify_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySummary {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record, or 32 zero octets for an empty journal.
    pub head: [u8; 32],
}

/// What [`Journal::open_truncating_torn_tail`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Number of the incomplete record (= records kept).
    pub record: u64,
    /// Byte offset where it started; the file now ends here.
    pub offset: u64,
    /// How many octets were removed.
    pub removed: u64,
    /// Where the removed octets were saved.
    pub evidence: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalError {
    /// The file is damaged at `record`, which starts at byte `offset`.
    Corrupt {
        record: u64,
        offset: u64,
        what: String,
    },
    /// The disk or the operating system failed (ours to report, the host's
    /// to fix).
    Io(String),
    /// The caller's record cannot be journalled (a field is longer than the
    /// format allows). Nothing was written.
    Invalid(String),
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Corrupt {
                record,
                offset,
                what,
            } => write!(
                f,
                "journal record {record} (byte offset {offset}) is damaged: {what}"
            ),
            JournalError::Io(m) => write!(f, "signing journal i/o failure: {m}"),
            JournalError::Invalid(m) => write!(f, "record refused by the signing journal: {m}"),
        }
    }
}

impl std::error::Error for JournalError {}

const ALTERED: &str =
    "the journal was altered after it was written; preserve this file as evidence";
const TORN: &str = "the file ends inside this record: a write cut short by a crash. \
     Such a record was never acknowledged. Keep a copy of the file, then remove the \
     incomplete tail with `castellan-signer journal recover-torn-tail`, which saves it \
     beside the journal";

/// Internal reading failure; `torn` marks "the file ended inside a record".
#[derive(Debug)]
enum ReadFault {
    Damaged {
        record: u64,
        offset: u64,
        what: String,
        torn: bool,
    },
    Io(String),
}

impl From<ReadFault> for JournalError {
    fn from(f: ReadFault) -> Self {
        match f {
            ReadFault::Damaged {
                record,
                offset,
                what,
                ..
            } => JournalError::Corrupt {
                record,
                offset,
                what,
            },
            ReadFault::Io(m) => JournalError::Io(m),
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding

fn kind_code(k: SignatureKind) -> u8 {
    match k {
        SignatureKind::Certificate => 1,
        SignatureKind::CaCertificate => 2,
        SignatureKind::CrossCertificate => 3,
        SignatureKind::ResponderCertificate => 4,
        SignatureKind::Crl => 5,
        SignatureKind::Ocsp => 6,
        SignatureKind::Checkpoint => 7,
        SignatureKind::CustodianChange => 8,
    }
}

fn kind_from_code(c: u8) -> Option<SignatureKind> {
    Some(match c {
        1 => SignatureKind::Certificate,
        2 => SignatureKind::CaCertificate,
        3 => SignatureKind::CrossCertificate,
        4 => SignatureKind::ResponderCertificate,
        5 => SignatureKind::Crl,
        6 => SignatureKind::Ocsp,
        7 => SignatureKind::Checkpoint,
        8 => SignatureKind::CustodianChange,
        _ => return None,
    })
}

fn validate(r: &NewRecord) -> Result<(), JournalError> {
    if r.key_id.len() > MAX_KEY_ID_LEN {
        return Err(JournalError::Invalid(format!(
            "key id of {} octets exceeds the limit of {MAX_KEY_ID_LEN}",
            r.key_id.len()
        )));
    }
    if let SignedSubject::Serial(s) = &r.subject
        && s.len() > MAX_SERIAL_LEN
    {
        return Err(JournalError::Invalid(format!(
            "serial of {} octets exceeds the limit of {MAX_SERIAL_LEN}",
            s.len()
        )));
    }
    if r.ceremony_id.is_some() && r.intent.is_some() {
        return Err(JournalError::Invalid(
            "a record refers to a ceremony or to an issuance intent, not to both".to_string(),
        ));
    }
    Ok(())
}

/// Encodes the body of `r` (everything but the hash). Field lengths were
/// checked by [`validate`] or by the parser, so the casts cannot truncate.
fn encode_body(r: &JournalRecord, intent: Option<&IntentId>) -> Vec<u8> {
    let mut b = Vec::with_capacity(MIN_BODY_LEN as usize + r.key_id.len() + 16 + 32);
    b.extend_from_slice(&r.seq.to_le_bytes());
    b.extend_from_slice(&r.time_ms.to_le_bytes());
    b.push(kind_code(r.kind));
    b.extend_from_slice(&(r.key_id.len() as u16).to_le_bytes());
    b.extend_from_slice(r.key_id.as_bytes());
    match &r.subject {
        SignedSubject::None => b.push(0),
        SignedSubject::Serial(s) => {
            b.push(1);
            b.extend_from_slice(&(s.len() as u16).to_le_bytes());
            b.extend_from_slice(s);
        }
        SignedSubject::CrlNumber(n) => {
            b.push(2);
            b.extend_from_slice(&n.to_le_bytes());
        }
        SignedSubject::Checkpoint(n) => {
            b.push(3);
            b.extend_from_slice(&n.to_le_bytes());
        }
    }
    b.extend_from_slice(&r.tbs_sha256);
    match (&r.ceremony_id, intent) {
        (Some(id), _) => {
            b.push(1);
            b.extend_from_slice(id);
        }
        (None, Some(id)) => {
            b.push(2);
            b.extend_from_slice(id);
        }
        (None, None) => b.push(0),
    }
    b.extend_from_slice(&r.prev_hash);
    b
}

fn body_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(body);
    h.finalize().into()
}

/// Appends the full on-disk record (`r.hash` is written as given).
fn push_record(out: &mut Vec<u8>, body: &[u8], hash: &[u8; 32]) {
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(hash);
}

fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(&FILE_MAGIC);
    h[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

// ---------------------------------------------------------------------------
// Decoding

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| format!("body too short for its {field}"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], String> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, field: &str) -> Result<u8, String> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
}

/// Parses a body from the start of `buf`; returns the record (with a zero
/// hash), its intent id if it has one, and the number of octets the body
/// occupies.
fn parse_body(buf: &[u8]) -> Result<(JournalRecord, Option<IntentId>, usize), String> {
    let mut c = Cursor { buf, pos: 0 };
    let seq = c.u64("sequence number")?;
    let time_ms = i64::from_le_bytes(c.array("time")?);
    let kind_raw = c.u8("signature kind")?;
    let kind =
        kind_from_code(kind_raw).ok_or_else(|| format!("unknown signature kind {kind_raw}"))?;
    let key_len = usize::from(c.u16("key id length")?);
    if key_len > MAX_KEY_ID_LEN {
        return Err(format!("key id length {key_len} exceeds {MAX_KEY_ID_LEN}"));
    }
    let key_id = std::str::from_utf8(c.take(key_len, "key id")?)
        .map_err(|_| "key id is not UTF-8".to_string())?
        .to_string();
    let subject = match c.u8("subject tag")? {
        0 => SignedSubject::None,
        1 => {
            let n = usize::from(c.u16("serial length")?);
            if n > MAX_SERIAL_LEN {
                return Err(format!("serial length {n} exceeds {MAX_SERIAL_LEN}"));
            }
            SignedSubject::Serial(c.take(n, "serial")?.to_vec())
        }
        2 => SignedSubject::CrlNumber(c.u64("CRL number")?),
        3 => SignedSubject::Checkpoint(c.u64("checkpoint sequence")?),
        t => return Err(format!("unknown subject tag {t}")),
    };
    let tbs_sha256 = c.array("TBS hash")?;
    let (ceremony_id, intent) = match c.u8("reference flag")? {
        0 => (None, None),
        1 => (Some(c.array("ceremony id")?), None),
        2 => (None, Some(c.array("intent id")?)),
        t => return Err(format!("invalid reference flag {t}")),
    };
    let prev_hash = c.array("previous hash")?;
    let rec = JournalRecord {
        seq,
        time_ms,
        kind,
        key_id,
        subject,
        tbs_sha256,
        ceremony_id,
        prev_hash,
        hash: [0; 32],
    };
    Ok((rec, intent, c.pos))
}

/// Reads until `buf` is full or the input ends; returns the octets read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Streams records out of a journal, checking everything on the way.
struct Verifier<R> {
    r: R,
    /// Offset of the next record.
    offset: u64,
    next_seq: u64,
    prev_hash: [u8; 32],
    prev_time: UnixMillis,
    /// The intent id of the record `next` returned last, if it has one.
    last_intent: Option<IntentId>,
}

impl<R: Read> Verifier<R> {
    fn new(mut r: R) -> Result<Self, ReadFault> {
        let mut h = [0u8; FILE_HEADER_LEN as usize];
        let n = read_full(&mut r, &mut h).map_err(|e| ReadFault::Io(e.to_string()))?;
        let bad = |what: String| ReadFault::Damaged {
            record: 0,
            offset: 0,
            what,
            torn: false,
        };
        if n < h.len() {
            return Err(bad(format!(
                "the file is {n} octets long, shorter than the journal file header; it is not a castellan journal or was cut off"
            )));
        }
        if h[..8] != FILE_MAGIC {
            return Err(bad(
                "the file header is not \"CSTLJRNL\": this is not a castellan signing journal"
                    .to_string(),
            ));
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "journal format version {version} is not supported (this signer reads version {FORMAT_VERSION}); run the castellan release that wrote it"
            )));
        }
        Ok(Verifier {
            r,
            offset: FILE_HEADER_LEN,
            next_seq: 0,
            prev_hash: [0; 32],
            prev_time: UnixMillis::MIN,
            last_intent: None,
        })
    }

    fn damaged(&self, what: String, torn: bool) -> ReadFault {
        ReadFault::Damaged {
            record: self.next_seq,
            offset: self.offset,
            what,
            torn,
        }
    }

    fn next(&mut self) -> Result<Option<JournalRecord>, ReadFault> {
        let io = |e: std::io::Error| ReadFault::Io(e.to_string());
        let mut head = [0u8; RECORD_HEADER_LEN];
        let n = read_full(&mut self.r, &mut head).map_err(io)?;
        if n == 0 {
            return Ok(None);
        }
        if n < RECORD_HEADER_LEN {
            return Err(self.damaged(TORN.to_string(), true));
        }
        if head[..4] != RECORD_MAGIC {
            return Err(self.damaged(
                format!("record magic is not \"CJR1\"; {ALTERED}, or data was written into it"),
                false,
            ));
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(MIN_BODY_LEN..=MAX_BODY_LEN).contains(&len) {
            return Err(self.damaged(
                format!(
                    "implausible body length {len} (allowed {MIN_BODY_LEN}..={MAX_BODY_LEN}); {ALTERED}"
                ),
                false,
            ));
        }
        // Bounded by MAX_BODY_LEN above.
        let mut rest = vec![0u8; len as usize + HASH_LEN];
        let got = read_full(&mut self.r, &mut rest).map_err(io)?;
        if got < rest.len() {
            return Err(self.damaged(TORN.to_string(), true));
        }
        let (body, stored) = rest.split_at(len as usize);
        let computed = body_hash(body);
        if computed != stored {
            return Err(self.damaged(format!("hash mismatch — {ALTERED}"), false));
        }
        let (mut rec, intent, used) = parse_body(body)
            .map_err(|e| self.damaged(format!("malformed body ({e}) — {ALTERED}"), false))?;
        if used != body.len() {
            return Err(self.damaged(
                format!(
                    "{} octets left over after the body — {ALTERED}",
                    body.len() - used
                ),
                false,
            ));
        }
        if rec.seq != self.next_seq {
            return Err(self.damaged(
                format!(
                    "sequence number {} where {} was expected: records were removed, duplicated or reordered — {ALTERED}",
                    rec.seq, self.next_seq
                ),
                false,
            ));
        }
        if rec.prev_hash != self.prev_hash {
            return Err(self.damaged(
                format!(
                    "it does not chain to the previous record (prev_hash differs): records were replaced — {ALTERED}"
                ),
                false,
            ));
        }
        if rec.time_ms < self.prev_time {
            return Err(self.damaged(
                format!(
                    "its time {} ms is before the previous record's {} ms — {ALTERED}",
                    rec.time_ms, self.prev_time
                ),
                false,
            ));
        }
        rec.hash = computed;
        self.offset += (RECORD_HEADER_LEN + rest.len()) as u64;
        self.next_seq += 1;
        self.prev_hash = computed;
        self.prev_time = rec.time_ms;
        self.last_intent = intent;
        Ok(Some(rec))
    }
}

/// A reader over `file[pos..end)` through positional reads, so it never
/// moves a shared file cursor and never sees bytes beyond `end`.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> JournalError {
    JournalError::Io(format!("{what} {}: {e}", path.display()))
}

fn in_window(w: &JournalWindow, t: UnixMillis) -> bool {
    w.since <= t && t < w.until
}

/// Opens an existing journal for the offline readers, under a shared lock.
fn open_for_reading(path: &Path) -> Result<File, JournalError> {
    let file = File::open(path).map_err(|e| io_err("cannot open journal", path, e))?;
    match file.try_lock_shared() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(JournalError::Io(format!(
            "journal {} is open by a running castellan-signer; stop it first, or export through the running signer",
            path.display()
        ))),
        Err(TryLockError::Error(e)) => Err(io_err("cannot lock journal", path, e)),
    }
}

/// Verifies a journal file completely, without opening it for writing.
pub fn verify_file(path: &Path) -> Result<VerifySummary, JournalError> {
    let file = open_for_reading(path)?;
    let mut v = Verifier::new(BufReader::new(&file))?;
    while v.next().map_err(|f| explain_zero_tail(&file, f))?.is_some() {}
    Ok(VerifySummary {
        records: v.next_seq,
        head: v.prev_hash,
    })
}

/// Offline export: the records with `since <= time_ms < until`. The whole
/// file is verified while reading, so damage anywhere is reported rather
/// than an export that silently stops early.
pub fn read_window(path: &Path, window: JournalWindow) -> Result<Vec<JournalRecord>, JournalError> {
    let file = open_for_reading(path)?;
    let mut v = Verifier::new(BufReader::new(&file))?;
    let mut out = Vec::new();
    while let Some(r) = v.next()? {
        if in_window(&window, r.time_ms) {
            out.push(r);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The appender

/// The end of a chain: the next sequence number, the last hash and time.
#[derive(Debug, Clone, Copy)]
struct Tail {
    next_seq: u64,
    hash: [u8; 32],
    time_ms: UnixMillis,
}

/// One group commit. Its outcome is set (under the state lock) once, by the
/// leader that flushed it or by the failure of the batch it chains onto.
#[derive(Default)]
struct Batch {
    outcome: OnceLock<Result<(), JournalError>>,
}

struct State {
    /// What is written and synced.
    durable: Tail,
    durable_len: u64,
    /// Includes the records encoded into `pending` and in flight.
    assigned: Tail,
    /// Encoded records of the batch being filled.
    pending: Vec<u8>,
    filling: Arc<Batch>,
    flushing: bool,
    /// Set when the file's state can no longer be trusted; every later
    /// append fails with it until the signer reopens (and re-verifies) the file.
    poisoned: Option<String>,
}

/// The signing journal, open for appending. `Send + Sync`: share it behind an
/// `Arc` between the signer's worker threads.
pub struct Journal {
    file: File,
    state: Mutex<State>,
    batch_done: Condvar,
    flushes: AtomicU64,
    #[cfg(test)]
    fault: std::sync::atomic::AtomicU8,
}

#[cfg(test)]
const FAULT_NONE: u8 = 0;
/// Write half the batch, then fail as a full disk would.
#[cfg(test)]
const FAULT_WRITE: u8 = 1;
/// Write everything, then fail the fdatasync.
#[cfg(test)]
const FAULT_SYNC: u8 = 2;

fn now_ms() -> UnixMillis {
    use std::time::{SystemTime, UNIX_EPOCH};
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
    }
}

fn sync_dir(path: &Path) -> Result<(), JournalError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates a journal holding only its header. It is written under a
/// temporary name and hard-linked into place, so the journal path never
/// names a file without a complete header, and an existing journal is never
/// replaced.
fn create_empty(path: &Path) -> Result<(), JournalError> {
    let tmp = sibling(path, ".creating");
    // A leftover from a crash during creation held no record.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot remove stale", &tmp, e)),
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err("cannot create journal", &tmp, e))?;
    f.write_all_at(&file_header(), 0)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("cannot write journal header to", &tmp, e))?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(JournalError::Io(format!(
                "a journal exists already at {}; refusing to create a new one over it",
                path.display()
            )));
        }
        Err(e) => return Err(io_err("cannot create journal", path, e)),
    }
    sync_dir(path)
}

/// Opens an existing journal and takes its lock. A missing journal is never
/// re-created here: the used ceremony ids, the CRL-number floors and the
/// history all come from it, so starting on an empty one would forget them.
fn open_locked(path: &Path) -> Result<File, JournalError> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(JournalError::Io(format!(
                "the signing journal {} is missing; the signer refuses to start without it, \
                 since it alone records which ceremonies were executed, the last CRL numbers \
                 and every signature made; restore the journal that belongs to this state \
                 (state.json) from backup. Only `castellan-signer init` creates a journal",
                path.display()
            )));
        }
        Err(e) => return Err(io_err("cannot open journal", path, e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(JournalError::Io(format!(
            "journal {} is locked by another process: is another castellan-signer running on it?",
            path.display()
        ))),
        Err(TryLockError::Error(e)) => Err(io_err("cannot lock journal", path, e)),
    }
}

fn read_all(file: &File) -> Result<(Vec<JournalRecord>, Tail, u64), ReadFault> {
    // Positional reads: independent of the descriptor's cursor.
    let reader = ReadAt {
        file,
        pos: 0,
        end: u64::MAX,
    };
    let mut v = Verifier::new(BufReader::new(reader))?;
    let mut recs = Vec::new();
    while let Some(r) = v.next()? {
        recs.push(r);
    }
    let tail = Tail {
        next_seq: v.next_seq,
        hash: v.prev_hash,
        time_ms: v.prev_time,
    };
    Ok((recs, tail, v.offset))
}

/// True if `tail` (the octets from a damaged record's offset to the end of
/// the file) starts with a complete, hash-valid record whose length field is
/// wrong: that is damage to a written record, not a torn write.
fn holds_complete_record(tail: &[u8]) -> bool {
    let Some(body_area) = tail.get(RECORD_HEADER_LEN..) else {
        return false;
    };
    match parse_body(body_area) {
        Ok((_, _, used)) => body_area
            .get(used..used + HASH_LEN)
            .is_some_and(|h| h == body_hash(&body_area[..used])),
        Err(_) => false,
    }
}

fn all_zero(file: &File, from: u64, to: u64) -> Result<bool, JournalError> {
    let mut r = ReadAt {
        file,
        pos: from,
        end: to,
    };
    let mut buf = [0u8; 8192];
    loop {
        let n = read_full(&mut r, &mut buf).map_err(|e| JournalError::Io(e.to_string()))?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// A tail of zero octets (blocks that a crash left allocated but never
/// written) fails the record magic as an edit would; it is reported as
/// what it is, with the way to remove it (see the module documentation).
fn explain_zero_tail(file: &File, fault: ReadFault) -> JournalError {
    if let ReadFault::Damaged {
        record,
        offset,
        torn: false,
        ..
    } = &fault
        && *offset >= FILE_HEADER_LEN
        && let Ok(meta) = file.metadata()
        && meta.len() > *offset
        && matches!(all_zero(file, *offset, meta.len()), Ok(true))
    {
        return JournalError::Corrupt {
            record: *record,
            offset: *offset,
            what: format!(
                "the file ends in {} zero octets from here: blocks a crash left allocated but \
                 never written, holding no acknowledged record. Keep a copy of the file, then \
                 remove them with `castellan-signer journal recover-torn-tail`, which saves \
                 them beside the journal",
                meta.len() - offset
            ),
        };
    }
    fault.into()
}

impl Journal {
    /// Creates a new, empty journal at `path` (mode 0600) and opens it.
    /// Refuses if a journal exists there already: an existing journal is
    /// never replaced.
    pub fn create(path: &Path) -> Result<(Journal, Vec<JournalRecord>), JournalError> {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(JournalError::Io(format!(
                "a journal exists already at {}; refusing to create a new one over it",
                path.display()
            )));
        }
        create_empty(path)?;
        Journal::open(path)
    }

    /// Opens the existing journal at `path` (a missing journal is refused,
    /// see [`Journal::create`]), verifies it completely and returns every
    /// record so the caller can
    /// rebuild its state (last CRL numbers, used ceremony ids). A damaged
    /// journal, a torn last record included, is refused with the record
    /// number.
    pub fn open(path: &Path) -> Result<(Journal, Vec<JournalRecord>), JournalError> {
        let file = open_locked(path)?;
        let (recs, tail, len) = read_all(&file).map_err(|f| explain_zero_tail(&file, f))?;
        Ok((Journal::from_parts(file, tail, len), recs))
    }

    /// Like [`Journal::open`], but if the only damage is a torn last record
    /// (see the module documentation), saves the torn octets to
    /// `<path>.torn-<offset>`, cuts the file back to the last complete record
    /// and opens it. Any other damage is refused exactly as by `open`.
    pub fn open_truncating_torn_tail(
        path: &Path,
    ) -> Result<(Journal, Vec<JournalRecord>, Option<TornTail>), JournalError> {
        let file = open_locked(path)?;
        let fault = match read_all(&file) {
            Ok((recs, tail, len)) => return Ok((Journal::from_parts(file, tail, len), recs, None)),
            Err(f) => f,
        };
        let (record, offset, torn) = match &fault {
            ReadFault::Damaged {
                record,
                offset,
                torn,
                ..
            } => (*record, *offset, *torn),
            ReadFault::Io(_) => return Err(fault.into()),
        };
        // The header is never torn: it is written before the file is linked in.
        if offset < FILE_HEADER_LEN {
            return Err(fault.into());
        }
        let end = file
            .metadata()
            .map_err(|e| io_err("cannot stat journal", path, e))?
            .len();
        let eligible = if torn {
            // Bounded: the file ended before a record of at most
            // MAX_BODY_LEN octets did.
            let mut tail = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
            file.read_exact_at(&mut tail, offset)
                .map_err(|e| io_err("cannot read journal", path, e))?;
            !holds_complete_record(&tail)
        } else {
            all_zero(&file, offset, end)?
        };
        if !eligible {
            return Err(fault.into());
        }
        let evidence = sibling(path, &format!(".torn-{offset}"));
        let mut saved = vec![0u8; usize::try_from(end - offset).unwrap_or(0)];
        file.read_exact_at(&mut saved, offset)
            .map_err(|e| io_err("cannot read journal", path, e))?;
        let ev = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&evidence)
            .map_err(|e| io_err("cannot save the torn tail to", &evidence, e))?;
        ev.write_all_at(&saved, 0)
            .and_then(|()| ev.sync_all())
            .map_err(|e| io_err("cannot save the torn tail to", &evidence, e))?;
        sync_dir(&evidence)?;
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_err("cannot truncate journal", path, e))?;
        let (recs, tail, len) = read_all(&file)?;
        let torn = TornTail {
            record,
            offset,
            removed: end - offset,
            evidence,
        };
        Ok((Journal::from_parts(file, tail, len), recs, Some(torn)))
    }

    fn from_parts(file: File, tail: Tail, len: u64) -> Journal {
        Journal {
            file,
            state: Mutex::new(State {
                durable: tail,
                durable_len: len,
                assigned: tail,
                pending: Vec::new(),
                filling: Arc::new(Batch::default()),
                flushing: false,
                poisoned: None,
            }),
            batch_done: Condvar::new(),
            flushes: AtomicU64::new(0),
            #[cfg(test)]
            fault: std::sync::atomic::AtomicU8::new(FAULT_NONE),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, JournalError> {
        self.state.lock().map_err(|_| {
            JournalError::Io(
                "internal: the journal's lock was poisoned by a panic; restart the signer"
                    .to_string(),
            )
        })
    }

    /// Appends one record and returns it once it is durable.
    pub fn append(&self, rec: NewRecord) -> Result<JournalRecord, JournalError> {
        let mut v = self.append_batch(vec![rec])?;
        v.pop()
            .ok_or_else(|| JournalError::Io("internal: batch of one came back empty".to_string()))
    }

    /// Appends several records in one durable write (they are contiguous in
    /// the journal) and returns them once durable.
    pub fn append_batch(&self, recs: Vec<NewRecord>) -> Result<Vec<JournalRecord>, JournalError> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        for r in &recs {
            validate(r)?;
        }
        let mut st = self.lock()?;
        if let Some(p) = &st.poisoned {
            return Err(JournalError::Io(p.clone()));
        }
        let time_ms = now_ms().max(st.assigned.time_ms);
        let mut out = Vec::with_capacity(recs.len());
        for r in recs {
            let mut rec = JournalRecord {
                seq: st.assigned.next_seq,
                time_ms,
                kind: r.kind,
                key_id: r.key_id,
                subject: r.subject,
                tbs_sha256: r.tbs_sha256,
                ceremony_id: r.ceremony_id,
                prev_hash: st.assigned.hash,
                hash: [0; 32],
            };
            let body = encode_body(&rec, r.intent.as_ref());
            rec.hash = body_hash(&body);
            push_record(&mut st.pending, &body, &rec.hash);
            st.assigned = Tail {
                next_seq: rec.seq + 1,
                hash: rec.hash,
                time_ms,
            };
            out.push(rec);
        }
        let mine = Arc::clone(&st.filling);
        loop {
            if let Some(outcome) = mine.outcome.get() {
                return outcome.clone().map(|()| out);
            }
            if st.flushing {
                st = self.batch_done.wait(st).map_err(|_| {
                    JournalError::Io(
                        "internal: the journal's lock was poisoned by a panic; restart the signer"
                            .to_string(),
                    )
                })?;
            } else {
                // Batches are flushed in order, one at a time: if ours is not
                // done and nobody flushes, ours is the one being filled.
                st = self.flush_as_leader(st);
            }
        }
    }

    /// Writes and syncs the batch being filled, with the lock released
    /// during the i/o so that the next batch fills meanwhile.
    fn flush_as_leader<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let batch = std::mem::take(&mut st.filling);
        let bytes = std::mem::take(&mut st.pending);
        let offset = st.durable_len;
        let new_tail = st.assigned;
        st.flushing = true;
        drop(st);

        let result = self.write_and_sync(&bytes, offset);
        self.flushes.fetch_add(1, Ordering::Relaxed);

        // Only outcomes are recorded from here on, so even a lock poisoned by
        // a panic elsewhere is taken: waiters must be told, not left asleep.
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.flushing = false;
        match result {
            Ok(()) => {
                st.durable_len = offset + bytes.len() as u64;
                st.durable = new_tail;
                let _ = batch.outcome.set(Ok(()));
            }
            Err((msg, sync_failed)) => {
                // Cut back what may have been written. The batch being filled
                // chains onto the failed records, so it fails too.
                let undo = self
                    .file
                    .set_len(offset)
                    .and_then(|()| self.file.sync_all());
                let err =
                    JournalError::Io(format!("{msg}; no record of this batch was acknowledged"));
                if sync_failed || undo.is_err() {
                    st.poisoned = Some(format!(
                        "an earlier journal write failed ({msg}){}; the journal accepts no more records until the signer is restarted and re-verifies it",
                        match &undo {
                            Err(e) => format!(" and could not be undone ({e})"),
                            Ok(()) => String::new(),
                        }
                    ));
                }
                let _ = batch.outcome.set(Err(err.clone()));
                let next = std::mem::take(&mut st.filling);
                let _ = next.outcome.set(Err(err));
                st.pending.clear();
                st.assigned = st.durable;
            }
        }
        self.batch_done.notify_all();
        st
    }

    /// `Err((message, the fdatasync failed))`.
    fn write_and_sync(&self, bytes: &[u8], offset: u64) -> Result<(), (String, bool)> {
        #[cfg(test)]
        {
            match self.fault.swap(FAULT_NONE, Ordering::SeqCst) {
                FAULT_WRITE => {
                    let half = &bytes[..bytes.len() / 2];
                    let _ = self.file.write_all_at(half, offset);
                    return Err((
                        "write failed: No space left on device (injected)".into(),
                        false,
                    ));
                }
                FAULT_SYNC => {
                    let _ = self.file.write_all_at(bytes, offset);
                    return Err((
                        "fdatasync failed: Input/output error (injected)".into(),
                        true,
                    ));
                }
                _ => {}
            }
        }
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| (format!("write failed: {e}"), false))?;
        self.file
            .sync_data()
            .map_err(|e| (format!("fdatasync failed: {e}"), true))
    }

    /// Durable record count and the hash of the last durable record (zeros
    /// when empty): what a checkpoint may sign.
    pub fn head(&self) -> (u64, [u8; 32]) {
        match self.state.lock() {
            Ok(st) => (st.durable.next_seq, st.durable.hash),
            // The durable tail is only ever replaced whole.
            Err(p) => {
                let st = p.into_inner();
                (st.durable.next_seq, st.durable.hash)
            }
        }
    }

    /// Reads the durable part of the file back, verifying it on the way,
    /// and hands every record (with its intent id, if any) to `visit`. The
    /// chain read must end at the head this journal knows, or the file was
    /// replaced underneath it.
    fn read_back(
        &self,
        mut visit: impl FnMut(JournalRecord, Option<IntentId>),
    ) -> Result<(), JournalError> {
        let (end, head) = {
            let st = self.lock()?;
            (st.durable_len, st.durable)
        };
        let reader = ReadAt {
            file: &self.file,
            pos: 0,
            end,
        };
        let mut v = Verifier::new(BufReader::new(reader))?;
        while let Some(r) = v.next()? {
            visit(r, v.last_intent);
        }
        if v.next_seq != head.next_seq || v.prev_hash != head.hash {
            return Err(JournalError::Corrupt {
                record: v.next_seq,
                offset: v.offset,
                what: format!(
                    "the file no longer ends at the head this signer wrote ({} records); {ALTERED}",
                    head.next_seq
                ),
            });
        }
        Ok(())
    }

    /// Records with `since <= time_ms < until`, read back from the file and
    /// verified on the way (see [`Journal::read_back`]).
    pub fn export(&self, window: JournalWindow) -> Result<Vec<JournalRecord>, JournalError> {
        let mut out = Vec::new();
        self.read_back(|r, _| {
            if in_window(&window, r.time_ms) {
                out.push(r);
            }
        })?;
        Ok(out)
    }

    /// The certificate signatures made for any of `intents` in records with
    /// `time_ms >= since`, in journal order. Reads (and verifies) the whole
    /// file like [`Journal::export`] but keeps only the matches, so the
    /// answer stays small however many records the window holds.
    pub fn find_intents(
        &self,
        since: UnixMillis,
        intents: &std::collections::HashSet<IntentId>,
    ) -> Result<Vec<IntentFound>, JournalError> {
        let mut out = Vec::new();
        self.read_back(|r, intent| {
            let Some(intent) = intent else {
                return;
            };
            if r.time_ms < since || !intents.contains(&intent) {
                return;
            }
            if let SignedSubject::Serial(serial) = r.subject {
                out.push(IntentFound {
                    intent,
                    issuer: r.key_id,
                    serial,
                    journal_seq: r.seq,
                    time_ms: r.time_ms,
                });
            }
        })?;
        Ok(out)
    }

    /// How many write+fdatasync rounds were made (for tests and metrics).
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// JSON export

/// RFC 3339 UTC with milliseconds, e.g. `2026-03-01T12:00:00.250Z`. Years
/// outside 0000..=9999 are printed as numbers, which RFC 3339 cannot express.
pub fn rfc3339_utc_ms(ms: UnixMillis) -> String {
    castellan_proto::time::rfc3339_ms(ms)
}

/// One record as JSON for `castellan-signer journal export`: hashes and
/// serials in lowercase hex, time as RFC 3339 UTC plus `time_ms`.
pub fn record_to_json(r: &JournalRecord) -> serde_json::Value {
    use serde_json::json;
    let subject = match &r.subject {
        SignedSubject::None => json!({ "type": "none" }),
        SignedSubject::Serial(s) => json!({ "type": "serial", "serial": hex::encode(s) }),
        SignedSubject::CrlNumber(n) => json!({ "type": "crl-number", "crl_number": n }),
        SignedSubject::Checkpoint(n) => json!({ "type": "checkpoint", "sequence": n }),
    };
    json!({
        "seq": r.seq,
        "time": rfc3339_utc_ms(r.time_ms),
        "time_ms": r.time_ms,
        "kind": r.kind.as_str(),
        "key_id": r.key_id,
        "subject": subject,
        "tbs_sha256": hex::encode(r.tbs_sha256),
        "ceremony_id": r.ceremony_id.map(hex::encode),
        "prev_hash": hex::encode(r.prev_hash),
        "hash": hex::encode(r.hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicU8;

    fn new_rec(i: u64) -> NewRecord {
        let kinds = [
            SignatureKind::Certificate,
            SignatureKind::CaCertificate,
            SignatureKind::CrossCertificate,
            SignatureKind::ResponderCertificate,
            SignatureKind::Crl,
            SignatureKind::Ocsp,
            SignatureKind::Checkpoint,
            SignatureKind::CustodianChange,
        ];
        let subject = match i % 4 {
            0 => SignedSubject::Serial(vec![0x40 | (i as u8 & 0x3f); 1 + (i as usize % 20)]),
            1 => SignedSubject::CrlNumber(i * 1000 + 7),
            2 => SignedSubject::Checkpoint(i),
            _ => SignedSubject::None,
        };
        NewRecord {
            kind: kinds[(i % 8) as usize],
            key_id: format!("issuing-ca-{i}"),
            subject,
            tbs_sha256: [i as u8; 32],
            ceremony_id: i.is_multiple_of(3).then_some([0xc0 ^ i as u8; 16]),
            intent: None,
        }
    }

    fn journal_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("signing.journal")
    }

    /// Opens the journal at `path`, creating it first if it is missing.
    fn open_or_create(path: &Path) -> Result<(Journal, Vec<JournalRecord>), JournalError> {
        if path.exists() {
            Journal::open(path)
        } else {
            Journal::create(path)
        }
    }

    fn fill(path: &Path, n: u64) -> Vec<JournalRecord> {
        let (j, existing) = open_or_create(path).unwrap();
        assert!(existing.is_empty());
        (0..n).map(|i| j.append(new_rec(i)).unwrap()).collect()
    }

    /// Offsets where each record starts, and the file length.
    fn record_starts(bytes: &[u8]) -> Vec<u64> {
        let mut starts = Vec::new();
        let mut off = FILE_HEADER_LEN as usize;
        while off < bytes.len() {
            starts.push(off as u64);
            let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
            off += RECORD_HEADER_LEN + len + HASH_LEN;
        }
        assert_eq!(off, bytes.len());
        starts
    }

    /// The record a byte offset belongs to (the header counts as record 0).
    fn record_at(starts: &[u64], pos: u64) -> (u64, u64) {
        match starts.iter().rposition(|s| *s <= pos) {
            Some(k) => (k as u64, starts[k]),
            None => (0, 0),
        }
    }

    fn assert_chain(recs: &[JournalRecord]) {
        let mut prev = [0u8; 32];
        let mut prev_time = i64::MIN;
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.seq, i as u64);
            assert_eq!(r.prev_hash, prev);
            assert!(r.time_ms >= prev_time);
            assert_eq!(r.hash, body_hash(&encode_body(r, None)));
            prev = r.hash;
            prev_time = r.time_ms;
        }
    }

    #[test]
    fn journal_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Journal>();
    }

    #[test]
    fn concurrent_appends_from_32_threads_share_fsyncs_and_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let (j, _) = open_or_create(&path).unwrap();
        let j = Arc::new(j);
        const THREADS: u64 = 32;
        const EACH: u64 = 40;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let j = Arc::clone(&j);
                std::thread::spawn(move || {
                    (0..EACH)
                        .map(|i| j.append(new_rec(t * EACH + i)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut acked: Vec<JournalRecord> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        acked.sort_by_key(|r| r.seq);
        let total = THREADS * EACH;
        assert_eq!(acked.len() as u64, total);
        assert_chain(&acked);
        let flushes = j.flush_count();
        eprintln!("{total} records in {flushes} write+fdatasync rounds");
        assert!(
            flushes * 4 <= total,
            "{flushes} flushes for {total} records: group commit is not grouping"
        );
        assert_eq!(j.head(), (total, acked[acked.len() - 1].hash));
        drop(j);
        let (_, reread) = open_or_create(&path).unwrap();
        assert_eq!(reread, acked);
    }

    #[test]
    fn reopening_returns_exactly_the_acknowledged_records_and_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let first = fill(&path, 12);
        let (j, reread) = open_or_create(&path).unwrap();
        assert_eq!(reread, first);
        assert_eq!(j.head(), (12, first[11].hash));
        let next = j.append(new_rec(99)).unwrap();
        assert_eq!(next.seq, 12);
        assert_eq!(next.prev_hash, first[11].hash);
        assert!(next.time_ms >= first[11].time_ms);
        drop(j);
        let summary = verify_file(&path).unwrap();
        assert_eq!(
            summary,
            VerifySummary {
                records: 13,
                head: next.hash
            }
        );
    }

    #[test]
    fn an_empty_journal_has_a_zero_head_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let (j, recs) = open_or_create(&path).unwrap();
        assert!(recs.is_empty());
        assert_eq!(j.head(), (0, [0; 32]));
        drop(j);
        assert_eq!(std::fs::read(&path).unwrap(), file_header());
        assert_eq!(
            verify_file(&path).unwrap(),
            VerifySummary {
                records: 0,
                head: [0; 32]
            }
        );
    }

    #[test]
    fn a_batch_is_written_with_one_flush_and_contiguous_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open_or_create(&journal_path(&dir)).unwrap();
        j.append(new_rec(0)).unwrap();
        let before = j.flush_count();
        let batch = j.append_batch((1..=10).map(new_rec).collect()).unwrap();
        assert_eq!(j.flush_count(), before + 1);
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(j.append_batch(Vec::new()).unwrap().is_empty());
        assert_eq!(j.flush_count(), before + 1);
    }

    #[test]
    fn the_journal_file_is_created_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let _ = Journal::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_missing_journal_is_refused_by_open_and_only_create_makes_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let e = Journal::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("is missing") && e.contains("refuses to start") && e.contains("restore"),
            "{e}"
        );
        assert!(!path.exists(), "open must not create the journal");
        let e = Journal::open_truncating_torn_tail(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is missing"), "{e}");
        assert!(!path.exists());
        fill(&path, 3);
        let e = Journal::create(&path).err().unwrap().to_string();
        assert!(e.contains("exists already"), "{e}");
        let (_, recs) = Journal::open(&path).unwrap();
        assert_eq!(recs.len(), 3, "create must leave an existing journal alone");
    }

    #[test]
    fn a_second_writer_and_offline_readers_are_refused_while_the_journal_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let (j, _) = open_or_create(&path).unwrap();
        let e = open_or_create(&path).err().unwrap();
        assert!(e.to_string().contains("locked by another process"), "{e}");
        let e = verify_file(&path).unwrap_err();
        assert!(e.to_string().contains("running castellan-signer"), "{e}");
        drop(j);
        verify_file(&path).unwrap();
    }

    /// `Journal::open`, waiting (bounded) while the file is locked: a child
    /// process another test forks may briefly hold a copy of this test's
    /// last descriptor of the file (with `verify_file`'s lock on it) until
    /// it execs, whatever the close-on-exec flag.
    fn open_unlocked(path: &Path) -> Result<(Journal, Vec<JournalRecord>), JournalError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match open_or_create(path) {
                Err(JournalError::Io(m))
                    if m.contains("locked by another process")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_names_the_damaged_record_and_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        fill(&path, 8);
        let good = std::fs::read(&path).unwrap();
        let starts = record_starts(&good);
        for pos in 0..good.len() {
            for mask in [0x01u8, 0x80] {
                // A new file (inode) each time: a child process another test
                // forks in between may briefly share the open file
                // description, and with it the previous file's lock.
                let damaged_path = dir.path().join(format!("damaged-{pos}-{mask}.journal"));
                let mut bad = good.clone();
                bad[pos] ^= mask;
                std::fs::write(&damaged_path, &bad).unwrap();
                let (record, offset) = record_at(&starts, pos as u64);
                match verify_file(&damaged_path) {
                    Err(JournalError::Corrupt {
                        record: r,
                        offset: o,
                        ..
                    }) => {
                        assert_eq!((r, o), (record, offset), "flip {mask:#x} at byte {pos}")
                    }
                    other => panic!("flip {mask:#x} at byte {pos}: {other:?}"),
                }
                match open_unlocked(&damaged_path) {
                    Err(JournalError::Corrupt { record: r, .. }) => assert_eq!(r, record),
                    Err(other) => panic!("flip at {pos}: {other:?}"),
                    Ok(_) => panic!("flip at {pos}: damaged journal opened"),
                }
                let _ = std::fs::remove_file(&damaged_path);
            }
        }
    }

    #[test]
    fn a_hash_mismatch_message_tells_the_operator_to_preserve_evidence() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        fill(&path, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let starts = record_starts(&bytes);
        // The time field of record 2.
        bytes[starts[2] as usize + 8 + 8] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let msg = verify_file(&path).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "journal record 2 (byte offset {}) is damaged: hash mismatch — the journal was altered after it was written; preserve this file as evidence",
                starts[2]
            )
        );
    }

    #[test]
    fn an_absurd_body_length_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        fill(&path, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let starts = record_starts(&bytes);
        let at = starts[1] as usize + 4;
        for len in [u32::MAX, MAX_BODY_LEN + 1, 0, MIN_BODY_LEN - 1] {
            bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            match verify_file(&path) {
                Err(JournalError::Corrupt {
                    record: 1, what, ..
                }) => {
                    assert!(what.contains("implausible body length"), "{what}")
                }
                other => panic!("length {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn records_chained_onto_a_forged_record_are_refused() {
        // Re-hashing an edited record makes it self-consistent, but the next
        // record no longer chains to it.
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let recs = fill(&path, 3);
        let mut forged = recs[1].clone();
        forged.key_id = "issuing-ca-X".to_string();
        let body = encode_body(&forged, None);
        let hash = body_hash(&body);
        let mut out = file_header().to_vec();
        push_record(&mut out, &encode_body(&recs[0], None), &recs[0].hash);
        push_record(&mut out, &body, &hash);
        push_record(&mut out, &encode_body(&recs[2], None), &recs[2].hash);
        std::fs::write(&path, &out).unwrap();
        match verify_file(&path) {
            Err(JournalError::Corrupt {
                record: 2, what, ..
            }) => {
                assert!(what.contains("does not chain"), "{what}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_truncated_journal_names_the_record_that_was_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        fill(&path, 5);
        let good = std::fs::read(&path).unwrap();
        let starts = record_starts(&good);
        let cut_path = dir.path().join("cut.journal");
        for cut in 0..good.len() {
            std::fs::write(&cut_path, &good[..cut]).unwrap();
            let res = verify_file(&cut_path);
            if cut as u64 == FILE_HEADER_LEN {
                assert_eq!(res.unwrap().records, 0);
            } else if let Some(k) = starts.iter().position(|s| *s == cut as u64) {
                // Cutting whole records off the end is only visible against
                // a signed checkpoint.
                assert_eq!(res.unwrap().records, k as u64);
            } else {
                let (record, offset) = record_at(&starts, cut as u64);
                match res {
                    Err(JournalError::Corrupt {
                        record: r,
                        offset: o,
                        ..
                    }) => {
                        assert_eq!((r, o), (record, offset), "cut at {cut}")
                    }
                    other => panic!("cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_torn_tail_is_refused_by_open_and_removed_only_by_explicit_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let recs = fill(&path, 6);
        let bytes = std::fs::read(&path).unwrap();
        let starts = record_starts(&bytes);
        // The last record was being written when the power went.
        let cut = starts[5] as usize + 40;
        std::fs::write(&path, &bytes[..cut]).unwrap();
        match open_or_create(&path) {
            Err(e @ JournalError::Corrupt { record: 5, .. }) => {
                assert!(e.to_string().contains("recover-torn-tail"), "{e}")
            }
            other => panic!("{:?}", other.map(|(_, r)| r)),
        }
        let (j, reread, torn) = Journal::open_truncating_torn_tail(&path).unwrap();
        assert_eq!(reread, recs[..5]);
        let torn = torn.unwrap();
        assert_eq!((torn.record, torn.offset, torn.removed), (5, starts[5], 40));
        assert_eq!(
            std::fs::read(&torn.evidence).unwrap(),
            bytes[starts[5] as usize..cut]
        );
        let next = j.append(new_rec(50)).unwrap();
        assert_eq!((next.seq, next.prev_hash), (5, recs[4].hash));
        drop(j);
        assert_eq!(verify_file(&path).unwrap().records, 6);
        // A sound journal passes through recovery untouched.
        let (_, again, none) = Journal::open_truncating_torn_tail(&path).unwrap();
        assert_eq!((again.len(), none), (6, None));
    }

    #[test]
    fn a_zero_filled_tail_is_recoverable_as_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let recs = fill(&path, 3);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[0u8; 4096])
            .unwrap();
        assert!(matches!(
            open_or_create(&path),
            Err(JournalError::Corrupt { record: 3, .. })
        ));
        let (_, reread, torn) = Journal::open_truncating_torn_tail(&path).unwrap();
        assert_eq!(reread, recs);
        assert_eq!(torn.unwrap().removed, 4096);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }

    #[test]
    fn damage_to_a_complete_last_record_is_not_mistaken_for_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        fill(&path, 4);
        let good = std::fs::read(&path).unwrap();
        let starts = record_starts(&good);
        let last = starts[3] as usize;
        // A larger length makes the file end "inside" the record, but the
        // record is complete: it was written and acknowledged.
        let mut longer = good.clone();
        let len = u32::from_le_bytes(longer[last + 4..last + 8].try_into().unwrap());
        longer[last + 4..last + 8].copy_from_slice(&(len + 9).to_le_bytes());
        // A flipped hash bit in the last record.
        let mut flipped = good.clone();
        let end = flipped.len();
        flipped[end - 1] ^= 1;
        // A record appended by someone else after the last one.
        let mut extra = good.clone();
        extra.extend_from_slice(&good[last..]);
        for (name, bad) in [("length", longer), ("hash", flipped), ("extra", extra)] {
            std::fs::write(&path, &bad).unwrap();
            match Journal::open_truncating_torn_tail(&path) {
                Err(JournalError::Corrupt { record, .. }) => {
                    assert!(record == 3 || record == 4, "{name}: record {record}")
                }
                Err(e) => panic!("{name}: {e}"),
                Ok(_) => panic!("{name}: damaged journal was 'recovered'"),
            }
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bad,
                "{name}: file was modified"
            );
        }
    }

    #[test]
    fn export_returns_exactly_the_records_whose_time_falls_in_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let (j, _) = open_or_create(&path).unwrap();
        let mut all = Vec::new();
        for group in 0..3u64 {
            for i in 0..5 {
                all.push(j.append(new_rec(group * 10 + i)).unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let expect = |w: JournalWindow| -> Vec<JournalRecord> {
            all.iter()
                .filter(|r| in_window(&w, r.time_ms))
                .cloned()
                .collect()
        };
        let first = all[0].time_ms;
        let last = all[all.len() - 1].time_ms;
        let windows = [
            JournalWindow {
                since: all[5].time_ms,
                until: all[10].time_ms,
            },
            JournalWindow {
                since: all[5].time_ms,
                until: all[5].time_ms + 1,
            },
            JournalWindow {
                since: all[7].time_ms,
                until: all[7].time_ms,
            },
            JournalWindow {
                since: first,
                until: last,
            },
            JournalWindow {
                since: first,
                until: last + 1,
            },
            JournalWindow {
                since: last + 1,
                until: i64::MAX,
            },
            JournalWindow {
                since: i64::MIN,
                until: i64::MAX,
            },
            JournalWindow {
                since: last,
                until: first,
            },
        ];
        for w in windows {
            let got = j.export(w).unwrap();
            assert_eq!(got, expect(w), "{w:?}");
            assert!(
                got.iter()
                    .all(|r| w.since <= r.time_ms && r.time_ms < w.until)
            );
        }
        // A window starting at a record's own time includes it.
        assert!(j.export(windows[0]).unwrap().contains(&all[5]));
        assert_eq!(j.export(windows[6]).unwrap(), all);
        drop(j);
        for w in windows {
            assert_eq!(read_window(&path, w).unwrap(), expect(w), "{w:?}");
        }
    }

    #[test]
    fn export_refuses_a_file_altered_underneath_the_signer() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let (j, _) = open_or_create(&path).unwrap();
        for i in 0..3 {
            j.append(new_rec(i)).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0xff;
        // Write through another descriptor, as an intruder would.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let all = JournalWindow {
            since: i64::MIN,
            until: i64::MAX,
        };
        assert!(matches!(
            j.export(all),
            Err(JournalError::Corrupt { record: 2, .. })
        ));
    }

    #[test]
    fn a_failed_write_is_undone_and_reported_to_its_appenders() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let (j, _) = open_or_create(&path).unwrap();
        let kept = j.append(new_rec(0)).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        j.fault.store(FAULT_WRITE, Ordering::SeqCst);
        let e = j.append_batch((1..4).map(new_rec).collect()).unwrap_err();
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert!(
            e.to_string()
                .contains("no record of this batch was acknowledged"),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_eq!(j.head(), (1, kept.hash));
        // The journal keeps working once the disk does.
        let next = j.append(new_rec(5)).unwrap();
        assert_eq!((next.seq, next.prev_hash), (1, kept.hash));
        drop(j);
        let (_, reread) = open_or_create(&path).unwrap();
        assert_eq!(reread, vec![kept, next]);
    }

    #[test]
    fn no_appender_is_acknowledged_for_a_record_lost_in_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let (j, _) = open_or_create(&path).unwrap();
        let j = Arc::new(j);
        let failures = Arc::new(AtomicU8::new(0));
        let handles: Vec<_> = (0..16u64)
            .map(|t| {
                let j = Arc::clone(&j);
                let failures = Arc::clone(&failures);
                std::thread::spawn(move || {
                    let mut ok = Vec::new();
                    for i in 0..30 {
                        if t == 3 && i == 10 {
                            j.fault.store(FAULT_WRITE, Ordering::SeqCst);
                        }
                        match j.append(new_rec(t * 100 + i)) {
                            Ok(r) => ok.push(r),
                            Err(JournalError::Io(_)) => {
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    ok
                })
            })
            .collect();
        let mut acked: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        acked.sort_by_key(|r| r.seq);
        assert!(failures.load(Ordering::SeqCst) >= 1);
        assert_eq!(
            acked.len() + failures.load(Ordering::SeqCst) as usize,
            16 * 30
        );
        drop(j);
        let (_, reread) = open_or_create(&path).unwrap();
        assert_eq!(
            reread, acked,
            "durable records must be exactly the acknowledged ones"
        );
        assert_chain(&reread);
    }

    #[test]
    fn a_failed_fdatasync_stops_the_journal_until_it_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        let (j, _) = open_or_create(&path).unwrap();
        let kept = j.append(new_rec(0)).unwrap();
        j.fault.store(FAULT_SYNC, Ordering::SeqCst);
        assert!(j.append(new_rec(1)).is_err());
        let e = j.append(new_rec(2)).unwrap_err();
        assert!(
            e.to_string().contains("until the signer is restarted"),
            "{e}"
        );
        drop(j);
        let (j, reread) = open_or_create(&path).unwrap();
        assert_eq!(reread, vec![kept]);
        assert_eq!(j.append(new_rec(3)).unwrap().seq, 1);
    }

    #[test]
    fn oversized_fields_are_refused_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = open_or_create(&journal_path(&dir)).unwrap();
        let mut r = new_rec(1);
        r.key_id = "k".repeat(MAX_KEY_ID_LEN + 1);
        assert!(matches!(j.append(r), Err(JournalError::Invalid(_))));
        let mut r = new_rec(1);
        r.subject = SignedSubject::Serial(vec![1; MAX_SERIAL_LEN + 1]);
        assert!(matches!(
            j.append_batch(vec![new_rec(0), r]),
            Err(JournalError::Invalid(_))
        ));
        assert_eq!((j.head().0, j.flush_count()), (0, 0));
        let mut r = new_rec(2);
        r.key_id = "k".repeat(MAX_KEY_ID_LEN);
        r.subject = SignedSubject::Serial(vec![1; MAX_SERIAL_LEN]);
        assert_eq!(j.append(r).unwrap().seq, 0);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused_at_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        for content in [
            &b""[..],
            b"CSTLJRN",
            b"CSTLJRNL\x02\x00",
            b"some other file.....",
        ] {
            std::fs::write(&path, content).unwrap();
            match open_or_create(&path) {
                Err(JournalError::Corrupt {
                    record: 0,
                    offset: 0,
                    ..
                }) => {}
                Err(e) => panic!("{content:?}: {e}"),
                Ok(_) => panic!("{content:?} opened"),
            }
        }
    }

    /// Two records written by format version 1 (record hashes checked
    /// independently with Python's hashlib). These octets must keep opening
    /// for as long as version 1 journals exist on appliances.
    const V1_JOURNAL_HEX: &str = concat!(
        "4353544c4a524e4c0100434a52317300000000000000000000009554dcf48d010000020900726f6f",
        "742d3230323401030001020311111111111111111111111111111111111111111111111111111111",
        "1111111101aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa00000000000000000000000000000000000000",
        "00000000000000000000000000dab64e9259e87d760f10ca004fdb343a0076ffcb1ad54ee3acac84",
        "a5b72ff317434a52316600000001000000000000006855dcf48d010000050900726f6f742d323032",
        "34020100000000000000222222222222222222222222222222222222222222222222222222222222",
        "222200dab64e9259e87d760f10ca004fdb343a0076ffcb1ad54ee3acac84a5b72ff317e4c748546e",
        "4cb866facee9968bc585f3e2fa026a240acd6d56cbc6d92f58d61c",
    );

    fn v1_records() -> Vec<JournalRecord> {
        let mut recs = vec![
            JournalRecord {
                seq: 0,
                time_ms: 1_709_210_096_789,
                kind: SignatureKind::CaCertificate,
                key_id: "root-2024".to_string(),
                subject: SignedSubject::Serial(vec![0x01, 0x02, 0x03]),
                tbs_sha256: [0x11; 32],
                ceremony_id: Some([0xaa; 16]),
                prev_hash: [0; 32],
                hash: [0; 32],
            },
            JournalRecord {
                seq: 1,
                time_ms: 1_709_210_097_000,
                kind: SignatureKind::Crl,
                key_id: "root-2024".to_string(),
                subject: SignedSubject::CrlNumber(1),
                tbs_sha256: [0x22; 32],
                ceremony_id: None,
                prev_hash: [0; 32],
                hash: [0; 32],
            },
        ];
        recs[0].hash = body_hash(&encode_body(&recs[0], None));
        recs[1].prev_hash = recs[0].hash;
        recs[1].hash = body_hash(&encode_body(&recs[1], None));
        recs
    }

    #[test]
    fn a_journal_written_by_format_version_1_still_opens() {
        let recs = v1_records();
        let mut bytes = file_header().to_vec();
        for r in &recs {
            push_record(&mut bytes, &encode_body(r, None), &r.hash);
        }
        assert_eq!(
            hex::encode(&bytes),
            V1_JOURNAL_HEX,
            "the encoder changed the version 1 format; old journals would no longer open"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir);
        std::fs::write(&path, hex::decode(V1_JOURNAL_HEX).unwrap()).unwrap();
        let (j, reread) = open_or_create(&path).unwrap();
        assert_eq!(reread, recs);
        assert_eq!(j.append(new_rec(0)).unwrap().prev_hash, recs[1].hash);
    }

    #[test]
    fn record_json_uses_hex_rfc3339_and_kind_names() {
        let recs = v1_records();
        let v = record_to_json(&recs[0]);
        assert_eq!(v["seq"], 0);
        assert_eq!(v["time"], "2024-02-29T12:34:56.789Z");
        assert_eq!(v["time_ms"], 1_709_210_096_789i64);
        assert_eq!(v["kind"], "ca-certificate");
        assert_eq!(v["key_id"], "root-2024");
        assert_eq!(
            v["subject"],
            serde_json::json!({"type": "serial", "serial": "010203"})
        );
        assert_eq!(v["tbs_sha256"], "11".repeat(32));
        assert_eq!(v["ceremony_id"], "aa".repeat(16));
        assert_eq!(v["prev_hash"], "00".repeat(32));
        assert_eq!(v["hash"], hex::encode(recs[0].hash));
        let v = record_to_json(&recs[1]);
        assert_eq!(v["kind"], "crl");
        assert_eq!(
            v["subject"],
            serde_json::json!({"type": "crl-number", "crl_number": 1})
        );
        assert!(v["ceremony_id"].is_null());
    }

    #[test]
    fn rfc3339_times_match_known_instants() {
        assert_eq!(rfc3339_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc_ms(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(
            rfc3339_utc_ms(4_107_542_400_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_utc_ms(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        // Extremes do not panic.
        let _ = rfc3339_utc_ms(i64::MIN);
        let _ = rfc3339_utc_ms(i64::MAX);
    }
}
