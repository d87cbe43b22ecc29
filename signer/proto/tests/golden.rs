//! Golden wire encodings: the exact frame octets of a representative value of
//! every `Request` and `Response` variant (and of every variant of the enums
//! nested in them) are checked in under `tests/golden/*.hex`. Each is checked
//! both ways: `encode_frame(value) == golden` and `decode_frame(golden) == value`.
//!
//! postcard tags enum variants by position, so reordering, removing or
//! retyping a variant or field changes these octets and breaks every deployed
//! peer. **Variants and fields are append-only.**
//!
//! Adding a variant: append it to the enum, add a case below (the coverage
//! tests fail until you do), then write its golden file with
//!
//! ```text
//! CASTELLAN_BLESS=1 cargo test -p castellan-proto --test golden
//! ```
//!
//! Blessing only writes files that are missing; it never overwrites a golden
//! file whose octets changed, since that is exactly the break this test exists
//! to catch. To change a case's *value* on purpose (not the types), delete its
//! file and bless again.

use std::collections::BTreeSet;
use std::path::PathBuf;

use castellan_proto::frame::{HEADER_LEN, MAGIC, VERSION};
use castellan_proto::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------
// Representative values. Each list holds one value per variant, in variant
// order; the coverage tests check that against the types themselves.

fn algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::EcdsaP256,
        Algorithm::EcdsaP384,
        Algorithm::Rsa3072,
    ]
}

fn name_attributes() -> Vec<NameAttribute> {
    vec![
        NameAttribute::CommonName("web.example.internal".into()),
        NameAttribute::Organization("Example Corp".into()),
        NameAttribute::OrganizationalUnit("Platform".into()),
        NameAttribute::Country("DE".into()),
        NameAttribute::Locality("Berlin".into()),
        NameAttribute::State("Berlin".into()),
        NameAttribute::SerialNumber("0042".into()),
        NameAttribute::DomainComponent("internal".into()),
    ]
}

fn subject_alt_names() -> Vec<SubjectAltName> {
    vec![
        SubjectAltName::Dns("web.example.internal".into()),
        SubjectAltName::Ip(vec![10, 0, 0, 7]),
        SubjectAltName::Email("ops@example.internal".into()),
        SubjectAltName::Uri("spiffe://example.internal/web".into()),
    ]
}

fn urls() -> Urls {
    Urls {
        ocsp: vec!["http://ocsp.example.internal/".into()],
        ca_issuers: vec!["http://pki.example.internal/issuing.der".into()],
        crl: vec!["http://pki.example.internal/issuing.crl".into()],
    }
}

fn validity() -> Validity {
    Validity {
        not_before: 1_767_225_600,
        not_after: 1_798_761_600,
    }
}

fn dn(cn: &str) -> DistinguishedName {
    DistinguishedName(vec![
        NameAttribute::Country("DE".into()),
        NameAttribute::Organization("Example Corp".into()),
        NameAttribute::CommonName(cn.into()),
    ])
}

fn custodian_set() -> CustodianSet {
    CustodianSet {
        threshold: 2,
        custodians: vec![
            Custodian {
                name: "alice".into(),
                public_key: [0xa1; 32],
            },
            Custodian {
                name: "bob".into(),
                public_key: [0xb0; 32],
            },
            Custodian {
                name: "carol".into(),
                public_key: [0xc4; 32],
            },
        ],
    }
}

