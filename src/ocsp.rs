//! OCSP request parsing (RFC 6960 §4.1), with the RFC 8954 nonce and the
//! RFC 5019 / RFC 6960 appendix A.1 GET encoding.
//!
//! The parser is a small hand-written DER reader, strict where strictness
//! matters for safety and unambiguity:
//!
//! - the input is at most [`MAX_REQUEST_LEN`] octets and is one OCSPRequest
//!   with nothing after it;
//! - only definite, minimally encoded lengths (DER) that fit the enclosing
//!   value; low tag numbers only; a constructed value must hold exactly its
//!   elements and nothing else;
//! - at most [`MAX_CERT_IDS`] CertIDs (at least one), at most
//!   [`MAX_EXTENSIONS`] extensions in any list, no extension twice;
//! - serial numbers are positive DER INTEGERs of at most 20 octets after the
//!   sign octet (RFC 5280 §4.1.2.2);
//! - a critical extension it does not understand makes the request
//!   malformed; unknown non-critical ones are ignored.
//!
//! It tolerates two harmless BER-isms seen from real encoders: an explicit
//! `version v1` (DEFAULT in the ASN.1) and an explicit `critical FALSE`.
//!
//! Allocation is bounded by the input: the parser copies at most the CertIDs
//! (each copied twice: fields and `raw`) and the nonce, so a request never
//! costs more than a small multiple of [`MAX_REQUEST_LEN`]. There is no
//! recursion.
//!
//! # Errors and the answer they call for
//!
//! - [`RequestError::Malformed`] and [`RequestError::BadNonce`] →
//!   `malformedRequest`.
//! - [`RequestError::UnsupportedHash`]: a CertID hashed with an algorithm
//!   other than SHA-1 or SHA-256. The request is well-formed, but castellan
//!   cannot build a SingleResponse for it (the signer computes CertID hashes
//!   itself, in SHA-1 or SHA-256 only), so the caller answers
//!   `unauthorized` — the same answer as for a CertID it cannot match. It is
//!   reported only when the whole request is otherwise well-formed: any
//!   structural error wins and gives `Malformed`.
//!
//! [`RequestError::answer`] gives this mapping.
//!
//! # Hash lengths
//!
//! A SHA-1 CertID carries 20-octet hashes, a SHA-256 one 32. Any other length
//! is `Malformed` — except an *empty* `issuerKeyHash`, which Windows
//! `certutil` has been seen to send: that CertID is kept as sent, it never
//! matches any issuer ([`cert_id_matches`] is false), and the caller answers
//! `unauthorized`.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// A larger request (or a GET segment decoding to more) is malformed.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;
/// The most CertIDs one request may ask about.
pub const MAX_CERT_IDS: usize = 64;
/// The most extensions in one requestExtensions or singleRequestExtensions.
pub const MAX_EXTENSIONS: usize = 16;
/// RFC 8954 §2.1: a nonce is 1 to 32 octets.
pub const MAX_NONCE_LEN: usize = 32;
/// RFC 5280 §4.1.2.2: at most 20 octets (of the magnitude).
pub const MAX_SERIAL_LEN: usize = 20;

/// The CertID hash algorithms castellan answers in, with the form of the
/// AlgorithmIdentifier's parameters the request used: an answer echoes
/// the CertID exactly as asked (RFC 6960 §4.2.1), and clients write the
/// parameters both ways (OpenSSL NULL; SHA-2 generators per RFC 5754
/// absent). `Sha1` and `Sha256` (NULL) are the forms castellan pre-signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha1NoParams,
    Sha256NoParams,
}

impl HashAlg {
    /// Every form: what a revocation must clear from the cache.
    pub const ALL: [HashAlg; 4] = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha1NoParams,
        HashAlg::Sha256NoParams,
    ];

    /// The same hash with NULL parameters (the forms that are pre-signed).
    pub fn canonical(&self) -> HashAlg {
        match self {
            HashAlg::Sha1 | HashAlg::Sha1NoParams => HashAlg::Sha1,
            HashAlg::Sha256 | HashAlg::Sha256NoParams => HashAlg::Sha256,
        }
    }

    /// Octets of one hash in this algorithm.
    pub fn output_len(&self) -> usize {
        match self.canonical() {
            HashAlg::Sha1 => 20,
            _ => 32,
        }
    }

    fn digest(&self, data: &[u8]) -> Vec<u8> {
        let alg = match self.canonical() {
            HashAlg::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            _ => &ring::digest::SHA256,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }
}

