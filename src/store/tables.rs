//! Table definitions, key encodings, and the one implementation of
//! [`ReadView`] shared by the writer (inside its write transaction) and by
//! snapshots (read transactions).

use std::sync::{Mutex, OnceLock};

use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition, TableError,
    WriteTransaction,
};
use serde::de::DeserializeOwned;

use super::ReadView;
use super::records::{
    CaRecord, CeremonyRecord, CertFilter, CertRecord, CertState, CheckpointRecord, CrlRecord,
    IntentRecord, ResponderRecord, Revocation, SignerKeys,
};
use crate::events::{Event, RequestId};
use castellan_proto::CeremonyId;

/// Layout version written to `meta`; a file with another version is refused.
pub const LAYOUT_VERSION: u32 = 1;
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const META_LAYOUT: &str = "layout_version";

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

pub(crate) type Raw = TableDefinition<'static, &'static [u8], &'static [u8]>;

// Indices into `NAMES` and `Tables::p`.
pub(crate) const SIGNER: usize = 0;
pub(crate) const CAS: usize = 1;
pub(crate) const CERTS: usize = 2;
pub(crate) const BY_IDENTITY: usize = 3;
pub(crate) const BY_ISSUER: usize = 4;
pub(crate) const REVOKED: usize = 5;
pub(crate) const INTENTS: usize = 6;
pub(crate) const CEREMONIES: usize = 7;
pub(crate) const CHECKPOINTS: usize = 8;
pub(crate) const GRAPH: usize = 9;
pub(crate) const RESPONDERS: usize = 10;
pub(crate) const CRLS: usize = 11;
pub(crate) const N_PROJECTIONS: usize = 12;

/// Every projection table's name, in dump order. Adding one appends here.
pub(crate) const NAMES: [&str; N_PROJECTIONS] = [
    "p.signer_keys",
    "p.cas",
    "p.certs",
    "p.certs_by_identity",
    "p.certs_by_issuer",
    "p.revoked_by_issuer",
    "p.intents",
    "p.ceremonies",
    "p.checkpoints",
    "p.graph",
    "p.responders",
    "p.crls",
];

pub(crate) fn projection(t: usize) -> Raw {
    TableDefinition::new(NAMES[t])
}

/// The single key of `p.signer_keys`.
pub(crate) const SIGNER_KEY: &[u8] = b"current";

/// `u32 big-endian length ‖ bytes`: a prefix that matches exactly one
/// string, so an index scan for "alice" never meets "alice2".
pub(crate) fn lp(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + s.len());
    // Strings longer than 4 GiB cannot reach here (events are far smaller).
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

/// `lp(prefix) ‖ rest`.
pub(crate) fn compound(prefix: &str, rest: &[u8]) -> Vec<u8> {
    let mut out = lp(prefix);
    out.extend_from_slice(rest);
    out
}

pub(crate) fn checkpoint_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn ca_node(ca_id: &str) -> String {
    format!("ca:{ca_id}")
}

pub(crate) fn cert_node(serial: &[u8]) -> String {
    format!("cert:{}", hex::encode(serial))
}

pub(crate) fn identity_node(identity: &str) -> String {
    format!("identity:{identity}")
}

/// Strict postcard decoding: trailing bytes are damage, not padding.
pub(crate) fn decode<R: DeserializeOwned>(bytes: &[u8]) -> Result<R, String> {
    match postcard::take_from_bytes::<R>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, String> {
    decode(bytes)
}

/// The open tables of one transaction. `B` is a projection table, `E` the
/// events table: `Table` in the writer, `ReadOnlyTable` in a snapshot.
///
/// The writer opens every table at once (one transaction per batch). A
/// snapshot opens a table when a `ReadView` call first needs it: most
/// readers touch one or two of the thirteen tables, and opening one costs a
/// lookup in redb's table tree.
///
/// `ReadView` returns plain values; a storage or decoding error met while
/// answering is kept in `error` (and logged), and whoever ran the view
/// checks it: the writer then aborts the batch, since a command decided on
/// a partial view must not be committed.
pub(crate) struct Tables<B, E> {
    events: OnceLock<E>,
    p: [OnceLock<B>; N_PROJECTIONS],
    opener: Option<Box<dyn OpenTables<B, E>>>,
    error: Mutex<Option<String>>,
}

/// Opens the tables of a snapshot on first use.
pub(crate) trait OpenTables<B, E>: Send + Sync {
    fn projection(&self, t: usize) -> Result<B, TableError>;
    fn events(&self) -> Result<E, TableError>;
}

impl OpenTables<ReadOnlyTable<&'static [u8], &'static [u8]>, ReadOnlyTable<u64, &'static [u8]>>
    for ReadTransaction
{
    fn projection(
        &self,
        t: usize,
    ) -> Result<ReadOnlyTable<&'static [u8], &'static [u8]>, TableError> {
        self.open_table(projection(t))
    }
    fn events(&self) -> Result<ReadOnlyTable<u64, &'static [u8]>, TableError> {
        self.open_table(EVENTS)
    }
}

