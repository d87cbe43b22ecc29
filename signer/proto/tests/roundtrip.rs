//! Property tests of the framing and of every wire type: any value survives
//! `encode_frame` → `decode_frame`, and malformed input of every shape is
//! refused with the right error and never panics.

use std::io::Read;

use castellan_proto::frame::{
    HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION, decode_payload, read_payload,
};
use castellan_proto::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Strategies, one per wire type, covering every enum variant.

fn text() -> impl Strategy<Value = String> {
    // Multi-byte characters included: lengths are counted in octets.
    "[a-z0-9.:/_ é€-]{0,12}"
}

fn octets() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..24)
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::EcdsaP256),
        Just(Algorithm::EcdsaP384),
        Just(Algorithm::Rsa3072),
    ]
}

fn name_attribute() -> impl Strategy<Value = NameAttribute> {
    prop_oneof![
        text().prop_map(NameAttribute::CommonName),
        text().prop_map(NameAttribute::Organization),
        text().prop_map(NameAttribute::OrganizationalUnit),
        text().prop_map(NameAttribute::Country),
        text().prop_map(NameAttribute::Locality),
        text().prop_map(NameAttribute::State),
        text().prop_map(NameAttribute::SerialNumber),
        text().prop_map(NameAttribute::DomainComponent),
    ]
}

fn dn() -> impl Strategy<Value = DistinguishedName> {
    vec(name_attribute(), 0..4).prop_map(DistinguishedName)
}

fn san() -> impl Strategy<Value = SubjectAltName> {
    prop_oneof![
        text().prop_map(SubjectAltName::Dns),
        octets().prop_map(SubjectAltName::Ip),
        text().prop_map(SubjectAltName::Email),
        text().prop_map(SubjectAltName::Uri),
    ]
}

fn validity() -> impl Strategy<Value = Validity> {
    (any::<i64>(), any::<i64>()).prop_map(|(not_before, not_after)| Validity {
        not_before,
        not_after,
    })
}

fn urls() -> impl Strategy<Value = Urls> {
    (vec(text(), 0..3), vec(text(), 0..3), vec(text(), 0..3)).prop_map(|(ocsp, ca_issuers, crl)| {
        Urls {
            ocsp,
            ca_issuers,
            crl,
        }
    })
}

fn template() -> impl Strategy<Value = CertificateTemplate> {
    (
        text(),
        text(),
        dn(),
        vec(san(), 0..4),
        octets(),
        validity(),
        any::<bool>(),
        urls(),
    )
        .prop_map(
            |(issuer, profile, subject, sans, spki_der, validity, ca, urls)| CertificateTemplate {
                issuer,
                profile,
                subject,
                sans,
                spki_der,
                validity,
                ca,
                urls,
            },
        )
}

fn ca_params() -> impl Strategy<Value = CaParams> {
    (
        text(),
        option::of(text()),
        algorithm(),
        dn(),
        validity(),
        option::of(any::<u8>()),
        urls(),
    )
        .prop_map(
            |(ca_id, parent, algorithm, subject, validity, path_len, urls)| CaParams {
                ca_id,
                parent,
                algorithm,
                subject,
                validity,
                path_len,
                urls,
            },
        )
}

fn rotate_params() -> impl Strategy<Value = RotateParams> {
    (
        text(),
        text(),
        algorithm(),
        dn(),
        validity(),
        option::of(any::<u8>()),
        urls(),
    )
        .prop_map(
            |(ca_id, new_ca_id, algorithm, subject, validity, path_len, urls)| RotateParams {
                ca_id,
                new_ca_id,
                algorithm,
                subject,
                validity,
                path_len,
                urls,
            },
        )
}

fn cross_sign_params() -> impl Strategy<Value = CrossSignParams> {
    (
        text(),
        octets(),
        validity(),
        option::of(any::<u8>()),
        urls(),
    )
        .prop_map(
            |(issuer, subject_certificate_der, validity, path_len, urls)| CrossSignParams {
                issuer,
                subject_certificate_der,
                validity,
                path_len,
                urls,
            },
        )
}

