//! The software key store: ECDSA keys sealed under a passphrase, for
//! development and for the offline root.
//!
//! # On-disk format (version 1, all integers little-endian)
//!
//! `store.meta`, 108 bytes:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CSTLSTOR` |
//! | 8 | 2 | format version (1) |
//! | 10 | 1 | KDF id (1 = PBKDF2-HMAC-SHA256) |
//! | 11 | 4 | KDF iterations (≥ 600,000) |
//! | 15 | 32 | random salt |
//! | 47 | 1 | AEAD id (1 = AES-256-GCM) |
//! | 48 | 12 | random nonce |
//! | 60 | 48 | AES-256-GCM of a fixed check value (32 bytes + tag), AAD = bytes 0..60 |
//!
//! The key encryption key (KEK) is PBKDF2(passphrase, salt, iterations); the
//! check value tells a wrong passphrase apart before any key is touched.
//! The iterations are read from the file, so they can be raised for new
//! stores without breaking old ones.
//!
//! `<hex(label)>.key`, one per key:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `CSTLKEY1` |
//! | 8 | 2 | format version (1) |
//! | 10 | 1 | algorithm (1 = ECDSA P-256, 2 = ECDSA P-384) |
//! | 11 | 12 | random nonce |
//! | 23 | 4 | sealed length `n` |
//! | 27 | n | AES-256-GCM of the PKCS#8 private key, tag appended |
//!
//! The AAD is bytes 0..11, then the label's length (u16) and the label: a
//! key file renamed to another label, or given another algorithm byte, fails
//! authentication instead of signing under the wrong name.
//!
//! # Invariants
//! - `open` never creates anything; `create` never overwrites a store.
//! - A key file is durable (fsynced, linked, directory fsynced) before
//!   `generate` returns its public key, and is linked with `link(2)`, which
//!   fails rather than replace an existing key.
//! - The directory must be mode 0700 and every file 0600, owned by us: a
//!   store whose permissions were loosened is refused, not just warned
//!   about, because the sealed files are the offline root's only protection
//!   against an offline guessing attack on the passphrase.
//! - One process at a time: the directory is `flock`ed while the store is
//!   open.
//! - Decrypted PKCS#8 bytes live only in `Zeroizing` buffers. The parsed
//!   `EcdsaKeyPair`s and the KEK stay in memory for the life of the backend
//!   (ring does not zeroize them); that is the price of fast signing.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::num::NonZeroU32;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use castellan_proto::Algorithm;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair,
};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::{Backend, BackendError, ec_spki_der};

const META_FILE: &str = "store.meta";
const META_MAGIC: &[u8; 8] = b"CSTLSTOR";
const KEY_MAGIC: &[u8; 8] = b"CSTLKEY1";
const FORMAT_VERSION: u16 = 1;
const KDF_PBKDF2_HMAC_SHA256: u8 = 1;
const AEAD_AES_256_GCM: u8 = 1;
const SALT_LEN: usize = 32;
const CHECK_VALUE: &[u8; 32] = b"castellan key store check value.";
const META_HEADER_LEN: usize = 8 + 2 + 1 + 4 + SALT_LEN + 1 + NONCE_LEN;
const META_LEN: usize = META_HEADER_LEN + CHECK_VALUE.len() + 16;
const KEY_HEADER_LEN: usize = 8 + 2 + 1;
const KEY_PREFIX_LEN: usize = KEY_HEADER_LEN + NONCE_LEN + 4;
/// A PKCS#8 P-384 key from ring is 185 bytes; anything far larger is damage.
const MAX_SEALED_LEN: usize = 4096;

/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256. Stores below it are refused.
pub const MIN_KDF_ITERATIONS: u32 = 600_000;
/// What `create` writes today.
pub const DEFAULT_KDF_ITERATIONS: u32 = 600_000;
/// A damaged iteration count must not make `open` spin for hours.
const MAX_KDF_ITERATIONS: u32 = 100_000_000;
/// Labels become file names as hex: 2 × 120 + ".key" stays under NAME_MAX.
pub const MAX_LABEL_LEN: usize = 120;