impl From<HashAlg> for castellan_proto::CertIdHash {
    fn from(h: HashAlg) -> Self {
        match h {
            HashAlg::Sha1 => castellan_proto::CertIdHash::Sha1,
            HashAlg::Sha256 => castellan_proto::CertIdHash::Sha256,
            HashAlg::Sha1NoParams => castellan_proto::CertIdHash::Sha1NoParams,
            HashAlg::Sha256NoParams => castellan_proto::CertIdHash::Sha256NoParams,
        }
    }
}

impl From<&HashAlg> for castellan_proto::CertIdHash {
    fn from(h: &HashAlg) -> Self {
        (*h).into()
    }
}

impl From<castellan_proto::CertIdHash> for HashAlg {
    fn from(h: castellan_proto::CertIdHash) -> Self {
        match h {
            castellan_proto::CertIdHash::Sha1 => HashAlg::Sha1,
            castellan_proto::CertIdHash::Sha256 => HashAlg::Sha256,
            castellan_proto::CertIdHash::Sha1NoParams => HashAlg::Sha1NoParams,
            castellan_proto::CertIdHash::Sha256NoParams => HashAlg::Sha256NoParams,
        }
    }
}

/// One CertID (RFC 6960 §4.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    pub hash: HashAlg,
    /// `hash.output_len()` octets.
    pub issuer_name_hash: Vec<u8>,
    /// `hash.output_len()` octets, or empty (see the module documentation).
    pub issuer_key_hash: Vec<u8>,
    /// Big-endian magnitude, no leading zero octets, 1 to 20 octets.
    pub serial: Vec<u8>,
    /// The exact DER of the CertID as sent.
    pub raw: Vec<u8>,
}

/// A parsed OCSPRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspRequest {
    /// 1 to [`MAX_CERT_IDS`], in the order sent.
    pub cert_ids: Vec<CertId>,
    /// The RFC 8954 nonce octets (1 to 32), without the inner OCTET STRING
    /// header.
    pub nonce: Option<Vec<u8>>,
    /// An optionalSignature was present (it is neither required nor
    /// verified).
    pub signed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// → `malformedRequest`.
    Malformed(String),
    /// A CertID hash algorithm other than SHA-1/SHA-256 in an otherwise
    /// well-formed request → `unauthorized` (castellan cannot answer it).
    UnsupportedHash(String),
    /// RFC 8954: the nonce is not 1..=32 octets, or not an OCTET STRING
    /// inside the extnValue → `malformedRequest`.
    BadNonce(String),
}

/// The OCSPResponseStatus values (RFC 6960 §4.2.1) a request error calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    MalformedRequest,
    Unauthorized,
}

impl ErrorStatus {
    /// The ENUMERATED value of OCSPResponseStatus.
    pub fn code(self) -> u8 {
        match self {
            ErrorStatus::MalformedRequest => 1,
            ErrorStatus::Unauthorized => 6,
        }
    }
}

impl RequestError {
    /// The OCSP error status to answer with.
    pub fn answer(&self) -> ErrorStatus {
        match self {
            RequestError::Malformed(_) | RequestError::BadNonce(_) => ErrorStatus::MalformedRequest,
            RequestError::UnsupportedHash(_) => ErrorStatus::Unauthorized,
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Malformed(m) => write!(f, "malformed OCSP request: {m}"),
            RequestError::UnsupportedHash(m) => write!(f, "unsupported CertID hash: {m}"),
            RequestError::BadNonce(m) => write!(f, "bad OCSP nonce: {m}"),
        }
    }
}

impl std::error::Error for RequestError {}

fn malformed<T>(msg: impl Into<String>) -> Result<T, RequestError> {
    Err(RequestError::Malformed(msg.into()))
}

// ---------------------------------------------------------------------------
// DER reading

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const fn ctx_cons(n: u8) -> u8 {
    0xa0 | n
}

// OID contents (without tag and length).
/// 1.3.14.3.2.26
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// 2.16.840.1.101.3.4.2.1
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
/// 1.3.6.1.5.5.7.48.1.2 (id-pkix-ocsp-nonce)
const OID_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];

/// One TLV: its tag octet, content, and the whole encoding.
#[derive(Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
}

