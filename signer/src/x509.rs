//! Building and checking what the signer signs: certificates (RFC 5280),
//! CRLs (RFC 5280 §5) and OCSP responses (RFC 6960).
//!
//! Only a [`CheckedTbs`] can be signed, and only this module makes one: each
//! `build_*` function writes the to-be-signed DER, parses it back with an
//! independent parser and checks it against what policy decided. After
//! signing, [`CheckedTbs::sign`] verifies the signature with the issuer's
//! public key and checks that the signed structure carries exactly the
//! checked TBS.

use castellan_proto::{
    Algorithm, CertIdHash, CertStatus, DistinguishedName, NameAttribute, SignatureKind,
    SignedSubject, SubjectAltName, Urls,
};
use der::Decode;
use ring::digest;

use crate::backend::{Backend, BackendError};
use crate::der::*;

pub mod oids {
    pub const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
    pub const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
    pub const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
    pub const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    pub const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
    pub const P256: &str = "1.2.840.10045.3.1.7";
    pub const P384: &str = "1.3.132.0.34";
    pub const CN: &str = "2.5.4.3";
    pub const SERIAL_NUMBER: &str = "2.5.4.5";
    pub const C: &str = "2.5.4.6";
    pub const L: &str = "2.5.4.7";
    pub const ST: &str = "2.5.4.8";
    pub const O: &str = "2.5.4.10";
    pub const OU: &str = "2.5.4.11";
    pub const DC: &str = "0.9.2342.19200300.100.1.25";
    pub const SKI: &str = "2.5.29.14";
    pub const KEY_USAGE: &str = "2.5.29.15";
    pub const SAN: &str = "2.5.29.17";
    pub const BASIC_CONSTRAINTS: &str = "2.5.29.19";
    pub const CRL_NUMBER: &str = "2.5.29.20";
    pub const CRL_REASON: &str = "2.5.29.21";
    pub const INVALIDITY_DATE: &str = "2.5.29.24";
    pub const CRL_DP: &str = "2.5.29.31";
    pub const AKI: &str = "2.5.29.35";
    pub const EKU: &str = "2.5.29.37";
    pub const AIA: &str = "1.3.6.1.5.5.7.1.1";
    pub const AD_OCSP: &str = "1.3.6.1.5.5.7.48.1";
    pub const AD_CA_ISSUERS: &str = "1.3.6.1.5.5.7.48.2";
    pub const OCSP_BASIC: &str = "1.3.6.1.5.5.7.48.1.1";
    pub const OCSP_NONCE: &str = "1.3.6.1.5.5.7.48.1.2";
    pub const OCSP_NOCHECK: &str = "1.3.6.1.5.5.7.48.1.5";
    pub const KP_SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
    pub const KP_CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";
    pub const KP_CODE_SIGNING: &str = "1.3.6.1.5.5.7.3.3";
    pub const KP_EMAIL: &str = "1.3.6.1.5.5.7.3.4";
    pub const KP_OCSP_SIGNING: &str = "1.3.6.1.5.5.7.3.9";
    pub const SHA1: &str = "1.3.14.3.2.26";
    pub const SHA256: &str = "2.16.840.1.101.3.4.2.1";
}

/// Key usage bits (RFC 5280 §4.2.1.3), bit 0 = digitalSignature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyUsage(pub u16);

impl KeyUsage {
    pub const DIGITAL_SIGNATURE: u16 = 1 << 0;
    pub const NON_REPUDIATION: u16 = 1 << 1;
    pub const KEY_ENCIPHERMENT: u16 = 1 << 2;
    pub const DATA_ENCIPHERMENT: u16 = 1 << 3;
    pub const KEY_AGREEMENT: u16 = 1 << 4;
    pub const KEY_CERT_SIGN: u16 = 1 << 5;
    pub const CRL_SIGN: u16 = 1 << 6;

    pub fn parse_name(s: &str) -> Option<u16> {
        Some(match s {
            "digital_signature" | "digitalSignature" => Self::DIGITAL_SIGNATURE,
            "non_repudiation" | "nonRepudiation" | "content_commitment" => Self::NON_REPUDIATION,
            "key_encipherment" | "keyEncipherment" => Self::KEY_ENCIPHERMENT,
            "data_encipherment" | "dataEncipherment" => Self::DATA_ENCIPHERMENT,
            "key_agreement" | "keyAgreement" => Self::KEY_AGREEMENT,
            "key_cert_sign" | "keyCertSign" => Self::KEY_CERT_SIGN,
            "crl_sign" | "cRLSign" => Self::CRL_SIGN,
            _ => return None,
        })
    }

    /// DER BIT STRING content with the minimal number of octets and unused
    /// bits (X.690 §11.2.2: trailing zero bits removed).
    fn der(self) -> Vec<u8> {
        // Bit i of the usage is bit (7 - i % 8) of octet i / 8.
        let mut octets = [0u8; 2];
        for i in 0..9u16 {
            if self.0 & (1 << i) != 0 {
                octets[(i / 8) as usize] |= 0x80 >> (i % 8);
            }
        }
        let used = if octets[1] != 0 { 2 } else { 1 };
        let last = octets[used - 1];
        let unused = if last == 0 {
            0
        } else {
            last.trailing_zeros() as u8
        };
        let mut content = vec![unused];
        content.extend_from_slice(&octets[..used]);
        tlv(TAG_BIT_STRING, &content)
    }
}

pub fn eku_oid(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_auth" | "serverAuth" => oids::KP_SERVER_AUTH,
        "client_auth" | "clientAuth" => oids::KP_CLIENT_AUTH,
        "code_signing" | "codeSigning" => oids::KP_CODE_SIGNING,
        "email_protection" | "emailProtection" => oids::KP_EMAIL,
        "ocsp_signing" | "OCSPSigning" => oids::KP_OCSP_SIGNING,
        _ => return None,
    })
}

#[derive(Debug)]
pub enum BuildError {
    /// The input cannot be encoded (bad name, bad key, bad URL).
    Invalid(String),
    /// What was built does not match what policy decided: a bug; nothing is
    /// signed.
    Lint(String),
    Backend(BackendError),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Invalid(m) => f.write_str(m),
            BuildError::Lint(m) => write!(f, "refusing to sign: internal check failed: {m}"),
            BuildError::Backend(e) => write!(f, "{e}"),
        }
    }
}

impl From<BackendError> for BuildError {
    fn from(e: BackendError) -> Self {
        BuildError::Backend(e)
    }
}

fn invalid<T>(m: impl Into<String>) -> Result<T, BuildError> {
    Err(BuildError::Invalid(m.into()))
}

/// What the signer knows about a key that signs: enough to fill the
/// signature algorithm, issuer name and AKI of what it signs.
#[derive(Debug, Clone)]
pub struct IssuerKey {
    pub key_label: String,
    /// Journal key id.
    pub key_id: String,
    pub algorithm: Algorithm,
    pub spki_der: Vec<u8>,
    /// DER of the issuer's Name (subject of its certificate).
    pub name_der: Vec<u8>,
}

pub fn signature_algorithm(alg: Algorithm) -> Vec<u8> {
    match alg {
        Algorithm::EcdsaP256 => seq(&[&oid(oids::ECDSA_SHA256)]),
        Algorithm::EcdsaP384 => seq(&[&oid(oids::ECDSA_SHA384)]),
        Algorithm::Rsa3072 => seq(&[&oid(oids::SHA256_WITH_RSA), &null()]),
    }
}

/// The subjectPublicKey BIT STRING value (without the unused-bits octet) of
/// a DER SubjectPublicKeyInfo, and the algorithm it is for.
pub fn spki_parts(spki_der: &[u8]) -> Result<(Algorithm, Vec<u8>), BuildError> {
    use der::asn1::ObjectIdentifier as Oid;
    // Compared as OIDs, not as dotted text: this runs several times per
    // certificate, and the text is only needed to name a refused one.
    const EC_PUBLIC_KEY: Oid = Oid::new_unwrap(oids::EC_PUBLIC_KEY);
    const RSA_ENCRYPTION: Oid = Oid::new_unwrap(oids::RSA_ENCRYPTION);
    const P256: Oid = Oid::new_unwrap(oids::P256);
    const P384: Oid = Oid::new_unwrap(oids::P384);
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der).map_err(|e| {
        BuildError::Invalid(format!("public key is not a DER SubjectPublicKeyInfo: {e}"))
    })?;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| BuildError::Invalid("public key bit string has unused bits".into()))?;
    let alg_oid = spki.algorithm.oid;
    let alg = if alg_oid == EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<Oid>().ok());
        match curve {
            Some(c) if c == P256 && key.len() == 65 && key[0] == 4 => Algorithm::EcdsaP256,
            Some(c) if c == P384 && key.len() == 97 && key[0] == 4 => Algorithm::EcdsaP384,
            Some(c) => {
                return invalid(format!(
                    "EC public key on curve {c} (or in compressed form) is not accepted; use P-256 or P-384"
                ));
            }
            None => return invalid("EC public key without a named curve"),
        }
    } else if alg_oid == RSA_ENCRYPTION {
        // RFC 3279 §2.3.1: the parameters are NULL.
        if !spki.algorithm.parameters.is_some_and(|p| p.is_null()) {
            return invalid(
                "RSA public key: the rsaEncryption AlgorithmIdentifier must have NULL parameters",
            );
        }
        check_rsa_public_key(key)?;
        Algorithm::Rsa3072
    } else {
        return invalid(format!("public key algorithm {alg_oid} is not accepted"));
    };
    Ok((alg, key.to_vec()))
}

/// Smallest and largest RSA modulus accepted: what the daemon accepts in a
/// CSR (ring's RSA_PKCS1_2048_8192 verification).
pub const RSA_MIN_BITS: usize = 2048;
pub const RSA_MAX_BITS: usize = 8192;
/// Largest RSA public exponent accepted, in bits (ring verifies with
/// exponents up to 2^33 - 1).
const RSA_MAX_EXPONENT_BITS: usize = 33;

/// One DER TLV with a minimally encoded definite length.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (tag, content, rest) = split_tlv(input)?;
    let header = input.len() - content.len() - rest.len();
    let minimal = match header {
        2 => true,
        // Long form: only for lengths of 128 and more, without leading zeros.
        n => {
            let needed = (usize::BITS - content.len().leading_zeros()).div_ceil(8) as usize;
            content.len() >= 0x80 && n - 2 == needed
        }
    };
    minimal.then_some((tag, content, rest))
}

/// Bits of a DER INTEGER's content if it is positive and minimally encoded.
fn positive_integer_bits(content: &[u8]) -> Option<usize> {
    let (&first, tail) = content.split_first()?;
    if first & 0x80 != 0 {
        return None; // negative
    }
    let magnitude = if first == 0 {
        // A leading zero is only there to keep a set high bit positive.
        match tail.first() {
            Some(b) if b & 0x80 != 0 => tail,
            _ => return None, // zero, or not minimal
        }
    } else {
        content
    };
    Some(magnitude.len() * 8 - magnitude[0].leading_zeros() as usize)
}

