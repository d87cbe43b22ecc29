//! The bytes custodians and the audit key sign. Both sides compute them
//! from structured values; nobody signs a digest handed to them.

use sha2::{Digest, Sha256};

use crate::{CeremonyId, CeremonyOp, CheckpointRequest, CustodianSet};

const STATEMENT_DOMAIN: &[u8] = b"castellan ceremony statement v2\0";
const CHECKPOINT_DOMAIN: &[u8] = b"castellan checkpoint v1\0";

/// SHA-256 of the exact postcard encoding of the ceremony's parameters.
pub fn statement_digest(op: &CeremonyOp) -> [u8; 32] {
    // postcard serialisation of these plain data types cannot fail; an empty
    // encoding would still bind the purpose and id below.
    let encoded = postcard::to_stdvec(op).unwrap_or_default();
    Sha256::digest(&encoded).into()
}

/// Which signer, and which of its custodian sets, a ceremony statement is
/// for. An approval therefore counts only at the signer it was made for
/// (an offline root and an online signer usually share their custodians)
/// and only while the set it was made under is the signer's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CeremonyContext {
    /// SHA-256 of the DER SubjectPublicKeyInfo of the signer's audit key:
    /// made at `castellan-signer init`, never exported, so it names one
    /// signer.
    pub signer_id: [u8; 32],
    /// SHA-256 of the postcard encoding of the custodian set.
    pub custodians_sha256: [u8; 32],
}

impl CeremonyContext {
    pub fn new(audit_spki_der: &[u8], custodians: &CustodianSet) -> CeremonyContext {
        CeremonyContext {
            signer_id: Sha256::digest(audit_spki_der).into(),
            custodians_sha256: Sha256::digest(postcard::to_stdvec(custodians).unwrap_or_default())
                .into(),
        }
    }
}

/// The ceremony statement each custodian signs with Ed25519:
/// domain | signer id (32) | SHA-256(custodian set) (32) | ceremony id (16)
/// | purpose tag (1) | SHA-256(params) (32).
pub fn statement(ctx: &CeremonyContext, ceremony_id: &CeremonyId, op: &CeremonyOp) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATEMENT_DOMAIN.len() + 32 + 32 + 16 + 1 + 32);
    out.extend_from_slice(STATEMENT_DOMAIN);
    out.extend_from_slice(&ctx.signer_id);
    out.extend_from_slice(&ctx.custodians_sha256);
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