fn ceremony_ops() -> Vec<CeremonyOp> {
    vec![
        CeremonyOp::CreateRoot(CaParams {
            ca_id: "root-2026".into(),
            parent: None,
            algorithm: Algorithm::EcdsaP384,
            subject: dn("Example Root 2026"),
            validity: validity(),
            path_len: None,
            urls: Urls::default(),
        }),
        CeremonyOp::CreateIntermediate(CaParams {
            ca_id: "issuing-2026".into(),
            parent: Some("root-2026".into()),
            algorithm: Algorithm::EcdsaP256,
            subject: dn("Example Issuing 2026"),
            validity: validity(),
            path_len: Some(0),
            urls: urls(),
        }),
        CeremonyOp::Rotate(RotateParams {
            ca_id: "issuing-2026".into(),
            new_ca_id: "issuing-2027".into(),
            algorithm: Algorithm::Rsa3072,
            subject: dn("Example Issuing 2027"),
            validity: validity(),
            path_len: Some(0),
            urls: urls(),
        }),
        CeremonyOp::CrossSign(CrossSignParams {
            issuer: "root-2026".into(),
            subject_certificate_der: vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x01],
            validity: validity(),
            path_len: Some(1),
            urls: urls(),
        }),
        CeremonyOp::ChangeCustodians(custodian_set()),
    ]
}

fn revocation_reasons() -> Vec<RevocationReason> {
    RevocationReason::ALL.to_vec()
}

fn cert_id_hashes() -> Vec<CertIdHash> {
    vec![
        CertIdHash::Sha1,
        CertIdHash::Sha256,
        CertIdHash::Sha1NoParams,
        CertIdHash::Sha256NoParams,
    ]
}

fn cert_statuses() -> Vec<CertStatus> {
    vec![
        CertStatus::Good,
        CertStatus::Revoked {
            at: 1_767_300_000,
            reason: Some(RevocationReason::KeyCompromise),
        },
        CertStatus::Unknown,
    ]
}

fn error_kinds() -> Vec<ErrorKind> {
    vec![
        ErrorKind::BadRequest,
        ErrorKind::Policy,
        ErrorKind::QuorumNotMet,
        ErrorKind::QuorumInvalid,
        ErrorKind::Backend,
        ErrorKind::Internal,
        ErrorKind::Protocol,
    ]
}

fn ca_statuses() -> Vec<CaStatus> {
    vec![CaStatus::Active, CaStatus::Retired]
}

fn signature_kinds() -> Vec<SignatureKind> {
    vec![
        SignatureKind::Certificate,
        SignatureKind::CaCertificate,
        SignatureKind::CrossCertificate,
        SignatureKind::ResponderCertificate,
        SignatureKind::Crl,
        SignatureKind::Ocsp,
        SignatureKind::Checkpoint,
        SignatureKind::CustodianChange,
    ]
}

fn signed_subjects() -> Vec<SignedSubject> {
    vec![
        SignedSubject::None,
        SignedSubject::Serial(vec![0x7f, 0x3a, 0x01]),
        SignedSubject::CrlNumber(42),
        SignedSubject::Checkpoint(1000),
    ]
}

fn ca_info(status: CaStatus, algorithm: Algorithm) -> CaInfo {
    CaInfo {
        ca_id: "issuing-2026".into(),
        parent: Some("root-2026".into()),
        algorithm,
        status,
        certificate_der: vec![0x30, 0x82, 0x02, 0x10],
    }
}

fn ceremony_outcomes() -> Vec<CeremonyOutcome> {
    vec![
        CeremonyOutcome::Ca(ca_info(CaStatus::Active, Algorithm::EcdsaP256)),
        CeremonyOutcome::CrossCertificate(IssuedCertificate {
            der: vec![0x30, 0x82, 0x03, 0x00],
            serial: vec![0x01, 0x23],
            journal_seq: 9,
        }),
        CeremonyOutcome::Custodians(custodian_set()),
    ]
}

fn journal_records() -> Vec<JournalRecord> {
    let subjects = signed_subjects();
    signature_kinds()
        .into_iter()
        .enumerate()
        .map(|(i, kind)| JournalRecord {
            seq: i as u64,
            time_ms: 1_767_225_600_000 + i as i64 * 250,
            kind,
            key_id: if kind == SignatureKind::Ocsp {
                "ocsp:issuing-2026".into()
            } else {
                "issuing-2026".into()
            },
            subject: subjects[i % subjects.len()].clone(),
            tbs_sha256: [i as u8 + 1; 32],
            ceremony_id: (i % 2 == 1).then_some([0x5c; 16]),
            prev_hash: [i as u8; 32],
            hash: [i as u8 + 0x80; 32],
        })
        .collect()
}