/// Checks an RSAPublicKey (RFC 8017 A.1.1) strictly: a DER SEQUENCE of
/// exactly two positive, minimal INTEGERs and nothing after it; an odd
/// modulus of 2048 to 8192 bits; an odd exponent of at least 3.
fn check_rsa_public_key(rsa_public_key: &[u8]) -> Result<usize, BuildError> {
    let bad = |what: &str| {
        BuildError::Invalid(format!(
            "RSA public key is malformed: {what}; it must be a DER RSAPublicKey SEQUENCE {{ modulus, publicExponent }} and nothing else"
        ))
    };
    let (tag, body, rest) = der_tlv(rsa_public_key).ok_or_else(|| bad("not DER"))?;
    if tag != TAG_SEQUENCE {
        return Err(bad("not a SEQUENCE"));
    }
    if !rest.is_empty() {
        return Err(bad("data after the RSAPublicKey"));
    }
    let (tag, n, rest) = der_tlv(body).ok_or_else(|| bad("no modulus"))?;
    if tag != TAG_INTEGER {
        return Err(bad("the modulus is not an INTEGER"));
    }
    let (tag, e, rest) = der_tlv(rest).ok_or_else(|| bad("no public exponent"))?;
    if tag != TAG_INTEGER {
        return Err(bad("the public exponent is not an INTEGER"));
    }
    if !rest.is_empty() {
        return Err(bad("more than two INTEGERs"));
    }
    let bits = positive_integer_bits(n)
        .ok_or_else(|| bad("the modulus is not a positive, minimally encoded INTEGER"))?;
    let e_bits = positive_integer_bits(e)
        .ok_or_else(|| bad("the public exponent is not a positive, minimally encoded INTEGER"))?;
    if n.last().is_none_or(|b| b & 1 == 0) {
        return Err(bad("the modulus is even"));
    }
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return invalid(format!(
            "RSA key of {bits} bits is not accepted; the modulus must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits"
        ));
    }
    if e.last().is_none_or(|b| b & 1 == 0) || !(2..=RSA_MAX_EXPONENT_BITS).contains(&e_bits) {
        return invalid(format!(
            "RSA public exponent is not accepted: it must be odd, at least 3 and at most {RSA_MAX_EXPONENT_BITS} bits (65537 is usual)"
        ));
    }
    Ok(bits)
}

/// The named curves a subject key may be on.
#[derive(Clone, Copy)]
enum Curve {
    P256,
    P384,
}

struct CurveParams {
    p: num_bigint::BigUint,
    b: num_bigint::BigUint,
}

fn curve_params(c: Curve) -> &'static CurveParams {
    use std::sync::OnceLock;
    static P256: OnceLock<CurveParams> = OnceLock::new();
    static P384: OnceLock<CurveParams> = OnceLock::new();
    // SEC 2 / FIPS 186-4 D.1.2.3 and D.1.2.4.
    let (cell, p, b) = match c {
        Curve::P256 => (
            &P256,
            "ffffffff00000001000000000000000000000000ffffffffffffffffffffffff",
            "5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b",
        ),
        Curve::P384 => (
            &P384,
            "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
            "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
        ),
    };
    cell.get_or_init(|| CurveParams {
        // Constants above: valid hex.
        p: num_bigint::BigUint::parse_bytes(p.as_bytes(), 16).unwrap_or_default(),
        b: num_bigint::BigUint::parse_bytes(b.as_bytes(), 16).unwrap_or_default(),
    })
}

/// Checks an uncompressed EC point (04 || x || y) as SEC 1 §3.2.2.1 does:
/// both coordinates below p and y^2 = x^3 - 3x + b (mod p). The identity
/// has no uncompressed form, so a point passing this is not it.
fn check_ec_point(point: &[u8], curve: Curve) -> Result<(), BuildError> {
    use num_bigint::BigUint;
    let name = match curve {
        Curve::P256 => "P-256",
        Curve::P384 => "P-384",
    };
    let cp = curve_params(curve);
    let coords = point.get(1..).unwrap_or_default();
    let (x, y) = coords.split_at(coords.len() / 2);
    let (x, y) = (BigUint::from_bytes_be(x), BigUint::from_bytes_be(y));
    if cp.p == BigUint::default() || x >= cp.p || y >= cp.p {
        return invalid(format!(
            "EC public key: a coordinate is not below the field prime of {name}; the key is not a valid point"
        ));
    }
    let lhs = (&y * &y) % &cp.p;
    // x^3 - 3x + b = x^3 + (p - 3) x + b (mod p)
    let three = BigUint::from(3u8);
    let rhs = ((&x * &x % &cp.p) * &x + (&cp.p - three) * &x + &cp.b) % &cp.p;
    if lhs != rhs {
        return invalid(format!(
            "EC public key is not a point on {name}; refusing to certify it"
        ));
    }
    Ok(())
}

/// [`spki_parts`] for a key the signer is asked to certify: an EC point must
/// also lie on its curve (RSA keys are checked fully by `spki_parts`).
pub fn subject_key_parts(spki_der: &[u8]) -> Result<(Algorithm, Vec<u8>), BuildError> {
    let (alg, key) = spki_parts(spki_der)?;
    match alg {
        Algorithm::EcdsaP256 => check_ec_point(&key, Curve::P256)?,
        Algorithm::EcdsaP384 => check_ec_point(&key, Curve::P384)?,
        Algorithm::Rsa3072 => {}
    }
    Ok((alg, key))
}

/// RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey bits. One
/// method everywhere, so an issuer's SKI always equals its children's AKI.
pub fn key_identifier(spki_der: &[u8]) -> Result<Vec<u8>, BuildError> {
    let (_, key) = spki_parts(spki_der)?;
    Ok(key_identifier_of(&key))
}

/// [`key_identifier`] of the subjectPublicKey bits from [`spki_parts`].
fn key_identifier_of(key: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key)
        .as_ref()
        .to_vec()
}

fn attr_oid(a: &NameAttribute) -> (&'static str, &str, u8) {
    match a {
        NameAttribute::CommonName(v) => (oids::CN, v, TAG_UTF8_STRING),
        NameAttribute::Organization(v) => (oids::O, v, TAG_UTF8_STRING),
        NameAttribute::OrganizationalUnit(v) => (oids::OU, v, TAG_UTF8_STRING),
        NameAttribute::Country(v) => (oids::C, v, TAG_PRINTABLE_STRING),
        NameAttribute::Locality(v) => (oids::L, v, TAG_UTF8_STRING),
        NameAttribute::State(v) => (oids::ST, v, TAG_UTF8_STRING),
        NameAttribute::SerialNumber(v) => (oids::SERIAL_NUMBER, v, TAG_PRINTABLE_STRING),
        NameAttribute::DomainComponent(v) => (oids::DC, v, TAG_IA5_STRING),
    }
}

/// DER Name from a structured distinguished name, one attribute per RDN.
pub fn encode_name(dn: &DistinguishedName) -> Result<Vec<u8>, BuildError> {
    let mut rdns = Vec::new();
    for a in &dn.0 {
        let (o, v, tag) = attr_oid(a);
        if v.is_empty() || v.len() > 64 {
            return invalid(format!("name attribute {o} must be 1 to 64 characters"));
        }
        if v.chars().any(char::is_control) {
            return invalid(format!("name attribute {o} contains control characters"));
        }
        match tag {
            TAG_PRINTABLE_STRING
                if !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)) =>
            {
                return invalid(format!("name attribute {o} must be a PrintableString"));
            }
            TAG_IA5_STRING if !v.is_ascii() => {
                return invalid(format!("name attribute {o} must be ASCII"));
            }
            _ => {}
        }
        if matches!(a, NameAttribute::Country(c) if c.len() != 2) {
            return invalid("country must be a two-letter code");
        }
        rdns.extend(set(&[&seq(&[&oid(o), &tlv(tag, v.as_bytes())])]));
    }
    Ok(tlv(TAG_SEQUENCE, &rdns))
}

fn extension(oid_s: &str, critical: bool, value: &[u8]) -> Vec<u8> {
    if critical {
        seq(&[&oid(oid_s), &boolean(true), &octets(value)])
    } else {
        seq(&[&oid(oid_s), &octets(value)])
    }
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn is_uri(s: &str) -> bool {
    s.is_ascii()
        && !s.chars().any(|c| c.is_ascii_control() || c == ' ')
        && s.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !rest.is_empty()
        })
}

fn general_name(san: &SubjectAltName) -> Result<Vec<u8>, BuildError> {
    Ok(match san {
        SubjectAltName::Dns(d) => {
            if !is_dns_name(d) {
                return invalid(format!("{d:?} is not a valid DNS name"));
            }
            ctx_prim(2, d.to_ascii_lowercase().as_bytes())
        }
        SubjectAltName::Ip(ip) => {
            if ip.len() != 4 && ip.len() != 16 {
                return invalid("an IP address SAN must have 4 or 16 octets");
            }
            ctx_prim(7, ip)
        }
        SubjectAltName::Email(e) => {
            if !e.is_ascii() || e.split('@').count() != 2 || e.chars().any(|c| c.is_ascii_control())
            {
                return invalid(format!("{e:?} is not a valid email address"));
            }
            ctx_prim(1, e.as_bytes())
        }
        SubjectAltName::Uri(u) => {
            if !is_uri(u) {
                return invalid(format!("{u:?} is not a valid URI"));
            }
            ctx_prim(6, u.as_bytes())
        }
    })
}

fn uri_general_name(u: &str) -> Result<Vec<u8>, BuildError> {
    if !is_uri(u) {
        return invalid(format!("{u:?} is not a valid URL"));
    }
    Ok(ctx_prim(6, u.as_bytes()))
}

/// What kind of certificate is being built; decides the extension set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertKind {
    /// End entity: cA=FALSE.
    Leaf {
        key_usage: KeyUsage,
        eku: Vec<&'static str>,
    },
    /// Delegated OCSP responder: cA=FALSE, OCSPSigning, id-pkix-ocsp-nocheck.
    OcspResponder,
    /// CA: cA=TRUE, keyCertSign + cRLSign.
    Ca { path_len: Option<u8> },
}

pub struct CertSpec<'a> {
    pub serial: &'a [u8],
    pub issuer: &'a IssuerKey,
    pub subject_der: &'a [u8],
    pub subject_spki_der: &'a [u8],
    pub not_before: i64,
    pub not_after: i64,
    pub sans: &'a [SubjectAltName],
    pub kind: CertKind,
    pub urls: &'a Urls,
}

/// A to-be-signed structure that was built and checked. Only this module can
/// make one; [`CheckedTbs::sign`] consumes it.
#[derive(Debug)]
pub struct CheckedTbs {
    tbs: Vec<u8>,
    shape: Shape,
    pub kind: SignatureKind,
    pub subject: SignedSubject,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Certificate,
    Crl,
    Ocsp,
}

