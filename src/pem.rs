//! PEM armour (RFC 7468) for certificates, CRLs and CSRs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// [`encode`] as bytes, written in one pass (CRLs run to tens of MiB).
pub fn encode_bytes(label: &str, der: &[u8]) -> Vec<u8> {
    encode(label, der).into_bytes()
}

/// RFC 7468 text: base64 in lines of 64 characters, written into one
/// buffer sized up front (no intermediate base64 string).
pub fn encode(label: &str, der: &[u8]) -> String {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const TAIL: &str = "-----\n";
    let b64_len = der.len().div_ceil(3) * 4;
    let mut out = String::with_capacity(
        BEGIN.len() + END.len() + 2 * (label.len() + TAIL.len()) + b64_len + b64_len / 64 + 1,
    );
    out.push_str(BEGIN);
    out.push_str(label);
    out.push_str(TAIL);
    // 48 octets are exactly one 64-character line.
    for chunk in der.chunks(48) {
        STANDARD.encode_string(chunk, &mut out);
        out.push('\n');
    }
    out.push_str(END);
    out.push_str(label);
    out.push_str(TAIL);
    out
}

/// Where `"{prefix}{label}-----"` first starts in `text`, and where it
/// ends; found without building the string.
fn find_line(text: &str, prefix: &str, label: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(at) = text[from..].find(prefix) {
        let start = from + at;
        let rest = &text[start + prefix.len()..];
        if let Some(tail) = rest.strip_prefix(label)
            && tail.starts_with("-----")
        {
            return Some((start, start + prefix.len() + label.len() + 5));
        }
        from = start + prefix.len();
    }
    None
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
        let Some((_, body_start)) = find_line(text, "-----BEGIN ", label) else {
            continue;
        };
        let rest = &text[body_start..];
        let (stop, _) = find_line(rest, "-----END ", label)
            .ok_or_else(|| format!("PEM block {label} has no END line"))?;
        let body = &rest.as_bytes()[..stop];
        let mut b64 = Vec::with_capacity(body.len());
        b64.extend(body.iter().copied().filter(|c| !c.is_ascii_whitespace()));
        return STANDARD
            .decode(&b64)
            .map_err(|e| format!("PEM block {label} is not valid base64: {e}"));
    }
    Err(format!(
        "no PEM block of type {} found",
        labels.join(" or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward RFC 7468 writer `encode` must match.
    fn reference(label: &str, der: &[u8]) -> String {
        let b64 = STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    #[test]
    fn encoding_matches_rfc_7468_lines_and_decodes_back_for_every_length() {
        for n in 0..300usize {
            let der: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let pem = encode("CERTIFICATE", &der);
            assert_eq!(pem, reference("CERTIFICATE", &der), "length {n}");
            assert_eq!(
                encode_bytes("X509 CRL", &der),
                reference("X509 CRL", &der).into_bytes()
            );
            assert_eq!(
                decode(pem.as_bytes(), &["CERTIFICATE"]).expect("decodes"),
                der
            );
        }
    }

    #[test]
    fn decoding_takes_the_first_block_of_a_wanted_label_and_names_a_missing_end() {
        let cert = encode("CERTIFICATE", b"cert");
        let req = encode("NEW CERTIFICATE REQUEST", b"req");
        let both = format!("junk -----BEGIN X-----\n{cert}{req}");
        let labels = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];
        assert_eq!(decode(both.as_bytes(), &labels).expect("found"), b"req");
        assert_eq!(
            decode(both.as_bytes(), &["CERTIFICATE"]).expect("found"),
            b"cert"
        );
        let e =
            decode(b"-----BEGIN CERTIFICATE-----\nAAAA\n", &["CERTIFICATE"]).expect_err("no END");
        assert!(e.contains("has no END line"), "{e}");
        let e = decode(cert.as_bytes(), &labels).expect_err("other label");
        assert!(e.contains("no PEM block of type"), "{e}");
        assert_eq!(decode(b"\x30\x00", &labels).expect("DER"), b"\x30\x00");
    }

    #[test]
    fn decoding_ignores_crlf_and_refuses_bad_base64() {
        let pem = encode("CERTIFICATE REQUEST", b"hello world").replace('\n', "\r\n");
        assert_eq!(
            decode(pem.as_bytes(), &["CERTIFICATE REQUEST"]).expect("CRLF"),
            b"hello world"
        );
        let e = decode(
            b"-----BEGIN CERTIFICATE REQUEST-----\n*\n-----END CERTIFICATE REQUEST-----\n",
            &["CERTIFICATE REQUEST"],
        )
        .expect_err("bad base64");
        assert!(e.contains("not valid base64"), "{e}");
    }
}