/// Reads consecutive TLVs out of one slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next TLV, whatever its tag.
    fn any(&mut self, what: &str) -> Result<Tlv<'a>, RequestError> {
        let input = self.rest;
        let Some((&tag, after_tag)) = input.split_first() else {
            return malformed(format!("{what}: missing"));
        };
        if tag & 0x1f == 0x1f {
            return malformed(format!("{what}: high tag numbers are not used in OCSP"));
        }
        let Some((&first, after_len0)) = after_tag.split_first() else {
            return malformed(format!("{what}: truncated length"));
        };
        let (len, body) = if first < 0x80 {
            (first as usize, after_len0)
        } else if first == 0x80 {
            return malformed(format!("{what}: indefinite length (not DER)"));
        } else {
            let n = (first & 0x7f) as usize;
            // The input is at most 64 KiB: three length octets are plenty,
            // and with four no usize overflow is possible on any platform.
            if n > 4 {
                return malformed(format!("{what}: length of {n} octets"));
            }
            if after_len0.len() < n {
                return malformed(format!("{what}: truncated length"));
            }
            let (len_octets, body) = after_len0.split_at(n);
            if len_octets[0] == 0 {
                return malformed(format!("{what}: non-minimal length (not DER)"));
            }
            let len = len_octets
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            if len < 0x80 {
                return malformed(format!("{what}: non-minimal length (not DER)"));
            }
            (len, body)
        };
        if len > body.len() {
            return malformed(format!("{what}: length beyond the input"));
        }
        let header = input.len() - body.len();
        let (whole, rest) = input.split_at(header + len);
        self.rest = rest;
        Ok(Tlv {
            tag,
            content: &whole[header..],
            whole,
        })
    }

    /// The next TLV, which must carry `tag`.
    fn expect(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>, RequestError> {
        match self.peek_tag() {
            None => malformed(format!("{what}: missing")),
            Some(t) if t != tag => {
                malformed(format!("{what}: expected tag {tag:#04x}, found {t:#04x}"))
            }
            Some(_) => self.any(what),
        }
    }

    /// The next TLV if it carries `tag`.
    fn optional(&mut self, tag: u8, what: &str) -> Result<Option<Tlv<'a>>, RequestError> {
        if self.peek_tag() == Some(tag) {
            self.any(what).map(Some)
        } else {
            Ok(None)
        }
    }

    fn finish(&self, what: &str) -> Result<(), RequestError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            malformed(format!("{what}: unexpected data after the last element"))
        }
    }
}

/// The single TLV that makes up all of `content` (an EXPLICIT tag's inside).
fn only<'a>(content: &'a [u8], tag: Option<u8>, what: &str) -> Result<Tlv<'a>, RequestError> {
    let mut r = Reader::new(content);
    let t = match tag {
        Some(tag) => r.expect(tag, what)?,
        None => r.any(what)?,
    };
    r.finish(what)?;
    Ok(t)
}

/// Checks the content of an OBJECT IDENTIFIER: non-empty, each
/// subidentifier minimally encoded, the last one complete.
fn check_oid(content: &[u8], what: &str) -> Result<(), RequestError> {
    if content.is_empty() || content.len() > 64 {
        return malformed(format!("{what}: bad OBJECT IDENTIFIER length"));
    }
    if content[content.len() - 1] & 0x80 != 0 {
        return malformed(format!("{what}: truncated OBJECT IDENTIFIER"));
    }
    let mut start_of_arc = true;
    for &b in content {
        if start_of_arc && b == 0x80 {
            return malformed(format!("{what}: non-minimal OBJECT IDENTIFIER"));
        }
        start_of_arc = b & 0x80 == 0;
    }
    Ok(())
}

/// A DER BOOLEAN's content.
fn boolean(content: &[u8], what: &str) -> Result<bool, RequestError> {
    match content {
        [0x00] => Ok(false),
        [0xff] => Ok(true),
        _ => malformed(format!("{what}: not a DER BOOLEAN")),
    }
}

/// Checks the content of an INTEGER is minimally encoded; returns whether it
/// is negative.
fn check_integer(content: &[u8], what: &str) -> Result<bool, RequestError> {
    match content {
        [] => malformed(format!("{what}: empty INTEGER")),
        [0x00, b, ..] if b & 0x80 == 0 => malformed(format!("{what}: non-minimal INTEGER")),
        [0xff, b, ..] if b & 0x80 != 0 => malformed(format!("{what}: non-minimal INTEGER")),
        [first, ..] => Ok(first & 0x80 != 0),
    }
}