fn requests() -> Vec<(&'static str, Request)> {
    let ops = ceremony_ops();
    let names = [
        "request_ceremony_create_root",
        "request_ceremony_create_intermediate",
        "request_ceremony_rotate",
        "request_ceremony_cross_sign",
        "request_ceremony_change_custodians",
    ];
    let mut out = vec![
        ("request_status", Request::Status),
        ("request_public_keys", Request::PublicKeys),
        (
            "request_issue_certificate",
            Request::IssueCertificate(CertificateTemplate {
                issuer: "issuing-2026".into(),
                profile: "tls-server".into(),
                subject: DistinguishedName(name_attributes()),
                sans: subject_alt_names(),
                spki_der: vec![0x30, 0x59, 0x30, 0x13, 0x06, 0x07],
                validity: validity(),
                ca: false,
                urls: urls(),
            }),
        ),
    ];
    for (name, op) in names.into_iter().zip(ops) {
        out.push((
            name,
            Request::Ceremony {
                op,
                proof: QuorumProof {
                    ceremony_id: [0x7f; 16],
                    approvals: vec![
                        Approval {
                            custodian: [0xa1; 32],
                            signature: vec![0x11; 64],
                        },
                        Approval {
                            custodian: [0xb0; 32],
                            signature: vec![0x22; 64],
                        },
                    ],
                },
            },
        ));
    }
    let mut entries: Vec<CrlEntry> = revocation_reasons()
        .into_iter()
        .enumerate()
        .map(|(i, r)| CrlEntry {
            serial: vec![0x10, i as u8],
            revoked_at: 1_767_300_000 + i as i64,
            reason: Some(r),
            invalidity_date: (r == RevocationReason::KeyCompromise).then_some(1_767_200_000),
        })
        .collect();
    entries.push(CrlEntry {
        serial: vec![0x7f; 20],
        revoked_at: 1_767_400_000,
        reason: None,
        invalidity_date: None,
    });
    let staged_entries = entries.clone();
    out.push((
        "request_sign_crl",
        Request::SignCrl(CrlRequest {
            issuer: "issuing-2026".into(),
            crl_number: 17,
            this_update: 1_767_500_000,
            next_update: 1_767_586_400,
            entries: entries.into(),
        }),
    ));
    let mut statuses = cert_statuses();
    statuses.push(CertStatus::Revoked {
        at: 1_767_300_001,
        reason: None,
    });
    let hashes = cert_id_hashes();
    out.push((
        "request_sign_ocsp",
        Request::SignOcsp(OcspBatch {
            issuer: "issuing-2026".into(),
            produced_at: 1_767_500_000,
            responses: vec![
                OcspTemplate {
                    singles: statuses
                        .into_iter()
                        .enumerate()
                        .map(|(i, status)| SingleStatus {
                            // The two variants this golden was made with.
                            hash: hashes[i % 2],
                            serial: vec![0x20, i as u8],
                            status,
                            this_update: 1_767_500_000,
                            next_update: (i % 2 == 0).then_some(1_767_586_400),
                        })
                        .collect(),
                    nonce: Some(vec![0x4e; 16]),
                },
                OcspTemplate {
                    singles: vec![],
                    nonce: None,
                },
            ],
        }),
    ));
    out.push((
        "request_rotate_ocsp_responder",
        Request::RotateOcspResponder(ResponderParams {
            issuer: "issuing-2026".into(),
            validity: validity(),
            algorithm: Algorithm::EcdsaP256,
        }),
    ));
    out.push((
        "request_sign_checkpoint",
        Request::SignCheckpoint(CheckpointRequest {
            sequence: 1234,
            head_hash: [0x9e; 32],
            time: 1_767_500_000,
        }),
    ));
    out.push((
        "request_export_journal",
        Request::ExportJournal(JournalWindow {
            since: 1_767_225_600_000,
            until: 1_767_312_000_000,
        }),
    ));
    out.push((
        "request_stage_crl_entries",
        Request::StageCrlEntries(CrlChunk {
            issuer: "issuing-2026".into(),
            crl_number: 18,
            // More than one varint octet.
            offset: 400_000,
            entries: staged_entries[..3].to_vec().into(),
        }),
    ));
    out.push((
        "request_sign_staged_crl",
        Request::SignStagedCrl(StagedCrlRequest {
            crl: CrlRequest {
                issuer: "issuing-2026".into(),
                crl_number: 18,
                this_update: 1_767_500_000,
                next_update: 1_767_586_400,
                entries: staged_entries[3..].to_vec().into(),
            },
            staged: 400_003,
        }),
    ));
    out.push((
        "request_read_crl",
        Request::ReadCrl {
            issuer: "issuing-2026".into(),
            crl_number: 18,
            offset: 8_388_608,
            length: 8_388_608,
        },
    ));
    out.push((
        "request_issue_certificate_for_intent",
        Request::IssueCertificateForIntent(IntentTemplate {
            intent: [0x1d; 16],
            template: CertificateTemplate {
                issuer: "issuing-2026".into(),
                profile: "server".into(),
                subject: dn("web.example.internal"),
                sans: vec![SubjectAltName::Dns("web.example.internal".into())],
                spki_der: vec![0x30, 0x59, 0x30, 0x13],
                validity: validity(),
                ca: false,
                urls: urls(),
            },
        }),
    ));
    out.push((
        "request_find_intents",
        Request::FindIntents(IntentQuery {
            since: 1_767_225_600_000,
            intents: vec![[0x1d; 16], [0x2e; 16]],
        }),
    ));
    out.push((
        "request_sign_ocsp_parameters_absent",
        Request::SignOcsp(OcspBatch {
            issuer: "issuing-2026".into(),
            produced_at: 1_767_500_000,
            responses: vec![OcspTemplate {
                singles: hashes[2..]
                    .iter()
                    .map(|hash| SingleStatus {
                        hash: *hash,
                        serial: vec![0x21],
                        status: CertStatus::Good,
                        this_update: 1_767_500_000,
                        next_update: Some(1_767_586_400),
                    })
                    .collect(),
                nonce: None,
            }],
        }),
    ));
    out.push((
        "request_ceremony_outcome",
        Request::CeremonyOutcome(CeremonyOutcomeQuery {
            ceremony_id: [0x3c; 16],
            parameters_sha256: [0x4d; 32],
        }),
    ));
    out.push(("request_last_checkpoint", Request::LastCheckpoint));
    out
}

