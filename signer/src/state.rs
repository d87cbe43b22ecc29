//! The signer's durable state besides keys and journal: the custodian set,
//! the CAs it holds and their delegated OCSP responders.
//!
//! Stored as one JSON document (`state.json`, mode 0600) replaced atomically
//! (write temporary, fsync, rename, fsync directory). What can be derived
//! from the journal (CRL numbers, used ceremony ids) is derived from it, not
//! stored twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use castellan_proto::{Algorithm, CaStatus, Custodian, CustodianSet};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "state.json";
pub const JOURNAL_FILE: &str = "journal";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredCustodian {
    pub name: String,
    pub public_key_hex: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredCa {
    pub key_label: String,
    pub parent: Option<String>,
    pub algorithm: Algorithm,
    pub status: CaStatus,
    pub certificate_hex: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredResponder {
    pub key_label: String,
    pub algorithm: Algorithm,
    pub certificate_hex: String,
}

/// What an executed ceremony made, kept so that a daemon that lost the
/// answer (a crash between the signer's answer and its own record) can ask
/// again (`Request::CeremonyOutcome`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredOutcome {
    /// SHA-256 of the parameters executed (`statement_digest`), hex.
    pub parameters_sha256: String,
    pub made: Made,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Made {
    /// A new CA (root, intermediate, or a rotation's successor).
    Ca { ca_id: String },
    CrossCertificate {
        serial_hex: String,
        certificate_hex: String,
        journal_seq: u64,
    },
    Custodians {
        threshold: u8,
        custodians: Vec<StoredCustodian>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub format: u32,
    pub threshold: u8,
    pub custodians: Vec<StoredCustodian>,
    pub audit_key_label: String,
    pub audit_algorithm: Algorithm,
    pub cas: BTreeMap<String, StoredCa>,
    pub responders: BTreeMap<String, StoredResponder>,
    /// Monotonic counter used to name new keys uniquely.
    pub key_counter: u64,
    /// The journal as it stood when this state was last saved. The journal
    /// only grows, so on open it must hold at least `records` records, the
    /// last of them hashing to `head_hex`: a journal that was replaced by an
    /// older copy (which would forget executed ceremonies and CRL numbers)
    /// is refused. Absent only in states written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_floor: Option<JournalFloor>,
    /// Executed ceremonies by id (hex) and what each made.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ceremonies: BTreeMap<String, StoredOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalFloor {
    /// Number of records the journal held.
    pub records: u64,
    /// Hash of its last record (64 zero digits when it was empty).
    pub head_hex: String,
}

impl JournalFloor {
    pub fn new(records: u64, head: &[u8; 32]) -> JournalFloor {
        JournalFloor {
            records,
            head_hex: hex::encode(head),
        }
    }

    /// Checks the journal's records (in order, as read at open) against
    /// this floor.
    pub fn check(&self, hashes: &[[u8; 32]], journal: &Path) -> Result<(), String> {
        let have = hashes.len() as u64;
        if have < self.records {
            return Err(format!(
                "the signing journal {} holds {have} records but state.json was saved when it held {} (last record hash {}): the journal is an older copy or was cut short; the signer refuses to start, since an older journal forgets executed ceremonies and CRL numbers; restore the journal that belongs to this state.json",
                journal.display(),
                self.records,
                self.head_hex
            ));
        }
        let at = match self.records.checked_sub(1) {
            // An empty journal: nothing to compare.
            None => return Ok(()),
            Some(i) => usize::try_from(i).map_err(|_| "journal floor out of range".to_string())?,
        };
        let found = hashes.get(at).map(hex::encode).unwrap_or_default();
        if found != self.head_hex {
            return Err(format!(
                "the signing journal {} does not belong to this state.json: record {at} should have hash {} (saved in state.json with {} records) but has {found}; the signer refuses to start; restore the journal that belongs to this state.json",
                journal.display(),
                self.head_hex,
                self.records
            ));
        }
        Ok(())
    }
}

impl State {
    pub fn new(set: &CustodianSet, audit_key_label: String, audit_algorithm: Algorithm) -> State {
        let mut s = State {
            format: FORMAT,
            threshold: 0,
            custodians: vec![],
            audit_key_label,
            audit_algorithm,
            cas: BTreeMap::new(),
            responders: BTreeMap::new(),
            key_counter: 0,
            journal_floor: None,
            ceremonies: BTreeMap::new(),
        };
        s.set_custodians(set);
        s
    }

    pub fn custodian_set(&self) -> Result<CustodianSet, String> {
        let mut custodians = Vec::new();
        for c in &self.custodians {
            let bytes = hex::decode(&c.public_key_hex)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!(
                        "state.json: custodian {:?} has a malformed public key",
                        c.name
                    )
                })?;
            custodians.push(Custodian {
                name: c.name.clone(),
                public_key: bytes,
            });
        }
        let set = CustodianSet {
            threshold: self.threshold,
            custodians,
        };
        crate::quorum::validate_set(&set).map_err(|e| {
            format!(
                "state.json: the stored custodian set is not valid ({e}); the signer refuses to start, since an invalid set could let a ceremony pass with too few approvals; restore state.json from backup"
            )
        })?;
        Ok(set)
    }

    pub fn set_custodians(&mut self, set: &CustodianSet) {
        self.threshold = set.threshold;
        self.custodians = set
            .custodians
            .iter()
            .map(|c| StoredCustodian {
                name: c.name.clone(),
                public_key_hex: hex::encode(c.public_key),
            })
            .collect();
    }

    pub fn next_key_label(&mut self, prefix: &str) -> String {
        self.key_counter += 1;
        format!("castellan-{prefix}-{}", self.key_counter)
    }

    pub fn load(dir: &Path) -> Result<State, String> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} does not exist: this signer was never initialised; run `castellan-signer init` (refusing to create a new, empty signer on start)",
                    path.display()
                )
            } else {
                format!("cannot read {}: {e}", path.display())
            }
        })?;
        let s: State = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is damaged ({e}); restore it from backup",
                path.display()
            )
        })?;
        if s.format != FORMAT {
            return Err(format!(
                "{} has format {} but this signer reads {FORMAT}",
                path.display(),
                s.format
            ));
        }
        Ok(s)
    }

    pub fn save(&self, dir: &Path) -> Result<(), String> {
        self.save_checked(dir).map_err(|e| e.message)
    }

    /// [`State::save`], telling a failure before the new file was put in
    /// place from one after.
    pub fn save_checked(&self, dir: &Path) -> Result<(), SaveError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| SaveError {
            message: format!("cannot encode state: {e}"),
            replaced: false,
        })?;
        let path = dir.join(STATE_FILE);
        write_replacing(&path, &text).map_err(|(e, replaced)| SaveError {
            message: format!("cannot write {}: {e}", path.display()),
            replaced,
        })
    }
}

/// Why [`State::save_checked`] failed.
#[derive(Debug)]
pub struct SaveError {
    pub message: String,
    /// The new file is in place and only the fsync of its directory failed:
    /// it is what a start reads now, though a crash may still bring back
    /// the old one.
    pub replaced: bool,
}

/// Writes a file so that after a crash it holds either the old or the new
/// content: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    write_replacing(path, content).map_err(|(e, _)| e)
}

/// [`write_atomic`]; the error says whether the new file was in place.
fn write_replacing(path: &Path, content: &[u8]) -> Result<(), (std::io::Error, bool)> {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // A partial temporary (a full disk) would only hold on to the space
        // that is missing; the next save writes it anew anyway.
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| (e, false))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (e, true))
}
