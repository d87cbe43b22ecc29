//! PKCS#10 certificate signing requests: parse, check the proof of
//! possession, and turn the subject and requested SANs into the structured
//! form the signer accepts. Nothing from a CSR reaches the signer as bytes
//! except the public key, which the signer re-checks.

use castellan_proto::{DistinguishedName, NameAttribute, SubjectAltName};
use const_oid::ObjectIdentifier;
use der::{Decode, Reader, Tagged};
use x509_cert::ext::pkix::SubjectAltName as SanExt;
use x509_cert::ext::pkix::name::GeneralName;

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

// Compared as OIDs: formatting each as text cost more than the rest of
// the parse.
const fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}
const ECDSA_SHA256: ObjectIdentifier = oid("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = oid("1.2.840.10045.4.3.3");
const RSA_SHA256: ObjectIdentifier = oid("1.2.840.113549.1.1.11");
const RSA_SHA384: ObjectIdentifier = oid("1.2.840.113549.1.1.12");
const RSA_SHA512: ObjectIdentifier = oid("1.2.840.113549.1.1.13");
const ED25519: ObjectIdentifier = oid("1.3.101.112");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = oid("1.2.840.10045.2.1");
const OID_RSA_ENCRYPTION: ObjectIdentifier = oid("1.2.840.113549.1.1.1");
const SECP256R1: ObjectIdentifier = oid("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = oid("1.3.132.0.34");
const SAN_OID: ObjectIdentifier = oid("2.5.29.17");
const EXT_REQ: ObjectIdentifier = oid("1.2.840.113549.1.9.14");
const CN: ObjectIdentifier = oid("2.5.4.3");
const O: ObjectIdentifier = oid("2.5.4.10");
const OU: ObjectIdentifier = oid("2.5.4.11");
const C: ObjectIdentifier = oid("2.5.4.6");
const L: ObjectIdentifier = oid("2.5.4.7");
const ST: ObjectIdentifier = oid("2.5.4.8");
const SERIAL_NUMBER: ObjectIdentifier = oid("2.5.4.5");
const DC: ObjectIdentifier = oid("0.9.2342.19200300.100.1.25");

/// The attributes of an X.509 name castellan issues under (CN, O, OU, C, L,
/// ST, serialNumber, DC; UTF8, printable or IA5 strings), in order.
pub fn distinguished_name(name: &x509_cert::name::Name) -> Result<DistinguishedName, String> {
    let mut attrs = Vec::new();
    for atv in name.iter() {
        let v = attr_value(&atv.value)?;
        let a = match atv.oid {
            o if o == CN => NameAttribute::CommonName(v),
            o if o == O => NameAttribute::Organization(v),
            o if o == OU => NameAttribute::OrganizationalUnit(v),
            o if o == C => NameAttribute::Country(v),
            o if o == L => NameAttribute::Locality(v),
            o if o == ST => NameAttribute::State(v),
            o if o == SERIAL_NUMBER => NameAttribute::SerialNumber(v),
            o if o == DC => NameAttribute::DomainComponent(v),
            o => {
                return Err(format!(
                    "subject attribute {o} is not supported; use CN, O, OU, C, L, ST, serialNumber or DC"
                ));
            }
        };
        attrs.push(a);
    }
    Ok(DistinguishedName(attrs))
}

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

/// `CertificationRequest` split without copying: the DER of
/// `certificationRequestInfo` exactly as received (what the signature
/// covers), the signature algorithm and the signature.
struct RawCertReq<'a> {
    info_der: &'a [u8],
    algorithm: spki::AlgorithmIdentifierRef<'a>,
    signature: der::asn1::BitStringRef<'a>,
}

/// `CertificationRequestInfo` with the subject public key kept as the DER
/// it arrived in: the SPKI the signer gets is the one the CSR's signature
/// covers, byte for byte, not a re-encoding.
struct RawCertReqInfo<'a> {
    subject: x509_cert::name::Name,
    spki_der: &'a [u8],
    spki: spki::SubjectPublicKeyInfoRef<'a>,
    attributes: x509_cert::attr::Attributes,
}

fn split_request(der: &[u8]) -> der::Result<RawCertReq<'_>> {
    let mut r = der::SliceReader::new(der)?;
    let raw = r.sequence(|r| -> der::Result<RawCertReq<'_>> {
        let info_der = r.tlv_bytes()?;
        let algorithm = spki::AlgorithmIdentifierRef::decode(r)?;
        let signature = der::asn1::BitStringRef::decode(r)?;
        Ok(RawCertReq {
            info_der,
            algorithm,
            signature,
        })
    })?;
    r.finish()?;
    Ok(raw)
}