fn responses() -> Vec<(&'static str, Response)> {
    let error_names = [
        "response_error_bad_request",
        "response_error_policy",
        "response_error_quorum_not_met",
        "response_error_quorum_invalid",
        "response_error_backend",
        "response_error_internal",
        "response_error_protocol",
    ];
    let mut out: Vec<(&'static str, Response)> = error_names
        .into_iter()
        .zip(error_kinds())
        .map(|(name, kind)| {
            (
                name,
                Response::Error(SignerError {
                    kind,
                    message: format!("{kind:?}: what failed and what to do next"),
                }),
            )
        })
        .collect();
    out.push((
        "response_status",
        Response::Status(StatusInfo {
            version: "0.1.0".into(),
            backend: "pkcs11".into(),
            seccomp: true,
            journal_records: 1234,
            journal_head: [0x9e; 32],
            ca_count: 3,
            custodian_threshold: 2,
            custodian_count: 3,
        }),
    ));
    out.push((
        "response_public_keys",
        Response::PublicKeys(PublicKeySet {
            audit_spki_der: vec![0x30, 0x59, 0x30, 0x13],
            audit_algorithm: Algorithm::EcdsaP256,
            cas: algorithms()
                .into_iter()
                .zip(ca_statuses().into_iter().cycle())
                .map(|(a, s)| ca_info(s, a))
                .collect(),
            responders: vec![ResponderInfo {
                issuer: "issuing-2026".into(),
                certificate_der: vec![0x30, 0x82, 0x01, 0x50],
            }],
            custodians: custodian_set(),
        }),
    ));
    out.push((
        "response_certificate",
        Response::Certificate(IssuedCertificate {
            der: vec![0x30, 0x82, 0x02, 0x44, 0x30, 0x82],
            serial: vec![0x5a, 0x17, 0x00, 0xff],
            journal_seq: 77,
        }),
    ));
    let outcome_names = [
        "response_ceremony_ca",
        "response_ceremony_cross_certificate",
        "response_ceremony_custodians",
    ];
    for (name, o) in outcome_names.into_iter().zip(ceremony_outcomes()) {
        out.push((name, Response::Ceremony(o)));
    }
    out.push((
        "response_crl",
        Response::Crl {
            der: vec![0x30, 0x82, 0x01, 0x99, 0x30, 0x81],
        },
    ));
    out.push((
        "response_ocsp",
        Response::Ocsp {
            responses: vec![vec![0x30, 0x82, 0x01, 0x10], vec![], vec![0x30, 0x03]],
        },
    ));
    out.push((
        "response_responder",
        Response::Responder(ResponderInfo {
            issuer: "issuing-2026".into(),
            certificate_der: vec![0x30, 0x82, 0x01, 0x51],
        }),
    ));
    out.push((
        "response_checkpoint",
        Response::Checkpoint(SignedCheckpoint {
            request: CheckpointRequest {
                sequence: 1234,
                head_hash: [0x9e; 32],
                time: 1_767_500_000,
            },
            signature: vec![0x30, 0x45, 0x02, 0x20],
        }),
    ));
    out.push((
        "response_journal",
        Response::Journal {
            records: journal_records(),
        },
    ));
    out.push((
        "response_crl_staged",
        Response::CrlStaged {
            crl_number: 18,
            staged: 400_003,
        },
    ));
    out.push((
        "response_crl_stored",
        Response::CrlStored {
            crl_number: 18,
            length: 45_000_123,
            sha256: [0x5e; 32],
        },
    ));
    out.push((
        "response_crl_part",
        Response::CrlPart {
            bytes: vec![0x30, 0x84, 0x02, 0xae, 0xa5, 0x40],
        },
    ));
    out.push((
        "response_intents_found",
        Response::IntentsFound {
            found: vec![IntentFound {
                intent: [0x1d; 16],
                issuer: "issuing-2026".into(),
                serial: vec![0x42, 0x01, 0x02],
                journal_seq: 70_000,
                time_ms: 1_767_225_601_000,
            }],
            in_progress: vec![[0x3f; 16]],
        },
    ));
    out.push((
        "response_last_checkpoint",
        Response::LastCheckpoint(Some(LastSignedCheckpoint {
            sequence: 1234,
            message_sha256: [0x6b; 32],
            request: Some(CheckpointRequest {
                sequence: 1234,
                head_hash: [0x9e; 32],
                time: 1_767_500_000,
            }),
            journaled_ms: 1_767_500_000_250,
        })),
    ));
    out.push((
        "response_last_checkpoint_after_restart",
        Response::LastCheckpoint(Some(LastSignedCheckpoint {
            sequence: 1234,
            message_sha256: [0x6b; 32],
            request: None,
            journaled_ms: 1_767_500_000_250,
        })),
    ));
    out.push((
        "response_last_checkpoint_none",
        Response::LastCheckpoint(None),
    ));
    out
}

// ---------------------------------------------------------------------------
// Golden files

const APPEND_ONLY: &str = "castellan-proto variants and fields are APPEND-ONLY: postcard tags \
     enum variants by position, so reordering, removing or retyping a variant or field \
     silently changes the wire format and breaks deployed peers. Restore the order, and \
     append new variants at the end";

enum Frame {
    Request(RequestFrame),
    Response(ResponseFrame),
}

impl Frame {
    fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Request(f) => encode_frame(f).unwrap(),
            Frame::Response(f) => encode_frame(f).unwrap(),
        }
    }

    /// Decodes `bytes` as the same kind of frame and compares.
    fn decodes_from(&self, bytes: &[u8]) -> Result<(), String> {
        let got = match self {
            Frame::Request(f) => {
                decode_frame::<RequestFrame>(bytes).map(|d| (d == *f, format!("{d:?}")))
            }
            Frame::Response(f) => {
                decode_frame::<ResponseFrame>(bytes).map(|d| (d == *f, format!("{d:?}")))
            }
        };
        match got {
            Ok((true, _)) => Ok(()),
            Ok((false, d)) => Err(format!("decodes to a different value: {d}")),
            Err(e) => Err(format!("does not decode: {e}")),
        }
    }
}

