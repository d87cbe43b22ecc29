//! Parses untrusted octets as a CSR (PEM or DER), and builds from them a
//! CSR whose certificationRequestInfo carries the fuzzer's subject and
//! attributes around a real P-256 key, signed with that key, so that what
//! lies behind the proof-of-possession check (names, SAN extension
//! requests) is reached too. Never panics; whatever parses keeps the
//! invariants issuance relies on.
#![no_main]

use std::sync::OnceLock;

use castellan::csr::{CsrKey, MAX_CSR_LEN, ParsedCsr, parse};
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

/// DER TLV with a definite length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let octets: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | octets.len() as u8);
        out.extend_from_slice(&octets);
    }
    out.extend_from_slice(content);
    out
}

struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    spki: Vec<u8>,
}

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .expect("a P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("the key just made");
        // SubjectPublicKeyInfo { id-ecPublicKey, prime256v1 }, BIT STRING.
        let alg = tlv(
            0x30,
            &[
                &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01][..],
                &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            ]
            .concat(),
        );
        let mut bits = vec![0];
        bits.extend_from_slice(key.public_key().as_ref());
        let spki = tlv(0x30, &[alg, tlv(0x03, &bits)].concat());
        Signer { key, rng, spki }
    })
}

/// A CSR of `subject` (raw Name octets) and `attributes` (raw contents of
/// the [0] attributes), signed with the fixed key.
fn signed_csr(subject: &[u8], attributes: &[u8]) -> Vec<u8> {
    let s = signer();
    let info = tlv(
        0x30,
        &[
            &[0x02, 0x01, 0x00][..],
            subject,
            &s.spki,
            &tlv(0xa0, attributes),
        ]
        .concat(),
    );
    let sig = s.key.sign(&s.rng, &info).expect("signing");
    let ecdsa_sha256 = tlv(
        0x30,
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
    );
    let mut bits = vec![0];
    bits.extend_from_slice(sig.as_ref());
    tlv(0x30, &[info, ecdsa_sha256, tlv(0x03, &bits)].concat())
}

fn check(csr: &ParsedCsr) {
    match csr.key {
        CsrKey::EcdsaP256 | CsrKey::EcdsaP384 => {}
        CsrKey::Rsa(bits) => assert!(bits > 0),
    }
    assert!(!csr.spki_der.is_empty());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = parse(data) {
        check(&csr);
    }
    // The first octet splits the rest into subject and attributes.
    if let Some((&at, rest)) = data.split_first()
        && rest.len() <= MAX_CSR_LEN / 2
    {
        let (subject, attributes) = rest.split_at((at as usize).min(rest.len()));
        let csr = signed_csr(subject, attributes);
        if let Ok(parsed) = parse(&csr) {
            check(&parsed);
            assert_eq!(
                parsed.spki_der,
                signer().spki,
                "another key than the signed one"
            );
        }
    }
});