fn split_info(info_der: &[u8]) -> Result<RawCertReqInfo<'_>, String> {
    let decode = || -> der::Result<(u8, RawCertReqInfo<'_>)> {
        let mut r = der::SliceReader::new(info_der)?;
        let out = r.sequence(|r| -> der::Result<(u8, RawCertReqInfo<'_>)> {
            let version = u8::decode(r)?;
            let subject = x509_cert::name::Name::decode(r)?;
            let spki_der = r.tlv_bytes()?;
            let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)?;
            let attributes =
                der::asn1::ContextSpecific::<x509_cert::attr::Attributes>::decode_implicit(
                    r,
                    der::TagNumber(0),
                )?
                .ok_or_else(|| {
                    der::Tag::ContextSpecific {
                        constructed: true,
                        number: der::TagNumber(0),
                    }
                    .value_error()
                })?
                .value;
            Ok((
                version,
                RawCertReqInfo {
                    subject,
                    spki_der,
                    spki,
                    attributes,
                },
            ))
        })?;
        r.finish()?;
        Ok(out)
    };
    let (version, info) =
        decode().map_err(|e| format!("not a PKCS#10 certificate request: {e}"))?;
    if version != 0 {
        return Err(format!(
            "not a PKCS#10 certificate request: version {version}, only v1 (0) exists"
        ));
    }
    Ok(info)
}

