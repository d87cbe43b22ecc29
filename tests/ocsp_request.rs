//! OCSP request parsing against real requests made by the `openssl ocsp`
//! client, and against hand-built malformed ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use castellan::ocsp::{
    CertId, ErrorStatus, HashAlg, MAX_CERT_IDS, MAX_REQUEST_LEN, OcspRequest, RequestError,
    cert_id_matches, decode_get_path, issuer_hashes, parse_request,
};
use der::{Decode, Encode};
use x509_cert::Certificate;

// ---------------------------------------------------------------------------
// openssl fixtures

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("timeout")
        .arg("60")
        .arg("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CA and leaves signed by it, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        pki.make_ca("ca", "/CN=castellan test CA/O=castellan");
        pki
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    fn make_ca(&self, name: &str, subject: &str) {
        openssl(
            self.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                subject,
                "-days",
                "2",
            ],
        );
    }

    /// A leaf of `ca`; `serial` like `0x1234`, or `None` for openssl's
    /// random serial.
    fn make_leaf(&self, ca: &str, name: &str, serial: Option<&str>) {
        let dir = self.path();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let mut args = vec![
            "x509".to_string(),
            "-req".into(),
            "-in".into(),
            format!("{name}.csr"),
            "-CA".into(),
            format!("{ca}.pem"),
            "-CAkey".into(),
            format!("{ca}.key"),
            "-days".into(),
            "1".into(),
            "-out".into(),
            format!("{name}.pem"),
        ];
        if let Some(s) = serial {
            args.push("-set_serial".into());
            args.push(s.into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(dir, &refs);
    }

    /// The serial of a certificate as `openssl x509 -serial` prints it, as
    /// a big-endian magnitude without leading zeros.
    fn serial_of(&self, cert: &str) -> Vec<u8> {
        let out = openssl(
            self.path(),
            &["x509", "-in", &format!("{cert}.pem"), "-noout", "-serial"],
        );
        let text = String::from_utf8(out).unwrap();
        let hex_serial = text.trim().strip_prefix("serial=").expect("serial= line");
        strip_zeros(hex::decode(hex_serial).unwrap())
    }

    /// The subject Name DER and subjectPublicKey bits of a certificate.
    fn issuer_of(&self, cert: &str) -> (Vec<u8>, Vec<u8>) {
        let der = openssl(
            self.path(),
            &["x509", "-in", &format!("{cert}.pem"), "-outform", "DER"],
        );
        let c = Certificate::from_der(&der).unwrap();
        let tbs = c.tbs_certificate();
        let name = tbs.subject().to_der().unwrap();
        let bits = tbs
            .subject_public_key_info()
            .subject_public_key
            .as_bytes()
            .unwrap()
            .to_vec();
        (name, bits)
    }

    /// `openssl ocsp ... -reqout` with the given options; returns the DER.
    fn request(&self, opts: &[&str]) -> Vec<u8> {
        let mut args = vec!["ocsp"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["-reqout", "req.der"]);
        openssl(self.path(), &args);
        std::fs::read(self.file("req.der")).unwrap()
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let n = v.iter().take_while(|&&b| b == 0).count();
    v.drain(..n);
    v
}

fn parse_ok(der: &[u8]) -> OcspRequest {
    parse_request(der).unwrap_or_else(|e| panic!("parse failed: {e}"))
}

fn assert_issued_by(id: &CertId, issuer: &(Vec<u8>, Vec<u8>), alg: HashAlg) {
    assert_eq!(id.hash, alg);
    let (name_hash, key_hash) = issuer_hashes(&issuer.0, &issuer.1, &alg);
    assert_eq!(name_hash.len(), alg.output_len());
    assert_eq!(id.issuer_name_hash, name_hash);
    assert_eq!(id.issuer_key_hash, key_hash);
    assert!(cert_id_matches(id, &issuer.0, &issuer.1));
}

/// `raw` must be the CertID exactly as it appears in the request.
fn assert_raw_in(id: &CertId, der: &[u8]) {
    assert_eq!(id.raw[0], 0x30);
    assert!(
        der.windows(id.raw.len()).any(|w| w == id.raw.as_slice()),
        "raw CertID not found in the request"
    );
}

// ---------------------------------------------------------------------------
// Real requests

#[test]
fn openssl_requests_parse_as_asked() {
    let pki = Pki::new();
    pki.make_ca("other", "/CN=another CA");
    pki.make_leaf("ca", "leaf", None); // random 159-bit serial
    pki.make_leaf(
        "ca",
        "leaf2",
        Some("0x8f00000000000000000000000000000000000001"),
    );
    let ca = pki.issuer_of("ca");
    let other = pki.issuer_of("other");
    let serial1 = pki.serial_of("leaf");
    let serial2 = pki.serial_of("leaf2");
    assert_eq!(serial2.len(), 20);
    assert_eq!(serial2[0], 0x8f);

    // Default: SHA-1, with a nonce.
    let der = pki.request(&["-issuer", "ca.pem", "-cert", "leaf.pem"]);
    let req = parse_ok(&der);
    assert_eq!(req.cert_ids.len(), 1);
    assert_eq!(req.cert_ids[0].serial, serial1);
    assert_issued_by(&req.cert_ids[0], &ca, HashAlg::Sha1);
    assert_raw_in(&req.cert_ids[0], &der);
    assert!(!cert_id_matches(&req.cert_ids[0], &other.0, &other.1));
    assert!(!cert_id_matches(&req.cert_ids[0], &ca.0, &other.1));
    assert!(!cert_id_matches(&req.cert_ids[0], &other.0, &ca.1));
    let nonce = req.nonce.expect("openssl sends a nonce by default");
    assert_eq!(nonce.len(), 16);
    assert!(!req.signed);
    assert_eq!(
        castellan_proto::CertIdHash::from(req.cert_ids[0].hash),
        castellan_proto::CertIdHash::Sha1
    );

    // No nonce.
    let der = pki.request(&["-no_nonce", "-issuer", "ca.pem", "-cert", "leaf.pem"]);
    let req = parse_ok(&der);
    assert_eq!(req.nonce, None);
    assert_eq!(req.cert_ids[0].serial, serial1);
    assert_issued_by(&req.cert_ids[0], &ca, HashAlg::Sha1);

    // SHA-256 (the digest option applies to the -cert after it).
    let der = pki.request(&["-issuer", "ca.pem", "-sha256", "-cert", "leaf.pem"]);
    let req = parse_ok(&der);
    assert_eq!(req.cert_ids.len(), 1);
    assert_eq!(req.cert_ids[0].serial, serial1);
    assert_issued_by(&req.cert_ids[0], &ca, HashAlg::Sha256);
    assert!(!cert_id_matches(&req.cert_ids[0], &other.0, &other.1));
    assert!(req.nonce.is_some());
    assert_eq!(
        castellan_proto::CertIdHash::from(&req.cert_ids[0].hash),
        castellan_proto::CertIdHash::Sha256
    );

    // Two CertIDs, in order; the second has a sign octet in its DER.
    let der = pki.request(&[
        "-issuer",
        "ca.pem",
        "-cert",
        "leaf.pem",
        "-cert",
        "leaf2.pem",
    ]);
    let req = parse_ok(&der);
    assert_eq!(req.cert_ids.len(), 2);
    assert_eq!(req.cert_ids[0].serial, serial1);
    assert_eq!(req.cert_ids[1].serial, serial2);
    for id in &req.cert_ids {
        assert_issued_by(id, &ca, HashAlg::Sha1);
        assert_raw_in(id, &der);
    }
    // The second serial went on the wire with its sign octet.
    assert!(
        der.windows(23)
            .any(|w| w[..3] == [0x02, 0x15, 0x00] && w[3..] == serial2[..])
    );

    // Mixed algorithms in one request.
    let der = pki.request(&[
        "-issuer",
        "ca.pem",
        "-cert",
        "leaf.pem",
        "-sha256",
        "-cert",
        "leaf2.pem",
    ]);
    let req = parse_ok(&der);
    assert_issued_by(&req.cert_ids[0], &ca, HashAlg::Sha1);
    assert_issued_by(&req.cert_ids[1], &ca, HashAlg::Sha256);

    // -serial: a serial given by number, with and without the high bit.
    let der = pki.request(&["-issuer", "ca.pem", "-serial", "0x0102030405"]);
    let req = parse_ok(&der);
    assert_eq!(req.cert_ids[0].serial, vec![1, 2, 3, 4, 5]);
    assert_issued_by(&req.cert_ids[0], &ca, HashAlg::Sha1);
    let der = pki.request(&[
        "-issuer", "ca.pem", "-sha256", "-serial", "0xff00ee", "-serial", "7",
    ]);
    let req = parse_ok(&der);
    assert_eq!(req.cert_ids[0].serial, vec![0xff, 0x00, 0xee]);
    assert_eq!(req.cert_ids[1].serial, vec![7]);
    assert_issued_by(&req.cert_ids[1], &ca, HashAlg::Sha256);

    // A signed request carries requestorName [1] and optionalSignature [0].
    let der = pki.request(&[
        "-issuer", "ca.pem", "-cert", "leaf.pem", "-signer", "leaf.pem", "-signkey", "leaf.key",
    ]);
    let req = parse_ok(&der);
    assert!(req.signed);
    assert_eq!(req.cert_ids[0].serial, serial1);
    assert_issued_by(&req.cert_ids[0], &ca, HashAlg::Sha1);
    assert!(req.nonce.is_some());

    // A hash castellan does not answer in: a distinct error → unauthorized.
    let der = pki.request(&["-issuer", "ca.pem", "-sha384", "-cert", "leaf.pem"]);
    let err = parse_request(&der).unwrap_err();
    assert!(matches!(err, RequestError::UnsupportedHash(_)), "{err:?}");
    assert!(err.to_string().contains("2.16.840.1.101.3.4.2.2"), "{err}");
    assert_eq!(err.answer(), ErrorStatus::Unauthorized);
    assert_eq!(err.answer().code(), 6);
}

#[test]
fn real_request_truncations_flips_and_trailing_bytes() {
    let pki = Pki::new();
    pki.make_leaf("ca", "leaf", None);
    for opts in [
        &["-issuer", "ca.pem", "-cert", "leaf.pem"][..],
        &[
            "-issuer", "ca.pem", "-cert", "leaf.pem", "-signer", "leaf.pem", "-signkey", "leaf.key",
        ],
    ] {
        let der = pki.request(opts);
        parse_ok(&der);
        // Every proper prefix is an error.
        for n in 0..der.len() {
            let err = parse_request(&der[..n]).unwrap_err();
            assert_eq!(err.answer(), ErrorStatus::MalformedRequest, "prefix {n}");
        }
        // Anything after the request is an error.
        for extra in [&[0u8][..], &[0x30, 0x00], &der] {
            let mut v = der.clone();
            v.extend_from_slice(extra);
            assert!(matches!(parse_request(&v), Err(RequestError::Malformed(_))));
        }
        // Every single-bit flip: never a panic; whatever still parses has
        // well-formed fields.
        for i in 0..der.len() {
            for bit in 0..8 {
                let mut v = der.clone();
                v[i] ^= 1 << bit;
                if let Ok(r) = parse_request(&v) {
                    assert!(!r.cert_ids.is_empty() && r.cert_ids.len() <= MAX_CERT_IDS);
                    for id in &r.cert_ids {
                        assert!(!id.serial.is_empty() && id.serial.len() <= 20);
                        assert_ne!(id.serial[0], 0);
                        assert_eq!(id.issuer_name_hash.len(), id.hash.output_len());
                    }
                    if let Some(n) = &r.nonce {
                        assert!((1..=32).contains(&n.len()));
                    }
                }
            }
        }
        // Indefinite length at the top (BER, not DER).
        let mut v = der.clone();
        let header = if der[1] & 0x80 != 0 {
            2 + (der[1] & 0x7f) as usize
        } else {
            2
        };
        v.splice(..header, [0x30, 0x80]);
        v.extend_from_slice(&[0, 0]);
        assert!(matches!(parse_request(&v), Err(RequestError::Malformed(_))));
    }
}

// ---------------------------------------------------------------------------
// GET encoding

fn percent_encode(b64: &str, lower: bool) -> String {
    let mut s = String::new();
    for c in b64.chars() {
        match (c, lower) {
            ('+', false) => s.push_str("%2B"),
            ('/', false) => s.push_str("%2F"),
            ('=', false) => s.push_str("%3D"),
            ('+', true) => s.push_str("%2b"),
            ('/', true) => s.push_str("%2f"),
            ('=', true) => s.push_str("%3d"),
            (c, _) => s.push(c),
        }
    }
    s
}

#[test]
fn get_encodings_round_trip() {
    // Octets whose base64 has '+', '/' and padding, at every length mod 3.
    let all: Vec<u8> = (0..=255u8).rev().collect();
    for len in [1, 2, 3, 62, 63, 64, 200, 256] {
        let data = &all[..len];
        let std = STANDARD.encode(data);
        let forms = [
            std.clone(),
            STANDARD_NO_PAD.encode(data),
            URL_SAFE.encode(data),
            URL_SAFE_NO_PAD.encode(data),
            percent_encode(&std, false),
            percent_encode(&std, true),
            percent_encode(&STANDARD_NO_PAD.encode(data), false),
            percent_encode(&URL_SAFE.encode(data), false),
        ];
        if len >= 62 {
            assert!(std.contains('+') && std.contains('/'));
        }
        for f in &forms {
            assert_eq!(decode_get_path(f).as_deref(), Ok(data), "{f}");
        }
    }

    // A real request end to end.
    let pki = Pki::new();
    pki.make_leaf("ca", "leaf", None);
    let der = pki.request(&["-issuer", "ca.pem", "-sha256", "-cert", "leaf.pem"]);
    let want = parse_ok(&der);
    for f in [
        STANDARD.encode(&der),
        URL_SAFE_NO_PAD.encode(&der),
        percent_encode(&STANDARD.encode(&der), false),
    ] {
        let got = decode_get_path(&f).unwrap();
        assert_eq!(got, der);
        assert_eq!(parse_ok(&got), want);
    }
}

#[test]
fn get_rejects_bad_segments() {
    for bad in [
        "", "%", "%2", "%zz", "MA%3", "MAA=A", "MA==MA==", "MA A", "MA\nAA", "MA.A", "%00",
        "%252F", "M", "MB==", // non-zero trailing bits
        "====",
    ] {
        let r = decode_get_path(bad);
        assert!(
            matches!(r, Err(RequestError::Malformed(_))),
            "{bad:?}: {r:?}"
        );
    }
    // Too long, before and after decoding.
    let huge = "A".repeat(4 * MAX_REQUEST_LEN);
    assert!(decode_get_path(&huge).is_err());
    let just_over = STANDARD.encode(vec![0u8; MAX_REQUEST_LEN + 1]);
    assert!(decode_get_path(&just_over).is_err());
    let at_limit = STANDARD.encode(vec![0u8; MAX_REQUEST_LEN]);
    assert_eq!(decode_get_path(&at_limit).unwrap().len(), MAX_REQUEST_LEN);
    assert_eq!(
        decode_get_path(&percent_encode(&at_limit, false))
            .unwrap()
            .len(),
        MAX_REQUEST_LEN
    );
    // Non-UTF-8 never reaches here (&str); a multi-byte character is refused.
    assert!(decode_get_path("MAé=").is_err());
}

// ---------------------------------------------------------------------------
// Hand-built requests

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else if n < 0x100 {
        v.extend([0x81, n as u8]);
    } else if n < 0x10000 {
        v.extend([0x82, (n >> 8) as u8, n as u8]);
    } else {
        v.extend([0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(content);
    v
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

const SHA1_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256_OID: &[u8] = &[
    0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
];
const NONCE_OID: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02,
];
/// 1.3.6.1.5.5.7.48.1.99: not an extension castellan knows.
const UNKNOWN_OID: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x63,
];
const NULL: &[u8] = &[0x05, 0x00];
const TRUE: &[u8] = &[0x01, 0x01, 0xff];

fn issuer() -> (Vec<u8>, Vec<u8>) {
    // Any octets do: the hashes are what is compared.
    (seq(&[b"\x31\x00"]), vec![0x04; 65])
}

fn cert_id_der(alg: &[u8], name_hash: &[u8], key_hash: &[u8], serial_content: &[u8]) -> Vec<u8> {
    seq(&[
        alg,
        &tlv(0x04, name_hash),
        &tlv(0x04, key_hash),
        &tlv(0x02, serial_content),
    ])
}

fn sha1_id(serial_content: &[u8]) -> Vec<u8> {
    let (n, k) = issuer();
    let (nh, kh) = issuer_hashes(&n, &k, &HashAlg::Sha1);
    cert_id_der(&seq(&[SHA1_OID, NULL]), &nh, &kh, serial_content)
}

fn ext(oid: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    if critical {
        seq(&[oid, TRUE, &tlv(0x04, value)])
    } else {
        seq(&[oid, &tlv(0x04, value)])
    }
}

fn nonce_ext(nonce: &[u8]) -> Vec<u8> {
    ext(NONCE_OID, false, &tlv(0x04, nonce))
}

/// OCSPRequest with the given Requests (each already a full Request) and
/// optional requestExtensions (a list of Extension).
fn request(requests: &[Vec<u8>], exts: Option<&[Vec<u8>]>) -> Vec<u8> {
    let list = tlv(0x30, &requests.concat());
    let mut tbs = list;
    if let Some(e) = exts {
        tbs.extend(tlv(0xa2, &tlv(0x30, &e.concat())));
    }
    seq(&[&seq(&[&tbs])])
}

fn single(cert_id: Vec<u8>) -> Vec<u8> {
    seq(&[&cert_id])
}

fn malformed(der: &[u8]) -> String {
    match parse_request(der) {
        Err(RequestError::Malformed(m)) => m,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn hand_built_requests() {
    let (n, k) = issuer();
    let id = sha1_id(&[0x01, 0x02]);

    // Baseline: parses, matches, no nonce.
    let r = parse_ok(&request(&[single(id.clone())], None));
    assert_eq!(r.cert_ids[0].serial, vec![1, 2]);
    assert_eq!(r.cert_ids[0].raw, id);
    assert!(cert_id_matches(&r.cert_ids[0], &n, &k));
    assert_eq!(r.nonce, None);

    // AlgorithmIdentifier without NULL parameters.
    let (nh, kh) = issuer_hashes(&n, &k, &HashAlg::Sha256);
    let no_null = cert_id_der(&seq(&[SHA256_OID]), &nh, &kh, &[0x05]);
    let r = parse_ok(&request(&[single(no_null)], None));
    // Kept apart from the NULL form: the answer echoes the CertID as asked.
    assert_eq!(r.cert_ids[0].hash, HashAlg::Sha256NoParams);
    assert_eq!(r.cert_ids[0].hash.canonical(), HashAlg::Sha256);
    assert!(cert_id_matches(&r.cert_ids[0], &n, &k));
    // ...but other parameters are refused.
    let bad_params = cert_id_der(&seq(&[SHA256_OID, &tlv(0x04, b"")]), &nh, &kh, &[5]);
    malformed(&request(&[single(bad_params)], None));

    // Nonces: 1 and 32 octets pass; 0, 33, 40 and an unwrapped one fail.
    for len in [1, 32] {
        let nonce = vec![0xa5; len];
        let r = parse_ok(&request(&[single(id.clone())], Some(&[nonce_ext(&nonce)])));
        assert_eq!(r.nonce, Some(nonce));
    }
    for len in [0, 33, 40] {
        let der = request(&[single(id.clone())], Some(&[nonce_ext(&vec![7; len])]));
        let err = parse_request(&der).unwrap_err();
        assert!(matches!(err, RequestError::BadNonce(_)), "{len}: {err:?}");
        assert_eq!(err.answer(), ErrorStatus::MalformedRequest);
    }
    let raw_nonce = ext(NONCE_OID, false, &[1; 16]);
    assert!(matches!(
        parse_request(&request(&[single(id.clone())], Some(&[raw_nonce]))),
        Err(RequestError::BadNonce(_))
    ));
    // A critical nonce is understood.
    let crit_nonce = ext(NONCE_OID, true, &tlv(0x04, &[9; 8]));
    let r = parse_ok(&request(&[single(id.clone())], Some(&[crit_nonce])));
    assert_eq!(r.nonce, Some(vec![9; 8]));
    // Twice: malformed.
    let twice = [nonce_ext(&[1; 8]), nonce_ext(&[2; 8])];
    malformed(&request(&[single(id.clone())], Some(&twice)));

    // Unknown extensions: ignored unless critical.
    let unk = ext(UNKNOWN_OID, false, b"\x05\x00");
    let r = parse_ok(&request(
        &[single(id.clone())],
        Some(&[unk.clone(), nonce_ext(&[3; 8])]),
    ));
    assert_eq!(r.nonce, Some(vec![3; 8]));
    malformed(&request(
        &[single(id.clone())],
        Some(&[ext(UNKNOWN_OID, true, b"\x05\x00")]),
    ));
    // Explicit critical FALSE is tolerated; a non-DER boolean is not.
    let explicit_false = seq(&[UNKNOWN_OID, &[0x01, 0x01, 0x00], &tlv(0x04, b"")]);
    parse_ok(&request(&[single(id.clone())], Some(&[explicit_false])));
    let bad_bool = seq(&[UNKNOWN_OID, &[0x01, 0x01, 0x01], &tlv(0x04, b"")]);
    malformed(&request(&[single(id.clone())], Some(&[bad_bool])));
    // Empty Extensions.
    malformed(&request(&[single(id.clone())], Some(&[])));
    // singleRequestExtensions: non-critical ignored, critical refused.
    let with_single = |critical: bool| {
        seq(&[
            &id,
            &tlv(0xa0, &seq(&[&ext(UNKNOWN_OID, critical, b"\x05\x00")])),
        ])
    };
    parse_ok(&request(&[with_single(false)], None));
    malformed(&request(&[with_single(true)], None));

    // requestList: empty, at the limit, over it.
    malformed(&request(&[], None));
    let many: Vec<Vec<u8>> = (1..=MAX_CERT_IDS as u8)
        .map(|i| single(sha1_id(&[i])))
        .collect();
    assert_eq!(parse_ok(&request(&many, None)).cert_ids.len(), MAX_CERT_IDS);
    let mut too_many = many.clone();
    too_many.push(single(sha1_id(&[0x7f])));
    malformed(&request(&too_many, None));

    // Serials.
    let r = parse_ok(&request(&[single(sha1_id(&[0x00, 0x80, 0x01]))], None));
    assert_eq!(r.cert_ids[0].serial, vec![0x80, 0x01]);
    let mut twenty = vec![0x00];
    twenty.extend([0xff; 20]);
    let r = parse_ok(&request(&[single(sha1_id(&twenty))], None));
    assert_eq!(r.cert_ids[0].serial, vec![0xff; 20]);
    for bad in [
        &[0x80][..],               // negative
        &[0xff, 0x01],             // negative
        &[0x00],                   // zero
        &[0x00, 0x01],             // non-minimal
        &[],                       // empty
        &[0x01; 21],               // 21 octets
        &[0x00, 0x00, 0x80, 0x01], // non-minimal sign octet
    ] {
        malformed(&request(&[single(sha1_id(bad))], None));
    }
    let mut twenty_one = vec![0x00];
    twenty_one.extend([0xff; 21]);
    malformed(&request(&[single(sha1_id(&twenty_one))], None));

    // Hash lengths.
    let (nh1, kh1) = issuer_hashes(&n, &k, &HashAlg::Sha1);
    let alg1 = seq(&[SHA1_OID, NULL]);
    malformed(&request(
        &[single(cert_id_der(&alg1, &nh1[..19], &kh1, &[1]))],
        None,
    ));
    malformed(&request(
        &[single(cert_id_der(&alg1, &nh1, &nh, &[1]))], // 32 octets for SHA-1
        None,
    ));
    malformed(&request(
        &[single(cert_id_der(&alg1, &[], &kh1, &[1]))],
        None,
    ));
    // The certutil case: an empty issuerKeyHash is kept and never matches.
    let r = parse_ok(&request(
        &[single(cert_id_der(&alg1, &nh1, &[], &[1]))],
        None,
    ));
    assert!(r.cert_ids[0].issuer_key_hash.is_empty());
    assert!(!cert_id_matches(&r.cert_ids[0], &n, &k));

    // Unsupported hash (SHA-512 OID): reported after the structure is
    // checked; a structural error elsewhere wins.
    let sha512 = seq(&[
        &[
            0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        ][..],
        NULL,
    ]);
    let odd = cert_id_der(&sha512, &[1; 64], &[2; 64], &[1]);
    assert!(matches!(
        parse_request(&request(&[single(id.clone()), single(odd.clone())], None)),
        Err(RequestError::UnsupportedHash(_))
    ));
    assert!(matches!(
        parse_request(&request(
            &[single(odd.clone())],
            Some(&[nonce_ext(&[0; 40])])
        )),
        Err(RequestError::BadNonce(_))
    ));
    malformed(&request(&[single(odd), single(sha1_id(&[0x80]))], None));

    // Versions: explicit v1 tolerated, anything else refused.
    let list = tlv(0x30, &single(id.clone()));
    let with_version = |v: &[u8]| seq(&[&seq(&[&tlv(0xa0, &tlv(0x02, v)), &list])]);
    parse_ok(&with_version(&[0]));
    malformed(&with_version(&[1]));
    malformed(&with_version(&[0, 0]));
    // requestorName: a GeneralName is accepted, anything else refused.
    let dns = tlv(0x82, b"client.example");
    let named = seq(&[&seq(&[&tlv(0xa1, &dns), &list])]);
    assert!(!parse_ok(&named).signed);
    let not_gn = seq(&[&seq(&[&tlv(0xa1, &tlv(0x04, b"x")), &list])]);
    malformed(&not_gn);
    // Elements out of order.
    let ext_first = seq(&[&seq(&[&tlv(0xa2, &seq(&[&nonce_ext(&[1; 4])])), &list])]);
    malformed(&ext_first);
    // An optionalSignature of the wrong shape.
    let bad_sig = seq(&[&seq(&[&list]), &tlv(0xa0, &seq(&[&tlv(0x03, &[0])]))]);
    malformed(&bad_sig);
    let good_sig = seq(&[
        &seq(&[&list]),
        &tlv(
            0xa0,
            &seq(&[
                &seq(&[&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02][..]]),
                &tlv(0x03, &[0, 1, 2, 3]),
            ]),
        ),
    ]);
    assert!(parse_ok(&good_sig).signed);
}

#[test]
fn length_encodings_and_sizes() {
    let id = sha1_id(&[0x42]);
    let good = request(&[single(id.clone())], None);
    parse_ok(&good);

    // Non-minimal long-form length on the outer SEQUENCE.
    let mut v = vec![0x30, 0x81, good.len() as u8 - 2];
    v.extend_from_slice(&good[2..]);
    assert!(good.len() - 2 < 0x80);
    malformed(&v);
    // Length with a leading zero octet.
    let mut v = vec![0x30, 0x82, 0x00, good.len() as u8 - 2];
    v.extend_from_slice(&good[2..]);
    malformed(&v);
    // Length beyond the input.
    let mut v = good.clone();
    v[1] += 1;
    malformed(&v);
    // Length shorter than the content: trailing bytes.
    let mut v = good.clone();
    v[1] -= 1;
    malformed(&v);
    // Garbage.
    for g in [
        &b""[..],
        b"\x00",
        b"\x30",
        b"\x30\x00",
        b"GET / HTTP/1.1\r\n",
        &[0xff; 64],
    ] {
        assert!(parse_request(g).is_err(), "{g:?}");
    }
    // Deep nesting is just malformed, without recursion.
    let mut deep = vec![0x05, 0x00];
    for _ in 0..2000 {
        deep = tlv(0x30, &deep);
        if deep.len() > MAX_REQUEST_LEN - 8 {
            break;
        }
    }
    malformed(&deep);

    // Oversized: a structurally valid request just over the limit, padded
    // with an ignored extension.
    let pad = |n: usize| {
        request(
            &[single(id.clone())],
            Some(&[ext(UNKNOWN_OID, false, &vec![0; n])]),
        )
    };
    let base = pad(0).len();
    // Each step adds at most a few header octets; find the largest that fits.
    let mut n = MAX_REQUEST_LEN - base;
    while pad(n).len() > MAX_REQUEST_LEN {
        n -= 1;
    }
    assert_eq!(pad(n).len(), MAX_REQUEST_LEN);
    parse_ok(&pad(n));
    let over = pad(n + 1);
    assert!(over.len() > MAX_REQUEST_LEN);
    assert!(malformed(&over).contains("at most"));
}