/// AlgorithmIdentifier of a CertID: `Ok(Ok(alg))` for SHA-1/SHA-256 (with
/// absent or NULL parameters), `Ok(Err(oid))` for any other well-formed one.
fn hash_algorithm(t: Tlv<'_>) -> Result<Result<HashAlg, &[u8]>, RequestError> {
    let mut r = Reader::new(t.content);
    let oid = r.expect(TAG_OID, "hashAlgorithm.algorithm")?;
    check_oid(oid.content, "hashAlgorithm.algorithm")?;
    let params = if r.is_empty() {
        None
    } else {
        Some(r.any("hashAlgorithm.parameters")?)
    };
    r.finish("hashAlgorithm")?;
    let (null_params, absent_params) = match oid.content {
        OID_SHA1 => (HashAlg::Sha1, HashAlg::Sha1NoParams),
        OID_SHA256 => (HashAlg::Sha256, HashAlg::Sha256NoParams),
        other => return Ok(Err(other)),
    };
    match params {
        None => Ok(Ok(absent_params)),
        Some(p) if p.tag == TAG_NULL && p.content.is_empty() => Ok(Ok(null_params)),
        Some(_) => malformed("hashAlgorithm.parameters: must be absent or NULL"),
    }
}

/// What a CertID parse found.
enum ParsedCertId {
    Known(CertId),
    /// Well-formed, but hashed with an algorithm castellan does not answer
    /// in; carries the OID content for the message.
    UnsupportedHash(Vec<u8>),
}

fn cert_id(t: Tlv<'_>) -> Result<ParsedCertId, RequestError> {
    let mut r = Reader::new(t.content);
    let alg = hash_algorithm(r.expect(TAG_SEQUENCE, "CertID.hashAlgorithm")?)?;
    let name_hash = r.expect(TAG_OCTET_STRING, "CertID.issuerNameHash")?;
    let key_hash = r.expect(TAG_OCTET_STRING, "CertID.issuerKeyHash")?;
    let serial = r.expect(TAG_INTEGER, "CertID.serialNumber")?;
    r.finish("CertID")?;

    if check_integer(serial.content, "CertID.serialNumber")? {
        return malformed("CertID.serialNumber: negative");
    }
    let magnitude = match serial.content {
        [0x00, rest @ ..] => rest,
        all => all,
    };
    if magnitude.is_empty() {
        return malformed("CertID.serialNumber: zero is not a certificate serial");
    }
    if magnitude.len() > MAX_SERIAL_LEN {
        return malformed(format!(
            "CertID.serialNumber: {} octets, at most {MAX_SERIAL_LEN}",
            magnitude.len()
        ));
    }

    let alg = match alg {
        Ok(alg) => alg,
        Err(oid) => return Ok(ParsedCertId::UnsupportedHash(oid.to_vec())),
    };
    let want = alg.output_len();
    if name_hash.content.len() != want {
        return malformed(format!(
            "CertID.issuerNameHash: {} octets for {alg:?}, expected {want}",
            name_hash.content.len()
        ));
    }
    // An empty issuerKeyHash (certutil) is kept and never matches.
    if !key_hash.content.is_empty() && key_hash.content.len() != want {
        return malformed(format!(
            "CertID.issuerKeyHash: {} octets for {alg:?}, expected {want}",
            key_hash.content.len()
        ));
    }
    Ok(ParsedCertId::Known(CertId {
        hash: alg,
        issuer_name_hash: name_hash.content.to_vec(),
        issuer_key_hash: key_hash.content.to_vec(),
        serial: magnitude.to_vec(),
        raw: t.whole.to_vec(),
    }))
}

/// One Extension.
struct Ext<'a> {
    id: &'a [u8],
    critical: bool,
    value: &'a [u8],
}