/// A signature made over a [`CheckedTbs`] and verified.
#[derive(Debug)]
pub struct Signed {
    pub der: Vec<u8>,
    /// SHA-256 of `der`, made while verifying when it is large (at least
    /// [`PARALLEL_HASH_OCTETS`] of TBS).
    pub der_sha256: Option<[u8; 32]>,
    pub tbs_sha256: [u8; 32],
    pub kind: SignatureKind,
    pub subject: SignedSubject,
}

impl CheckedTbs {
    pub fn tbs(&self) -> &[u8] {
        &self.tbs
    }

    /// Signs with the issuer's key, assembles the signed structure, verifies
    /// the signature with the issuer's public key and checks that the
    /// assembled structure carries the checked TBS unchanged.
    pub fn sign(self, backend: &dyn Backend, issuer: &IssuerKey) -> Result<Signed, BuildError> {
        // Signing and verifying each hash the TBS; on a large CRL the
        // journal's hash of the TBS is made on another core while it is
        // signed, and the hash of the signed DER while it is verified.
        let large = self.tbs.len() >= PARALLEL_HASH_OCTETS;
        let hash_failed = |_| BuildError::Lint("hashing on another thread failed".into());
        let (sig, tbs_sha256) = if large {
            let (sig, digest) = std::thread::scope(|s| {
                let digest = s.spawn(|| sha256(&self.tbs));
                (backend.sign(&issuer.key_label, &self.tbs), digest.join())
            });
            (sig?, digest.map_err(hash_failed)?)
        } else {
            (
                backend.sign(&issuer.key_label, &self.tbs)?,
                sha256(&self.tbs),
            )
        };
        let verify = || verify_signature(issuer.algorithm, &issuer.spki_der, &self.tbs, &sig);
        let der = match self.shape {
            Shape::Certificate | Shape::Crl => seq(&[
                &self.tbs,
                &signature_algorithm(issuer.algorithm),
                &bits(&sig),
            ]),
            Shape::Ocsp => ocsp_wrap(&self.tbs, issuer, &sig),
        };
        let der_sha256 = if large {
            let (verified, digest) = std::thread::scope(|s| {
                let digest = s.spawn(|| sha256(&der));
                (verify(), digest.join())
            });
            verified?;
            Some(digest.map_err(hash_failed)?)
        } else {
            verify()?;
            None
        };
        // The bytes handed out must contain exactly the checked TBS. For a
        // certificate, read with the strict DER reader: the TBS itself was
        // parsed with x509-cert and linted when it was built, and what is
        // around it here is only the algorithm and the verified signature,
        // so parsing the whole certificate again with x509-cert (and
        // re-encoding its TBS to compare) checked nothing more.
        let carried = match self.shape {
            Shape::Certificate => signed_carries(&der, &self.tbs, issuer.algorithm, &sig),
            Shape::Crl => {
                // Read structurally (a large CRL is tens of megabytes; the
                // TBS inside was checked field by field when it was built),
                // and with x509-cert too when small.
                signed_carries(&der, &self.tbs, issuer.algorithm, &sig)
                    && (self.tbs.len() > FULL_PARSE_MAX_OCTETS
                        || x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der)
                            .ok()
                            .and_then(|c| der::Encode::to_der(&c.tbs_cert_list).ok())
                            .is_some_and(|t| t == self.tbs))
            }
            Shape::Ocsp => true,
        };
        if !carried {
            return Err(BuildError::Lint(
                "signed structure does not carry the checked TBS".into(),
            ));
        }
        Ok(Signed {
            der,
            der_sha256,
            tbs_sha256,
            kind: self.kind,
            subject: self.subject,
        })
    }
}

/// From this size on, independent hashes of one signing run on two threads.
pub const PARALLEL_HASH_OCTETS: usize = 1024 * 1024;

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// Whether `signed` is exactly `SEQUENCE { tbs, signatureAlgorithm, BIT
/// STRING sig }`, read with the strict DER reader.
fn signed_carries(signed: &[u8], tbs: &[u8], alg: Algorithm, sig: &[u8]) -> bool {
    let check = || -> Result<(), &'static str> {
        let mut top = Reader::new(signed);
        let mut r = Reader::new(top.expect(TAG_SEQUENCE)?);
        top.end()?;
        r.expect_raw(tbs)?;
        r.expect_raw(&signature_algorithm(alg))?;
        match r.expect(TAG_BIT_STRING)? {
            [0, s @ ..] if s == sig => {}
            _ => return Err("signature changed"),
        }
        r.end()
    };
    check().is_ok()
}

/// Verifies `sig` over `msg` with a DER SubjectPublicKeyInfo.
pub fn verify_signature(
    alg: Algorithm,
    spki_der: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), BuildError> {
    let (_, key) = spki_parts(spki_der)?;
    let verify_alg: &dyn ring::signature::VerificationAlgorithm = match alg {
        Algorithm::EcdsaP256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        Algorithm::EcdsaP384 => &ring::signature::ECDSA_P384_SHA384_ASN1,
        Algorithm::Rsa3072 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
    };
    ring::signature::UnparsedPublicKey::new(verify_alg, &key)
        .verify(msg, sig)
        .map_err(|_| {
            BuildError::Lint(
                "the backend's signature does not verify with the issuer's public key".into(),
            )
        })
}

/// A fresh serial: 16 random octets (127 bits of entropy), positive, never
/// zero, at most 20 octets once DER-encoded.
pub fn random_serial(rng: &dyn ring::rand::SecureRandom) -> Result<Vec<u8>, BuildError> {
    let mut s = [0u8; 16];
    rng.fill(&mut s)
        .map_err(|_| BuildError::Invalid("no randomness available for a serial".into()))?;
    s[0] &= 0x7f;
    s[0] |= 0x40;
    Ok(s.to_vec())
}

pub fn build_certificate(spec: &CertSpec<'_>) -> Result<CheckedTbs, BuildError> {
    check_x509_time(spec.not_before, "notBefore").map_err(BuildError::Invalid)?;
    check_x509_time(spec.not_after, "notAfter").map_err(BuildError::Invalid)?;
    if spec.not_before >= spec.not_after {
        return invalid("notBefore must be before notAfter");
    }
    let (_, subject_key) = subject_key_parts(spec.subject_spki_der)?;
    let ski = key_identifier_of(&subject_key);
    let aki = key_identifier(&spec.issuer.spki_der)?;

    let mut exts: Vec<Vec<u8>> = Vec::new();
    let (bc, ku, eku): (Vec<u8>, KeyUsage, Vec<&str>) = match &spec.kind {
        CertKind::Leaf { key_usage, eku } => (seq(&[]), *key_usage, eku.clone()),
        CertKind::OcspResponder => (
            seq(&[]),
            KeyUsage(KeyUsage::DIGITAL_SIGNATURE),
            vec![oids::KP_OCSP_SIGNING],
        ),
        CertKind::Ca { path_len } => {
            let mut parts = vec![boolean(true)];
            if let Some(p) = path_len {
                parts.push(uint_u64(u64::from(*p)));
            }
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            (
                seq(&refs),
                KeyUsage(
                    KeyUsage::DIGITAL_SIGNATURE | KeyUsage::KEY_CERT_SIGN | KeyUsage::CRL_SIGN,
                ),
                vec![],
            )
        }
    };
    if ku.0 == 0 {
        // RFC 5280 §4.2.1.3: at least one bit is set.
        return invalid(
            "a certificate's keyUsage must have at least one bit set; give the profile a key usage",
        );
    }
    exts.push(extension(oids::BASIC_CONSTRAINTS, true, &bc));
    exts.push(extension(oids::KEY_USAGE, true, &ku.der()));
    if !eku.is_empty() {
        let list: Vec<Vec<u8>> = eku.iter().map(|o| oid(o)).collect();
        let refs: Vec<&[u8]> = list.iter().map(Vec::as_slice).collect();
        exts.push(extension(oids::EKU, false, &seq(&refs)));
    }
    exts.push(extension(oids::SKI, false, &octets(&ski)));
    exts.push(extension(oids::AKI, false, &seq(&[&ctx_prim(0, &aki)])));
    if !spec.sans.is_empty() {
        let mut names = Vec::new();
        for s in spec.sans {
            names.extend(general_name(s)?);
        }
        // RFC 5280 §4.2.1.6: critical when the subject is empty.
        let critical = spec.subject_der == seq(&[]).as_slice();
        exts.push(extension(oids::SAN, critical, &tlv(TAG_SEQUENCE, &names)));
    } else if spec.subject_der == seq(&[]).as_slice() {
        return invalid(
            "a certificate needs a subject name or at least one subject alternative name",
        );
    }
    if matches!(spec.kind, CertKind::OcspResponder) {
        exts.push(extension(oids::OCSP_NOCHECK, false, &null()));
    } else {
        let mut ads = Vec::new();
        for u in &spec.urls.ocsp {
            ads.extend(seq(&[&oid(oids::AD_OCSP), &uri_general_name(u)?]));
        }
        for u in &spec.urls.ca_issuers {
            ads.extend(seq(&[&oid(oids::AD_CA_ISSUERS), &uri_general_name(u)?]));
        }
        if !ads.is_empty() {
            exts.push(extension(oids::AIA, false, &tlv(TAG_SEQUENCE, &ads)));
        }
        let mut dps = Vec::new();
        for u in &spec.urls.crl {
            dps.extend(seq(&[&ctx_cons(0, &ctx_cons(0, &uri_general_name(u)?))]));
        }
        if !dps.is_empty() {
            exts.push(extension(oids::CRL_DP, false, &tlv(TAG_SEQUENCE, &dps)));
        }
    }
    let ext_refs: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();

    let tbs = seq(&[
        &ctx_cons(0, &uint_u64(2)),
        &uint(spec.serial),
        &signature_algorithm(spec.issuer.algorithm),
        &spec.issuer.name_der,
        &seq(&[&x509_time(spec.not_before), &x509_time(spec.not_after)]),
        spec.subject_der,
        spec.subject_spki_der,
        &ctx_cons(3, &seq(&ext_refs)),
    ]);
    lint_certificate(&tbs, spec)?;
    let kind = match spec.kind {
        CertKind::Leaf { .. } => SignatureKind::Certificate,
        CertKind::OcspResponder => SignatureKind::ResponderCertificate,
        CertKind::Ca { .. } => SignatureKind::CaCertificate,
    };
    Ok(CheckedTbs {
        tbs,
        shape: Shape::Certificate,
        kind,
        subject: SignedSubject::Serial(spec.serial.to_vec()),
    })
}