/// A sealed software key store. See the module documentation for the format.
pub struct SoftBackend {
    dir: PathBuf,
    kek: LessSafeKey,
    rng: SystemRandom,
    /// Parsed keys by label, filled on first use; keys never change once
    /// written, so a cached entry never goes stale.
    keys: RwLock<HashMap<String, SoftKey>>,
    /// Serialises `generate` within the process (the flock covers others).
    generating: Mutex<()>,
    /// Holds the directory's `flock` for as long as the store is open.
    _lock: File,
}

struct SoftKey {
    alg: Algorithm,
    pair: EcdsaKeyPair,
    spki: Vec<u8>,
}

impl std::fmt::Debug for SoftBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftBackend")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn failed(msg: impl Into<String>) -> BackendError {
    BackendError::Failed(msg.into())
}

fn io_failed(what: &str, path: &Path, e: &std::io::Error) -> BackendError {
    failed(format!("{what} {}: {e}", path.display()))
}

fn alg_byte(alg: Algorithm) -> Option<u8> {
    match alg {
        Algorithm::EcdsaP256 => Some(1),
        Algorithm::EcdsaP384 => Some(2),
        Algorithm::Rsa3072 => None,
    }
}

fn alg_from_byte(b: u8) -> Option<Algorithm> {
    match b {
        1 => Some(Algorithm::EcdsaP256),
        2 => Some(Algorithm::EcdsaP384),
        _ => None,
    }
}

fn ring_alg(alg: Algorithm) -> Option<&'static EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::EcdsaP256 => Some(&ECDSA_P256_SHA256_ASN1_SIGNING),
        Algorithm::EcdsaP384 => Some(&ECDSA_P384_SHA384_ASN1_SIGNING),
        Algorithm::Rsa3072 => None,
    }
}

fn label_ok(label: &str) -> bool {
    !label.is_empty() && label.len() <= MAX_LABEL_LEN
}

fn key_file_name(label: &str) -> String {
    format!("{}.key", hex::encode(label.as_bytes()))
}

fn key_aad(header: &[u8], label: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 2 + label.len());
    aad.extend_from_slice(header);
    // label_ok bounds the length, so it fits in a u16.
    aad.extend_from_slice(&(label.len() as u16).to_le_bytes());
    aad.extend_from_slice(label.as_bytes());
    aad
}

/// Refuses files and directories that others than the owner may access.
fn check_private(path: &Path, meta: &fs::Metadata, dir: bool) -> Result<(), BackendError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let want = if dir { "700" } else { "600" };
        return Err(failed(format!(
            "refusing the key store: {} is accessible by group or others (mode {mode:03o}); \
             check how it got that way, then run `chmod {want} {}`",
            path.display(),
            path.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(failed(format!(
            "refusing the key store: {} is owned by uid {}, not by this process's uid {me}",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Reads a whole store file without following symlinks, refusing loose
/// permissions and anything longer than `max`.
fn read_private_file(path: &Path, max: usize) -> Result<Zeroizing<Vec<u8>>, std::io::Error> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    check_private(path, &meta, false).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut buf = Zeroizing::new(Vec::with_capacity(max.min(meta.len() as usize) + 1));
    (&mut f).take(max as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > max {
        return Err(std::io::Error::other(format!("longer than {max} bytes")));
    }
    Ok(buf)
}

fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_failed("cannot fsync the key store directory", dir, &e))
}

/// Writes `bytes` to `dir/name` durably, never replacing an existing file:
/// write a temporary file, fsync, `link(2)` it to its name (fails with
/// `AlreadyExists`), unlink the temporary, fsync the directory.
fn write_new_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), std::io::Error> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        // A stale temporary from a crash may have had other permissions.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::hard_link(&tmp, &path)
    })();
    let _ = fs::remove_file(&tmp);
    result?;
    File::open(dir)?.sync_all()
}