/// `Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension`, bounded, without
/// duplicates.
fn extensions<'a>(t: Tlv<'a>, what: &str) -> Result<Vec<Ext<'a>>, RequestError> {
    let mut r = Reader::new(t.content);
    let mut out: Vec<Ext<'a>> = Vec::new();
    while !r.is_empty() {
        if out.len() == MAX_EXTENSIONS {
            return malformed(format!("{what}: more than {MAX_EXTENSIONS} extensions"));
        }
        let e = r.expect(TAG_SEQUENCE, what)?;
        let mut er = Reader::new(e.content);
        let id = er.expect(TAG_OID, "extnID")?;
        check_oid(id.content, "extnID")?;
        let critical = match er.optional(TAG_BOOLEAN, "critical")? {
            Some(b) => boolean(b.content, "critical")?,
            None => false,
        };
        let value = er.expect(TAG_OCTET_STRING, "extnValue")?;
        er.finish("Extension")?;
        if out.iter().any(|o| o.id == id.content) {
            return malformed(format!("{what}: an extension appears twice"));
        }
        out.push(Ext {
            id: id.content,
            critical,
            value: value.content,
        });
    }
    if out.is_empty() {
        return malformed(format!("{what}: empty"));
    }
    Ok(out)
}

/// RFC 8954: the extnValue holds an OCTET STRING of 1 to 32 octets.
fn nonce(value: &[u8]) -> Result<Vec<u8>, RequestError> {
    let inner = match only(value, Some(TAG_OCTET_STRING), "nonce") {
        Ok(t) => t,
        Err(e) => {
            return Err(RequestError::BadNonce(format!(
                "the extnValue is not one OCTET STRING ({e})"
            )));
        }
    };
    let n = inner.content.len();
    if n == 0 || n > MAX_NONCE_LEN {
        return Err(RequestError::BadNonce(format!(
            "{n} octets, RFC 8954 allows 1 to {MAX_NONCE_LEN}"
        )));
    }
    Ok(inner.content.to_vec())
}

/// `Signature ::= SEQUENCE { AlgorithmIdentifier, BIT STRING, [0] certs
/// OPTIONAL }`, checked for shape only.
fn signature_shape(t: Tlv<'_>) -> Result<(), RequestError> {
    let sig = only(t.content, Some(TAG_SEQUENCE), "optionalSignature")?;
    let mut r = Reader::new(sig.content);
    let alg = r.expect(TAG_SEQUENCE, "signatureAlgorithm")?;
    let mut ar = Reader::new(alg.content);
    let oid = ar.expect(TAG_OID, "signatureAlgorithm.algorithm")?;
    check_oid(oid.content, "signatureAlgorithm.algorithm")?;
    if !ar.is_empty() {
        ar.any("signatureAlgorithm.parameters")?;
    }
    ar.finish("signatureAlgorithm")?;
    let bits = r.expect(TAG_BIT_STRING, "signature")?;
    match bits.content {
        [] => return malformed("signature: empty BIT STRING"),
        [unused] if *unused != 0 => return malformed("signature: bad BIT STRING"),
        [unused, ..] if *unused > 7 => return malformed("signature: bad BIT STRING"),
        _ => {}
    }
    if let Some(certs) = r.optional(ctx_cons(0), "certs")? {
        let seq = only(certs.content, Some(TAG_SEQUENCE), "certs")?;
        let mut cr = Reader::new(seq.content);
        while !cr.is_empty() {
            cr.expect(TAG_SEQUENCE, "certs: Certificate")?;
        }
    }
    r.finish("Signature")
}