fn custodian_set() -> impl Strategy<Value = CustodianSet> {
    (
        any::<u8>(),
        vec(
            (text(), any::<[u8; 32]>())
                .prop_map(|(name, public_key)| Custodian { name, public_key }),
            0..4,
        ),
    )
        .prop_map(|(threshold, custodians)| CustodianSet {
            threshold,
            custodians,
        })
}

fn ceremony_op() -> impl Strategy<Value = CeremonyOp> {
    prop_oneof![
        ca_params().prop_map(CeremonyOp::CreateRoot),
        ca_params().prop_map(CeremonyOp::CreateIntermediate),
        rotate_params().prop_map(CeremonyOp::Rotate),
        cross_sign_params().prop_map(CeremonyOp::CrossSign),
        custodian_set().prop_map(CeremonyOp::ChangeCustodians),
    ]
}

fn quorum_proof() -> impl Strategy<Value = QuorumProof> {
    (
        any::<[u8; 16]>(),
        vec(
            (any::<[u8; 32]>(), vec(any::<u8>(), 0..70)).prop_map(|(custodian, signature)| {
                Approval {
                    custodian,
                    signature,
                }
            }),
            0..3,
        ),
    )
        .prop_map(|(ceremony_id, approvals)| QuorumProof {
            ceremony_id,
            approvals,
        })
}

fn reason() -> impl Strategy<Value = RevocationReason> {
    proptest::sample::select(RevocationReason::ALL.to_vec())
}

fn crl_entry() -> impl Strategy<Value = CrlEntry> {
    (
        octets(),
        any::<i64>(),
        option::of(reason()),
        option::of(any::<i64>()),
    )
        .prop_map(|(serial, revoked_at, reason, invalidity_date)| CrlEntry {
            serial,
            revoked_at,
            reason,
            invalidity_date,
        })
}

fn crl_chunk() -> impl Strategy<Value = CrlChunk> {
    (text(), any::<u64>(), any::<u64>(), vec(crl_entry(), 0..4)).prop_map(
        |(issuer, crl_number, offset, entries)| CrlChunk {
            issuer,
            crl_number,
            offset,
            entries: entries.into(),
        },
    )
}

fn crl_request() -> impl Strategy<Value = CrlRequest> {
    (
        text(),
        any::<u64>(),
        any::<i64>(),
        any::<i64>(),
        vec(crl_entry(), 0..4),
    )
        .prop_map(
            |(issuer, crl_number, this_update, next_update, entries)| CrlRequest {
                issuer,
                crl_number,
                this_update,
                next_update,
                entries: entries.into(),
            },
        )
}

fn cert_status() -> impl Strategy<Value = CertStatus> {
    prop_oneof![
        Just(CertStatus::Good),
        (any::<i64>(), option::of(reason()))
            .prop_map(|(at, reason)| CertStatus::Revoked { at, reason }),
        Just(CertStatus::Unknown),
    ]
}

fn ocsp_batch() -> impl Strategy<Value = OcspBatch> {
    let hash = prop_oneof![
        Just(CertIdHash::Sha1),
        Just(CertIdHash::Sha256),
        Just(CertIdHash::Sha1NoParams),
        Just(CertIdHash::Sha256NoParams),
    ];
    let single = (
        hash,
        octets(),
        cert_status(),
        any::<i64>(),
        option::of(any::<i64>()),
    )
        .prop_map(
            |(hash, serial, status, this_update, next_update)| SingleStatus {
                hash,
                serial,
                status,
                this_update,
                next_update,
            },
        );
    let template = (vec(single, 0..3), option::of(octets()))
        .prop_map(|(singles, nonce)| OcspTemplate { singles, nonce });
    (text(), any::<i64>(), vec(template, 0..3)).prop_map(|(issuer, produced_at, responses)| {
        OcspBatch {
            issuer,
            produced_at,
            responses,
        }
    })
}