fn cases() -> Vec<(&'static str, Frame)> {
    // Ids of more than one varint octet are part of what is pinned.
    let mut out: Vec<(&'static str, Frame)> = requests()
        .into_iter()
        .enumerate()
        .map(|(i, (name, request))| {
            let id = if i % 2 == 0 {
                i as u64 + 1
            } else {
                300 + i as u64
            };
            (name, Frame::Request(RequestFrame { id, request }))
        })
        .collect();
    out.extend(
        responses()
            .into_iter()
            .enumerate()
            .map(|(i, (name, response))| {
                let id = if i % 2 == 0 {
                    i as u64 + 1
                } else {
                    70_000 + i as u64
                };
                (name, Frame::Response(ResponseFrame { id, response }))
            }),
    );
    out
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

fn blessing() -> bool {
    std::env::var_os("CASTELLAN_BLESS").is_some_and(|v| v == "1")
}

fn render(name: &str, bytes: &[u8]) -> String {
    let mut s = format!(
        "# castellan-proto golden frame `{name}` (protocol version {VERSION}, {} octets).\n\
         # Variants are append-only: these octets must never change. See tests/golden.rs.\n",
        bytes.len()
    );
    for chunk in bytes.chunks(32) {
        s.push_str(&hex::encode(chunk));
        s.push('\n');
    }
    s
}

fn parse(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    hex::decode(digits).map_err(|e| format!("not hex: {e}"))
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

#[test]
fn golden_frames_are_unchanged_because_variants_are_append_only() {
    let dir = golden_dir();
    let bless = blessing();
    if bless {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    let mut blessed = Vec::new();
    for (name, frame) in cases() {
        let path = dir.join(format!("{name}.hex"));
        let encoded = frame.encode();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && bless => {
                std::fs::write(&path, render(name, &encoded)).unwrap();
                blessed.push(name);
                continue;
            }
            Err(e) => {
                failures.push(format!(
                    "{name}: cannot read {}: {e}. A new case gets its golden file with \
                     CASTELLAN_BLESS=1 cargo test -p castellan-proto --test golden",
                    path.display()
                ));
                continue;
            }
        };
        let golden = match parse(&text) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: {}: {e}", path.display()));
                continue;
            }
        };
        if encoded != golden {
            let at = first_difference(&encoded, &golden);
            failures.push(format!(
                "{name}: encode_frame(value) differs from {} at octet {at}\n  golden:  {}\n  encoded: {}",
                path.display(),
                hex::encode(&golden),
                hex::encode(&encoded)
            ));
        }
        if let Err(e) = frame.decodes_from(&golden) {
            failures.push(format!("{name}: the golden frame {e}"));
        }
    }
    if !blessed.is_empty() {
        eprintln!("wrote golden files for: {}", blessed.join(", "));
    }
    assert!(
        failures.is_empty(),
        "{APPEND_ONLY}.\n\n{}\n\nIf you changed a test value on purpose (not a type), delete its \
         golden file and run CASTELLAN_BLESS=1 cargo test -p castellan-proto --test golden.",
        failures.join("\n\n")
    );
}

#[test]
fn every_golden_file_belongs_to_a_case() {
    // A golden file without a case means a case (and with it a variant's
    // coverage) was removed.
    let names: BTreeSet<String> = cases().iter().map(|(n, _)| format!("{n}.hex")).collect();
    assert_eq!(names.len(), cases().len(), "case names must be unique");
    let Ok(entries) = std::fs::read_dir(golden_dir()) else {
        assert!(blessing(), "tests/golden is missing");
        return;
    };
    for entry in entries {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".hex") {
            assert!(
                names.contains(&name),
                "tests/golden/{name} has no case in tests/golden.rs: {APPEND_ONLY}"
            );
        }
    }
}

