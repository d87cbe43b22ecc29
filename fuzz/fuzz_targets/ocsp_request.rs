//! Parses untrusted octets as a DER OCSP request and, when they are UTF-8,
//! as the RFC 5019 GET path segment. Never panics; whatever parses keeps the
//! invariants the daemon relies on.
#![no_main]

use castellan::ocsp::{
    MAX_CERT_IDS, MAX_REQUEST_LEN, OcspRequest, cert_id_matches, decode_get_path, parse_request,
};
use libfuzzer_sys::fuzz_target;

fn check(req: &OcspRequest, der: &[u8]) {
    assert!((1..=MAX_CERT_IDS).contains(&req.cert_ids.len()));
    for id in &req.cert_ids {
        assert!((1..=20).contains(&id.serial.len()));
        assert_ne!(id.serial[0], 0, "leading zero kept");
        assert_eq!(id.issuer_name_hash.len(), id.hash.output_len());
        let k = id.issuer_key_hash.len();
        assert!(k == 0 || k == id.hash.output_len());
        assert!(
            der.windows(id.raw.len()).any(|w| w == id.raw.as_slice()),
            "raw CertID is not in the input"
        );
        // Matching never panics, whatever the hashes.
        let _ = cert_id_matches(id, &id.raw, &id.serial);
    }
    if let Some(n) = &req.nonce {
        assert!((1..=32).contains(&n.len()));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        check(&req, data);
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(der) = decode_get_path(s)
    {
        assert!(!der.is_empty() && der.len() <= MAX_REQUEST_LEN);
        if let Ok(req) = parse_request(&der) {
            check(&req, &der);
        }
    }
});
