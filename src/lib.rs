//! castellan: the control daemon and `castellanctl`.
//!
//! This release carries the pieces `castellanctl` needs to drive a signer
//! directly (custodian keys, ceremonies as files, CSR handling) — the path
//! of the offline root host — and the daemon skeleton.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_client;
pub mod api;
pub mod config;
pub mod csr;
pub mod custodian;
pub mod daemon;
pub mod events;
pub mod files;
pub mod names;
pub mod ocsp;
pub mod pem;
pub mod public_http;
pub mod service;
pub mod signer_client;
pub mod signer_pool;
pub mod store;

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}