/// Parses the TBS back with x509-cert and checks it says what policy
/// decided: serial, issuer, validity, subject, key, and the CA bit.
fn lint_certificate(tbs: &[u8], spec: &CertSpec<'_>) -> Result<(), BuildError> {
    use der::Encode;
    let lint = |m: &str| BuildError::Lint(m.to_string());
    let parsed = x509_cert::TbsCertificate::from_der(tbs)
        .map_err(|e| lint(&format!("TBS does not parse: {e}")))?;
    if parsed
        .serial_number()
        .as_bytes()
        .iter()
        .skip_while(|b| **b == 0)
        .ne(spec.serial.iter().skip_while(|b| **b == 0))
    {
        return Err(lint("serial changed"));
    }
    if parsed.serial_number().as_bytes().len() > 20 {
        return Err(lint("serial longer than 20 octets"));
    }
    if parsed.issuer().to_der().ok().as_deref() != Some(spec.issuer.name_der.as_slice()) {
        return Err(lint("issuer name is not the issuing CA's subject"));
    }
    if parsed.subject().to_der().ok().as_deref() != Some(spec.subject_der) {
        return Err(lint("subject changed"));
    }
    if parsed.subject_public_key_info().to_der().ok().as_deref() != Some(spec.subject_spki_der) {
        return Err(lint("public key changed"));
    }
    let nb = parsed.validity().not_before.to_unix_duration().as_secs() as i64;
    let na = parsed.validity().not_after.to_unix_duration().as_secs() as i64;
    if nb != spec.not_before || na != spec.not_after {
        return Err(lint("validity changed"));
    }
    let bc = parsed
        .get_extension::<x509_cert::ext::pkix::BasicConstraints>()
        .map_err(|e| lint(&format!("basicConstraints: {e}")))?
        .ok_or_else(|| lint("basicConstraints missing"))?;
    let want_ca = matches!(spec.kind, CertKind::Ca { .. });
    if bc.1.ca != want_ca || !bc.0 {
        return Err(lint(
            "basicConstraints cA does not match the kind of certificate",
        ));
    }
    Ok(())
}

/// One revoked certificate for a CRL.
pub struct CrlEntrySpec<'a> {
    pub serial: &'a [u8],
    pub revoked_at: i64,
    pub reason_code: Option<u8>,
    pub invalidity_date: Option<i64>,
}

/// CRLs of up to this many TBS octets (about 5,000 entries) are also parsed
/// back with x509-cert; larger ones only by [`check_crl_tbs`], which checks
/// the same structure in a fraction of the time (x509-cert takes over a
/// second for a million entries, allocating for each).
const FULL_PARSE_MAX_OCTETS: usize = 256 * 1024;

/// `Extension ::= SEQUENCE { extnID, extnValue OCTET STRING }` header and
/// OID of a reasonCode entry extension, followed by the ENUMERATED
/// (RFC 5280 §5.3.1); the unit tests check it against `extension`.
const REASON_EXT_PREFIX: [u8; 11] = [
    0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x15, 0x04, 0x03, 0x0a, 0x01,
];
/// The same for invalidityDate (RFC 5280 §5.3.2), followed by the 15 octets
/// of the GeneralizedTime's text.
const INVALIDITY_EXT_PREFIX: [u8; 11] = [
    0x30, 0x18, 0x06, 0x03, 0x55, 0x1d, 0x18, 0x04, 0x11, 0x18, 0x0f,
];

/// CRLReason removeFromCRL: for delta CRLs only; the signer writes full ones.
const REMOVE_FROM_CRL: u8 = 8;

/// A CRLReason a full CRL may carry: 0..=10 without the unassigned 7 and
/// removeFromCRL (8).
fn valid_reason_code(code: u8) -> bool {
    code <= 10 && code != 7 && code != REMOVE_FROM_CRL
}

/// The revokedCertificates of a CRL being built. Each entry is checked and
/// written as it arrives, straight into one buffer: a CRL staged in chunks
/// is encoded while the rest is still on its way, and holds about 45 octets
/// per entry instead of a decoded request.
#[derive(Debug, Default)]
pub struct CrlEntries {
    der: Vec<u8>,
    count: u64,
    dates: DateCache,
    /// How much of `der` (octets, entries) [`CrlEntries::read_back`] has
    /// read back.
    read_octets: usize,
    read_count: u64,
}

/// Civil dates of recently seen days, direct-mapped: a CRL's revocation
/// times fall on a few hundred distinct days, and the calendar arithmetic
/// is a good part of writing an entry.
#[derive(Debug)]
struct DateCache(Box<[(i64, i64, u32, u32); 1024]>);

impl Default for DateCache {
    fn default() -> Self {
        // Day i64::MIN is never looked up (unix / 86,400 cannot reach it).
        DateCache(Box::new([(i64::MIN, 0, 0, 0); 1024]))
    }
}

impl DateCache {
    fn time_text(&mut self, unix: i64, generalized: bool) -> Option<(u8, [u8; 15], usize)> {
        if !(MIN_TIME..=MAX_TIME).contains(&unix) {
            return None;
        }
        let day = unix.div_euclid(86_400);
        let slot = &mut self.0[day.rem_euclid(1024) as usize];
        if slot.0 != day {
            let (y, m, d) = civil_from_days(day);
            *slot = (day, y, m, d);
        }
        time_text_of(
            slot.1,
            slot.2,
            slot.3,
            unix.rem_euclid(86_400) as u32,
            generalized,
        )
    }
}

impl CrlEntries {
    pub fn new() -> CrlEntries {
        CrlEntries::default()
    }

    /// Entries written so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Room for about `n` more entries.
    pub fn reserve(&mut self, n: usize) {
        self.der.reserve(n.saturating_mul(48));
    }

    /// Reads the entries written since the last call back with the strict
    /// DER reader (see [`check_crl_entry`]) and checks that they are as
    /// many as were written. A CRL staged in chunks is read back chunk by
    /// chunk, while the next one is on its way; [`build_crl_from`] reads
    /// back the rest and relies on this for the list's contents.
    pub fn read_back(&mut self) -> Result<(), BuildError> {
        let reason_oid = oid(oids::CRL_REASON);
        let invalidity_oid = oid(oids::INVALIDITY_DATE);
        let mut n = self.read_count;
        let mut r = Reader::new(&self.der[self.read_octets..]);
        while !r.is_empty() {
            check_crl_entry(&mut r, &reason_oid, &invalidity_oid)
                .map_err(|e| BuildError::Lint(format!("CRL entry #{n} does not read back: {e}")))?;
            n += 1;
        }
        if n != self.count {
            return Err(BuildError::Lint(format!(
                "CRL entry count changed: {} written, {n} read back",
                self.count
            )));
        }
        self.read_octets = self.der.len();
        self.read_count = n;
        Ok(())
    }

    /// Checks one entry and appends its DER. On error nothing is appended.
    pub fn push(&mut self, e: &CrlEntrySpec<'_>) -> Result<(), BuildError> {
        if e.serial.is_empty() || e.serial.len() > 20 {
            return invalid("a CRL entry's serial must be 1 to 20 octets");
        }
        let skip = e.serial.iter().take_while(|b| **b == 0).count();
        let magnitude = &e.serial[skip..];
        let pad = magnitude.first().is_none_or(|b| b & 0x80 != 0);
        let int_len = magnitude.len() + usize::from(pad);
        check_x509_time(e.revoked_at, "a CRL entry's revocation time")
            .map_err(BuildError::Invalid)?;
        if let Some(t) = e.invalidity_date {
            check_x509_time(t, "a CRL entry's invalidity date").map_err(BuildError::Invalid)?;
        }
        let (date_tag, date, date_len) =
            self.dates.time_text(e.revoked_at, false).ok_or_else(|| {
                BuildError::Invalid(
                    check_time_range(e.revoked_at, "a CRL entry's revocation time")
                        .err()
                        .unwrap_or_default(),
                )
            })?;
        let invalidity = match e.invalidity_date {
            Some(t) => Some(self.dates.time_text(t, true).ok_or_else(|| {
                BuildError::Invalid(
                    check_time_range(t, "a CRL entry's invalidity date")
                        .err()
                        .unwrap_or_default(),
                )
            })?),
            None => None,
        };
        if e.reason_code == Some(REMOVE_FROM_CRL) {
            return invalid(
                "reason removeFromCRL (8) belongs only in delta CRLs (RFC 5280 §5.3.1) and this is a full CRL: leave the certificate out of the CRL instead",
            );
        }
        if let Some(code) = e.reason_code
            && !valid_reason_code(code)
        {
            return invalid(format!("{code} is not a CRLReason code"));
        }
        let exts_len = e.reason_code.map_or(0, |_| REASON_EXT_PREFIX.len() + 1)
            + invalidity.map_or(0, |_| INVALIDITY_EXT_PREFIX.len() + 15);
        // At most 23 + 17 + 40 octets: every length here is short-form.
        let body = 2 + int_len + 2 + date_len + if exts_len > 0 { 2 + exts_len } else { 0 };
        let out = &mut self.der;
        out.reserve(2 + body);
        out.extend_from_slice(&[TAG_SEQUENCE, body as u8, TAG_INTEGER, int_len as u8]);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(magnitude);
        out.extend_from_slice(&[date_tag, date_len as u8]);
        out.extend_from_slice(&date[..date_len]);
        if exts_len > 0 {
            out.extend_from_slice(&[TAG_SEQUENCE, exts_len as u8]);
            if let Some(code) = e.reason_code {
                out.extend_from_slice(&REASON_EXT_PREFIX);
                out.push(code);
            }
            if let Some((_, text, _)) = invalidity {
                out.extend_from_slice(&INVALIDITY_EXT_PREFIX);
                out.extend_from_slice(&text);
            }
        }
        self.count += 1;
        Ok(())
    }
}