/// Parses one DER OCSPRequest (RFC 6960 §4.1.1).
pub fn parse_request(der: &[u8]) -> Result<OcspRequest, RequestError> {
    if der.len() > MAX_REQUEST_LEN {
        return malformed(format!("{} octets, at most {MAX_REQUEST_LEN}", der.len()));
    }
    let mut top = Reader::new(der);
    let request = top.expect(TAG_SEQUENCE, "OCSPRequest")?;
    top.finish("input")?;

    let mut rr = Reader::new(request.content);
    let tbs = rr.expect(TAG_SEQUENCE, "tbsRequest")?;
    let signed = match rr.optional(ctx_cons(0), "optionalSignature")? {
        Some(sig) => {
            signature_shape(sig)?;
            true
        }
        None => false,
    };
    rr.finish("OCSPRequest")?;

    let mut tr = Reader::new(tbs.content);
    if let Some(v) = tr.optional(ctx_cons(0), "version")? {
        let int = only(v.content, Some(TAG_INTEGER), "version")?;
        check_integer(int.content, "version")?;
        if int.content != [0] {
            return malformed("version: only v1 is defined");
        }
    }
    if let Some(name) = tr.optional(ctx_cons(1), "requestorName")? {
        // GeneralName is a CHOICE of context-specific tags [0]..[8].
        let g = only(name.content, None, "requestorName")?;
        if g.tag & 0xc0 != 0x80 || g.tag & 0x1f > 8 {
            return malformed("requestorName: not a GeneralName");
        }
    }
    let list = tr.expect(TAG_SEQUENCE, "requestList")?;
    let exts = tr.optional(ctx_cons(2), "requestExtensions")?;
    tr.finish("tbsRequest")?;

    let mut cert_ids = Vec::new();
    let mut unsupported: Option<Vec<u8>> = None;
    let mut lr = Reader::new(list.content);
    let mut count = 0usize;
    while !lr.is_empty() {
        if count == MAX_CERT_IDS {
            return malformed(format!("more than {MAX_CERT_IDS} CertIDs"));
        }
        count += 1;
        let req = lr.expect(TAG_SEQUENCE, "Request")?;
        let mut qr = Reader::new(req.content);
        let id = qr.expect(TAG_SEQUENCE, "reqCert")?;
        if let Some(single) = qr.optional(ctx_cons(0), "singleRequestExtensions")? {
            let seq = only(
                single.content,
                Some(TAG_SEQUENCE),
                "singleRequestExtensions",
            )?;
            // None is understood (service locator, RFC 6960 §4.4.6, is not
            // supported): only non-critical ones pass.
            for e in extensions(seq, "singleRequestExtensions")? {
                if e.critical {
                    return malformed("singleRequestExtensions: an unknown critical extension");
                }
            }
        }
        qr.finish("Request")?;
        match cert_id(id)? {
            ParsedCertId::Known(c) => cert_ids.push(c),
            ParsedCertId::UnsupportedHash(oid) => {
                unsupported.get_or_insert(oid);
            }
        }
    }
    if count == 0 {
        return malformed("requestList: empty");
    }

    let mut nonce_value = None;
    if let Some(e) = exts {
        let seq = only(e.content, Some(TAG_SEQUENCE), "requestExtensions")?;
        for ext in extensions(seq, "requestExtensions")? {
            if ext.id == OID_NONCE {
                nonce_value = Some(ext.value);
            } else if ext.critical {
                return malformed("requestExtensions: an unknown critical extension");
            }
        }
    }
    let nonce = nonce_value.map(nonce).transpose()?;

    if let Some(oid) = unsupported {
        return Err(RequestError::UnsupportedHash(format!(
            "CertID hash algorithm OID {} (only SHA-1 and SHA-256 are answered)",
            oid_text(&oid)
        )));
    }
    Ok(OcspRequest {
        cert_ids,
        nonce,
        signed,
    })
}

/// Dotted text of an OID's content (already checked by `check_oid`).
fn oid_text(content: &[u8]) -> String {
    let mut arcs: Vec<u128> = Vec::new();
    let mut acc: u128 = 0;
    for &b in content {
        acc = (acc << 7) | u128::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(acc);
            acc = 0;
        }
        if acc > u128::MAX >> 8 {
            return hex::encode(content);
        }
    }
    let Some(&first) = arcs.first() else {
        return String::new();
    };
    let (a, b) = match first {
        0..40 => (0, first),
        40..80 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut s = format!("{a}.{b}");
    for arc in &arcs[1..] {
        s.push('.');
        s.push_str(&arc.to_string());
    }
    s
}

// ---------------------------------------------------------------------------
// GET

/// Base64 of a request can take at most this many characters, each up to
/// three once percent-encoded.
const MAX_SEGMENT_LEN: usize = 3 * (MAX_REQUEST_LEN.div_ceil(3) * 4);