fn lock_dir(dir: &Path) -> Result<File, BackendError> {
    let f =
        File::open(dir).map_err(|e| io_failed("cannot open the key store directory", dir, &e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(failed(format!(
            "the key store {} is in use by another process; stop it first",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(io_failed("cannot lock the key store directory", dir, &e))
        }
    }
}

fn derive_kek(
    passphrase: &SecretString,
    salt: &[u8],
    iterations: NonZeroU32,
) -> Result<LessSafeKey, BackendError> {
    let mut kek = Zeroizing::new([0u8; 32]);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        passphrase.expose_secret().as_bytes(),
        &mut kek[..],
    );
    UnboundKey::new(&AES_256_GCM, &kek[..])
        .map(LessSafeKey::new)
        .map_err(|_| failed("cannot set up AES-256-GCM (ring refused the key)"))
}

fn random_nonce(rng: &SystemRandom) -> Result<[u8; NONCE_LEN], BackendError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|_| failed("the system random number generator failed"))?;
    Ok(nonce)
}

impl SoftBackend {
    /// Initialises a new store in `dir`, which must be missing or empty;
    /// it is created (or chmod-ed) 0700.
    pub fn create(dir: &Path, passphrase: &SecretString) -> Result<SoftBackend, BackendError> {
        Self::create_with_iterations(dir, passphrase, DEFAULT_KDF_ITERATIONS)
    }