/// Builds the TBSCertList of a full CRL. No IssuingDistributionPoint: a full
/// CRL covering all reasons may omit it (RFC 5280 §5.2.5), and NSS refuses
/// CRLs that carry one.
pub fn build_crl(
    issuer: &IssuerKey,
    crl_number: u64,
    this_update: i64,
    next_update: i64,
    entries: &[CrlEntrySpec<'_>],
) -> Result<CheckedTbs, BuildError> {
    let mut written = CrlEntries::new();
    written.reserve(entries.len());
    for e in entries {
        written.push(e)?;
    }
    build_crl_from(issuer, crl_number, this_update, next_update, written)
}

/// [`build_crl`] of entries already written (and checked one by one) into
/// a [`CrlEntries`]. The whole TBS is then checked by [`check_crl_tbs`].
pub fn build_crl_from(
    issuer: &IssuerKey,
    crl_number: u64,
    this_update: i64,
    next_update: i64,
    entries: CrlEntries,
) -> Result<CheckedTbs, BuildError> {
    check_x509_time(this_update, "the CRL's thisUpdate").map_err(BuildError::Invalid)?;
    check_x509_time(next_update, "the CRL's nextUpdate").map_err(BuildError::Invalid)?;
    if next_update <= this_update {
        return invalid("nextUpdate must be after thisUpdate");
    }
    let mut entries = entries;
    entries.read_back()?;
    let aki = key_identifier(&issuer.spki_der)?;
    let crl_exts = ctx_cons(
        0,
        &seq(&[
            &extension(oids::AKI, false, &seq(&[&ctx_prim(0, &aki)])),
            &extension(oids::CRL_NUMBER, false, &uint_u64(crl_number)),
        ]),
    );
    let head: [Vec<u8>; 5] = [
        uint_u64(1),
        signature_algorithm(issuer.algorithm),
        issuer.name_der.clone(),
        x509_time(this_update),
        x509_time(next_update),
    ];
    let revoked_len = entries.der.len();
    // RFC 5280 §5.1.2.6: no revoked certificates, no list.
    let revoked_tlv = if entries.is_empty() {
        0
    } else {
        header_len(revoked_len) + revoked_len
    };
    let body = head.iter().map(Vec::len).sum::<usize>() + revoked_tlv + crl_exts.len();
    let mut prefix = Vec::with_capacity(header_len(body) + body - revoked_len - crl_exts.len());
    push_header(&mut prefix, TAG_SEQUENCE, body);
    for part in &head {
        prefix.extend_from_slice(part);
    }
    if !entries.is_empty() {
        push_header(&mut prefix, TAG_SEQUENCE, revoked_len);
    }
    let expected = entries.len();
    // The entries' buffer becomes the TBS: the head is moved in front of
    // them in place, so tens of megabytes are not copied to a new buffer.
    let mut tbs = entries.der;
    tbs.reserve_exact(prefix.len() + crl_exts.len());
    tbs.splice(0..0, prefix);
    tbs.extend_from_slice(&crl_exts);

    let found = check_crl_tbs(
        &tbs,
        &CrlExpectation {
            issuer,
            aki: &aki,
            crl_number,
            this_update,
            next_update,
            entries_read_back: Some((revoked_len, expected)),
        },
    )
    .map_err(|e| BuildError::Lint(format!("CRL does not check: {e}")))?;
    if found != expected {
        return Err(BuildError::Lint(format!(
            "CRL entry count changed: {expected} written, {found} found"
        )));
    }
    if tbs.len() <= FULL_PARSE_MAX_OCTETS {
        let parsed = x509_cert::crl::TbsCertList::<x509_cert::certificate::Rfc5280>::from_der(&tbs)
            .map_err(|e| BuildError::Lint(format!("CRL does not parse: {e}")))?;
        let n = parsed.revoked_certificates.as_ref().map_or(0, Vec::len);
        if n as u64 != expected {
            return Err(BuildError::Lint("CRL entry count changed".into()));
        }
    }
    Ok(CheckedTbs {
        tbs,
        shape: Shape::Crl,
        kind: SignatureKind::Crl,
        subject: SignedSubject::CrlNumber(crl_number),
    })
}

/// What a CRL's TBS must say, for [`check_crl_tbs`].
struct CrlExpectation<'a> {
    issuer: &'a IssuerKey,
    aki: &'a [u8],
    crl_number: u64,
    this_update: i64,
    next_update: i64,
    /// The revokedCertificates' contents (octets, entries) when they were
    /// already read back entry by entry ([`CrlEntries::read_back`]): only
    /// their length and count are checked then.
    entries_read_back: Option<(usize, u64)>,
}

/// Reads a TBSCertList (RFC 5280 §5.1) with the strict DER [`Reader`] and
/// checks every field against what was decided: version 2, the signature
/// algorithm, issuer name, thisUpdate and nextUpdate; each revoked entry is
/// a SEQUENCE of a non-negative serial of at most 20 octets, a valid Time
/// and optionally only the reasonCode and invalidityDate extensions, each at
/// most once and well-formed; the list is absent when empty; the CRL
/// extensions are exactly the authority key identifier and the CRL number;
/// nothing trails. Returns the number of entries found.
fn check_crl_tbs(tbs: &[u8], x: &CrlExpectation<'_>) -> Result<u64, String> {
    let at = |what: &'static str| move |e: &'static str| format!("{what}: {e}");
    let mut top = Reader::new(tbs);
    let body = top.expect(TAG_SEQUENCE).map_err(at("TBSCertList"))?;
    top.end().map_err(at("TBSCertList"))?;
    let mut r = Reader::new(body);
    if r.expect(TAG_INTEGER).map_err(at("version"))? != [1] {
        return Err("version is not v2".into());
    }
    r.expect_raw(&signature_algorithm(x.issuer.algorithm))
        .map_err(at("signature algorithm"))?;
    r.expect_raw(&x.issuer.name_der)
        .map_err(at("issuer name"))?;
    for (what, want) in [("thisUpdate", x.this_update), ("nextUpdate", x.next_update)] {
        let t = r.read().map_err(at(what))?;
        if parse_time(t.tag, t.content, true).map_err(at(what))? != want {
            return Err(format!("{what} changed"));
        }
    }
    let mut count = 0u64;
    if r.peek_tag() == Some(TAG_SEQUENCE) {
        let list = r.expect(TAG_SEQUENCE).map_err(at("revokedCertificates"))?;
        if list.is_empty() {
            return Err("an empty revokedCertificates list must be absent".into());
        }
        if let Some((octets, entries)) = x.entries_read_back {
            if list.len() != octets {
                return Err(format!(
                    "revokedCertificates: {} octets where {octets} were read back",
                    list.len()
                ));
            }
            count = entries;
        } else {
            let reason_oid = oid(oids::CRL_REASON);
            let invalidity_oid = oid(oids::INVALIDITY_DATE);
            let mut entries = Reader::new(list);
            while !entries.is_empty() {
                check_crl_entry(&mut entries, &reason_oid, &invalidity_oid)
                    .map_err(|e| format!("revoked entry #{count}: {e}"))?;
                count += 1;
            }
        }
    } else if x.entries_read_back.is_some_and(|(octets, _)| octets != 0) {
        return Err("revokedCertificates missing".into());
    }
    let exts = r.expect(0xa0).map_err(at("crlExtensions"))?;
    r.end().map_err(at("crlExtensions"))?;
    let mut exts = Reader::new(exts);
    let list = exts.expect(TAG_SEQUENCE).map_err(at("crlExtensions"))?;
    exts.end().map_err(at("crlExtensions"))?;
    let mut list = Reader::new(list);
    let want_aki = seq(&[&ctx_prim(0, x.aki)]);
    let want_number = uint_u64(x.crl_number);
    for (o, value, what) in [
        (oid(oids::AKI), want_aki, "authorityKeyIdentifier"),
        (oid(oids::CRL_NUMBER), want_number, "cRLNumber"),
    ] {
        let mut ext = Reader::new(list.expect(TAG_SEQUENCE).map_err(at(what))?);
        ext.expect_raw(&o).map_err(at(what))?;
        if ext.expect(TAG_OCTET_STRING).map_err(at(what))? != value.as_slice() {
            return Err(format!("{what} changed"));
        }
        ext.end().map_err(at(what))?;
    }
    list.end()
        .map_err(at("CRL extensions other than the AKI and CRL number"))?;
    Ok(count)
}

#[inline]
fn check_crl_entry(
    entries: &mut Reader<'_>,
    reason_oid: &[u8],
    invalidity_oid: &[u8],
) -> Result<(), &'static str> {
    let mut e = Reader::new(entries.expect(TAG_SEQUENCE)?);
    let serial = non_negative_integer(e.expect(TAG_INTEGER)?)?;
    if serial.len() > 20 {
        return Err("serial longer than 20 octets");
    }
    let date = e.read()?;
    check_time(date.tag, date.content, true)?;
    if e.is_empty() {
        return Ok(());
    }
    let exts = e.expect(TAG_SEQUENCE)?;
    e.end()?;
    if exts.is_empty() {
        return Err("empty crlEntryExtensions");
    }
    let mut exts = Reader::new(exts);
    let (mut reason, mut invalidity) = (false, false);
    while !exts.is_empty() {
        let mut ext = Reader::new(exts.expect(TAG_SEQUENCE)?);
        let o = ext.read()?;
        // Neither extension is written critical, and DER omits the default.
        let value = ext.expect(TAG_OCTET_STRING)?;
        ext.end()?;
        let mut v = Reader::new(value);
        if o.raw == reason_oid && !reason {
            reason = true;
            match v.expect(TAG_ENUMERATED)? {
                [code] if valid_reason_code(*code) => {}
                _ => return Err("reasonCode is not a CRLReason"),
            }
        } else if o.raw == invalidity_oid && !invalidity {
            invalidity = true;
            let t = v.read()?;
            if t.tag != TAG_GENERALIZED_TIME {
                return Err("invalidityDate is not a GeneralizedTime");
            }
            check_time(t.tag, t.content, false)?;
        } else {
            return Err("an entry extension other than one reasonCode and one invalidityDate");
        }
        v.end()?;
    }
    Ok(())
}

/// The issuer data an OCSP CertID hashes.
pub struct OcspIssuer<'a> {
    /// DER Name of the CA that issued the certificates in question.
    pub ca_name_der: &'a [u8],
    /// The CA's subjectPublicKey bits.
    pub ca_key_bits: &'a [u8],
}

pub struct SingleSpec<'a> {
    pub hash: CertIdHash,
    pub serial: &'a [u8],
    pub status: CertStatus,
    pub this_update: i64,
    pub next_update: Option<i64>,
}

fn cert_id(issuer: &OcspIssuer<'_>, hash: CertIdHash, serial: &[u8]) -> Vec<u8> {
    let (alg, o, null_params) = match hash {
        CertIdHash::Sha1 => (&digest::SHA1_FOR_LEGACY_USE_ONLY, oids::SHA1, true),
        CertIdHash::Sha256 => (&digest::SHA256, oids::SHA256, true),
        CertIdHash::Sha1NoParams => (&digest::SHA1_FOR_LEGACY_USE_ONLY, oids::SHA1, false),
        CertIdHash::Sha256NoParams => (&digest::SHA256, oids::SHA256, false),
    };
    let algorithm = if null_params {
        seq(&[&oid(o), &null()])
    } else {
        seq(&[&oid(o)])
    };
    seq(&[
        &algorithm,
        &octets(digest::digest(alg, issuer.ca_name_der).as_ref()),
        &octets(digest::digest(alg, issuer.ca_key_bits).as_ref()),
        &uint(serial),
    ])
}

/// Builds an OCSP ResponseData (RFC 6960 §4.2.1), responder identified by
/// the SHA-1 hash of its key.
/// How far an OCSP thisUpdate may lie after producedAt: the two are set
/// from clocks on one host, so only rounding and a little drift.
pub const OCSP_THIS_UPDATE_SKEW: i64 = 120;