const BASE64_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(false),
);

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 6960 appendix A.1 / RFC 5019 §5: the GET path segment is base64
/// (standard or URL-safe alphabet, with or without padding) of the DER
/// request, then URL-encoded (`%2B`, `%2F`, `%3D`, any case; literal `+` and
/// `/` that a proxy already decoded are tolerated too).
///
/// Pass everything after `/ocsp/{issuer}/` — a `/` in the base64 may have
/// been decoded into the path, so the segment can contain slashes.
/// Percent-decoding happens once (no double decoding); anything that is not
/// then a base64 character (whitespace included) is malformed. The result is
/// at most [`MAX_REQUEST_LEN`] octets; it still has to go through
/// [`parse_request`].
pub fn decode_get_path(segment: &str) -> Result<Vec<u8>, RequestError> {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return malformed("GET: empty request segment");
    }
    if bytes.len() > MAX_SEGMENT_LEN {
        return malformed("GET: request segment too long");
    }
    let mut b64 = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = match bytes[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return malformed("GET: bad percent-escape");
                };
                i += 3;
                (h << 4) | l
            }
            c => {
                i += 1;
                c
            }
        };
        let c = match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => c,
            b'-' => b'+',
            b'_' => b'/',
            _ => return malformed("GET: not a base64 character"),
        };
        b64.push(c);
    }
    let der = BASE64_ANY_PADDING
        .decode(&b64)
        .map_err(|e| RequestError::Malformed(format!("GET: bad base64: {e}")))?;
    if der.is_empty() {
        return malformed("GET: empty request");
    }
    if der.len() > MAX_REQUEST_LEN {
        return malformed(format!(
            "GET: {} octets, at most {MAX_REQUEST_LEN}",
            der.len()
        ));
    }
    Ok(der)
}

// ---------------------------------------------------------------------------
// Matching

/// The (issuerNameHash, issuerKeyHash) a CertID in `alg` must carry for the
/// issuer whose subject Name DER is `issuer_name_der` and whose
/// subjectPublicKey BIT STRING content (without the unused-bits octet) is
/// `issuer_key_bits`.
pub fn issuer_hashes(
    issuer_name_der: &[u8],
    issuer_key_bits: &[u8],
    alg: &HashAlg,
) -> (Vec<u8>, Vec<u8>) {
    (alg.digest(issuer_name_der), alg.digest(issuer_key_bits))
}

/// Equality without an early exit on the first differing octet.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// Whether `id` names a certificate of this issuer: both hashes are computed
/// and both compared, whatever the first comparison gave. An empty or
/// otherwise wrong-length hash never matches.
pub fn cert_id_matches(id: &CertId, issuer_name_der: &[u8], issuer_key_bits: &[u8]) -> bool {
    let (name, key) = issuer_hashes(issuer_name_der, issuer_key_bits, &id.hash);
    let name_ok = ct_eq(&id.issuer_name_hash, &name);
    let key_ok = ct_eq(&id.issuer_key_hash, &key);
    name_ok & key_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_text_of_known_oids() {
        assert_eq!(oid_text(OID_SHA1), "1.3.14.3.2.26");
        assert_eq!(oid_text(OID_SHA256), "2.16.840.1.101.3.4.2.1");
        assert_eq!(oid_text(OID_NONCE), "1.3.6.1.5.5.7.48.1.2");
    }

    #[test]
    fn lengths_are_der() {
        // 0x81 0x05: non-minimal; 0x82 0x00 0x80: leading zero; 0x80: BER.
        for bad in [
            &[0x04, 0x81, 0x05, 1, 2, 3, 4, 5][..],
            &[0x04, 0x82, 0x00, 0x80],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x04, 0x85, 1, 0, 0, 0, 0],
            &[0x04, 0x03, 1, 2],
            &[0x1f, 0x01, 0x00],
        ] {
            assert!(Reader::new(bad).any("t").is_err(), "{bad:02x?}");
        }
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        let t = Reader::new(&long).any("t").unwrap();
        assert_eq!(t.content.len(), 0x80);
    }

    #[test]
    fn integers_are_minimal() {
        assert!(check_integer(&[0x00, 0x7f], "i").is_err());
        assert!(check_integer(&[0xff, 0x80], "i").is_err());
        assert!(!check_integer(&[0x00, 0x80], "i").unwrap());
        assert!(check_integer(&[0x80], "i").unwrap());
        assert!(check_integer(&[], "i").is_err());
    }

    #[test]
    fn oids_are_checked() {
        assert!(check_oid(&[0x2b, 0x80, 0x01], "o").is_err());
        assert!(check_oid(&[0x2b, 0x81], "o").is_err());
        assert!(check_oid(&[], "o").is_err());
        assert!(check_oid(OID_SHA256, "o").is_ok());
    }

    #[test]
    fn ct_eq_compares_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"", b"abc"));
        assert!(!ct_eq(b"ab", b"abc"));
    }
}
