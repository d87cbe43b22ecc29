//! Key backends. Every backend generates keys inside itself, never exports
//! private key material, and signs whole to-be-signed messages (the backend
//! hashes as its algorithm requires), so a slow backend (a TPM) and a fast
//! one look the same to the rest of the signer.

use castellan_proto::Algorithm;

pub mod pkcs11;
pub mod soft;

#[derive(Debug)]
pub enum BackendError {
    /// No key with that label.
    NotFound(String),
    /// A key with that label exists already; keys are never overwritten.
    Exists(String),
    /// The backend cannot do this (algorithm not supported by the token).
    Unsupported(String),
    /// The token, TPM or key store failed; the message says what to check.
    Failed(String),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::NotFound(l) => write!(f, "no key labelled {l:?} in the key backend"),
            BackendError::Exists(l) => write!(f, "a key labelled {l:?} exists already; refusing to overwrite it"),
            BackendError::Unsupported(m) => write!(f, "not supported by the key backend: {m}"),
            BackendError::Failed(m) => write!(f, "key backend failure: {m}"),
        }
    }
}

impl std::error::Error for BackendError {}

/// A holder of private keys.
///
/// Signatures: ECDSA keys return a DER `Ecdsa-Sig-Value` over SHA-256
/// (P-256) or SHA-384 (P-384) of `message`; RSA keys return a PKCS#1 v1.5
/// signature with SHA-256.
pub trait Backend: Send + Sync {
    /// "soft", "pkcs11", "tpm".
    fn kind(&self) -> &'static str;
    /// Generates a key pair inside the backend under `label` and returns its
    /// DER SubjectPublicKeyInfo. Fails with `Exists` if the label is taken.
    fn generate(&self, label: &str, alg: Algorithm) -> Result<Vec<u8>, BackendError>;
    /// The algorithm and DER SubjectPublicKeyInfo of an existing key.
    fn public_key(&self, label: &str) -> Result<(Algorithm, Vec<u8>), BackendError>;
    /// Signs `message` with the key labelled `label`.
    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>, BackendError>;
}