pub(crate) type WriteTables<'txn> =
    Tables<Table<'txn, &'static [u8], &'static [u8]>, Table<'txn, u64, &'static [u8]>>;
pub(crate) type ReadTables =
    Tables<ReadOnlyTable<&'static [u8], &'static [u8]>, ReadOnlyTable<u64, &'static [u8]>>;

const NOT_OPEN: &str = "internal: a table of the write transaction is not open";

impl<'txn> WriteTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<WriteTables<'txn>, TableError> {
        let events = OnceLock::from(txn.open_table(EVENTS)?);
        let p = std::array::from_fn(|_| OnceLock::new());
        for (t, cell) in p.iter().enumerate() {
            let _ = cell.set(txn.open_table(projection(t))?);
        }
        Ok(Tables {
            events,
            p,
            opener: None,
            error: Mutex::new(None),
        })
    }

    /// The events table, to append to.
    pub(crate) fn events_mut(&mut self) -> Result<&mut Table<'txn, u64, &'static [u8]>, String> {
        self.events.get_mut().ok_or_else(|| NOT_OPEN.to_string())
    }

    fn table_mut(
        &mut self,
        t: usize,
    ) -> Result<&mut Table<'txn, &'static [u8], &'static [u8]>, String> {
        self.p[t].get_mut().ok_or_else(|| NOT_OPEN.to_string())
    }

    pub(crate) fn put(&mut self, t: usize, key: &[u8], value: &[u8]) -> Result<(), String> {
        self.table_mut(t)?
            .insert(key, value)
            .map(|_| ())
            .map_err(|e| format!("writing {}: {e}", NAMES[t]))
    }

    pub(crate) fn del(&mut self, t: usize, key: &[u8]) -> Result<(), String> {
        self.table_mut(t)?
            .remove(key)
            .map(|_| ())
            .map_err(|e| format!("writing {}: {e}", NAMES[t]))
    }

    /// Reads a record for an update: a storage or decoding error is an
    /// error of the batch, not a "missing" record.
    pub(crate) fn load<R: DeserializeOwned>(
        &self,
        t: usize,
        key: &[u8],
    ) -> Result<Option<R>, String> {
        let name = NAMES[t];
        let table = self.p[t].get().ok_or_else(|| NOT_OPEN.to_string())?;
        match table.get(key) {
            Ok(Some(v)) => decode(v.value()).map(Some).map_err(|e| {
                format!(
                    "a record of {name} does not decode ({e}); rebuild the projections with \
                     `castellanctl store rebuild-projections`"
                )
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading {name}: {e}")),
        }
    }
}

impl ReadTables {
    /// A snapshot's tables, opened from `txn` as they are first needed.
    pub(crate) fn lazy(txn: ReadTransaction) -> ReadTables {
        Tables {
            events: OnceLock::new(),
            p: std::array::from_fn(|_| OnceLock::new()),
            opener: Some(Box::new(txn)),
            error: Mutex::new(None),
        }
    }
}

impl<B, E> Tables<B, E>
where
    B: ReadableTable<&'static [u8], &'static [u8]>,
    E: ReadableTable<u64, &'static [u8]>,
{
    fn fail(&self, what: String) {
        tracing::error!(error = %what, "event store read failed");
        if let Ok(mut slot) = self.error.lock()
            && slot.is_none()
        {
            *slot = Some(what);
        }
    }

    /// The first error met while answering, if any (and clears it).
    pub(crate) fn take_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|mut slot| slot.take())
    }

    pub(crate) fn peek_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|slot| slot.clone())
    }

    /// Projection table `t`, opened now if this is its first use; `None`
    /// (with the error recorded) if it cannot be opened.
    fn table(&self, t: usize) -> Option<&B> {
        if let Some(b) = self.p[t].get() {
            return Some(b);
        }
        let opened = match &self.opener {
            Some(o) => o.projection(t),
            None => {
                self.fail(NOT_OPEN.to_string());
                return None;
            }
        };
        match opened {
            Ok(b) => {
                // Another thread may have opened it meanwhile: either copy
                // is a view of the same transaction.
                let _ = self.p[t].set(b);
                self.p[t].get()
            }
            Err(e) => {
                self.fail(format!("opening {}: {e}", NAMES[t]));
                None
            }
        }
    }

    /// The events table, opened now if this is its first use.
    pub(crate) fn events(&self) -> Option<&E> {
        if let Some(e) = self.events.get() {
            return Some(e);
        }
        let opened = match &self.opener {
            Some(o) => o.events(),
            None => {
                self.fail(NOT_OPEN.to_string());
                return None;
            }
        };
        match opened {
            Ok(e) => {
                let _ = self.events.set(e);
                self.events.get()
            }
            Err(e) => {
                self.fail(format!("opening events: {e}"));
                None
            }
        }
    }

    fn get<R: DeserializeOwned>(&self, t: usize, key: &[u8]) -> Option<R> {
        let name = NAMES[t];
        match self.table(t)?.get(key) {
            Ok(Some(v)) => match decode(v.value()) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.fail(format!(
                        "a record of {name} does not decode ({e}); rebuild the projections"
                    ));
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.fail(format!("reading {name}: {e}"));
                None
            }
        }
    }

    /// Calls `f(key, value)` for every entry whose key starts with
    /// `prefix`, in key order, until `f` returns false.
    fn scan(&self, t: usize, prefix: &[u8], f: impl FnMut(&[u8], &[u8]) -> bool) {
        self.scan_from(t, prefix, prefix, f)
    }

    /// [`Self::scan`] beginning at key `start` (at or after `prefix`).
    fn scan_from(
        &self,
        t: usize,
        prefix: &[u8],
        start: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) {
        let name = NAMES[t];
        let Some(table) = self.table(t) else { return };
        let range = match table.range::<&[u8]>(start..) {
            Ok(r) => r,
            Err(e) => return self.fail(format!("reading {name}: {e}")),
        };
        for item in range {
            match item {
                Ok((k, v)) => {
                    let k = k.value();
                    if !k.starts_with(prefix) || !f(k, v.value()) {
                        return;
                    }
                }
                Err(e) => return self.fail(format!("reading {name}: {e}")),
            }
        }
    }

    fn all<R: DeserializeOwned>(&self, t: usize, prefix: &[u8]) -> Vec<R> {
        let mut out = Vec::new();
        let mut bad = None;
        self.scan(t, prefix, |_, v| match decode(v) {
            Ok(r) => {
                out.push(r);
                true
            }
            Err(e) => {
                bad = Some(e);
                false
            }
        });
        if let Some(e) = bad {
            self.fail(format!(
                "a record of {} does not decode ({e}); rebuild the projections",
                NAMES[t]
            ));
        }
        out
    }

    /// Serials listed under `lp(name)` in an index table, in key order.
    fn index(&self, t: usize, name: &str) -> Vec<Vec<u8>> {
        let prefix = lp(name);
        // `p.certs_by_issuer` has the issuance seq between name and serial.
        let skip = prefix.len() + if t == BY_ISSUER { 8 } else { 0 };
        let mut out = Vec::new();
        self.scan(t, &prefix, |k, _| {
            out.push(k.get(skip..).unwrap_or_default().to_vec());
            true
        });
        out
    }

    fn certs_from_index(
        &self,
        t: usize,
        name: &str,
        keep: impl Fn(&CertRecord) -> bool,
        limit: usize,
    ) -> Vec<CertRecord> {
        let mut out = Vec::new();
        for serial in self.index(t, name) {
            if out.len() >= limit {
                break;
            }
            match self.get::<CertRecord>(CERTS, &serial) {
                Some(c) if keep(&c) => out.push(c),
                Some(_) => {}
                None => self.fail(format!(
                    "{} lists serial {} which is not in p.certs; rebuild the projections",
                    NAMES[t],
                    hex::encode(&serial)
                )),
            }
        }
        out
    }
}

