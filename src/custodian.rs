//! Custodian approval keys: Ed25519, sealed at rest with a passphrase.
//!
//! Key file (JSON, mode 0600): the PKCS#8 document encrypted with
//! AES-256-GCM under a key derived by PBKDF2-HMAC-SHA256 from the
//! passphrase; the public key and name are in clear so the file can be
//! identified without the passphrase. The public half is also written to
//! `<file>.pub` as `ed25519:<hex> <name>` for `castellan-signer init`.

use std::num::NonZeroU32;
use std::path::Path;

use castellan_proto::{Approval, CeremonyContext, CeremonyId, CeremonyOp, statement};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const FORMAT: &str = "castellan-custodian-key-v1";
const ITERATIONS: u32 = 600_000;

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    name: String,
    public_key: String,
    kdf: String,
    iterations: u32,
    salt: String,
    nonce: String,
    sealed: String,
}

pub struct CustodianKey {
    pub name: String,
    pair: Ed25519KeyPair,
}

fn derive(
    pass: &SecretString,
    salt: &[u8],
    iterations: u32,
) -> Result<Zeroizing<[u8; 32]>, String> {
    let iters = NonZeroU32::new(iterations).ok_or("key file has zero KDF iterations")?;
    let mut key = Zeroizing::new([0u8; 32]);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iters,
        salt,
        pass.expose_secret().as_bytes(),
        key.as_mut(),
    );
    Ok(key)
}

fn aad(name: &str, public_key: &str) -> Vec<u8> {
    format!("{FORMAT}\0{name}\0{public_key}").into_bytes()
}

impl CustodianKey {
    /// Generates a key and writes `path` (sealed) and `path.pub`.
    pub fn generate(name: &str, path: &Path, pass: &SecretString) -> Result<CustodianKey, String> {
        if name.is_empty()
            || name.len() > 64
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err("a custodian name is 1 to 64 characters without spaces".into());
        }
        if pass.expose_secret().len() < 8 {
            return Err("the passphrase must have at least 8 characters".into());
        }
        // Neither half of an existing key is ever replaced: its key file may
        // be offline while its public key file is what the signer was given.
        let pub_path = pub_path(path);
        for p in [path, pub_path.as_path()] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(format!(
                    "{} exists already; a custodian key is never overwritten: choose another \
                     --out, or move the old key and its .pub away if it is really not needed",
                    p.display()
                ));
            }
        }
        let rng = SystemRandom::new();
        let pkcs8 = Zeroizing::new(
            Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| "cannot generate an Ed25519 key")?
                .as_ref()
                .to_vec(),
        );
        let pair =
            Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| "generated key does not parse")?;
        let public_key = hex::encode(pair.public_key().as_ref());
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        rng.fill(&mut salt).map_err(|_| "no randomness")?;
        rng.fill(&mut nonce).map_err(|_| "no randomness")?;
        let key = derive(pass, &salt, ITERATIONS)?;
        let sealing =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_ref()).map_err(|_| "aead key")?);
        let mut buf = pkcs8.to_vec();
        sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name, &public_key)),
                &mut buf,
            )
            .map_err(|_| "cannot seal the key")?;
        let file = KeyFile {
            format: FORMAT.into(),
            name: name.into(),
            public_key: public_key.clone(),
            kdf: "pbkdf2-hmac-sha256".into(),
            iterations: ITERATIONS,
            salt: hex::encode(salt),
            nonce: hex::encode(nonce),
            sealed: hex::encode(&buf),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        crate::files::create_new(path, &text, 0o600)?;
        if let Err(e) = crate::files::create_new(
            &pub_path,
            format!("ed25519:{public_key} {name}\n").as_bytes(),
            0o644,
        ) {
            // No key without its public half: nobody could register it.
            let _ = std::fs::remove_file(path);
            return Err(format!("{e}; no key was made"));
        }
        Ok(CustodianKey {
            name: name.into(),
            pair,
        })
    }

    pub fn load(path: &Path, pass: &SecretString) -> Result<CustodianKey, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("cannot read custodian key {}: {e}", path.display()))?;
        let file: KeyFile = serde_json::from_slice(&text).map_err(|_| {
            if text.starts_with(b"ed25519:") {
                format!(
                    "{} is a custodian's public key; give the key file itself (the same name \
                     without .pub, from `castellanctl custodian keygen`)",
                    path.display()
                )
            } else {
                format!(
                    "{} is not a castellan custodian key file (made by `castellanctl custodian \
                     keygen`)",
                    path.display()
                )
            }
        })?;
        if file.format != FORMAT || file.kdf != "pbkdf2-hmac-sha256" {
            return Err(format!(
                "{} has an unknown format {:?}",
                path.display(),
                file.format
            ));
        }
        let bad = || format!("{} is damaged", path.display());
        let salt = hex::decode(&file.salt).map_err(|_| bad())?;
        let nonce: [u8; 12] = hex::decode(&file.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(bad)?;
        let mut sealed = Zeroizing::new(hex::decode(&file.sealed).map_err(|_| bad())?);
        let key = derive(pass, &salt, file.iterations)?;
        let opening =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_ref()).map_err(|_| "aead key")?);
        let pkcs8 = opening
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&file.name, &file.public_key)),
                &mut sealed,
            )
            .map_err(|_| {
                format!(
                    "cannot open {}: wrong passphrase or damaged file",
                    path.display()
                )
            })?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| bad())?;
        if hex::encode(pair.public_key().as_ref()) != file.public_key {
            return Err(bad());
        }
        Ok(CustodianKey {
            name: file.name,
            pair,
        })
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// Signs the statement of this ceremony and parameters, for the signer
    /// and custodian set `ctx` names.
    pub fn approve(
        &self,
        ctx: &CeremonyContext,
        ceremony_id: &CeremonyId,
        op: &CeremonyOp,
    ) -> Approval {
        Approval {
            custodian: self.public_key(),
            signature: self
                .pair
                .sign(&statement(ctx, ceremony_id, op))
                .as_ref()
                .to_vec(),
        }
    }
}

pub fn pub_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

/// Reads a passphrase from a file (first line).
pub fn read_passphrase(path: &Path) -> Result<SecretString, String> {
    let raw = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read passphrase file {}: {e}", path.display()))?,
    );
    let line = raw.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!(
            "the first line of passphrase file {} is empty: the passphrase is its first line \
             (a final newline is not part of it)",
            path.display()
        ));
    }
    Ok(SecretString::from(line.to_string()))
}
