//! PEM armour (RFC 7468) for certificates, CRLs and CSRs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// [`encode`] as bytes, written in one pass (CRLs run to tens of MiB).
pub fn encode_bytes(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = STANDARD.encode(der);
    let mut out = Vec::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.extend_from_slice(format!("-----BEGIN {label}-----\n").as_bytes());
    for chunk in b64.as_bytes().chunks(64) {
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
    out.extend_from_slice(format!("-----END {label}-----\n").as_bytes());
    out
}

pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first PEM block with one of `labels`; if the input is
/// not PEM at all it is returned as DER.
pub fn decode(input: &[u8], labels: &[&str]) -> Result<Vec<u8>, String> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(input.to_vec());
    };
    if !text.contains("-----BEGIN ") {
        return Ok(input.to_vec());
    }
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = text.find(&begin) {
            let rest = &text[start + begin.len()..];
            let stop = rest
                .find(&end)
                .ok_or_else(|| format!("PEM block {label} has no END line"))?;
            let b64: String = rest[..stop]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            return STANDARD
                .decode(b64)
                .map_err(|e| format!("PEM block {label} is not valid base64: {e}"));
        }
    }
    Err(format!(
        "no PEM block of type {} found",
        labels.join(" or ")
    ))
}