impl<B, E> ReadView for Tables<B, E>
where
    B: ReadableTable<&'static [u8], &'static [u8]>,
    E: ReadableTable<u64, &'static [u8]>,
{
    fn head(&self) -> (u64, [u8; 32]) {
        let Some(events) = self.events() else {
            return (0, [0; 32]);
        };
        match events.last() {
            Ok(None) => (0, [0; 32]),
            Ok(Some((k, v))) => {
                let seq = k.value();
                match decode_event(v.value()) {
                    Ok(ev) => (seq.saturating_add(1), ev.hash),
                    Err(e) => {
                        self.fail(format!(
                            "the last event ({seq}) does not decode ({e}); run `castellanctl audit verify`"
                        ));
                        (seq.saturating_add(1), [0; 32])
                    }
                }
            }
            Err(e) => {
                self.fail(format!("reading events: {e}"));
                (0, [0; 32])
            }
        }
    }

    fn signer_keys(&self) -> Option<SignerKeys> {
        self.get(SIGNER, SIGNER_KEY)
    }

    fn ca(&self, ca_id: &str) -> Option<CaRecord> {
        self.get(CAS, ca_id.as_bytes())
    }

    fn cas(&self) -> Vec<CaRecord> {
        self.all(CAS, b"")
    }

    fn responder(&self, issuer: &str) -> Option<ResponderRecord> {
        self.get(RESPONDERS, issuer.as_bytes())
    }

    fn cert(&self, serial: &[u8]) -> Option<CertRecord> {
        self.get(CERTS, serial)
    }

    fn certs(&self, filter: &CertFilter) -> Vec<CertRecord> {
        self.certs_page(filter).0
    }

    fn certs_page(&self, filter: &CertFilter) -> (Vec<CertRecord>, Option<Vec<u8>>) {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let keep = |c: &CertRecord| {
            filter.issuer.as_deref().is_none_or(|i| c.issuer == i)
                && filter.state.is_none_or(|s| c.state == s)
                && filter.identity.as_deref().is_none_or(|i| c.identity == i)
        };
        // The table walked: an index under the identity or the issuer, or
        // the certificates by serial. A position is a key without the
        // index's name prefix.
        let (t, prefix) = if let Some(identity) = &filter.identity {
            (BY_IDENTITY, lp(identity))
        } else if let Some(issuer) = &filter.issuer {
            let t = if filter.state == Some(CertState::Revoked) {
                REVOKED
            } else {
                BY_ISSUER
            };
            (t, lp(issuer))
        } else {
            (CERTS, Vec::new())
        };
        // `p.certs_by_issuer` has the issuance seq between name and serial.
        let serial_at = prefix.len() + if t == BY_ISSUER { 8 } else { 0 };
        let mut start = prefix.clone();
        if let Some(after) = &filter.after {
            start.extend_from_slice(after);
        }
        let mut out = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        let mut more = false;
        let mut bad = None;
        self.scan_from(t, &prefix, &start, |k, v| {
            let position = k.get(prefix.len()..).unwrap_or_default();
            if filter.after.as_deref() == Some(position) {
                return true;
            }
            if out.len() >= limit {
                more = true;
                return false;
            }
            let record = if t == CERTS {
                match decode::<CertRecord>(v) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        bad = Some(format!(
                            "a record of p.certs does not decode ({e}); rebuild the projections"
                        ));
                        return false;
                    }
                }
            } else {
                let serial = k.get(serial_at..).unwrap_or_default();
                let found = self.get::<CertRecord>(CERTS, serial);
                if found.is_none() {
                    self.fail(format!(
                        "{} lists serial {} which is not in p.certs; rebuild the projections",
                        NAMES[t],
                        hex::encode(serial)
                    ));
                }
                found
            };
            if let Some(c) = record
                && keep(&c)
            {
                out.push(c);
            }
            last = Some(position.to_vec());
            true
        });
        if let Some(e) = bad {
            self.fail(e);
        }
        (out, if more { last } else { None })
    }

    fn certs_by_identity(&self, identity: &str) -> Vec<CertRecord> {
        self.certs_from_index(BY_IDENTITY, identity, |_| true, usize::MAX)
    }

    fn intent(&self, request_id: &RequestId) -> Option<IntentRecord> {
        self.get(INTENTS, request_id)
    }

    fn pending_intents(&self) -> Vec<IntentRecord> {
        self.all(INTENTS, b"")
    }

    fn ceremony(&self, id: &CeremonyId) -> Option<CeremonyRecord> {
        self.get(CEREMONIES, id)
    }

    fn ceremonies(&self) -> Vec<CeremonyRecord> {
        self.all(CEREMONIES, b"")
    }

    fn revoked(&self, issuer: &str) -> Vec<CertRecord> {
        self.certs_from_index(REVOKED, issuer, |_| true, usize::MAX)
    }

    fn revocations(&self, issuer: &str) -> Vec<(Vec<u8>, Revocation)> {
        let prefix = lp(issuer);
        let mut out = Vec::new();
        let mut missing = Vec::new();
        let mut bad = None;
        self.scan(REVOKED, &prefix, |k, v| {
            let serial = k.get(prefix.len()..).unwrap_or_default().to_vec();
            if v.is_empty() {
                // Written before the index carried the revocation: read it
                // from the certificate record.
                missing.push(serial);
                return true;
            }
            match decode::<Revocation>(v) {
                Ok(r) => {
                    out.push((serial, r));
                    true
                }
                Err(e) => {
                    bad = Some(e);
                    false
                }
            }
        });
        if let Some(e) = bad {
            self.fail(format!(
                "a record of p.revoked_by_issuer does not decode ({e}); rebuild the projections"
            ));
        }
        for serial in missing {
            match self.get::<CertRecord>(CERTS, &serial).and_then(|c| c.revocation) {
                Some(r) => out.push((serial, r)),
                None => self.fail(format!(
                    "p.revoked_by_issuer lists serial {} which is not revoked in p.certs; rebuild the projections",
                    hex::encode(&serial)
                )),
            }
        }
        out
    }

    fn crl(&self, issuer: &str) -> Option<CrlRecord> {
        self.get(CRLS, issuer.as_bytes())
    }

    fn cert_count(&self) -> u64 {
        let Some(certs) = self.table(CERTS) else {
            return 0;
        };
        match certs.len() {
            Ok(n) => n,
            Err(e) => {
                self.fail(format!("reading p.certs: {e}"));
                0
            }
        }
    }

    fn unexpired_serials(&self, issuer: &str, now: i64) -> Vec<Vec<u8>> {
        let prefix = lp(issuer);
        let skip = prefix.len() + 8;
        let mut out = Vec::new();
        self.scan(BY_ISSUER, &prefix, |k, v| {
            // An entry without notAfter (written by an earlier version)
            // counts as unexpired.
            let live = <[u8; 8]>::try_from(v).map_or(true, |b| i64::from_be_bytes(b) > now);
            if live {
                out.push(k.get(skip..).unwrap_or_default().to_vec());
            }
            true
        });
        out
    }

    fn latest_checkpoint(&self) -> Option<CheckpointRecord> {
        match self.table(CHECKPOINTS)?.last() {
            Ok(Some((_, v))) => match decode(v.value()) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.fail(format!(
                        "a record of p.checkpoints does not decode ({e}); rebuild the projections"
                    ));
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.fail(format!("reading p.checkpoints: {e}"));
                None
            }
        }
    }

    fn children(&self, node: &str) -> Vec<String> {
        // Stored edges (CA → child CA) first, then the edges that are
        // derived from the certificate indexes rather than stored twice.
        let prefix = lp(node);
        let mut out = Vec::new();
        self.scan(GRAPH, &prefix, |k, _| {
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            true
        });
        if let Some(ca_id) = node.strip_prefix("ca:") {
            out.extend(
                self.index(BY_ISSUER, ca_id)
                    .iter()
                    .map(|serial| cert_node(serial)),
            );
        } else if let Some(serial) = node.strip_prefix("cert:")
            && let Ok(serial) = hex::decode(serial)
            && let Some(c) = self.get::<CertRecord>(CERTS, &serial)
        {
            out.push(identity_node(&c.identity));
        }
        out
    }
}