fn checkpoint_request() -> impl Strategy<Value = CheckpointRequest> {
    (any::<u64>(), any::<[u8; 32]>(), any::<i64>()).prop_map(|(sequence, head_hash, time)| {
        CheckpointRequest {
            sequence,
            head_hash,
            time,
        }
    })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Status),
        Just(Request::PublicKeys),
        template().prop_map(Request::IssueCertificate),
        (ceremony_op(), quorum_proof()).prop_map(|(op, proof)| Request::Ceremony { op, proof }),
        crl_request().prop_map(Request::SignCrl),
        ocsp_batch().prop_map(Request::SignOcsp),
        (text(), validity(), algorithm()).prop_map(|(issuer, validity, algorithm)| {
            Request::RotateOcspResponder(ResponderParams {
                issuer,
                validity,
                algorithm,
            })
        }),
        checkpoint_request().prop_map(Request::SignCheckpoint),
        (any::<i64>(), any::<i64>())
            .prop_map(|(since, until)| Request::ExportJournal(JournalWindow { since, until })),
        crl_chunk().prop_map(Request::StageCrlEntries),
        (crl_request(), any::<u64>())
            .prop_map(|(crl, staged)| Request::SignStagedCrl(StagedCrlRequest { crl, staged })),
        (text(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(issuer, crl_number, offset, length)| Request::ReadCrl {
                issuer,
                crl_number,
                offset,
                length,
            }
        ),
        (any::<[u8; 16]>(), template()).prop_map(|(intent, template)| {
            Request::IssueCertificateForIntent(IntentTemplate { intent, template })
        }),
        (
            any::<i64>(),
            proptest::collection::vec(any::<[u8; 16]>(), 0..8)
        )
            .prop_map(|(since, intents)| Request::FindIntents(IntentQuery { since, intents })),
        (any::<[u8; 16]>(), any::<[u8; 32]>()).prop_map(|(ceremony_id, parameters_sha256)| {
            Request::CeremonyOutcome(CeremonyOutcomeQuery {
                ceremony_id,
                parameters_sha256,
            })
        }),
        Just(Request::LastCheckpoint),
    ]
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    proptest::sample::select(vec![
        ErrorKind::BadRequest,
        ErrorKind::Policy,
        ErrorKind::QuorumNotMet,
        ErrorKind::QuorumInvalid,
        ErrorKind::Backend,
        ErrorKind::Internal,
        ErrorKind::Protocol,
    ])
}

fn ca_info() -> impl Strategy<Value = CaInfo> {
    let status = prop_oneof![Just(CaStatus::Active), Just(CaStatus::Retired)];
    (text(), option::of(text()), algorithm(), status, octets()).prop_map(
        |(ca_id, parent, algorithm, status, certificate_der)| CaInfo {
            ca_id,
            parent,
            algorithm,
            status,
            certificate_der,
        },
    )
}

fn responder_info() -> impl Strategy<Value = ResponderInfo> {
    (text(), octets()).prop_map(|(issuer, certificate_der)| ResponderInfo {
        issuer,
        certificate_der,
    })
}

fn issued() -> impl Strategy<Value = IssuedCertificate> {
    (octets(), octets(), any::<u64>()).prop_map(|(der, serial, journal_seq)| IssuedCertificate {
        der,
        serial,
        journal_seq,
    })
}

fn journal_record() -> impl Strategy<Value = JournalRecord> {
    let kind = proptest::sample::select(vec![
        SignatureKind::Certificate,
        SignatureKind::CaCertificate,
        SignatureKind::CrossCertificate,
        SignatureKind::ResponderCertificate,
        SignatureKind::Crl,
        SignatureKind::Ocsp,
        SignatureKind::Checkpoint,
        SignatureKind::CustodianChange,
    ]);
    let subject = prop_oneof![
        Just(SignedSubject::None),
        octets().prop_map(SignedSubject::Serial),
        any::<u64>().prop_map(SignedSubject::CrlNumber),
        any::<u64>().prop_map(SignedSubject::Checkpoint),
    ];
    (
        any::<u64>(),
        any::<i64>(),
        kind,
        text(),
        subject,
        any::<[u8; 32]>(),
        option::of(any::<[u8; 16]>()),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(seq, time_ms, kind, key_id, subject, tbs_sha256, ceremony_id, prev_hash, hash)| {
                JournalRecord {
                    seq,
                    time_ms,
                    kind,
                    key_id,
                    subject,
                    tbs_sha256,
                    ceremony_id,
                    prev_hash,
                    hash,
                }
            },
        )
}

