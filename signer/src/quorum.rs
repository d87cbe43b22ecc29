//! m-of-n custodian quorum: the signer checks every approval itself.

use std::collections::HashSet;

use castellan_proto::{
    CeremonyContext, CeremonyId, CeremonyOp, CustodianSet, ErrorKind, QuorumProof, SignerError,
    statement,
};

fn refuse(kind: ErrorKind, message: String) -> SignerError {
    SignerError { kind, message }
}

pub fn fingerprint(key: &[u8; 32]) -> String {
    hex::encode(&key[..8])
}

/// Checks that `proof` carries at least `threshold` valid signatures of
/// distinct custodians of `set` over the statement of (this signer,
/// `set`, `ceremony id`, `op`), and that the ceremony was never executed
/// before. `audit_spki_der` is this signer's audit key, which names it. Any bad approval
/// (unknown key, duplicate, wrong statement) refuses the whole proof: a
/// forged approval next to good ones is a reason to stop, not to count.
pub fn verify(
    audit_spki_der: &[u8],
    set: &CustodianSet,
    op: &CeremonyOp,
    proof: &QuorumProof,
    used: &HashSet<CeremonyId>,
) -> Result<(), SignerError> {
    let id_hex = hex::encode(proof.ceremony_id);
    if used.contains(&proof.ceremony_id) {
        return Err(refuse(
            ErrorKind::QuorumInvalid,
            format!(
                "ceremony {id_hex} was already executed; a ceremony authorises one operation only — open a new ceremony"
            ),
        ));
    }
    let message = statement(
        &CeremonyContext::new(audit_spki_der, set),
        &proof.ceremony_id,
        op,
    );
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    for a in &proof.approvals {
        let Some(custodian) = set.custodians.iter().find(|c| c.public_key == a.custodian) else {
            return Err(refuse(
                ErrorKind::QuorumInvalid,
                format!(
                    "ceremony {id_hex}: an approval was made with key {} which is not in the signer's custodian set",
                    fingerprint(&a.custodian)
                ),
            ));
        };
        if !seen.insert(a.custodian) {
            return Err(refuse(
                ErrorKind::QuorumInvalid,
                format!(
                    "ceremony {id_hex}: custodian {:?} appears twice; each custodian approves once and counts once",
                    custodian.name
                ),
            ));
        }
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &a.custodian);
        if key.verify(&message, &a.signature).is_err() {
            return Err(refuse(
                ErrorKind::QuorumInvalid,
                format!(
                    "ceremony {id_hex}: the approval of custodian {:?} does not verify for this ceremony's {} parameters — it was made for different parameters, another ceremony, another signer or another custodian set",
                    custodian.name,
                    op.purpose().as_str()
                ),
            ));
        }
    }
    let k = seen.len();
    let m = usize::from(set.threshold);
    if k < m {
        return Err(refuse(
            ErrorKind::QuorumNotMet,
            format!(
                "quorum not met: {k} of {m} custodian approvals for ceremony {id_hex}; collect more with `castellanctl ceremony approve {id_hex} --key <custodian key>`"
            ),
        ));
    }
    Ok(())
}

/// Checks a proposed custodian set: 1 <= m <= n <= 32, distinct keys and
/// names.
pub fn validate_set(set: &CustodianSet) -> Result<(), String> {
    let n = set.custodians.len();
    if n == 0 || n > 32 {
        return Err(format!("a custodian set needs 1 to 32 custodians, not {n}"));
    }
    if set.threshold == 0 || usize::from(set.threshold) > n {
        return Err(format!(
            "threshold {} must be between 1 and the number of custodians ({n})",
            set.threshold
        ));
    }
    let mut keys = HashSet::new();
    let mut names = HashSet::new();
    for c in &set.custodians {
        if c.name.is_empty() || c.name.len() > 64 || c.name.chars().any(char::is_control) {
            return Err("custodian names must be 1 to 64 printable characters".into());
        }
        if !keys.insert(c.public_key) {
            return Err(format!(
                "custodian key {} is listed twice",
                fingerprint(&c.public_key)
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err(format!("custodian name {:?} is listed twice", c.name));
        }
    }
    Ok(())
}