    /// As [`SoftBackend::create`], with a chosen PBKDF2 iteration count (at
    /// least [`MIN_KDF_ITERATIONS`]).
    pub fn create_with_iterations(
        dir: &Path,
        passphrase: &SecretString,
        iterations: u32,
    ) -> Result<SoftBackend, BackendError> {
        if !(MIN_KDF_ITERATIONS..=MAX_KDF_ITERATIONS).contains(&iterations) {
            return Err(failed(format!(
                "PBKDF2 iterations must be between {MIN_KDF_ITERATIONS} and {MAX_KDF_ITERATIONS}"
            )));
        }
        let iters = NonZeroU32::new(iterations).ok_or_else(|| failed("zero PBKDF2 iterations"))?;
        if passphrase.expose_secret().is_empty() {
            return Err(failed(
                "refusing to create a key store with an empty passphrase",
            ));
        }
        match fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(failed(format!(
                    "cannot create a key store at {}: it exists and is not a directory",
                    dir.display()
                )));
            }
            Ok(_) => {
                if dir.join(META_FILE).exists() {
                    return Err(failed(format!(
                        "a key store exists already in {}; open it instead of creating a new one",
                        dir.display()
                    )));
                }
                let mut entries =
                    fs::read_dir(dir).map_err(|e| io_failed("cannot list", dir, &e))?;
                if entries.next().is_some() {
                    return Err(failed(format!(
                        "cannot create a key store in {}: the directory is not empty",
                        dir.display()
                    )));
                }
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| io_failed("cannot chmod 700", dir, &e))?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io_failed("cannot create the key store directory", dir, &e))?;
            }
            Err(e) => return Err(io_failed("cannot inspect", dir, &e)),
        }
        let lock = lock_dir(dir)?;

        let rng = SystemRandom::new();
        let mut salt = [0u8; SALT_LEN];
        rng.fill(&mut salt)
            .map_err(|_| failed("the system random number generator failed"))?;
        let nonce = random_nonce(&rng)?;
        let kek = derive_kek(passphrase, &salt, iters)?;

        let mut meta = Vec::with_capacity(META_LEN);
        meta.extend_from_slice(META_MAGIC);
        meta.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        meta.push(KDF_PBKDF2_HMAC_SHA256);
        meta.extend_from_slice(&iterations.to_le_bytes());
        meta.extend_from_slice(&salt);
        meta.push(AEAD_AES_256_GCM);
        meta.extend_from_slice(&nonce);
        let mut sealed = CHECK_VALUE.to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&meta[..]),
            &mut sealed,
        )
        .map_err(|_| failed("sealing the key store check value failed"))?;
        meta.extend_from_slice(&sealed);
        debug_assert_eq!(meta.len(), META_LEN);

        write_new_file(dir, META_FILE, &meta).map_err(|e| {
            io_failed(
                "cannot write the key store metadata",
                &dir.join(META_FILE),
                &e,
            )
        })?;
        Ok(SoftBackend::assemble(dir, kek, rng, lock))
    }

    /// Opens an existing store. Never creates one: a missing store, a wrong
    /// passphrase, loose permissions or damaged metadata are all refused.
    pub fn open(dir: &Path, passphrase: &SecretString) -> Result<SoftBackend, BackendError> {
        let dir_meta = match fs::metadata(dir) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => {
                return Err(failed(format!(
                    "cannot open the key store: {} is not a directory",
                    dir.display()
                )));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(failed(format!(
                    "cannot open the key store: {} does not exist; check the path \
                     (a store is only ever created explicitly)",
                    dir.display()
                )));
            }
            Err(e) => return Err(io_failed("cannot open the key store", dir, &e)),
        };
        let meta_path = dir.join(META_FILE);
        if !meta_path.exists() {
            return Err(failed(format!(
                "cannot open the key store: {} holds no {META_FILE}; check the path \
                 (a store is only ever created explicitly)",
                dir.display()
            )));
        }
        check_private(dir, &dir_meta, true)?;
        let lock = lock_dir(dir)?;
        let meta = read_private_file(&meta_path, META_LEN)
            .map_err(|e| io_failed("cannot read the key store metadata", &meta_path, &e))?;
        let damaged = |why: &str| {
            failed(format!(
                "cannot open the key store: {} is damaged ({why}); restore it from backup",
                meta_path.display()
            ))
        };
        if meta.len() < 10 || &meta[..8] != META_MAGIC {
            return Err(damaged("not a castellan key store"));
        }
        let version = u16::from_le_bytes([meta[8], meta[9]]);
        if version != FORMAT_VERSION {
            return Err(failed(format!(
                "cannot open the key store: format version {version} is not one this castellan \
                 reads (it reads {FORMAT_VERSION}); use the castellan release that wrote it"
            )));
        }
        if meta.len() != META_LEN {
            return Err(damaged("wrong length"));
        }
        if meta[10] != KDF_PBKDF2_HMAC_SHA256 || meta[47] != AEAD_AES_256_GCM {
            return Err(damaged("unknown KDF or cipher"));
        }
        let iterations = u32::from_le_bytes([meta[11], meta[12], meta[13], meta[14]]);
        if !(MIN_KDF_ITERATIONS..=MAX_KDF_ITERATIONS).contains(&iterations) {
            return Err(damaged("PBKDF2 iteration count out of range"));
        }
        let iters = NonZeroU32::new(iterations).ok_or_else(|| damaged("zero iterations"))?;
        let salt = &meta[15..15 + SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&meta[48..META_HEADER_LEN]);
        let kek = derive_kek(passphrase, salt, iters)?;
        let mut sealed = meta[META_HEADER_LEN..].to_vec();
        let check = kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&meta[..META_HEADER_LEN]),
                &mut sealed,
            )
            .map_err(|_| {
                failed("cannot open the key store: wrong passphrase or damaged store metadata")
            })?;
        if check != CHECK_VALUE {
            return Err(damaged("check value mismatch"));
        }
        Ok(SoftBackend::assemble(dir, kek, SystemRandom::new(), lock))
    }

    fn assemble(dir: &Path, kek: LessSafeKey, rng: SystemRandom, lock: File) -> SoftBackend {
        SoftBackend {
            dir: dir.to_path_buf(),
            kek,
            rng,
            keys: RwLock::new(HashMap::new()),
            generating: Mutex::new(()),
            _lock: lock,
        }
    }

    fn cached<T>(&self, label: &str, f: impl FnOnce(&SoftKey) -> T) -> Option<T> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.get(label).map(f)
    }

    /// Runs `f` on the key, decrypting and caching it on first use.
    fn with_key<T>(&self, label: &str, f: impl Fn(&SoftKey) -> T) -> Result<T, BackendError> {
        if let Some(t) = self.cached(label, &f) {
            return Ok(t);
        }
        if !label_ok(label) {
            return Err(BackendError::NotFound(label.to_string()));
        }
        let key = self.load(label)?;
        let t = f(&key);
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.entry(label.to_string()).or_insert(key);
        Ok(t)
    }

    fn load(&self, label: &str) -> Result<SoftKey, BackendError> {
        let path = self.dir.join(key_file_name(label));
        let mut buf = match read_private_file(&path, KEY_PREFIX_LEN + MAX_SEALED_LEN) {
            Ok(buf) => buf,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(BackendError::NotFound(label.to_string()));
            }
            Err(e) => return Err(io_failed("cannot read key file", &path, &e)),
        };
        let damaged = |why: &str| {
            tracing::error!(path = %path.display(), label, why, "key file refused");
            failed(format!(
                "the key {label:?} in the key store is damaged or was tampered with ({why}); \
                 restore {} from backup",
                path.display()
            ))
        };
        if buf.len() < KEY_PREFIX_LEN || &buf[..8] != KEY_MAGIC {
            return Err(damaged("not a castellan key file"));
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if version != FORMAT_VERSION {
            return Err(damaged("unknown key file version"));
        }
        let alg = alg_from_byte(buf[10]).ok_or_else(|| damaged("unknown algorithm"))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[KEY_HEADER_LEN..KEY_HEADER_LEN + NONCE_LEN]);
        let len_at = KEY_HEADER_LEN + NONCE_LEN;
        let sealed_len = u32::from_le_bytes([
            buf[len_at],
            buf[len_at + 1],
            buf[len_at + 2],
            buf[len_at + 3],
        ]);
        if sealed_len as usize != buf.len() - KEY_PREFIX_LEN {
            return Err(damaged("length field does not match the file"));
        }
        let aad = key_aad(&buf[..KEY_HEADER_LEN], label);
        let sealed = &mut buf[KEY_PREFIX_LEN..];
        let pkcs8 = self
            .kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                sealed,
            )
            .map_err(|_| damaged("authentication failed"))?;
        let ring_alg = ring_alg(alg).ok_or_else(|| damaged("unknown algorithm"))?;
        let pair = EcdsaKeyPair::from_pkcs8(ring_alg, pkcs8, &self.rng)
            .map_err(|_| damaged("the private key does not parse"))?;
        let spki = ec_spki_der(alg, pair.public_key().as_ref())?;
        Ok(SoftKey { alg, pair, spki })
    }
}