#[test]
fn golden_frames_carry_the_frame_header() {
    for (name, frame) in cases() {
        let bytes = frame.encode();
        assert_eq!(bytes[..4], MAGIC, "{name}");
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), VERSION, "{name}");
        let len = u32::from_le_bytes(bytes[6..10].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - HEADER_LEN, "{name}");
    }
}

// ---------------------------------------------------------------------------
// Coverage: every variant of every wire enum has a golden case.

/// postcard's tag of an enum value: its first octet (all tags here are < 128,
/// one varint octet).
fn tag<T: Serialize>(v: &T) -> u8 {
    let bytes = postcard::to_stdvec(v).unwrap();
    assert!(bytes[0] < 0x80, "more than 127 variants: update this test");
    bytes[0]
}

/// Checks that `values` hold variants 0..n in order, and that the type has
/// no variant n: postcard reports an unknown variant index as a custom serde
/// error, while a known one decodes or runs out of input.
fn assert_covers_every_variant<T: Serialize + DeserializeOwned>(type_name: &str, values: &[T]) {
    let tags: Vec<u8> = values.iter().map(tag).collect();
    let expected: Vec<u8> = (0..values.len() as u8).collect();
    assert_eq!(
        tags, expected,
        "{type_name}: the representative values must be one per variant, in variant order"
    );
    let next = values.len() as u8;
    match postcard::from_bytes::<T>(&[next]) {
        Err(postcard::Error::SerdeDeCustom) => {}
        _ => panic!(
            "{type_name} has a variant #{next} without a golden case: append a value for it to \
             the list in tests/golden.rs and bless its file ({APPEND_ONLY})"
        ),
    }
}

