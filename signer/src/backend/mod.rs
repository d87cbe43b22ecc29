//! Key backends. Every backend generates keys inside itself, never exports
//! private key material, and signs whole to-be-signed messages (the backend
//! hashes as its algorithm requires), so a slow backend (a TPM) and a fast
//! one look the same to the rest of the signer.

use castellan_proto::Algorithm;

use crate::der as derw;

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
            BackendError::Exists(l) => write!(
                f,
                "a key labelled {l:?} exists already; refusing to overwrite it"
            ),
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

// Shared encodings. Every backend builds its SubjectPublicKeyInfo and ECDSA
// signature encodings here, so that a key looks byte-for-byte the same
// whichever backend holds it (and the same as `openssl pkey -pubout`).

/// DER OID of id-ecPublicKey (1.2.840.10045.2.1), tag and length included.
const ID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER OID of rsaEncryption (1.2.840.113549.1.1.1), tag and length included.
const RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// DER OID of prime256v1 / secp256r1 (1.2.840.10045.3.1.7): also the value
/// of a PKCS#11 `CKA_EC_PARAMS` for P-256.
pub const P256_CURVE_OID_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER OID of secp384r1 (1.3.132.0.34): also the `CKA_EC_PARAMS` for P-384.
pub const P384_CURVE_OID_DER: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// The DER curve OID of an ECDSA algorithm; `None` for RSA.
pub fn ec_curve_oid_der(alg: Algorithm) -> Option<&'static [u8]> {
    match alg {
        Algorithm::EcdsaP256 => Some(P256_CURVE_OID_DER),
        Algorithm::EcdsaP384 => Some(P384_CURVE_OID_DER),
        Algorithm::Rsa3072 => None,
    }
}

/// The ECDSA algorithm whose curve has this DER OID.
pub fn ec_alg_from_curve_oid_der(oid: &[u8]) -> Option<Algorithm> {
    match oid {
        P256_CURVE_OID_DER => Some(Algorithm::EcdsaP256),
        P384_CURVE_OID_DER => Some(Algorithm::EcdsaP384),
        _ => None,
    }
}

/// Length of an uncompressed SEC1 point (`04 || X || Y`) on the curve.
pub fn ec_point_len(alg: Algorithm) -> Option<usize> {
    match alg {
        Algorithm::EcdsaP256 => Some(65),
        Algorithm::EcdsaP384 => Some(97),
        Algorithm::Rsa3072 => None,
    }
}

/// DER SubjectPublicKeyInfo of an ECDSA key:
/// `SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve }, BIT STRING point }`.
/// `point` is the uncompressed SEC1 point; anything else is refused, so a
/// damaged token answer never becomes a certificate's key.
pub fn ec_spki_der(alg: Algorithm, point: &[u8]) -> Result<Vec<u8>, BackendError> {
    let (Some(curve), Some(len)) = (ec_curve_oid_der(alg), ec_point_len(alg)) else {
        return Err(BackendError::Unsupported(format!(
            "{} is not an elliptic-curve algorithm",
            alg.as_str()
        )));
    };
    if point.len() != len || point[0] != 0x04 {
        return Err(BackendError::Failed(format!(
            "the {} public key is not an uncompressed point of {len} bytes (got {} bytes)",
            alg.as_str(),
            point.len()
        )));
    }
    Ok(derw::seq(&[
        &derw::seq(&[ID_EC_PUBLIC_KEY, curve]),
        &derw::bits(point),
    ]))
}

/// DER SubjectPublicKeyInfo of an RSA key: `rsaEncryption` with NULL
/// parameters and a BIT STRING holding `RSAPublicKey { n, e }`. `modulus` and
/// `public_exponent` are unsigned big-endian (as PKCS#11 returns them).
pub fn rsa_spki_der(modulus: &[u8], public_exponent: &[u8]) -> Result<Vec<u8>, BackendError> {
    if modulus.iter().all(|b| *b == 0) || public_exponent.iter().all(|b| *b == 0) {
        return Err(BackendError::Failed(
            "the RSA public key has an empty or zero modulus or exponent".into(),
        ));
    }
    let rsa_key = derw::seq(&[&derw::uint(modulus), &derw::uint(public_exponent)]);
    Ok(derw::seq(&[
        &derw::seq(&[RSA_ENCRYPTION, &derw::null()]),
        &derw::bits(&rsa_key),
    ]))
}