impl Backend for SoftBackend {
    fn kind(&self) -> &'static str {
        "soft"
    }

    fn generate(&self, label: &str, alg: Algorithm) -> Result<Vec<u8>, BackendError> {
        let (Some(alg_b), Some(ring_alg)) = (alg_byte(alg), ring_alg(alg)) else {
            return Err(BackendError::Unsupported(format!(
                "the software key store cannot generate {} keys (ring generates only ECDSA \
                 keys); use ecdsa-p256 or ecdsa-p384, or a PKCS#11 token for RSA",
                alg.as_str()
            )));
        };
        if !label_ok(label) {
            return Err(BackendError::Unsupported(format!(
                "key labels must be 1 to {MAX_LABEL_LEN} bytes long"
            )));
        }
        let _one_at_a_time = self
            .generating
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let name = key_file_name(label);
        let path = self.dir.join(&name);
        match fs::symlink_metadata(&path) {
            Ok(_) => return Err(BackendError::Exists(label.to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_failed("cannot inspect", &path, &e)),
        }

        // ring's Document is not zeroized on drop; copy out and let it go at once.
        let mut plain = Zeroizing::new(Vec::with_capacity(256));
        {
            let doc = EcdsaKeyPair::generate_pkcs8(ring_alg, &self.rng).map_err(|_| {
                failed("generating the key failed (system random number generator?)")
            })?;
            plain.extend_from_slice(doc.as_ref());
        }
        let pair = EcdsaKeyPair::from_pkcs8(ring_alg, &plain, &self.rng)
            .map_err(|_| failed("ring could not parse the key it generated"))?;
        let spki = ec_spki_der(alg, pair.public_key().as_ref())?;

        let nonce = random_nonce(&self.rng)?;
        let mut file = Vec::with_capacity(KEY_PREFIX_LEN + plain.len() + 16);
        file.extend_from_slice(KEY_MAGIC);
        file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.push(alg_b);
        let aad = key_aad(&file, label);
        file.extend_from_slice(&nonce);
        let mut sealed = Zeroizing::new(Vec::with_capacity(plain.len() + 16));
        sealed.extend_from_slice(&plain);
        self.kek
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut *sealed,
            )
            .map_err(|_| failed("sealing the new key failed"))?;
        file.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        file.extend_from_slice(&sealed);

        // The public key goes out only once the key file is durable: a
        // certificate must never name a key that a crash could lose.
        match write_new_file(&self.dir, &name, &file) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(BackendError::Exists(label.to_string()));
            }
            Err(e) => return Err(io_failed("cannot write the key file", &path, &e)),
        }
        sync_dir(&self.dir)?;
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.insert(
            label.to_string(),
            SoftKey {
                alg,
                pair,
                spki: spki.clone(),
            },
        );
        Ok(spki)
    }

    fn public_key(&self, label: &str) -> Result<(Algorithm, Vec<u8>), BackendError> {
        self.with_key(label, |k| (k.alg, k.spki.clone()))
    }

    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.with_key(label, |k| {
            k.pair
                .sign(&self.rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| failed("ECDSA signing failed (system random number generator?)"))
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::conformance;

    fn pass(s: &str) -> SecretString {
        SecretString::from(s)
    }

    fn new_store() -> (tempfile::TempDir, PathBuf, SoftBackend) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("keys");
        let store = SoftBackend::create(&dir, &pass("correct horse battery")).expect("create");
        (tmp, dir, store)
    }

    fn message(e: BackendError) -> String {
        e.to_string()
    }

    #[test]
    fn soft_backend_passes_the_conformance_suite() {
        let (_tmp, _dir, store) = new_store();
        conformance::run(&store);
    }

    /// A store written by format version 1 (passphrase "correct horse
    /// battery", one P-256 key "golden"). Every later castellan must open it.
    const GOLDEN_META: &[&str] = &[
        "4353544c53544f52010001c0270900bed8d26df0f0a6483a0913d8f0db2e71adff6e572b8edf71f1",
        "552f5acd838ccb01aa50a9b4b9a15038ff6553df22d0f59805bb8cee0335d948e509bb32bb1321b4",
        "3629b9e4053a84dc484b2a84ee038cf4053a0dca18b96b8891bd9048",
    ];
    const GOLDEN_KEY: &[&str] = &[
        "4353544c4b45593101000148271664ed80c589304fc87c9a0000007bce3868da8bb8205cf1eacdad",
        "7689010c919ad732dccbc68666f54dee346405ae850edaa5570935c85dff1d9f72d95adf86ac3445",
        "d15b0f35240bd62e38d9111aa6c66158335741989626ecc936c6556c1a2a7f862c50cf50e0530bbd",
        "78e89852f5dfb1b6765eb5f8cd680957d563c7c429b1ba5d2b11e3f34069586bf8f01e251af19acf",
        "0aa9716dea467d6600662a8f4e20801bb6c524f158",
    ];
    const GOLDEN_SPKI: &[&str] = &[
        "3059301306072a8648ce3d020106082a8648ce3d03010703420004a123074c5022859e14692db173",
        "0136da8fa73c1a045ba08b0923f955b44203a85ca72539f27f5a4db05e2b87407ca30e2d3cea404f",
        "2d5126c496571307d4fe00",
    ];

    fn unhex(parts: &[&str]) -> Vec<u8> {
        hex::decode(parts.concat()).expect("hex")
    }

    #[test]
    fn a_version_1_store_still_opens_with_the_same_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("v1");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("mkdir");
        for (name, bytes) in [
            (META_FILE.to_string(), unhex(GOLDEN_META)),
            (key_file_name("golden"), unhex(GOLDEN_KEY)),
        ] {
            write_new_file(&dir, &name, &bytes).expect("write");
        }
        let store = SoftBackend::open(&dir, &pass("correct horse battery")).expect("open v1");
        let spki = unhex(GOLDEN_SPKI);
        assert_eq!(
            store.public_key("golden").expect("pk"),
            (Algorithm::EcdsaP256, spki.clone())
        );
        let sig = store.sign("golden", b"tbs").expect("sign");
        conformance::verify(&spki, Algorithm::EcdsaP256, b"tbs", &sig).expect("verify");
        // The iteration count is read from the file, little-endian.
        assert_eq!(&unhex(GOLDEN_META)[11..15], &600_000u32.to_le_bytes());
    }

    #[test]
    fn soft_backend_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SoftBackend>();
    }

    #[test]
    fn keys_survive_reopening_with_the_same_passphrase() {
        let (_tmp, dir, store) = new_store();
        let p256 = store.generate("root", Algorithm::EcdsaP256).expect("gen");
        let p384 = store
            .generate("issuing", Algorithm::EcdsaP384)
            .expect("gen");
        drop(store);
        let store = SoftBackend::open(&dir, &pass("correct horse battery")).expect("reopen");
        assert_eq!(
            store.public_key("root").expect("pk"),
            (Algorithm::EcdsaP256, p256.clone())
        );
        assert_eq!(
            store.public_key("issuing").expect("pk"),
            (Algorithm::EcdsaP384, p384)
        );
        let sig = store.sign("root", b"tbs").expect("sign");
        conformance::verify(&p256, Algorithm::EcdsaP256, b"tbs", &sig).expect("verify");
        assert!(matches!(
            store.generate("root", Algorithm::EcdsaP256),
            Err(BackendError::Exists(_))
        ));
    }

    #[test]
    fn wrong_passphrase_is_refused() {
        let (_tmp, dir, store) = new_store();
        drop(store);
        let err = SoftBackend::open(&dir, &pass("Correct horse battery")).map(|_| ());
        let msg = message(err.expect_err("wrong passphrase opened the store"));
        assert!(
            msg.contains("cannot open the key store: wrong passphrase or damaged store metadata"),
            "{msg}"
        );
        assert!(!msg.contains("orse"), "{msg}");
    }

    #[test]
    fn open_never_creates_a_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("missing");
        let msg = message(
            SoftBackend::open(&missing, &pass("x"))
                .map(|_| ())
                .expect_err("opened"),
        );
        assert!(msg.contains("does not exist"), "{msg}");
        assert!(!missing.exists(), "open created the directory");

        let empty = tmp.path().join("empty");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&empty)
            .expect("mkdir");
        let msg = message(
            SoftBackend::open(&empty, &pass("x"))
                .map(|_| ())
                .expect_err("opened"),
        );
        assert!(msg.contains("holds no store.meta"), "{msg}");
        assert_eq!(
            fs::read_dir(&empty).expect("ls").count(),
            0,
            "open wrote into the directory"
        );
    }

    #[test]
    fn create_refuses_a_directory_that_holds_a_store() {
        let (_tmp, dir, store) = new_store();
        drop(store);
        let msg = message(
            SoftBackend::create(&dir, &pass("another one"))
                .map(|_| ())
                .expect_err("created over a store"),
        );
        assert!(msg.contains("exists already"), "{msg}");
        // The original store still opens with its passphrase.
        SoftBackend::open(&dir, &pass("correct horse battery")).expect("reopen");
    }

    #[test]
    fn a_second_open_of_an_open_store_is_refused() {
        let (_tmp, dir, _store) = new_store();
        let msg = message(
            SoftBackend::open(&dir, &pass("correct horse battery"))
                .map(|_| ())
                .expect_err("opened twice"),
        );
        assert!(msg.contains("in use by another process"), "{msg}");
    }

    #[test]
    fn a_flipped_byte_in_a_key_file_is_refused() {
        let (_tmp, dir, store) = new_store();
        store.generate("root", Algorithm::EcdsaP256).expect("gen");
        drop(store);
        let path = dir.join(key_file_name("root"));
        let mut bytes = fs::read(&path).expect("read");
        let at = bytes.len() - 20;
        bytes[at] ^= 0x01;
        fs::write(&path, &bytes).expect("write");
        let store = SoftBackend::open(&dir, &pass("correct horse battery")).expect("open");
        for err in [
            store
                .sign("root", b"tbs")
                .map(|_| ())
                .expect_err("signed with a damaged key"),
            store
                .public_key("root")
                .map(|_| ())
                .expect_err("damaged key"),
        ] {
            let msg = message(err);
            assert!(msg.contains("damaged or was tampered with"), "{msg}");
            assert!(msg.contains("restore"), "{msg}");
        }
    }

    #[test]
    fn a_key_file_renamed_to_another_label_is_refused() {
        let (_tmp, dir, store) = new_store();
        store.generate("old", Algorithm::EcdsaP256).expect("gen");
        drop(store);
        fs::rename(
            dir.join(key_file_name("old")),
            dir.join(key_file_name("new")),
        )
        .expect("mv");
        let store = SoftBackend::open(&dir, &pass("correct horse battery")).expect("open");
        let msg = message(store.sign("new", b"tbs").map(|_| ()).expect_err("signed"));
        assert!(msg.contains("authentication failed"), "{msg}");
    }

    #[test]
    fn damaged_metadata_is_refused() {
        let (_tmp, dir, store) = new_store();
        drop(store);
        let path = dir.join(META_FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes[20] ^= 0x80; // inside the salt
        fs::write(&path, &bytes).expect("write");
        let msg = message(
            SoftBackend::open(&dir, &pass("correct horse battery"))
                .map(|_| ())
                .expect_err("opened"),
        );
        assert!(
            msg.contains("wrong passphrase or damaged store metadata"),
            "{msg}"
        );
    }

    #[test]
    fn store_files_are_private_and_loose_permissions_are_refused() {
        let (_tmp, dir, store) = new_store();
        store.generate("root", Algorithm::EcdsaP384).expect("gen");
        drop(store);
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(META_FILE)), 0o600);
        let key = dir.join(key_file_name("root"));
        assert_eq!(mode(&key), 0o600);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = SoftBackend::open(&dir, &pass("correct horse battery")).expect("open");
        let msg = message(store.sign("root", b"tbs").map(|_| ()).expect_err("signed"));
        assert!(msg.contains("chmod 600"), "{msg}");
        drop(store);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let msg = message(
            SoftBackend::open(&dir, &pass("correct horse battery"))
                .map(|_| ())
                .expect_err("opened"),
        );
        assert!(msg.contains("chmod 700"), "{msg}");
    }

    #[test]
    fn rsa_3072_is_unsupported_in_the_software_store() {
        let (_tmp, _dir, store) = new_store();
        match store.generate("rsa", Algorithm::Rsa3072) {
            Err(BackendError::Unsupported(m)) => assert!(m.contains("rsa-3072"), "{m}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert!(matches!(
            store.public_key("rsa"),
            Err(BackendError::NotFound(_))
        ));
    }

    #[test]
    fn labels_that_cannot_be_file_names_are_refused() {
        let (_tmp, _dir, store) = new_store();
        assert!(matches!(
            store.generate("", Algorithm::EcdsaP256),
            Err(BackendError::Unsupported(_))
        ));
        let long = "x".repeat(MAX_LABEL_LEN + 1);
        assert!(matches!(
            store.generate(&long, Algorithm::EcdsaP256),
            Err(BackendError::Unsupported(_))
        ));
        assert!(matches!(
            store.sign(&long, b"m"),
            Err(BackendError::NotFound(_))
        ));
        // Path characters are harmless: labels are hex-encoded into file names.
        store
            .generate("../../etc/passwd", Algorithm::EcdsaP256)
            .expect("gen");
    }
}