pub fn build_ocsp(
    responder: &IssuerKey,
    issuer: &OcspIssuer<'_>,
    produced_at: i64,
    singles: &[SingleSpec<'_>],
    nonce: Option<&[u8]>,
) -> Result<CheckedTbs, BuildError> {
    if singles.is_empty() {
        return invalid("an OCSP response needs at least one single response");
    }
    check_time_range(produced_at, "OCSP producedAt").map_err(BuildError::Invalid)?;
    for s in singles {
        check_time_range(s.this_update, "OCSP thisUpdate").map_err(BuildError::Invalid)?;
        if let Some(nu) = s.next_update {
            check_time_range(nu, "OCSP nextUpdate").map_err(BuildError::Invalid)?;
        }
        if let CertStatus::Revoked { at, .. } = s.status {
            check_time_range(at, "OCSP revocationTime").map_err(BuildError::Invalid)?;
        }
        // RFC 6960 §4.2.2.1: thisUpdate is when the status was known to be
        // correct, which cannot be after the response was produced.
        if s.this_update > produced_at.saturating_add(OCSP_THIS_UPDATE_SKEW) {
            return invalid(format!(
                "OCSP thisUpdate ({}) is after producedAt ({produced_at}) by more than {OCSP_THIS_UPDATE_SKEW} s; a status cannot be known before the response is produced",
                s.this_update
            ));
        }
    }
    let responder_key_hash = key_identifier(&responder.spki_der)?;
    let mut responses = Vec::new();
    for s in singles {
        if s.serial.is_empty() || s.serial.len() > 20 {
            return invalid("an OCSP serial must be 1 to 20 octets");
        }
        let status = match s.status {
            CertStatus::Good => ctx_prim(0, &[]),
            CertStatus::Unknown => ctx_prim(2, &[]),
            CertStatus::Revoked { at, reason } => {
                let mut info = generalized_time(at);
                if let Some(r) = reason {
                    info.extend(ctx_cons(0, &enumerated(r.code())));
                }
                ctx_cons(1, &info)
            }
        };
        let mut parts = vec![
            cert_id(issuer, s.hash, s.serial),
            status,
            generalized_time(s.this_update),
        ];
        if let Some(nu) = s.next_update {
            if nu <= s.this_update {
                return invalid("OCSP nextUpdate must be after thisUpdate");
            }
            parts.push(ctx_cons(0, &generalized_time(nu)));
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        responses.extend(seq(&refs));
    }
    let mut parts = vec![
        ctx_cons(2, &octets(&responder_key_hash)),
        generalized_time(produced_at),
        tlv(TAG_SEQUENCE, &responses),
    ];
    if let Some(n) = nonce {
        if n.is_empty() || n.len() > 32 {
            return invalid("an OCSP nonce must be 1 to 32 octets (RFC 8954)");
        }
        parts.push(ctx_cons(
            1,
            &seq(&[&extension(oids::OCSP_NONCE, false, &octets(n))]),
        ));
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let tbs = seq(&refs);
    // Self-check: the structure splits back into the parts written.
    let ok = split_tlv(&tbs).is_some_and(|(t, _, rest)| t == TAG_SEQUENCE && rest.is_empty());
    if !ok {
        return Err(BuildError::Lint(
            "OCSP ResponseData is not one DER SEQUENCE".into(),
        ));
    }
    let subject = if singles.len() == 1 {
        SignedSubject::Serial(singles[0].serial.to_vec())
    } else {
        SignedSubject::None
    };
    Ok(CheckedTbs {
        tbs,
        shape: Shape::Ocsp,
        kind: SignatureKind::Ocsp,
        subject,
    })
}

/// Most octets [`ocsp_wrap`] can make of a ResponseData of `tbs_len` octets
/// signed by `responder`: what a response will weigh, known before it is
/// signed.
pub fn ocsp_response_len_bound(tbs_len: usize, responder: &IssuerKey) -> usize {
    // Largest signature: DER ECDSA (r, s) or an RSA signature of up to 8192 bits.
    let signature = match responder.algorithm {
        Algorithm::EcdsaP256 => 72,
        Algorithm::EcdsaP384 => 104,
        Algorithm::Rsa3072 => RSA_MAX_BITS / 8,
    };
    // Eight TLV headers of at most 6 octets, the unused-bits octet,
    // ENUMERATED 0 (3), id-pkix-ocsp-basic (11), the signature algorithm (15).
    tbs_len
        .saturating_add(responder.name_der.len())
        .saturating_add(signature)
        .saturating_add(8 * 6 + 1 + 3 + 11 + 15)
}

/// The responder's certificate, put into every response so relying parties
/// can verify the delegation without fetching anything.
fn ocsp_wrap(tbs: &[u8], responder: &IssuerKey, sig: &[u8]) -> Vec<u8> {
    // `name_der` of a responder IssuerKey carries its certificate (see
    // `IssuerKey::for_responder`), so that it can ride along here.
    let certs = ctx_cons(0, &seq(&[&responder.name_der]));
    let basic = seq(&[
        tbs,
        &signature_algorithm(responder.algorithm),
        &bits(sig),
        &certs,
    ]);
    seq(&[
        &enumerated(0),
        &ctx_cons(0, &seq(&[&oid(oids::OCSP_BASIC), &octets(&basic)])),
    ])
}

impl IssuerKey {
    /// An OCSP responder's signing identity: `name_der` holds the
    /// responder's certificate (attached to each response).
    pub fn for_responder(
        key_label: String,
        key_id: String,
        algorithm: Algorithm,
        spki_der: Vec<u8>,
        cert_der: Vec<u8>,
    ) -> Self {
        IssuerKey {
            key_label,
            key_id,
            algorithm,
            spki_der,
            name_der: cert_der,
        }
    }
}

/// An OCSP response with a non-successful status (RFC 6960 §4.2.1): no
/// signature, no response bytes.
pub fn ocsp_error_response(status: u8) -> Vec<u8> {
    seq(&[&enumerated(status)])
}

/// Subject name DER, SPKI DER and validity of a certificate.
pub struct CertFacts {
    pub subject_der: Vec<u8>,
    pub spki_der: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub path_len: Option<u8>,
}

pub fn certificate_facts(cert_der: &[u8]) -> Result<CertFacts, BuildError> {
    use der::Encode;
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| BuildError::Invalid(format!("not a DER certificate: {e}")))?;
    let tbs = cert.tbs_certificate();
    let bc = tbs
        .get_extension::<x509_cert::ext::pkix::BasicConstraints>()
        .ok()
        .flatten()
        .map(|(_, bc)| bc);
    Ok(CertFacts {
        subject_der: tbs
            .subject()
            .to_der()
            .map_err(|e| BuildError::Invalid(e.to_string()))?,
        spki_der: tbs
            .subject_public_key_info()
            .to_der()
            .map_err(|e| BuildError::Invalid(e.to_string()))?,
        not_before: tbs.validity().not_before.to_unix_duration().as_secs() as i64,
        not_after: tbs.validity().not_after.to_unix_duration().as_secs() as i64,
        is_ca: bc.as_ref().is_some_and(|b| b.ca),
        path_len: bc.and_then(|b| b.path_len_constraint),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> IssuerKey {
        issuer_and_point().0
    }

    /// A P-256 issuer key named "CN=Test CA", and its public point.
    pub(super) fn issuer_and_point() -> (IssuerKey, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pk = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pk.as_ref(), &rng).expect("key");
        let point = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        let spki = seq(&[
            &seq(&[&oid(oids::EC_PUBLIC_KEY), &oid(oids::P256)]),
            &bits(&point),
        ]);
        let key = IssuerKey {
            key_label: "test".into(),
            key_id: "test".into(),
            algorithm: Algorithm::EcdsaP256,
            spki_der: spki,
            name_der: encode_name(&DistinguishedName::common_name("Test CA")).expect("name"),
        };
        (key, point)
    }

    /// The entries as the generic writers compose them: what the fast
    /// writer in `CrlEntries::push` must produce octet for octet.
    fn composed(e: &CrlEntrySpec<'_>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(code) = e.reason_code {
            exts.push(extension(oids::CRL_REASON, false, &enumerated(code)));
        }
        if let Some(t) = e.invalidity_date {
            exts.push(extension(
                oids::INVALIDITY_DATE,
                false,
                &generalized_time(t),
            ));
        }
        let serial = uint(e.serial);
        let date = x509_time(e.revoked_at);
        if exts.is_empty() {
            seq(&[&serial, &date])
        } else {
            let refs: Vec<&[u8]> = exts.iter().map(Vec::as_slice).collect();
            seq(&[&serial, &date, &seq(&refs)])
        }
    }

    fn serials() -> Vec<Vec<u8>> {
        vec![
            vec![0x00],
            vec![0x00, 0x00, 0x7f],
            vec![0x80],
            vec![0x01],
            vec![0xff; 20],
            vec![0x00; 20],
            vec![0x4a; 16],
            vec![0x00, 0x80, 0x01],
        ]
    }

    fn t(y: i64, m: u32, d: u32) -> i64 {
        days_from_civil(y, m, d) * 86_400 + 3_723
    }

    #[test]
    fn the_fast_entry_writer_writes_what_the_generic_writers_compose() {
        let times = [t(1970, 1, 1), t(2026, 2, 28), t(2050, 1, 1), t(9999, 1, 1)];
        for serial in serials() {
            for &revoked_at in &times {
                for reason_code in [None, Some(0), Some(1), Some(10)] {
                    for invalidity_date in [None, Some(t(2025, 7, 4)), Some(t(1970, 1, 1))] {
                        let e = CrlEntrySpec {
                            serial: &serial,
                            revoked_at,
                            reason_code,
                            invalidity_date,
                        };
                        let mut w = CrlEntries::new();
                        w.push(&e).expect("push");
                        assert_eq!(w.der, composed(&e), "{serial:02x?} {revoked_at}");
                        assert_eq!(w.len(), 1);
                    }
                }
            }
        }
    }

    #[test]
    fn entries_the_rfc_does_not_allow_are_refused_and_leave_nothing_behind() {
        let mut w = CrlEntries::new();
        let ok = [0x11u8; 8];
        let long = [0x11u8; 21];
        let year_10000 = days_from_civil(10_000, 1, 1) * 86_400;
        for (serial, revoked_at, reason_code, invalidity_date, why) in [
            (&[][..], 0, None, None, "serial"),
            (&long[..], 0, None, None, "serial"),
            (&ok[..], year_10000, None, None, "revocation time"),
            (&ok[..], 0, None, Some(year_10000), "invalidity date"),
            (&ok[..], 0, Some(7), None, "CRLReason"),
            (&ok[..], 0, Some(11), None, "CRLReason"),
        ] {
            let e = CrlEntrySpec {
                serial,
                revoked_at,
                reason_code,
                invalidity_date,
            };
            match w.push(&e) {
                Err(BuildError::Invalid(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(w.is_empty() && w.der.is_empty());
    }

    /// Serial, revocation time, reason code, invalidity date.
    type Entry = (Vec<u8>, i64, Option<u8>, Option<i64>);

    fn entries(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| {
                let serial = serials()[i % 8].clone();
                let reason = [None, Some(1), Some(4), Some(0)][i % 4];
                let invalidity = (i % 3 == 0).then_some(1_700_000_000 + i as i64);
                (serial, 1_760_000_000 + 977 * i as i64, reason, invalidity)
            })
            .collect()
    }

    fn specs(v: &[Entry]) -> Vec<CrlEntrySpec<'_>> {
        v.iter()
            .map(|(s, r, c, i)| CrlEntrySpec {
                serial: s,
                revoked_at: *r,
                reason_code: *c,
                invalidity_date: *i,
            })
            .collect()
    }

    fn expectation<'a>(key: &'a IssuerKey, aki: &'a [u8]) -> CrlExpectation<'a> {
        CrlExpectation {
            issuer: key,
            aki,
            crl_number: 42,
            this_update: 1_767_000_000,
            next_update: 1_767_600_000,
            entries_read_back: None,
        }
    }

    #[test]
    fn the_structural_check_agrees_with_x509_cert_and_counts_the_entries() {
        let key = issuer();
        let aki = key_identifier(&key.spki_der).expect("aki");
        for n in [0, 1, 2, 7, 300, 4_000] {
            let v = entries(n);
            let tbs = build_crl(&key, 42, 1_767_000_000, 1_767_600_000, &specs(&v)).expect("build");
            assert_eq!(
                check_crl_tbs(tbs.tbs(), &expectation(&key, &aki)),
                Ok(n as u64)
            );
            let parsed =
                x509_cert::crl::TbsCertList::<x509_cert::certificate::Rfc5280>::from_der(tbs.tbs())
                    .expect("x509-cert parses it");
            let listed = parsed.revoked_certificates.unwrap_or_default();
            assert_eq!(listed.len(), n);
            for (got, (serial, revoked_at, ..)) in listed.iter().zip(&v) {
                let want: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
                let have: Vec<u8> = got
                    .serial_number
                    .as_bytes()
                    .iter()
                    .copied()
                    .skip_while(|b| *b == 0)
                    .collect();
                assert_eq!(have, want);
                assert_eq!(
                    got.revocation_date.to_unix_duration().as_secs() as i64,
                    *revoked_at
                );
            }
        }
    }

    #[test]
    fn the_structural_check_refuses_what_was_not_decided_or_is_not_der() {
        let key = issuer();
        let aki = key_identifier(&key.spki_der).expect("aki");
        let v = entries(5);
        let good = build_crl(&key, 42, 1_767_000_000, 1_767_600_000, &specs(&v)).expect("build");
        let good = good.tbs().to_vec();
        let x = expectation(&key, &aki);
        assert!(check_crl_tbs(&good, &x).is_ok());

        let mut wrong = expectation(&key, &aki);
        wrong.crl_number = 43;
        assert!(
            check_crl_tbs(&good, &wrong)
                .unwrap_err()
                .contains("cRLNumber")
        );
        let mut wrong = expectation(&key, &aki);
        wrong.next_update += 1;
        assert!(
            check_crl_tbs(&good, &wrong)
                .unwrap_err()
                .contains("nextUpdate")
        );
        let other = issuer();
        let other_aki = key_identifier(&other.spki_der).expect("aki");
        let wrong = CrlExpectation {
            aki: &other_aki,
            ..expectation(&key, &aki)
        };
        assert!(
            check_crl_tbs(&good, &wrong)
                .unwrap_err()
                .contains("authorityKeyIdentifier")
        );

        // Any single-octet change either still checks (a serial or a digit
        // changed into another valid one) or is refused, and never panics;
        // what still checks, x509-cert parses, with the same entry count.
        for i in 0..good.len() {
            for delta in [1u8, 2, 0x10, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= delta;
                if let Ok(n) = check_crl_tbs(&bad, &x) {
                    let parsed =
                        x509_cert::crl::TbsCertList::<x509_cert::certificate::Rfc5280>::from_der(
                            &bad,
                        )
                        .unwrap_or_else(|e| panic!("octet {i} ^ {delta:#x}: checks, but {e}"));
                    assert_eq!(parsed.revoked_certificates.map_or(0, |l| l.len()) as u64, n);
                }
            }
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(check_crl_tbs(&trailing, &x).unwrap_err().contains("trail"));
        assert!(check_crl_tbs(&good[..good.len() - 1], &x).is_err());
        // An invalid date inside an entry: the month of the first entry's
        // revocationDate (UTCTime "YYMM...") set to 13.
        let pos = good
            .windows(2)
            .position(|w| w == [TAG_UTC_TIME, 13])
            .expect("a UTCTime");
        let mut bad_month = good.clone();
        // thisUpdate is the first UTCTime; find the one after the list starts.
        let entry_date = good[pos + 15..]
            .windows(2)
            .position(|w| w == [TAG_UTC_TIME, 13])
            .map(|p| p + pos + 15)
            .and_then(|p| {
                good[p + 15..]
                    .windows(2)
                    .position(|w| w == [TAG_UTC_TIME, 13])
                    .map(|q| q + p + 15)
            })
            .expect("an entry's UTCTime");
        bad_month[entry_date + 4] = b'1';
        bad_month[entry_date + 5] = b'3';
        let e = check_crl_tbs(&bad_month, &x).unwrap_err();
        assert!(e.contains("revoked entry #0") && e.contains("month"), "{e}");
    }

    #[test]
    fn staged_entries_are_read_back_chunk_by_chunk() {
        let v = entries(10);
        let specs = specs(&v);
        let mut written = CrlEntries::new();
        for e in &specs[..4] {
            written.push(e).expect("push");
        }
        written.read_back().expect("the first chunk reads back");
        let mut last = 0;
        for e in &specs[4..] {
            last = written.der.len();
            written.push(e).expect("push");
        }
        // Entry #9 damaged after it was written: a SET where its SEQUENCE was.
        let mut damaged = CrlEntries {
            der: written.der.clone(),
            count: written.count,
            dates: DateCache::default(),
            read_octets: written.read_octets,
            read_count: written.read_count,
        };
        damaged.der[last] = 0x31;
        let e = damaged.read_back().unwrap_err().to_string();
        assert!(e.contains("CRL entry #9"), "{e}");
        // Entry #9's octets lost: the count no longer matches.
        let mut short = CrlEntries {
            der: written.der[..last].to_vec(),
            count: written.count,
            dates: DateCache::default(),
            read_octets: written.read_octets,
            read_count: written.read_count,
        };
        let e = short.read_back().unwrap_err().to_string();
        assert!(e.contains("10 written, 9 read back"), "{e}");
        // Undamaged, the rest reads back and the CRL builds and checks.
        let key = issuer();
        let tbs = build_crl_from(&key, 42, 1_767_000_000, 1_767_600_000, written).expect("builds");
        let aki = key_identifier(&key.spki_der).expect("aki");
        assert_eq!(check_crl_tbs(tbs.tbs(), &expectation(&key, &aki)), Ok(10));
    }

    #[test]
    fn an_empty_crl_has_no_revoked_list() {
        let key = issuer();
        let aki = key_identifier(&key.spki_der).expect("aki");
        let tbs = build_crl(&key, 42, 1_767_000_000, 1_767_600_000, &[]).expect("build");
        assert_eq!(check_crl_tbs(tbs.tbs(), &expectation(&key, &aki)), Ok(0));
        // The same TBS with an empty list inserted before the extensions.
        let mut r = Reader::new(tbs.tbs());
        let body = r.expect(TAG_SEQUENCE).expect("seq");
        let mut parts = Reader::new(body);
        let mut head = Vec::new();
        for _ in 0..5 {
            head.extend_from_slice(parts.read().expect("part").raw);
        }
        let exts = parts.read().expect("extensions").raw;
        let with_empty = seq(&[&head, &seq(&[]), exts]);
        let e = check_crl_tbs(&with_empty, &expectation(&key, &aki)).unwrap_err();
        assert!(e.contains("must be absent"), "{e}");
    }

    #[test]
    fn a_signed_crl_must_carry_the_checked_tbs_and_signature() {
        let tbs = seq(&[&uint_u64(1)]);
        let alg = Algorithm::EcdsaP256;
        let sig = [0x30u8, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01];
        let signed = seq(&[&tbs, &signature_algorithm(alg), &bits(&sig)]);
        assert!(signed_carries(&signed, &tbs, alg, &sig));
        assert!(!signed_carries(&signed, &seq(&[&uint_u64(2)]), alg, &sig));
        assert!(!signed_carries(&signed, &tbs, Algorithm::EcdsaP384, &sig));
        assert!(!signed_carries(&signed, &tbs, alg, &sig[..7]));
        let mut trailing = signed.clone();
        trailing.push(0);
        assert!(!signed_carries(&trailing, &tbs, alg, &sig));
    }

    #[test]
    fn reason_and_invalidity_prefixes_are_the_extensions_headers() {
        let reason = extension(oids::CRL_REASON, false, &enumerated(4));
        assert_eq!(reason[..REASON_EXT_PREFIX.len()], REASON_EXT_PREFIX);
        assert_eq!(reason.len(), REASON_EXT_PREFIX.len() + 1);
        let inv = extension(oids::INVALIDITY_DATE, false, &generalized_time(0));
        assert_eq!(inv[..INVALIDITY_EXT_PREFIX.len()], INVALIDITY_EXT_PREFIX);
        assert_eq!(inv.len(), INVALIDITY_EXT_PREFIX.len() + 15);
    }
}

#[cfg(test)]
mod key_checks {
    use super::*;

    fn ec_spki(curve: &str, point: &[u8]) -> Vec<u8> {
        seq(&[
            &seq(&[&oid(oids::EC_PUBLIC_KEY), &oid(curve)]),
            &bits(point),
        ])
    }

    fn ring_point(alg: &'static ring::signature::EcdsaSigningAlgorithm) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let pk = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pk.as_ref(), &rng).expect("key");
        ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec()
    }

    fn rsa_spki_with(params: bool, rsa_public_key: &[u8]) -> Vec<u8> {
        let alg = if params {
            seq(&[&oid(oids::RSA_ENCRYPTION), &null()])
        } else {
            seq(&[&oid(oids::RSA_ENCRYPTION)])
        };
        seq(&[&alg, &bits(rsa_public_key)])
    }

    /// An odd modulus of `bits` bits (a check of form, not of primes).
    fn modulus(bits: usize) -> Vec<u8> {
        let mut n = vec![0x5au8; bits / 8];
        n[0] = 0xc1;
        if let Some(last) = n.last_mut() {
            *last |= 1;
        }
        n
    }

    fn rsa_key(n: &[u8], e: &[u8]) -> Vec<u8> {
        seq(&[&uint(n), &uint(e)])
    }

    fn refused(spki: &[u8], needle: &str) {
        match subject_key_parts(spki) {
            Err(BuildError::Invalid(m)) => assert!(m.contains(needle), "{needle:?} not in {m}"),
            other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn points_on_p256_and_p384_are_accepted_and_points_off_them_refused() {
        for (curve, alg, want) in [
            (
                oids::P256,
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                Algorithm::EcdsaP256,
            ),
            (
                oids::P384,
                &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                Algorithm::EcdsaP384,
            ),
        ] {
            for _ in 0..8 {
                let point = ring_point(alg);
                let (got, key) = subject_key_parts(&ec_spki(curve, &point)).expect("good point");
                assert_eq!((got, key), (want, point.clone()));
                // One bit of y flipped: off the curve.
                let mut off = point.clone();
                *off.last_mut().expect("point") ^= 1;
                refused(&ec_spki(curve, &off), "not a point on");
            }
            let len = if want == Algorithm::EcdsaP256 { 32 } else { 48 };
            // 04 || 0 || 0: not on the curve (b != 0).
            let mut zero = vec![4u8];
            zero.extend(vec![0u8; 2 * len]);
            refused(&ec_spki(curve, &zero), "not a point on");
            // Coordinates of all ones are above p.
            let mut big = vec![4u8];
            big.extend(vec![0xffu8; 2 * len]);
            refused(&ec_spki(curve, &big), "not below the field prime");
        }
        // A P-256 point named as P-384 has the wrong length.
        let p256 = ring_point(&ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING);
        assert!(subject_key_parts(&ec_spki(oids::P384, &p256)).is_err());
    }

    #[test]
    fn a_well_formed_rsa_key_is_accepted() {
        for bits in [2048, 3072, 4096, 8192] {
            let spki = rsa_spki_with(true, &rsa_key(&modulus(bits), &[0x01, 0x00, 0x01]));
            let (alg, _) = subject_key_parts(&spki).expect("good RSA key");
            assert_eq!(alg, Algorithm::Rsa3072);
        }
        let spki = rsa_spki_with(true, &rsa_key(&modulus(2048), &[3]));
        subject_key_parts(&spki).expect("e = 3");
    }

    #[test]
    fn malformed_rsa_keys_are_refused() {
        let n = modulus(2048);
        let e = [0x01, 0x00, 0x01];
        let good = rsa_key(&n, &e);
        let mut junk = good.clone();
        junk.extend_from_slice(b"junk");
        refused(&rsa_spki_with(true, &junk), "data after the RSAPublicKey");
        refused(&rsa_spki_with(false, &good), "NULL parameters");
        // Only the modulus.
        refused(
            &rsa_spki_with(true, &seq(&[&uint(&n)])),
            "no public exponent",
        );
        // Three INTEGERs.
        refused(
            &rsa_spki_with(true, &seq(&[&uint(&n), &uint(&e), &uint(&e)])),
            "more than two",
        );
        // An OCTET STRING instead of a SEQUENCE.
        refused(
            &rsa_spki_with(true, &tlv(TAG_OCTET_STRING, &uint(&n))),
            "not a SEQUENCE",
        );
        // A negative modulus (high bit set, no leading zero).
        let mut neg = vec![0x02, 0x82, 0x01, 0x00];
        neg.extend_from_slice(&n);
        refused(
            &rsa_spki_with(
                true,
                &tlv(TAG_SEQUENCE, &[neg.as_slice(), &uint(&e)].concat()),
            ),
            "positive, minimally encoded",
        );
        // A modulus with a superfluous leading zero.
        let mut padded = vec![0x02, 0x82, 0x01, 0x02, 0x00, 0x00];
        padded.extend_from_slice(&n);
        refused(
            &rsa_spki_with(
                true,
                &tlv(TAG_SEQUENCE, &[padded.as_slice(), &uint(&e)].concat()),
            ),
            "positive, minimally encoded",
        );
        // A length in long form where the short form fits.
        let long_len = [0x30, 0x81, 0x03, 0x02, 0x01, 0x03];
        refused(&rsa_spki_with(true, &long_len), "not DER");
        // Even modulus; too small; too large.
        let mut even = n.clone();
        *even.last_mut().expect("n") &= 0xfe;
        refused(&rsa_spki_with(true, &rsa_key(&even, &e)), "even");
        refused(
            &rsa_spki_with(true, &rsa_key(&modulus(1024), &e)),
            "1024 bits",
        );
        refused(
            &rsa_spki_with(true, &rsa_key(&modulus(8200), &e)),
            "8200 bits",
        );
        // Exponents 1, even, too large.
        for bad_e in [
            &[1u8][..],
            &[0x01, 0x00, 0x00],
            &[0x02, 0x00, 0x00, 0x00, 0x01],
        ] {
            refused(&rsa_spki_with(true, &rsa_key(&n, bad_e)), "public exponent");
        }
    }
}

#[cfg(test)]
mod time_checks {
    use super::*;

    fn responder() -> (IssuerKey, Vec<u8>) {
        super::tests::issuer_and_point()
    }

    fn build(
        produced_at: i64,
        this_update: i64,
        next: Option<i64>,
        status: CertStatus,
    ) -> Result<CheckedTbs, BuildError> {
        let (key, point) = responder();
        let issuer = OcspIssuer {
            ca_name_der: &key.name_der,
            ca_key_bits: &point,
        };
        let singles = [SingleSpec {
            hash: castellan_proto::CertIdHash::Sha256,
            serial: &[1, 2, 3],
            status,
            this_update,
            next_update: next,
        }];
        build_ocsp(&key, &issuer, produced_at, &singles, None)
    }

    fn refused(r: Result<CheckedTbs, BuildError>, needle: &str) {
        match r {
            Err(BuildError::Invalid(m)) => assert!(m.contains(needle), "{needle:?} not in {m}"),
            Err(other) => panic!("expected Invalid with {needle:?}, got {other:?}"),
            Ok(_) => panic!("expected a refusal with {needle:?}"),
        }
    }

    const T: i64 = 1_767_000_000;
    const YEAR_10000: i64 = MAX_TIME + 1;

    #[test]
    fn ocsp_times_outside_1950_to_9999_are_refused() {
        refused(
            build(T, YEAR_10000, None, CertStatus::Good),
            "OCSP thisUpdate",
        );
        refused(
            build(T, T, Some(YEAR_10000), CertStatus::Good),
            "OCSP nextUpdate",
        );
        refused(
            build(YEAR_10000, T, None, CertStatus::Good),
            "OCSP producedAt",
        );
        refused(
            build(MIN_TIME - 1, T, None, CertStatus::Good),
            "OCSP producedAt",
        );
        for at in [-70_000_000_000, i64::MIN, i64::MAX, MIN_TIME - 1] {
            refused(
                build(T, T, None, CertStatus::Revoked { at, reason: None }),
                "OCSP revocationTime",
            );
        }
        // The edges themselves are fine.
        build(
            T,
            T,
            None,
            CertStatus::Revoked {
                at: MIN_TIME,
                reason: None,
            },
        )
        .expect("1950");
        build(T, T, Some(MAX_TIME), CertStatus::Good).expect("9999");
    }

    #[test]
    fn ocsp_this_update_must_not_follow_produced_at_and_next_update_must_follow_it() {
        refused(
            build(T, T + OCSP_THIS_UPDATE_SKEW + 1, None, CertStatus::Good),
            "after producedAt",
        );
        build(T, T + OCSP_THIS_UPDATE_SKEW, None, CertStatus::Good).expect("within the skew");
        refused(
            build(T, T, Some(T), CertStatus::Good),
            "nextUpdate must be after thisUpdate",
        );
    }

    #[test]
    fn time_text_refuses_what_it_cannot_encode_without_overflowing() {
        for t in [i64::MIN, i64::MIN + 1, i64::MAX, MIN_TIME - 1, MAX_TIME + 1] {
            assert_eq!(time_text(t, false), None, "{t}");
            assert_eq!(CrlEntries::new().dates.time_text(t, true), None, "{t}");
        }
        assert!(time_text(MIN_TIME, false).is_some());
        assert!(time_text(MAX_TIME, true).is_some());
        let mut w = CrlEntries::new();
        let e = w
            .push(&CrlEntrySpec {
                serial: &[1],
                revoked_at: i64::MIN,
                reason_code: None,
                invalidity_date: None,
            })
            .expect_err("refused");
        assert!(e.to_string().contains("1970 to 9999"), "{e}");
    }

    #[test]
    fn certificate_and_crl_times_outside_what_they_can_carry_are_refused() {
        let (key, _) = responder();
        let (_, leaf_point) = responder();
        let spki = seq(&[
            &seq(&[&oid(oids::EC_PUBLIC_KEY), &oid(oids::P256)]),
            &bits(&leaf_point),
        ]);
        let subject = encode_name(&DistinguishedName::common_name("leaf")).expect("name");
        let cert = |nb: i64, na: i64| {
            build_certificate(&CertSpec {
                serial: &[0x41; 16],
                issuer: &key,
                subject_der: &subject,
                subject_spki_der: &spki,
                not_before: nb,
                not_after: na,
                sans: &[],
                kind: CertKind::Leaf {
                    key_usage: KeyUsage(KeyUsage::DIGITAL_SIGNATURE),
                    eku: vec![],
                },
                urls: &castellan_proto::Urls::default(),
            })
        };
        refused(cert(MIN_TIME - 1, T), "notBefore");
        refused(cert(T, MAX_TIME + 1), "notAfter");
        refused(cert(MIN_X509_TIME - 1, T), "1970 to 9999");
        cert(MIN_X509_TIME, MAX_TIME).expect("the whole range");
        let crl = |tu: i64, nu: i64| build_crl_from(&key, 1, tu, nu, CrlEntries::new());
        refused(crl(i64::MIN, T), "thisUpdate");
        refused(crl(T, i64::MAX), "nextUpdate");
        refused(crl(MIN_X509_TIME - 1, T), "thisUpdate");
        crl(MIN_X509_TIME, MAX_TIME).expect("the whole range");
        let mut w = CrlEntries::new();
        for (revoked_at, ok) in [
            (MIN_X509_TIME, true),
            (MAX_TIME, true),
            (MIN_X509_TIME - 1, false),
        ] {
            let r = w.push(&CrlEntrySpec {
                serial: &[1],
                revoked_at,
                reason_code: None,
                invalidity_date: Some(revoked_at),
            });
            assert_eq!(r.is_ok(), ok, "{revoked_at}: {r:?}");
        }
        build_crl_from(&key, 2, T, T + 1, w).expect("entries at both ends read back");
    }

    #[test]
    fn an_empty_key_usage_and_remove_from_crl_are_refused() {
        let (key, point) = responder();
        let spki = seq(&[
            &seq(&[&oid(oids::EC_PUBLIC_KEY), &oid(oids::P256)]),
            &bits(&point),
        ]);
        let subject = encode_name(&DistinguishedName::common_name("leaf")).expect("name");
        let r = build_certificate(&CertSpec {
            serial: &[0x41; 16],
            issuer: &key,
            subject_der: &subject,
            subject_spki_der: &spki,
            not_before: T,
            not_after: T + 60,
            sans: &[],
            kind: CertKind::Leaf {
                key_usage: KeyUsage(0),
                eku: vec![],
            },
            urls: &castellan_proto::Urls::default(),
        });
        refused(r, "keyUsage must have at least one bit");
        let mut w = CrlEntries::new();
        let e = w
            .push(&CrlEntrySpec {
                serial: &[1],
                revoked_at: T,
                reason_code: Some(8),
                invalidity_date: None,
            })
            .expect_err("removeFromCRL refused");
        assert!(e.to_string().contains("delta CRLs"), "{e}");
        assert!(w.is_empty());
    }
}