/// Parses a CSR (PEM or DER) and verifies its self-signature.
pub fn parse(input: &[u8]) -> Result<ParsedCsr, String> {
    if input.len() > MAX_CSR_LEN {
        return Err(format!("CSR larger than {MAX_CSR_LEN} octets"));
    }
    let der = crate::pem::decode(input, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])?;
    let req = split_request(&der).map_err(|e| format!("not a PKCS#10 certificate request: {e}"))?;
    let info = split_info(req.info_der)?;
    let key = info
        .spki
        .subject_public_key
        .as_bytes()
        .ok_or("CSR public key has unused bits")?;
    let sig = req
        .signature
        .as_bytes()
        .ok_or("CSR signature has unused bits")?;
    let key_oid = info.spki.algorithm.oid;
    let key_kind = if key_oid == OID_EC_PUBLIC_KEY {
        // The curve the key names, its point size and the uncompressed-point
        // prefix must agree: a P-256 point labelled as P-384 (or as any
        // other curve) is a malformed key, not a P-256 one.
        let curve = info
            .spki
            .algorithm
            .parameters_oid()
            .map_err(|_| "the CSR's EC public key names no curve (namedCurve parameters)")?;
        let (kind, len, name) = if curve == SECP256R1 {
            (CsrKey::EcdsaP256, 65, "P-256")
        } else if curve == SECP384R1 {
            (CsrKey::EcdsaP384, 97, "P-384")
        } else {
            return Err(format!(
                "EC curve {curve} is not accepted; use P-256 or P-384"
            ));
        };
        if key.len() != len || key.first() != Some(&0x04) {
            return Err(format!(
                "the CSR's public key says it is on {name} but is not an uncompressed {name} \
                 point ({len} octets starting 04); it has {} octets",
                key.len()
            ));
        }
        kind
    } else if key_oid == OID_RSA_ENCRYPTION {
        CsrKey::Rsa(rsa_bits(key).ok_or("the CSR's RSA public key is malformed")?)
    } else {
        return Err(format!(
            "public key algorithm {key_oid} is not accepted; use ECDSA P-256/P-384 or RSA"
        ));
    };
    let sig_oid = req.algorithm.oid;
    let alg: &dyn ring::signature::VerificationAlgorithm = match (sig_oid, key_kind) {
        (o, CsrKey::EcdsaP256) if o == ECDSA_SHA256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        (o, CsrKey::EcdsaP384) if o == ECDSA_SHA256 => &ring::signature::ECDSA_P384_SHA256_ASN1,
        (o, CsrKey::EcdsaP384) if o == ECDSA_SHA384 => &ring::signature::ECDSA_P384_SHA384_ASN1,
        (o, CsrKey::EcdsaP256) if o == ECDSA_SHA384 => &ring::signature::ECDSA_P256_SHA384_ASN1,
        (o, _) if o == RSA_SHA256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        (o, _) if o == RSA_SHA384 => &ring::signature::RSA_PKCS1_2048_8192_SHA384,
        (o, _) if o == RSA_SHA512 => &ring::signature::RSA_PKCS1_2048_8192_SHA512,
        (o, _) if o == ED25519 => {
            return Err(
                "Ed25519 keys are not accepted for TLS certificates; use ECDSA P-256/P-384 or RSA"
                    .into(),
            );
        }
        (o, _) => return Err(format!("CSR signature algorithm {o} is not accepted")),
    };
    // The signature covers certificationRequestInfo as received.
    ring::signature::UnparsedPublicKey::new(alg, key)
        .verify(req.info_der, sig)
        .map_err(|_| "the CSR's signature does not verify: it was altered or not signed by the key it carries".to_string())?;

    let subject = distinguished_name(&info.subject)?;

    let mut sans = Vec::new();
    for attr in info.attributes.iter() {
        if attr.oid != EXT_REQ {
            continue;
        }
        for value in attr.values.iter() {
            let exts: Vec<x509_cert::ext::Extension> = value
                .decode_as()
                .map_err(|e| format!("CSR extension request is malformed: {e}"))?;
            for ext in exts {
                if ext.extn_id != SAN_OID {
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
        subject,
        sans,
        spki_der: info.spki_der.to_vec(),
        key: key_kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    fn csr_der(sans: &[&str]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("SANs");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "csr.example");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        params.serialize_request(&key).expect("CSR").der().to_vec()
    }

    #[test]
    fn the_spki_handed_on_is_the_one_a_full_parse_re_encodes() {
        let der = csr_der(&["a.example", "b.example"]);
        let p = parse(&der).expect("valid CSR");
        let full = x509_cert::request::CertReq::from_der(&der).expect("x509-cert parses it");
        assert_eq!(p.spki_der, full.info.public_key.to_der().expect("SPKI"));
        assert_eq!(p.key, CsrKey::EcdsaP256);
        assert_eq!(
            p.subject.0,
            vec![
                NameAttribute::CommonName("csr.example".into()),
                NameAttribute::Organization("Example".into()),
            ]
        );
        assert_eq!(
            p.sans,
            vec![
                SubjectAltName::Dns("a.example".into()),
                SubjectAltName::Dns("b.example".into()),
            ]
        );
        let pem = crate::pem::encode("CERTIFICATE REQUEST", &der);
        assert_eq!(parse(pem.as_bytes()).expect("PEM form"), p);
    }

    #[test]
    fn a_csr_altered_after_signing_is_refused() {
        let der = csr_der(&["a.example"]);
        let at = der
            .windows(9)
            .position(|w| w == b"a.example")
            .expect("the SAN is in the DER");
        let mut altered = der.clone();
        altered[at] = b'b';
        let e = parse(&altered).expect_err("altered CSR");
        assert!(e.contains("does not verify"), "{e}");
    }

    #[test]
    fn trailing_octets_and_truncation_are_refused_without_panicking() {
        let der = csr_der(&["a.example"]);
        let mut long = der.clone();
        long.push(0);
        assert!(parse(&long).is_err());
        for n in 0..der.len() {
            assert!(parse(&der[..n]).is_err(), "truncated to {n}");
        }
    }

    /// A CSR whose EC key is the point `point` under the curve `curve`,
    /// signed by `signer` (P-256) over the info as encoded.
    fn ec_csr(curve: &str, point: &[u8], signer: &ring::signature::EcdsaKeyPair) -> Vec<u8> {
        use der::asn1::{Any, BitString, SetOfVec};
        use x509_cert::request::{CertReq, CertReqInfo, Version};
        let rng = ring::rand::SystemRandom::new();
        let info = CertReqInfo {
            version: Version::V1,
            subject: "CN=curve.example".parse().expect("subject"),
            public_key: spki::SubjectPublicKeyInfoOwned {
                algorithm: spki::AlgorithmIdentifierOwned {
                    oid: OID_EC_PUBLIC_KEY,
                    parameters: Some(Any::from(&oid(curve))),
                },
                subject_public_key: BitString::from_bytes(point).expect("bits"),
            },
            attributes: SetOfVec::new(),
        };
        let info_der = info.to_der().expect("info");
        let sig = signer.sign(&rng, &info_der).expect("sign");
        CertReq {
            info,
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: ECDSA_SHA256,
                parameters: None,
            },
            signature: BitString::from_bytes(sig.as_ref()).expect("bits"),
        }
        .to_der()
        .expect("CSR")
    }

    #[test]
    fn a_p256_key_labelled_as_another_curve_is_refused_as_a_bad_csr() {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = key.public_key().as_ref().to_vec();
        // Labelled correctly, it is accepted: the construction is sound.
        let good = parse(&ec_csr("1.2.840.10045.3.1.7", &point, &key)).expect("P-256 CSR");
        assert_eq!(good.key, CsrKey::EcdsaP256);
        // Labelled P-384: refused, though the signature verifies with P-256.
        let e = parse(&ec_csr("1.3.132.0.34", &point, &key)).expect_err("mislabelled key");
        assert!(e.contains("P-384"), "{e}");
        // Labelled with a curve castellan does not issue for (P-521).
        let e = parse(&ec_csr("1.3.132.0.35", &point, &key)).expect_err("P-521 label");
        assert!(e.contains("not accepted"), "{e}");
        // A point without the uncompressed prefix.
        let mut odd = point.clone();
        odd[0] = 0x05;
        let e = parse(&ec_csr("1.2.840.10045.3.1.7", &odd, &key)).expect_err("prefix");
        assert!(e.contains("uncompressed"), "{e}");
    }

    #[test]
    fn a_csr_version_other_than_v1_is_refused() {
        let der = csr_der(&["a.example"]);
        // SEQUENCE { SEQUENCE { INTEGER 0, ...: the first INTEGER 0 is
        // the version (02 01 00).
        let at = der
            .windows(3)
            .position(|w| w == [0x02, 0x01, 0x00])
            .expect("version");
        let mut v2 = der.clone();
        v2[at + 2] = 1;
        let e = parse(&v2).expect_err("version 2");
        assert!(e.contains("version 1"), "{e}");
    }
}