/// Converts a raw ECDSA signature `r || s` (PKCS#11 `CKM_ECDSA`, TPM) to a DER
/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` with minimal
/// INTEGER encodings, as X.509 and OCSP carry it.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, BackendError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(BackendError::Failed(format!(
            "the token returned an ECDSA signature of odd or zero length ({} bytes)",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Ok(derw::seq(&[&derw::uint(r), &derw::uint(s)]))
}

/// The behaviour every backend must show, run by each backend's tests
/// against a real instance (software store, SoftHSM2 token, swtpm).
#[cfg(test)]
pub(crate) mod conformance {
    use super::{Algorithm, Backend, BackendError};
    use der::Decode;
    use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

    const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

    /// Checks `sig` over `msg` as a relying party would: parse the SPKI,
    /// check its algorithm, verify with ring.
    pub(crate) fn verify(
        spki: &[u8],
        alg: Algorithm,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), String> {
        let info = SubjectPublicKeyInfoRef::from_der(spki)
            .map_err(|e| format!("SPKI does not parse: {e}"))?;
        let key = info
            .subject_public_key
            .as_bytes()
            .ok_or("SPKI BIT STRING has unused bits")?;
        let oid = info.algorithm.oid;
        let verifier: &dyn ring::signature::VerificationAlgorithm = match alg {
            Algorithm::EcdsaP256 | Algorithm::EcdsaP384 => {
                let curve = info
                    .algorithm
                    .parameters_oid()
                    .map_err(|e| format!("no curve: {e}"))?;
                let want = if alg == Algorithm::EcdsaP256 {
                    P256
                } else {
                    P384
                };
                if oid != ID_EC_PUBLIC_KEY || curve != want {
                    return Err(format!(
                        "SPKI algorithm {oid} / {curve} is not {}",
                        alg.as_str()
                    ));
                }
                if alg == Algorithm::EcdsaP256 {
                    &ring::signature::ECDSA_P256_SHA256_ASN1
                } else {
                    &ring::signature::ECDSA_P384_SHA384_ASN1
                }
            }
            Algorithm::Rsa3072 => {
                let params = info
                    .algorithm
                    .parameters
                    .ok_or("rsaEncryption without NULL parameters")?;
                if oid != RSA_ENCRYPTION || !params.is_null() {
                    return Err(format!(
                        "SPKI algorithm {oid} is not rsaEncryption with NULL"
                    ));
                }
                &ring::signature::RSA_PKCS1_2048_8192_SHA256
            }
        };
        ring::signature::UnparsedPublicKey::new(verifier, key)
            .verify(msg, sig)
            .map_err(|_| "signature does not verify".to_string())
    }

    /// The whole suite; labels start with `conformance-`.
    pub(crate) fn run(backend: &dyn Backend) {
        let msg: &[u8] = b"castellan conformance: a to-be-signed stand-in";
        let mut keys = Vec::new();
        for alg in [Algorithm::EcdsaP256, Algorithm::EcdsaP384] {
            let label = format!("conformance-{}", alg.as_str());
            let spki = match backend.generate(&label, alg) {
                Ok(spki) => spki,
                Err(e) => panic!("{}: generate {label}: {e}", backend.kind()),
            };
            match backend.public_key(&label) {
                Ok((got_alg, got_spki)) => {
                    assert_eq!(got_alg, alg, "public_key algorithm");
                    assert_eq!(got_spki, spki, "public_key SPKI differs from generate's");
                }
                Err(e) => panic!("public_key {label}: {e}"),
            }
            let sig = match backend.sign(&label, msg) {
                Ok(sig) => sig,
                Err(e) => panic!("sign {label}: {e}"),
            };
            if let Err(e) = verify(&spki, alg, msg, &sig) {
                panic!("{}: {label}: {e}", backend.kind());
            }
            assert!(verify(&spki, alg, b"another message", &sig).is_err());
            for again in [alg, Algorithm::EcdsaP256] {
                match backend.generate(&label, again) {
                    Err(BackendError::Exists(l)) => assert_eq!(l, label),
                    other => panic!("generate over an existing label gave {other:?}"),
                }
            }
            let kept = backend.public_key(&label).map(|(_, s)| s).ok();
            assert_eq!(
                kept.as_deref(),
                Some(&spki[..]),
                "a refused generate changed the key"
            );
            keys.push((label, alg, spki));
        }

        assert!(matches!(
            backend.public_key("conformance-no-such-key"),
            Err(BackendError::NotFound(_))
        ));
        assert!(matches!(
            backend.sign("conformance-no-such-key", msg),
            Err(BackendError::NotFound(_))
        ));

        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let keys = &keys;
                    scope.spawn(move || {
                        for i in 0..40usize {
                            let (label, alg, spki) = &keys[(t + i) % keys.len()];
                            let m = format!("thread {t} message {i}");
                            let sig = backend
                                .sign(label, m.as_bytes())
                                .map_err(|e| e.to_string())?;
                            verify(spki, *alg, m.as_bytes(), &sig)?;
                        }
                        Ok::<(), String>(())
                    })
                })
                .collect();
            for h in handles {
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("concurrent signing: {e}"),
                    Err(_) => panic!("a signing thread panicked"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;
    use std::process::Command;

    /// Re-encodes DER public keys with `openssl pkey`: equal bytes mean our
    /// encoding is the canonical one relying parties produce.
    fn openssl_reencode(spki: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.der");
        std::fs::write(&input, spki).expect("write");
        let out = Command::new("openssl")
            .args(["pkey", "-pubin", "-inform", "DER", "-outform", "DER", "-in"])
            .arg(&input)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn ec_spki_is_byte_identical_to_openssls_encoding() {
        let rng = ring::rand::SystemRandom::new();
        for (alg, ring_alg) in [
            (
                Algorithm::EcdsaP256,
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            ),
            (
                Algorithm::EcdsaP384,
                &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            ),
        ] {
            use ring::signature::KeyPair;
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(ring_alg, &rng).expect("gen");
            let pair = ring::signature::EcdsaKeyPair::from_pkcs8(ring_alg, pkcs8.as_ref(), &rng)
                .expect("parse");
            let spki = ec_spki_der(alg, pair.public_key().as_ref()).expect("spki");
            assert_eq!(openssl_reencode(&spki), spki);
        }
    }

    #[test]
    fn rsa_spki_is_byte_identical_to_openssls_encoding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("rsa.pem");
        let st = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .output()
            .expect("openssl genpkey");
        assert!(st.status.success());
        let out = Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key)
            .output()
            .expect("openssl pkey");
        assert!(out.status.success());
        let spki = spki::SubjectPublicKeyInfoRef::from_der(&out.stdout).expect("spki");
        let rsa = spki.subject_public_key.as_bytes().expect("bits");
        #[derive(der::Sequence)]
        struct RsaPublicKey<'a> {
            n: der::asn1::UintRef<'a>,
            e: der::asn1::UintRef<'a>,
        }
        let RsaPublicKey { n, e } = RsaPublicKey::from_der(rsa).expect("RSAPublicKey");
        assert_eq!(
            rsa_spki_der(n.as_bytes(), e.as_bytes()).expect("spki"),
            out.stdout
        );
        // Leading zero bytes in what a token returns change nothing.
        let mut padded = vec![0, 0];
        padded.extend_from_slice(n.as_bytes());
        assert_eq!(
            rsa_spki_der(&padded, &[0, 1, 0, 1]).expect("spki"),
            out.stdout
        );
    }

    #[test]
    fn raw_ecdsa_signatures_become_der_that_ring_verifies() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        for (fixed, asn1, alg) in [
            (
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                Algorithm::EcdsaP256,
            ),
            (
                &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &ring::signature::ECDSA_P384_SHA384_ASN1,
                Algorithm::EcdsaP384,
            ),
        ] {
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(fixed, &rng).expect("gen");
            let pair = ring::signature::EcdsaKeyPair::from_pkcs8(fixed, pkcs8.as_ref(), &rng)
                .expect("parse");
            let spki = ec_spki_der(alg, pair.public_key().as_ref()).expect("spki");
            // Enough signatures that r or s with a high bit or a leading zero byte occur.
            for i in 0..64u32 {
                let msg = i.to_le_bytes();
                let raw = pair.sign(&rng, &msg).expect("sign");
                let der = ecdsa_raw_to_der(raw.as_ref()).expect("der");
                ring::signature::UnparsedPublicKey::new(asn1, pair.public_key().as_ref())
                    .verify(&msg, &der)
                    .expect("verifies");
                conformance::verify(&spki, alg, &msg, &der).expect("verifies from SPKI");
            }
        }
    }

    #[test]
    fn der_integers_are_minimal() {
        let mut two = [0u8; 64];
        two[31] = 0x80; // r = 0x80: needs a 0x00 pad
        two[32] = 0x00;
        two[33] = 0x7f; // s starts with 0x007f...: one leading zero dropped
        let der = ecdsa_raw_to_der(&two).expect("der");
        assert_eq!(&der[..7], &[0x30, 0x25, 0x02, 0x02, 0x00, 0x80, 0x02]);
        assert_eq!(der[7], 31);
        assert_eq!(der[8], 0x7f);
        assert_eq!(
            ecdsa_raw_to_der(&[0, 0]).expect("der"),
            [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]
        );
        assert!(ecdsa_raw_to_der(&[]).is_err());
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
        assert!(ec_spki_der(Algorithm::EcdsaP256, &[4u8; 64]).is_err());
        assert!(ec_spki_der(Algorithm::Rsa3072, &[4u8; 65]).is_err());
    }
}
