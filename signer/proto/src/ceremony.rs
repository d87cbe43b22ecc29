//! The bytes custodians and the audit key sign. Both sides compute them
//! from structured values; nobody signs a digest handed to them.

use sha2::{Digest, Sha256};

use crate::{CeremonyId, CeremonyOp, CheckpointRequest};

const STATEMENT_DOMAIN: &[u8] = b"castellan ceremony statement v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"castellan checkpoint v1\0";

/// SHA-256 of the exact postcard encoding of the ceremony's parameters.
pub fn statement_digest(op: &CeremonyOp) -> [u8; 32] {
    // postcard serialisation of these plain data types cannot fail; an empty
    // encoding would still bind the purpose and id below.
    let encoded = postcard::to_stdvec(op).unwrap_or_default();
    Sha256::digest(&encoded).into()
}

/// The ceremony statement each custodian signs with Ed25519:
/// domain | ceremony id (16) | purpose tag (1) | SHA-256(params) (32).
pub fn statement(ceremony_id: &CeremonyId, op: &CeremonyOp) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATEMENT_DOMAIN.len() + 16 + 1 + 32);
    out.extend_from_slice(STATEMENT_DOMAIN);
    out.extend_from_slice(ceremony_id);
    out.push(op.purpose().tag());
    out.extend_from_slice(&statement_digest(op));
    out
}

/// The message the audit key signs for a checkpoint:
/// domain | sequence (u64 LE) | head hash (32) | time (i64 LE).
pub fn checkpoint_message(c: &CheckpointRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + 32 + 8);
    out.extend_from_slice(CHECKPOINT_DOMAIN);
    out.extend_from_slice(&c.sequence.to_le_bytes());
    out.extend_from_slice(&c.head_hash);
    out.extend_from_slice(&c.time.to_le_bytes());
    out
}