#[test]
fn every_request_variant_has_a_golden_case() {
    let all: Vec<Request> = requests().into_iter().map(|(_, r)| r).collect();
    // Ceremony appears once per CeremonyOp; keep one per Request variant.
    let mut seen = BTreeSet::new();
    let one_each: Vec<Request> = all.into_iter().filter(|r| seen.insert(tag(r))).collect();
    assert_covers_every_variant("Request", &one_each);
}

#[test]
fn every_response_variant_has_a_golden_case() {
    let all: Vec<Response> = responses().into_iter().map(|(_, r)| r).collect();
    let mut seen = BTreeSet::new();
    let one_each: Vec<Response> = all.into_iter().filter(|r| seen.insert(tag(r))).collect();
    assert_covers_every_variant("Response", &one_each);
}

#[test]
fn every_nested_enum_variant_has_a_golden_case() {
    assert_covers_every_variant("Algorithm", &algorithms());
    assert_covers_every_variant("NameAttribute", &name_attributes());
    assert_covers_every_variant("SubjectAltName", &subject_alt_names());
    assert_covers_every_variant("CeremonyOp", &ceremony_ops());
    assert_covers_every_variant("RevocationReason", &revocation_reasons());
    assert_covers_every_variant("CertIdHash", &cert_id_hashes());
    assert_covers_every_variant("CertStatus", &cert_statuses());
    assert_covers_every_variant("ErrorKind", &error_kinds());
    assert_covers_every_variant("CaStatus", &ca_statuses());
    assert_covers_every_variant("SignatureKind", &signature_kinds());
    assert_covers_every_variant("SignedSubject", &signed_subjects());
    assert_covers_every_variant("CeremonyOutcome", &ceremony_outcomes());
}