fn response() -> impl Strategy<Value = Response> {
    let status = (
        text(),
        text(),
        any::<bool>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(
            |(
                version,
                backend,
                seccomp,
                journal_records,
                journal_head,
                ca_count,
                custodian_threshold,
                custodian_count,
            )| StatusInfo {
                version,
                backend,
                seccomp,
                journal_records,
                journal_head,
                ca_count,
                custodian_threshold,
                custodian_count,
            },
        );
    let keys = (
        octets(),
        algorithm(),
        vec(ca_info(), 0..3),
        vec(responder_info(), 0..2),
        custodian_set(),
    )
        .prop_map(
            |(audit_spki_der, audit_algorithm, cas, responders, custodians)| PublicKeySet {
                audit_spki_der,
                audit_algorithm,
                cas,
                responders,
                custodians,
            },
        );
    let outcome = prop_oneof![
        ca_info().prop_map(CeremonyOutcome::Ca),
        issued().prop_map(CeremonyOutcome::CrossCertificate),
        custodian_set().prop_map(CeremonyOutcome::Custodians),
    ];
    prop_oneof![
        (error_kind(), text())
            .prop_map(|(kind, message)| Response::Error(SignerError { kind, message })),
        status.prop_map(Response::Status),
        keys.prop_map(Response::PublicKeys),
        issued().prop_map(Response::Certificate),
        outcome.prop_map(Response::Ceremony),
        octets().prop_map(|der| Response::Crl { der }),
        vec(octets(), 0..3).prop_map(|responses| Response::Ocsp { responses }),
        responder_info().prop_map(Response::Responder),
        (checkpoint_request(), octets()).prop_map(|(request, signature)| Response::Checkpoint(
            SignedCheckpoint { request, signature }
        )),
        vec(journal_record(), 0..3).prop_map(|records| Response::Journal { records }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(crl_number, staged)| Response::CrlStaged { crl_number, staged }),
        (any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(crl_number, length, sha256)| {
            Response::CrlStored {
                crl_number,
                length,
                sha256,
            }
        }),
        octets().prop_map(|bytes| Response::CrlPart { bytes }),
        (
            proptest::collection::vec(
                (
                    any::<[u8; 16]>(),
                    text(),
                    octets(),
                    any::<u64>(),
                    any::<i64>()
                ),
                0..4
            ),
            proptest::collection::vec(any::<[u8; 16]>(), 0..4),
        )
            .prop_map(|(found, in_progress)| Response::IntentsFound {
                found: found
                    .into_iter()
                    .map(
                        |(intent, issuer, serial, journal_seq, time_ms)| IntentFound {
                            intent,
                            issuer,
                            serial,
                            journal_seq,
                            time_ms,
                        }
                    )
                    .collect(),
                in_progress,
            }),
        proptest::option::of(
            (
                any::<u64>(),
                any::<[u8; 32]>(),
                proptest::option::of(checkpoint_request()),
                any::<i64>()
            )
                .prop_map(|(sequence, message_sha256, request, journaled_ms)| {
                    LastSignedCheckpoint {
                        sequence,
                        message_sha256,
                        request,
                        journaled_ms,
                    }
                })
        )
        .prop_map(Response::LastCheckpoint),
    ]
}

fn request_frame() -> impl Strategy<Value = RequestFrame> {
    (any::<u64>(), request()).prop_map(|(id, request)| RequestFrame { id, request })
}

fn response_frame() -> impl Strategy<Value = ResponseFrame> {
    (any::<u64>(), response()).prop_map(|(id, response)| ResponseFrame { id, response })
}

// ---------------------------------------------------------------------------
// Readers

/// Hands out one octet per read, with an `Interrupted` error before every
/// third one, as a slow socket might.
struct Trickle<'a> {
    data: &'a [u8],
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        match (self.data.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.data = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

/// Serves a header, then fails the test if anything reads further: a
/// refused header must be refused before the payload is allocated or read.
struct HeaderOnly {
    header: [u8; HEADER_LEN],
    pos: usize,
}

impl Read for HeaderOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(
            self.pos < HEADER_LEN,
            "read_payload read past a header it should have refused"
        );
        let n = buf.len().min(HEADER_LEN - self.pos);
        buf[..n].copy_from_slice(&self.header[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn header(version: u16, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&version.to_le_bytes());
    h[6..].copy_from_slice(&len.to_le_bytes());
    h
}

fn with_header(payload: &[u8]) -> Vec<u8> {
    let mut f = header(VERSION, payload.len() as u32).to_vec();
    f.extend_from_slice(payload);
    f
}

// ---------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_request_frame_survives_encode_then_decode(f in request_frame()) {
        let bytes = encode_frame(&f).unwrap();
        prop_assert_eq!(decode_frame::<RequestFrame>(&bytes).unwrap(), f.clone());
        prop_assert_eq!(read_frame::<_, RequestFrame>(&mut bytes.as_slice()).unwrap(), f);
    }

    #[test]
    fn every_response_frame_survives_encode_then_decode(f in response_frame()) {
        let bytes = encode_frame(&f).unwrap();
        prop_assert_eq!(decode_frame::<ResponseFrame>(&bytes).unwrap(), f.clone());
        prop_assert_eq!(read_frame::<_, ResponseFrame>(&mut bytes.as_slice()).unwrap(), f);
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode_frame::<RequestFrame>(&bytes);
        let _ = decode_frame::<ResponseFrame>(&bytes);
        let _ = read_payload(&mut bytes.as_slice());
    }

    #[test]
    fn random_payloads_behind_a_valid_header_never_panic_and_reencode(
        payload in vec(any::<u8>(), 0..512)
    ) {
        let frame = with_header(&payload);
        if let Ok(f) = decode_frame::<RequestFrame>(&frame) {
            let again = encode_frame(&f).unwrap();
            prop_assert_eq!(decode_frame::<RequestFrame>(&again).unwrap(), f);
        }
        if let Ok(f) = decode_frame::<ResponseFrame>(&frame) {
            let again = encode_frame(&f).unwrap();
            prop_assert_eq!(decode_frame::<ResponseFrame>(&again).unwrap(), f);
        }
    }

    #[test]
    fn a_mutated_valid_frame_never_panics_the_decoder(
        f in request_frame(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
    ) {
        let mut bytes = encode_frame(&f).unwrap();
        // Mutate only the payload, so the decoder itself is exercised.
        if bytes.len() > HEADER_LEN {
            for (i, x) in flips {
                let at = HEADER_LEN + i.index(bytes.len() - HEADER_LEN);
                bytes[at] ^= x;
            }
        }
        let _ = decode_frame::<RequestFrame>(&bytes);
        let _ = decode_frame::<ResponseFrame>(&bytes);
    }

    #[test]
    fn a_truncated_frame_is_reported_as_truncated(
        f in request_frame(),
        cut in any::<prop::sample::Index>()
    ) {
        let bytes = encode_frame(&f).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert_eq!(decode_frame::<RequestFrame>(&bytes[..cut]), Err(FrameError::Truncated));
        let expect = if cut == 0 { FrameError::Closed } else { FrameError::Truncated };
        prop_assert_eq!(read_payload(&mut &bytes[..cut]), Err(expect));
    }

    #[test]
    fn another_protocol_version_is_refused(
        f in response_frame(),
        version in any::<u16>().prop_filter("not ours", |v| *v != VERSION)
    ) {
        let mut bytes = encode_frame(&f).unwrap();
        bytes[4..6].copy_from_slice(&version.to_le_bytes());
        prop_assert_eq!(
            decode_frame::<ResponseFrame>(&bytes),
            Err(FrameError::UnsupportedVersion(version))
        );
        prop_assert_eq!(
            read_payload(&mut bytes.as_slice()),
            Err(FrameError::UnsupportedVersion(version))
        );
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating(
        len in (MAX_PAYLOAD + 1)..=u32::MAX,
        extra in vec(any::<u8>(), 0..32)
    ) {
        let h = header(VERSION, len);
        let mut bytes = h.to_vec();
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(decode_frame::<RequestFrame>(&bytes), Err(FrameError::TooLarge(len)));
        // The only allocation in read_payload comes after the header check;
        // HeaderOnly fails the test if the payload is even read.
        let mut r = HeaderOnly { header: h, pos: 0 };
        prop_assert_eq!(read_payload(&mut r), Err(FrameError::TooLarge(len)));
    }

    #[test]
    fn bytes_after_the_frame_are_trailing_bytes(
        f in request_frame(),
        extra in vec(any::<u8>(), 1..64)
    ) {
        let mut bytes = encode_frame(&f).unwrap();
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(
            decode_frame::<RequestFrame>(&bytes),
            Err(FrameError::TrailingBytes(extra.len()))
        );
    }

    #[test]
    fn bytes_after_the_message_inside_the_payload_are_trailing_bytes(
        f in response_frame(),
        extra in vec(any::<u8>(), 1..64)
    ) {
        let mut payload = encode_frame(&f).unwrap()[HEADER_LEN..].to_vec();
        payload.extend_from_slice(&extra);
        prop_assert_eq!(
            decode_frame::<ResponseFrame>(&with_header(&payload)),
            Err(FrameError::TrailingBytes(extra.len()))
        );
        prop_assert_eq!(
            decode_payload::<ResponseFrame>(&payload),
            Err(FrameError::TrailingBytes(extra.len()))
        );
    }

    #[test]
    fn a_bad_magic_is_refused(f in request_frame(), magic in any::<[u8; 4]>()) {
        prop_assume!(magic != MAGIC);
        let mut bytes = encode_frame(&f).unwrap();
        bytes[..4].copy_from_slice(&magic);
        prop_assert_eq!(decode_frame::<RequestFrame>(&bytes), Err(FrameError::BadMagic));
        prop_assert_eq!(read_payload(&mut bytes.as_slice()), Err(FrameError::BadMagic));
    }

    #[test]
    fn frames_read_one_octet_at_a_time_arrive_intact(
        frames in vec(request_frame(), 1..4)
    ) {
        let mut stream = Vec::new();
        for f in &frames {
            write_frame(&mut stream, f).unwrap();
        }
        let mut r = Trickle { data: &stream, calls: 0 };
        for f in &frames {
            prop_assert_eq!(&read_frame::<_, RequestFrame>(&mut r).unwrap(), f);
        }
        prop_assert_eq!(read_payload(&mut r), Err(FrameError::Closed));
    }
}

#[test]
fn a_stream_ending_inside_a_frame_is_truncated_not_closed() {
    let bytes = encode_frame(&RequestFrame {
        id: 1,
        request: Request::Status,
    })
    .unwrap();
    assert_eq!(read_payload(&mut &bytes[..0]), Err(FrameError::Closed));
    for cut in 1..bytes.len() {
        let mut r = Trickle {
            data: &bytes[..cut],
            calls: 0,
        };
        assert_eq!(
            read_payload(&mut r),
            Err(FrameError::Truncated),
            "cut at {cut}"
        );
    }
}

#[test]
fn the_largest_allowed_length_passes_the_header_check() {
    let h = header(VERSION, MAX_PAYLOAD);
    assert_eq!(frame::parse_header(&h), Ok(MAX_PAYLOAD as usize));
    assert_eq!(
        frame::parse_header(&header(VERSION, MAX_PAYLOAD + 1)),
        Err(FrameError::TooLarge(MAX_PAYLOAD + 1))
    );
}
