//! PKCS#10 certificate signing requests: parse, check the proof of
//! possession, and turn the subject and requested SANs into the structured
//! form the signer accepts. Nothing from a CSR reaches the signer as bytes
//! except the public key, which the signer re-checks.

use castellan_proto::{DistinguishedName, NameAttribute, SubjectAltName};
use der::{Decode, Encode, Tagged};
use x509_cert::ext::pkix::SubjectAltName as SanExt;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::request::CertReq;

pub const MAX_CSR_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrKey {
    EcdsaP256,
    EcdsaP384,
    /// RSA with this many modulus bits.
    Rsa(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCsr {
    pub subject: DistinguishedName,
    pub sans: Vec<SubjectAltName>,
    pub spki_der: Vec<u8>,
    pub key: CsrKey,
}

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: der::asn1::UintRef<'a>,
    public_exponent: der::asn1::UintRef<'a>,
}

/// Modulus size of a DER RSAPublicKey.
fn rsa_bits(key: &[u8]) -> Option<usize> {
    let k = RsaPublicKey::from_der(key).ok()?;
    let bytes = k.modulus.as_bytes();
    let first = *bytes.first()?;
    Some(bytes.len() * 8 - first.leading_zeros() as usize)
}

const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const RSA_SHA256: &str = "1.2.840.113549.1.1.11";
const RSA_SHA384: &str = "1.2.840.113549.1.1.12";
const RSA_SHA512: &str = "1.2.840.113549.1.1.13";
const ED25519: &str = "1.3.101.112";
const SAN_OID: &str = "2.5.29.17";
const EXT_REQ: &str = "1.2.840.113549.1.9.14";

fn attr_value(any: &der::Any) -> Result<String, String> {
    match any.tag() {
        der::Tag::Utf8String | der::Tag::PrintableString | der::Tag::Ia5String => {
            std::str::from_utf8(any.value())
                .map(str::to_string)
                .map_err(|_| "a subject attribute is not valid text".to_string())
        }
        t => Err(format!(
            "a subject attribute uses an unsupported string type ({t})"
        )),
    }
}

/// Parses a CSR (PEM or DER) and verifies its self-signature.
pub fn parse(input: &[u8]) -> Result<ParsedCsr, String> {
    if input.len() > MAX_CSR_LEN {
        return Err(format!("CSR larger than {MAX_CSR_LEN} octets"));
    }
    let der = crate::pem::decode(input, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])?;
    let req =
        CertReq::from_der(&der).map_err(|e| format!("not a PKCS#10 certificate request: {e}"))?;
    let info_der = req.info.to_der().map_err(|e| format!("CSR: {e}"))?;
    let spki_der = req
        .info
        .public_key
        .to_der()
        .map_err(|e| format!("CSR public key: {e}"))?;
    let key = req
        .info
        .public_key
        .subject_public_key
        .as_bytes()
        .ok_or("CSR public key has unused bits")?;
    let sig = req
        .signature
        .as_bytes()
        .ok_or("CSR signature has unused bits")?;
    let key_kind = match req.info.public_key.algorithm.oid.to_string().as_str() {
        "1.2.840.10045.2.1" if key.len() == 65 => CsrKey::EcdsaP256,
        "1.2.840.10045.2.1" if key.len() == 97 => CsrKey::EcdsaP384,
        "1.2.840.10045.2.1" => {
            return Err("EC keys must be P-256 or P-384 in uncompressed form".into());
        }
        "1.2.840.113549.1.1.1" => {
            CsrKey::Rsa(rsa_bits(key).ok_or("the CSR's RSA public key is malformed")?)
        }
        o => {
            return Err(format!(
                "public key algorithm {o} is not accepted; use ECDSA P-256/P-384 or RSA"
            ));
        }
    };
    let alg: &dyn ring::signature::VerificationAlgorithm =
        match req.algorithm.oid.to_string().as_str() {
            ECDSA_SHA256 if key.len() == 65 => &ring::signature::ECDSA_P256_SHA256_ASN1,
            ECDSA_SHA256 if key.len() == 97 => &ring::signature::ECDSA_P384_SHA256_ASN1,
            ECDSA_SHA384 if key.len() == 97 => &ring::signature::ECDSA_P384_SHA384_ASN1,
            ECDSA_SHA384 if key.len() == 65 => &ring::signature::ECDSA_P256_SHA384_ASN1,
            RSA_SHA256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            RSA_SHA384 => &ring::signature::RSA_PKCS1_2048_8192_SHA384,
            RSA_SHA512 => &ring::signature::RSA_PKCS1_2048_8192_SHA512,
            ED25519 => return Err(
                "Ed25519 keys are not accepted for TLS certificates; use ECDSA P-256/P-384 or RSA"
                    .into(),
            ),
            o => return Err(format!("CSR signature algorithm {o} is not accepted")),
        };
    ring::signature::UnparsedPublicKey::new(alg, key)
        .verify(&info_der, sig)
        .map_err(|_| "the CSR's signature does not verify: it was altered or not signed by the key it carries".to_string())?;

    let mut attrs = Vec::new();
    for atv in req.info.subject.iter() {
        let v = attr_value(&atv.value)?;
        let a = match atv.oid.to_string().as_str() {
            "2.5.4.3" => NameAttribute::CommonName(v),
            "2.5.4.10" => NameAttribute::Organization(v),
            "2.5.4.11" => NameAttribute::OrganizationalUnit(v),
            "2.5.4.6" => NameAttribute::Country(v),
            "2.5.4.7" => NameAttribute::Locality(v),
            "2.5.4.8" => NameAttribute::State(v),
            "2.5.4.5" => NameAttribute::SerialNumber(v),
            "0.9.2342.19200300.100.1.25" => NameAttribute::DomainComponent(v),
            o => {
                return Err(format!(
                    "subject attribute {o} is not supported; use CN, O, OU, C, L, ST, serialNumber or DC"
                ));
            }
        };
        attrs.push(a);
    }

    let mut sans = Vec::new();
    for attr in req.info.attributes.iter() {
        if attr.oid.to_string() != EXT_REQ {
            continue;
        }
        for value in attr.values.iter() {
            let exts: Vec<x509_cert::ext::Extension> = value
                .decode_as()
                .map_err(|e| format!("CSR extension request is malformed: {e}"))?;
            for ext in exts {
                if ext.extn_id.to_string() != SAN_OID {
                    continue;
                }
                let san = SanExt::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| format!("CSR subjectAltName is malformed: {e}"))?;
                for gn in san.0 {
                    sans.push(match gn {
                        GeneralName::DnsName(d) => SubjectAltName::Dns(d.to_string()),
                        GeneralName::IpAddress(ip) => SubjectAltName::Ip(ip.as_bytes().to_vec()),
                        GeneralName::Rfc822Name(e) => SubjectAltName::Email(e.to_string()),
                        GeneralName::UniformResourceIdentifier(u) => SubjectAltName::Uri(u.to_string()),
                        _ => return Err("CSR asks for a subjectAltName type castellan does not issue (only DNS, IP, email, URI)".into()),
                    });
                }
            }
        }
    }
    Ok(ParsedCsr {
        subject: DistinguishedName(attrs),
        sans,
        spki_der,
        key: key_kind,
    })
}
