//! The signer's acceptance suite: every scenario runs once per key backend
//! (software store and SoftHSM2) against the real `castellan-signer`
//! binary, under its seccomp filter, over its real Unix socket, and what it
//! signs is checked with the real `openssl` CLI.
//!
//! Scenarios are functions of a [`Backend`]; `per_backend!` turns each into
//! `soft::<scenario>` and `softhsm::<scenario>` tests.
//!
//! The seccomp self-test (`--danger-seccomp-selftest` dies by SIGSYS) lives
//! in `tests/seccomp.rs` and is not repeated here.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use castellan_proto::frame::{HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};
use castellan_proto::{
    Algorithm, CeremonyOp, CeremonyOutcome, CertIdHash, CertStatus, CheckpointRequest, CrlChunk,
    CrlEntry, CrlRequest, ErrorKind, FrameError, JournalRecord, JournalWindow, MAX_CRL_PART,
    MAX_INLINE_CRL, OcspBatch, OcspTemplate, QuorumProof, Request, RequestFrame, ResponderParams,
    Response, ResponseFrame, RevocationReason, SignatureKind, SignedSubject, SignerError,
    SingleStatus, StagedCrlRequest, checkpoint_message, crl_chunks, decode_frame, encode_frame,
    read_frame,
};
use common::{
    Backend, Conn, SignerProcess, all_text, ceremony_id, describe, intermediate_params, now,
    openssl, outsider_key, root_params, run_bounded, server_template, validity,
};

const P256: Algorithm = Algorithm::EcdsaP256;

/// Generates `soft::<name>` and `softhsm::<name>` for every scenario.
macro_rules! per_backend {
    ($($scenario:ident),+ $(,)?) => {
        mod soft {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::Soft)
                }
            )+
        }
        mod softhsm {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::SoftHsm)
                }
            )+
        }
    };
}

per_backend!(
    a_server_leaf_from_a_quorum_made_root_and_intermediate_verifies_with_openssl,
    ceremonies_without_a_valid_quorum_are_refused_each_with_its_own_reason,
    an_executed_ceremony_stays_spent_after_a_restart,
    issuance_outside_policy_is_refused_and_signs_nothing,
    crl_numbers_only_increase_and_openssl_checks_revocation_against_the_crl,
    crl_numbers_stay_monotonic_across_a_restart,
    a_crl_too_large_for_one_frame_is_staged_signed_once_and_read_back_whole,
    a_staged_crl_that_does_not_line_up_is_refused_and_says_what_to_do,
    ocsp_responses_for_good_and_revoked_leaves_verify_with_openssl,
    an_ocsp_cert_id_asked_in_sha256_is_answered_in_sha256,
    every_signature_is_journaled_exactly_once,
    a_flipped_byte_in_a_journal_copy_is_named_by_journal_verify,
    a_journal_export_by_time_window_returns_exactly_the_signatures_made_in_it,
    a_peer_with_another_uid_is_refused_and_logged_and_the_daemon_uid_is_still_served,
    malformed_frames_close_only_their_own_connection,
    the_signer_signs_under_its_seccomp_filter,
    an_rsa_3072_root_works_on_a_token_and_is_refused_by_the_soft_store,
);

fn expect_kind(e: &SignerError, kind: ErrorKind, needle: &str, what: &str) {
    assert_eq!(
        e.kind, kind,
        "{what}: wrong error kind; message: {}",
        e.message
    );
    assert!(
        e.message.contains(needle),
        "{what}: the message should contain {needle:?}: {}",
        e.message
    );
}

fn serial_hex(serial: &[u8]) -> String {
    hex::encode_upper(serial)
}

/// The signer's own root + intermediate and two P-256 server leaves, as PEM
/// files: root.pem, inter.pem, chain.pem (root then intermediate),
/// good.pem, revoked.pem.
struct Issued {
    good: castellan_proto::IssuedCertificate,
    revoked: castellan_proto::IssuedCertificate,
}

fn pki_with_two_leaves(s: &mut SignerProcess) -> Issued {
    let pki = s.pki(P256, P256);
    let good = s.issue(server_template("inter", "good.suite.test"));
    let revoked = s.issue(server_template("inter", "revoked.suite.test"));
    s.write_pem("root.pem", "CERTIFICATE", &pki.root.certificate_der);
    s.write_pem("inter.pem", "CERTIFICATE", &pki.inter.certificate_der);
    s.write_pem_bundle(
        "chain.pem",
        &[&pki.root.certificate_der, &pki.inter.certificate_der],
    );
    s.write_pem("good.pem", "CERTIFICATE", &good.der);
    s.write_pem("revoked.pem", "CERTIFICATE", &revoked.der);
    Issued { good, revoked }
}

// ---------------------------------------------------------------- 1. issuance

fn a_server_leaf_from_a_quorum_made_root_and_intermediate_verifies_with_openssl(b: Backend) {
    let mut s = SignerProcess::start(b);
    let pki = s.pki(P256, P256);
    let leaf = s.issue(server_template("inter", "web.suite.test"));
    s.write_pem("root.pem", "CERTIFICATE", &pki.root.certificate_der);
    s.write_pem("inter.pem", "CERTIFICATE", &pki.inter.certificate_der);
    s.write_pem("leaf.pem", "CERTIFICATE", &leaf.der);
    let dir = s.dir.path().to_path_buf();

    let out = openssl(
        &dir,
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "inter.pem",
            "-purpose",
            "sslserver",
            "leaf.pem",
        ],
    );
    assert!(
        out.status.success() && all_text(&out).contains("leaf.pem: OK"),
        "openssl verify of the chain failed\n{}",
        describe(&out)
    );

    let out = openssl(
        &dir,
        &["x509", "-in", "leaf.pem", "-noout", "-text", "-serial"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = all_text(&out);
    for needle in [
        "CA:FALSE",
        "TLS Web Server Authentication",
        "DNS:web.suite.test",
        "ASN1 OID: prime256v1",
        "ecdsa-with-SHA256",
    ] {
        assert!(text.contains(needle), "the leaf lacks {needle:?}:\n{text}");
    }
    assert!(
        text.contains(&format!("serial={}", serial_hex(&leaf.serial))),
        "the serial the signer reported is not the certificate's:\n{text}"
    );
    assert!(!text.contains("CA:TRUE"), "the leaf is a CA:\n{text}");

    let out = openssl(&dir, &["x509", "-in", "inter.pem", "-noout", "-text"]);
    let text = all_text(&out);
    assert!(
        text.contains("CA:TRUE, pathlen:0") && text.contains("Certificate Sign, CRL Sign"),
        "the intermediate is not a path-length-0 CA:\n{text}"
    );
}

// ----------------------------------------------------------------- 2. quorum

fn ceremonies_without_a_valid_quorum_are_refused_each_with_its_own_reason(b: Backend) {
    let mut s = SignerProcess::start(b);
    let op = CeremonyOp::CreateRoot(root_params("root", P256));

    let e = s
        .ceremony(op.clone(), &[])
        .expect_err("no approvals must be refused");
    expect_kind(
        &e,
        ErrorKind::QuorumNotMet,
        "quorum not met: 0 of 2",
        "no approvals",
    );

    let e = s
        .ceremony(op.clone(), &[1])
        .expect_err("m-1 approvals must be refused");
    expect_kind(
        &e,
        ErrorKind::QuorumNotMet,
        "quorum not met: 1 of 2",
        "one of two approvals",
    );

    let e = s
        .ceremony(op.clone(), &[1, 1])
        .expect_err("a custodian counted twice must be refused");
    expect_kind(
        &e,
        ErrorKind::QuorumInvalid,
        "appears twice",
        "duplicated custodian",
    );

    let id = ceremony_id();
    let mut proof = s.custodians.proof(id, &op, &[0, 1]);
    proof
        .approvals
        .push(s.custodians.approval_by(&outsider_key(), &id, &op));
    let e = s
        .ceremony_with(op.clone(), proof)
        .expect_err("an approval by a stranger must be refused");
    expect_kind(
        &e,
        ErrorKind::QuorumInvalid,
        "not in the signer's custodian set",
        "custodian outside the set",
    );

    // Approvals of op A presented with op B.
    let id = ceremony_id();
    let approved_for_a = s.custodians.proof(id, &op, &[0, 1]);
    let op_b = CeremonyOp::CreateRoot(root_params("another-root", P256));
    let e = s
        .ceremony_with(op_b, approved_for_a)
        .expect_err("approvals of other parameters must be refused");
    expect_kind(
        &e,
        ErrorKind::QuorumInvalid,
        "different parameters",
        "signature over different parameters",
    );

    let st = s.status();
    assert_eq!(
        (st.ca_count, st.journal_records),
        (0, 0),
        "a refused ceremony created or signed something: {st:?}"
    );

    let id = ceremony_id();
    let proof = s.custodians.proof(id, &op, &[0, 1]);
    match s.ceremony_with(op.clone(), proof.clone()) {
        Ok(CeremonyOutcome::Ca(info)) => assert_eq!(info.ca_id, "root"),
        other => panic!("a valid 2-of-3 root ceremony failed: {other:?}"),
    }
    let e = s
        .ceremony_with(op, proof)
        .expect_err("a replayed ceremony must be refused");
    expect_kind(
        &e,
        ErrorKind::QuorumInvalid,
        "already executed",
        "reused ceremony id",
    );
    assert_eq!(s.status().ca_count, 1);
}

fn an_executed_ceremony_stays_spent_after_a_restart(b: Backend) {
    let mut s = SignerProcess::start(b);
    let op = CeremonyOp::CreateRoot(root_params("root", P256));
    let id = ceremony_id();
    let proof = s.custodians.proof(id, &op, &[1, 2]);
    s.ceremony_with(op.clone(), proof.clone())
        .unwrap_or_else(|e| panic!("root ceremony refused: {}", e.message));

    s.restart();

    let e = s
        .ceremony_with(op, proof)
        .expect_err("a ceremony replayed after a restart must be refused");
    expect_kind(
        &e,
        ErrorKind::QuorumInvalid,
        "already executed",
        "replay after restart",
    );
    // The same id re-approved for other parameters is spent too.
    let other = CeremonyOp::CreateRoot(root_params("root-two", P256));
    let proof = s.custodians.proof(id, &other, &[0, 1]);
    let e = s
        .ceremony_with(other, proof)
        .expect_err("a spent ceremony id must not authorise anything else");
    expect_kind(
        &e,
        ErrorKind::QuorumInvalid,
        "already executed",
        "spent id, new parameters",
    );
    // The restarted signer still holds the root and runs new ceremonies.
    s.create_ca(CeremonyOp::CreateIntermediate(intermediate_params(
        "inter", "root", P256,
    )));
    assert_eq!(s.status().ca_count, 2);
}

// ----------------------------------------------------------------- 3. policy

fn issuance_outside_policy_is_refused_and_signs_nothing(b: Backend) {
    let mut s = SignerProcess::start(b);
    s.pki(P256, P256);
    let before = s.status().journal_records;
    let t = now();

    let mut tpl = server_template("inter", "ca.suite.test");
    tpl.ca = true;
    let e = s.refused(Request::IssueCertificate(tpl));
    expect_kind(&e, ErrorKind::Policy, "quorum", "cA=TRUE through issuance");

    let mut tpl = server_template("inter", "long.suite.test");
    tpl.validity = validity(t - 60, t - 60 + 398 * 86_400);
    let e = s.refused(Request::IssueCertificate(tpl));
    expect_kind(&e, ErrorKind::Policy, "397 days", "398 days on server");

    let tpl = server_template("elsewhere", "foreign.suite.test");
    let e = s.refused(Request::IssueCertificate(tpl));
    expect_kind(
        &e,
        ErrorKind::Policy,
        "is not a CA held by this signer",
        "foreign issuer",
    );

    // Starts ten days before the intermediate exists.
    let mut tpl = server_template("inter", "early.suite.test");
    tpl.validity = validity(t - 10 * 86_400, t + 10 * 86_400);
    let e = s.refused(Request::IssueCertificate(tpl));
    expect_kind(
        &e,
        ErrorKind::Policy,
        "inside the issuing CA",
        "outside the issuer's validity",
    );

    assert_eq!(
        s.status().journal_records,
        before,
        "a refused issuance was signed"
    );

    // notAfter is a second of validity too (RFC 5280 §4.1.2.5): 397 days
    // from notBefore is one second more than the profile allows...
    let mut tpl = server_template("inter", "over.suite.test");
    tpl.validity = validity(t - 60, t - 60 + 397 * 86_400);
    let e = s.refused(Request::IssueCertificate(tpl));
    expect_kind(&e, ErrorKind::Policy, "397 days", "397 days and a second");
    assert_eq!(s.status().journal_records, before);

    // ... and the profile's maximum itself is allowed.
    let mut tpl = server_template("inter", "max.suite.test");
    tpl.validity = validity(t - 60, t - 60 + 397 * 86_400 - 1);
    s.issue(tpl);
    assert_eq!(s.status().journal_records, before + 1);
}

// -------------------------------------------------------------------- 4. CRL

fn crl_request(issuer: &str, number: u64, entries: Vec<CrlEntry>) -> CrlRequest {
    let t = now();
    CrlRequest {
        issuer: issuer.to_string(),
        crl_number: number,
        this_update: t - 60,
        next_update: t + 7 * 86_400,
        entries: entries.into(),
    }
}

fn crl(issuer: &str, number: u64, entries: Vec<CrlEntry>) -> Request {
    Request::SignCrl(crl_request(issuer, number, entries))
}

fn crl_der(r: Response) -> Vec<u8> {
    match r {
        Response::Crl { der } => der,
        other => panic!("SignCrl answered with {other:?}"),
    }
}

fn crl_numbers_only_increase_and_openssl_checks_revocation_against_the_crl(b: Backend) {
    let mut s = SignerProcess::start(b);
    let leaves = pki_with_two_leaves(&mut s);
    let dir = s.dir.path().to_path_buf();

    crl_der(s.ok(crl("inter", 1, vec![])));
    let e = s.refused(crl("inter", 1, vec![]));
    expect_kind(&e, ErrorKind::Policy, "not above", "CRL number 1 again");
    let e = s.refused(crl("inter", 0, vec![]));
    expect_kind(&e, ErrorKind::Policy, "not above", "CRL number 0 after 1");
    let der = crl_der(s.ok(crl(
        "inter",
        2,
        vec![CrlEntry {
            serial: leaves.revoked.serial.clone(),
            revoked_at: now() - 120,
            reason: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
    )));
    s.write_file("crl.der", &der);

    let out = openssl(
        &dir,
        &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
    );
    assert!(
        out.status.success(),
        "openssl crl cannot parse it\n{}",
        describe(&out)
    );
    let text = all_text(&out);
    let number = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 CRL Number"))
        .nth(1)
        .map(str::trim);
    assert_eq!(number, Some("2"), "CRL number not shown as 2:\n{text}");
    assert!(
        text.contains(&format!(
            "Serial Number: {}",
            serial_hex(&leaves.revoked.serial)
        )),
        "the revoked serial is missing:\n{text}"
    );
    assert!(
        text.contains("Key Compromise"),
        "the reason is missing:\n{text}"
    );
    assert!(
        !text.contains(&serial_hex(&leaves.good.serial)),
        "the good serial is listed:\n{text}"
    );

    let out = openssl(
        &dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "crl.der",
            "-out",
            "crl.pem",
            "-CAfile",
            "chain.pem",
            "-noout",
        ],
    );
    assert!(
        all_text(&out).contains("verify OK"),
        "the CRL signature does not verify against the intermediate\n{}",
        describe(&out)
    );
    let out = openssl(
        &dir,
        &["crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem"],
    );
    assert!(out.status.success(), "{}", describe(&out));

    let verify = |leaf: &str| {
        openssl(
            &dir,
            &[
                "verify",
                "-crl_check",
                "-CRLfile",
                "crl.pem",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "inter.pem",
                leaf,
            ],
        )
    };
    let out = verify("revoked.pem");
    assert!(
        !out.status.success() && all_text(&out).contains("certificate revoked"),
        "openssl accepted the revoked leaf\n{}",
        describe(&out)
    );
    let out = verify("good.pem");
    assert!(
        out.status.success() && all_text(&out).contains("good.pem: OK"),
        "openssl refused the good leaf with the CRL\n{}",
        describe(&out)
    );
}

fn crl_numbers_stay_monotonic_across_a_restart(b: Backend) {
    let mut s = SignerProcess::start(b);
    s.pki(P256, P256);
    crl_der(s.ok(crl("inter", 1, vec![])));
    crl_der(s.ok(crl("inter", 2, vec![])));
    crl_der(s.ok(crl("root", 7, vec![])));

    s.restart();

    let e = s.refused(crl("inter", 2, vec![]));
    expect_kind(
        &e,
        ErrorKind::Policy,
        "not above the last one signed (2)",
        "CRL 2 after restart",
    );
    let e = s.refused(crl("root", 5, vec![]));
    expect_kind(
        &e,
        ErrorKind::Policy,
        "not above the last one signed (7)",
        "root CRL 5 after 7 and a restart",
    );
    crl_der(s.ok(crl("inter", 3, vec![])));
}

/// `n` entries with 16-octet random serials, distinct revocation times,
/// reason codes and (on every 7th) an invalidity date.
fn many_entries(n: usize) -> Vec<CrlEntry> {
    let mut random = vec![0u8; n * 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .expect("randomness");
    let t = now();
    random
        .chunks_exact(16)
        .enumerate()
        .map(|(i, r)| {
            let mut serial = r.to_vec();
            serial[0] = (serial[0] & 0x7f) | 0x40;
            CrlEntry {
                serial,
                revoked_at: t - 86_400 - i as i64,
                reason: Some(RevocationReason::ALL[i % 7]),
                invalidity_date: (i % 7 == 0).then_some(t - 2 * 86_400),
            }
        })
        .collect()
}

/// What the daemon's `SignerPool::sign_crl` does: stages the entries in
/// chunks, signs, and reads a large answer back in parts, checking its
/// SHA-256. Returns the DER and how many frames carried entries.
fn sign_crl_in_chunks(s: &mut SignerProcess, r: CrlRequest) -> (Vec<u8>, usize) {
    let chunks: Vec<Vec<CrlEntry>> = crl_chunks(&r.entries)
        .into_iter()
        .map(<[CrlEntry]>::to_vec)
        .collect();
    let (last, staged) = chunks.split_last().expect("one chunk at least");
    let mut offset = 0;
    for chunk in staged {
        let answer = s.ok(Request::StageCrlEntries(CrlChunk {
            issuer: r.issuer.clone(),
            crl_number: r.crl_number,
            offset,
            entries: chunk.clone().into(),
        }));
        offset += chunk.len() as u64;
        assert_eq!(
            answer,
            Response::CrlStaged {
                crl_number: r.crl_number,
                staged: offset
            }
        );
    }
    let last = CrlRequest {
        entries: last.clone().into(),
        ..r.clone()
    };
    let answer = if staged.is_empty() {
        s.ok(Request::SignCrl(last))
    } else {
        s.ok(Request::SignStagedCrl(StagedCrlRequest {
            crl: last,
            staged: offset,
        }))
    };
    let der = match answer {
        Response::Crl { der } => der,
        Response::CrlStored {
            crl_number,
            length,
            sha256,
        } => {
            assert_eq!(crl_number, r.crl_number);
            let mut der = Vec::new();
            while (der.len() as u64) < length {
                let part = (length - der.len() as u64).min(u64::from(MAX_CRL_PART)) as u32;
                match s.ok(read_crl(&r.issuer, r.crl_number, der.len() as u64, part)) {
                    Response::CrlPart { bytes } => {
                        assert_eq!(bytes.len(), part as usize);
                        der.extend_from_slice(&bytes);
                    }
                    other => panic!("ReadCrl answered with {other:?}"),
                }
            }
            assert_eq!(
                ring::digest::digest(&ring::digest::SHA256, &der).as_ref(),
                sha256,
                "the CRL read back does not match the SHA-256 the signer announced"
            );
            der
        }
        other => panic!("signing the CRL answered with {other:?}"),
    };
    (der, chunks.len())
}

fn read_crl(issuer: &str, crl_number: u64, offset: u64, length: u32) -> Request {
    Request::ReadCrl {
        issuer: issuer.to_string(),
        crl_number,
        offset,
        length,
    }
}

fn a_crl_too_large_for_one_frame_is_staged_signed_once_and_read_back_whole(b: Backend) {
    // 400,000 entries: two frames of entries, about 20 MB of DER, more
    // than one frame can answer.
    const N: usize = 400_000;
    let mut s = SignerProcess::start(b);
    let leaves = pki_with_two_leaves(&mut s);
    let dir = s.dir.path().to_path_buf();
    let mut entries = many_entries(N - 1);
    entries.insert(
        N / 2,
        CrlEntry {
            serial: leaves.revoked.serial.clone(),
            revoked_at: now() - 120,
            reason: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        },
    );
    let before = s.status().journal_records;
    let (der, frames) = sign_crl_in_chunks(&mut s, crl_request("inter", 5, entries.clone()));
    assert_eq!(frames, 2, "400,000 entries travel in two frames");
    assert!(der.len() > MAX_INLINE_CRL, "{} octets", der.len());
    assert_eq!(
        s.status().journal_records,
        before + 1,
        "a staged CRL is one signature, journaled once"
    );
    let records = export(&mut s, 0, i64::MAX);
    let last = records.last().expect("a journal record");
    assert_eq!(
        (last.kind, &last.subject),
        (SignatureKind::Crl, &SignedSubject::CrlNumber(5))
    );

    // Every entry, in order, with its time and reason, as x509-cert reads it.
    {
        use der::Decode;
        let crl =
            x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der)
                .expect("x509-cert parses the CRL");
        let listed = crl.tbs_cert_list.revoked_certificates.unwrap_or_default();
        assert_eq!(listed.len(), N);
        for (i, (got, want)) in listed.iter().zip(&entries).enumerate() {
            assert_eq!(
                got.serial_number
                    .as_bytes()
                    .iter()
                    .skip_while(|b| **b == 0)
                    .collect::<Vec<_>>(),
                want.serial
                    .iter()
                    .skip_while(|b| **b == 0)
                    .collect::<Vec<_>>(),
                "serial of entry #{i}"
            );
            assert_eq!(
                got.revocation_date.to_unix_duration().as_secs() as i64,
                want.revoked_at,
                "revocation date of entry #{i}"
            );
        }
    }

    // openssl parses it all, verifies its signature, lists every serial
    // and refuses the revoked leaf with it.
    s.write_file("big.der", &der);
    let out = openssl(
        &dir,
        &["crl", "-inform", "DER", "-in", "big.der", "-noout", "-text"],
    );
    assert!(
        out.status.success(),
        "openssl crl -text\n{}",
        describe(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let listed: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .collect();
    assert_eq!(listed.len(), N, "openssl lists every serial once");
    for e in &entries {
        assert!(
            listed.contains(serial_hex(&e.serial).as_str()),
            "openssl does not list {}",
            serial_hex(&e.serial)
        );
    }
    let out = openssl(
        &dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "big.der",
            "-out",
            "big.pem",
            "-CAfile",
            "chain.pem",
        ],
    );
    assert!(
        all_text(&out).contains("verify OK"),
        "the large CRL's signature does not verify against the intermediate\n{}",
        describe(&out)
    );
    let out = openssl(
        &dir,
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            "big.pem",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "inter.pem",
            "revoked.pem",
        ],
    );
    assert!(
        !out.status.success() && all_text(&out).contains("certificate revoked"),
        "openssl accepted the leaf revoked in the large CRL\n{}",
        describe(&out)
    );

    // Reading is bounded by the CRL and by MAX_CRL_PART.
    let len = der.len() as u64;
    let e = s.refused(read_crl("inter", 5, len - 10, 11));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "beyond the end",
        "ReadCrl past the end",
    );
    assert!(
        e.message.contains("read at most 10 octets"),
        "{}",
        e.message
    );
    let e = s.refused(read_crl("inter", 5, len, 1));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "beyond the end",
        "ReadCrl at the end",
    );
    let e = s.refused(read_crl("inter", 5, u64::MAX, MAX_CRL_PART));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "beyond the end",
        "ReadCrl at 2^64-1",
    );
    let e = s.refused(read_crl("inter", 5, 0, 0));
    expect_kind(&e, ErrorKind::BadRequest, "1 to", "ReadCrl of nothing");
    let e = s.refused(read_crl("inter", 5, 0, MAX_CRL_PART + 1));
    expect_kind(&e, ErrorKind::BadRequest, "1 to", "ReadCrl of too much");
    let e = s.refused(read_crl("inter", 4, 0, 1));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "holds CRL 5",
        "ReadCrl of another number",
    );
    let e = s.refused(read_crl("root", 5, 0, 1));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "holds none",
        "ReadCrl of another issuer",
    );
    match s.ok(read_crl("inter", 5, len - 3, 3)) {
        Response::CrlPart { bytes } => assert_eq!(bytes, der[der.len() - 3..]),
        other => panic!("ReadCrl of the last octets: {other:?}"),
    }

    // Numbers still only increase, staged or not.
    let e = s.refused(crl("inter", 5, vec![]));
    expect_kind(
        &e,
        ErrorKind::Policy,
        "not above the last one signed (5)",
        "CRL 5 again",
    );
    let e = s.refused(Request::StageCrlEntries(CrlChunk {
        issuer: "inter".into(),
        crl_number: 4,
        offset: 0,
        entries: many_entries(2).into(),
    }));
    expect_kind(
        &e,
        ErrorKind::Policy,
        "not above the last one signed (5)",
        "staging CRL 4",
    );
    crl_der(s.ok(crl("inter", 6, vec![])));
    // The next CRL replaced the large one.
    let e = s.refused(read_crl("inter", 5, 0, 1));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "holds none",
        "ReadCrl after the next CRL",
    );
}

fn a_staged_crl_that_does_not_line_up_is_refused_and_says_what_to_do(b: Backend) {
    let mut s = SignerProcess::start(b);
    s.pki(P256, P256);
    crl_der(s.ok(crl("inter", 9, vec![])));
    let journal = s.status().journal_records;
    let chunk = |number: u64, offset: u64, n: usize| {
        Request::StageCrlEntries(CrlChunk {
            issuer: "inter".into(),
            crl_number: number,
            offset,
            entries: many_entries(n).into(),
        })
    };
    let staged = |number: u64, n: u64| {
        Request::SignStagedCrl(StagedCrlRequest {
            crl: crl_request("inter", number, many_entries(1)),
            staged: n,
        })
    };

    let e = s.refused(chunk(10, 5, 3));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "does not continue what is staged (nothing staged for this issuer)",
        "a chunk with nothing staged",
    );
    assert!(e.message.contains("from offset 0"), "{}", e.message);
    assert_eq!(
        s.ok(chunk(10, 0, 3)),
        Response::CrlStaged {
            crl_number: 10,
            staged: 3
        }
    );
    // A repeated or skipped chunk changes nothing.
    let e = s.refused(chunk(10, 2, 3));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "(CRL 10 with 3 entries staged)",
        "an overlapping chunk",
    );
    let e = s.refused(chunk(11, 3, 3));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "(CRL 10 with 3 entries staged)",
        "a chunk of another CRL",
    );
    assert_eq!(
        s.ok(chunk(10, 3, 4)),
        Response::CrlStaged {
            crl_number: 10,
            staged: 7
        }
    );
    // Signing with the wrong count discards the staging.
    let e = s.refused(staged(10, 6));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "holds CRL 10 with 7 entries staged (now discarded)",
        "signing 6 of 7",
    );
    let e = s.refused(staged(10, 7));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "nothing staged for this issuer",
        "signing after a discard",
    );
    // A bad entry discards the staging and names the entry.
    assert_eq!(
        s.ok(chunk(10, 0, 2)),
        Response::CrlStaged {
            crl_number: 10,
            staged: 2
        }
    );
    let mut bad = many_entries(3);
    bad[1].serial = vec![0x11; 21];
    let e = s.refused(Request::StageCrlEntries(CrlChunk {
        issuer: "inter".into(),
        crl_number: 10,
        offset: 2,
        entries: bad.into(),
    }));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "CRL entry #3 of CRL 10",
        "a 21-octet serial",
    );
    assert!(
        e.message.contains("discarded") && e.message.contains("1 to 20 octets"),
        "{}",
        e.message
    );
    let e = s.refused(chunk(10, 2, 1));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "nothing staged",
        "a chunk after a bad one",
    );
    // A CRL signed meanwhile makes an older staging stale.
    assert_eq!(
        s.ok(chunk(12, 0, 2)),
        Response::CrlStaged {
            crl_number: 12,
            staged: 2
        }
    );
    crl_der(s.ok(crl("inter", 13, vec![])));
    let e = s.refused(chunk(12, 2, 1));
    expect_kind(
        &e,
        ErrorKind::Policy,
        "not above the last one signed (13)",
        "a chunk of a stale CRL",
    );
    let e = s.refused(staged(12, 2));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "nothing staged",
        "signing a stale CRL",
    );
    // A new chunk at offset 0 starts the CRL afresh; the staging does not
    // survive a restart.
    assert_eq!(
        s.ok(chunk(14, 0, 2)),
        Response::CrlStaged {
            crl_number: 14,
            staged: 2
        }
    );
    assert_eq!(
        s.ok(chunk(15, 0, 1)),
        Response::CrlStaged {
            crl_number: 15,
            staged: 1
        }
    );
    let e = s.refused(staged(14, 2));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "CRL 15 with 1 entries staged",
        "signing a replaced staging",
    );
    s.restart();
    let e = s.refused(staged(15, 1));
    expect_kind(
        &e,
        ErrorKind::BadRequest,
        "nothing staged",
        "signing after a restart",
    );
    assert_eq!(
        s.status().journal_records,
        journal + 1,
        "nothing refused was signed (CRL 13 was)"
    );

    // A small staged CRL is answered inline and lists the staged entries
    // first.
    let first = many_entries(3);
    assert_eq!(
        s.ok(Request::StageCrlEntries(CrlChunk {
            issuer: "inter".into(),
            crl_number: 16,
            offset: 0,
            entries: first.clone().into(),
        })),
        Response::CrlStaged {
            crl_number: 16,
            staged: 3
        }
    );
    let rest = many_entries(2);
    let der = crl_der(s.ok(Request::SignStagedCrl(StagedCrlRequest {
        crl: crl_request("inter", 16, rest.clone()),
        staged: 3,
    })));
    use der::Decode;
    let parsed = x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der)
        .expect("x509-cert parses the staged CRL");
    let serials: Vec<Vec<u8>> = parsed
        .tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .map(|r| r.serial_number.as_bytes().to_vec())
        .collect();
    let want: Vec<Vec<u8>> = first
        .iter()
        .chain(&rest)
        .map(|e| e.serial.clone())
        .collect();
    assert_eq!(
        serials, want,
        "staged entries first, then the final ones, in order"
    );
    assert_eq!(s.status().journal_records, journal + 2);
}

// ------------------------------------------------------------------- 5. OCSP

fn rotate_responder(s: &mut SignerProcess) -> Vec<u8> {
    let t = now();
    match s.ok(Request::RotateOcspResponder(ResponderParams {
        issuer: "inter".into(),
        validity: validity(t - 60, t + 30 * 86_400),
        algorithm: P256,
    })) {
        Response::Responder(r) => {
            assert_eq!(r.issuer, "inter");
            r.certificate_der
        }
        other => panic!("RotateOcspResponder answered with {other:?}"),
    }
}

fn single(hash: CertIdHash, serial: &[u8], status: CertStatus) -> SingleStatus {
    let t = now();
    SingleStatus {
        hash,
        serial: serial.to_vec(),
        status,
        this_update: t - 60,
        next_update: Some(t + 86_400),
    }
}

fn sign_ocsp(s: &mut SignerProcess, responses: Vec<OcspTemplate>) -> Vec<Vec<u8>> {
    let n = responses.len();
    match s.ok(Request::SignOcsp(OcspBatch {
        issuer: "inter".into(),
        produced_at: now(),
        responses,
    })) {
        Response::Ocsp { responses } => {
            assert_eq!(responses.len(), n, "one DER response per template");
            responses
        }
        other => panic!("SignOcsp answered with {other:?}"),
    }
}

/// `openssl ocsp` on a stored response, looking `leaf` up by a CertID in
/// `digest` (sha1 by default). It exits 0 whatever it finds, so the caller
/// reads its text.
fn openssl_ocsp(dir: &std::path::Path, resp: &str, leaf: &str, digest: Option<&str>) -> String {
    let mut args = vec!["ocsp", "-respin", resp, "-issuer", "inter.pem"];
    // openssl wants the CertID digest before -cert.
    args.extend(digest);
    args.extend([
        "-cert",
        leaf,
        "-CAfile",
        "chain.pem",
        "-no_nonce",
        "-resp_text",
    ]);
    all_text(&openssl(dir, &args))
}

fn ocsp_responses_for_good_and_revoked_leaves_verify_with_openssl(b: Backend) {
    let mut s = SignerProcess::start(b);
    let leaves = pki_with_two_leaves(&mut s);
    let responder = rotate_responder(&mut s);
    s.write_pem("responder.pem", "CERTIFICATE", &responder);
    let dir = s.dir.path().to_path_buf();
    let nonce = common::random_bytes::<16>().to_vec();

    let responses = sign_ocsp(
        &mut s,
        vec![
            OcspTemplate {
                singles: vec![single(
                    CertIdHash::Sha1,
                    &leaves.good.serial,
                    CertStatus::Good,
                )],
                nonce: Some(nonce.clone()),
            },
            OcspTemplate {
                singles: vec![single(
                    CertIdHash::Sha1,
                    &leaves.revoked.serial,
                    CertStatus::Revoked {
                        at: now() - 120,
                        reason: Some(RevocationReason::KeyCompromise),
                    },
                )],
                nonce: None,
            },
        ],
    );
    s.write_file("good.ocsp", &responses[0]);
    s.write_file("revoked.ocsp", &responses[1]);

    let text = openssl_ocsp(&dir, "good.ocsp", "good.pem", None);
    assert!(
        text.contains("Response verify OK"),
        "the good response does not verify:\n{text}"
    );
    assert!(text.contains("good.pem: good"), "not good:\n{text}");
    assert!(
        text.contains("Hash Algorithm: sha1"),
        "not a SHA-1 CertID:\n{text}"
    );
    let flat: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    assert!(
        text.contains("OCSP Nonce") && flat.contains(&hex::encode_upper(&nonce)),
        "the nonce is not echoed:\n{text}"
    );

    let text = openssl_ocsp(&dir, "revoked.ocsp", "revoked.pem", None);
    assert!(
        text.contains("Response verify OK"),
        "the revoked response does not verify:\n{text}"
    );
    assert!(
        text.contains("revoked.pem: revoked"),
        "not revoked:\n{text}"
    );
    assert!(text.contains("Reason: keyCompromise"), "no reason:\n{text}");
    assert!(
        !text.contains("OCSP Nonce"),
        "a nonce nobody asked for:\n{text}"
    );

    // The delegated responder, trusted directly, verifies them too.
    let out = openssl(
        &dir,
        &[
            "ocsp",
            "-respin",
            "good.ocsp",
            "-issuer",
            "inter.pem",
            "-cert",
            "good.pem",
            "-VAfile",
            "responder.pem",
            "-no_nonce",
        ],
    );
    let text = all_text(&out);
    assert!(
        text.contains("Response verify OK") && text.contains("good.pem: good"),
        "verification with -VAfile failed:\n{text}"
    );
}

fn an_ocsp_cert_id_asked_in_sha256_is_answered_in_sha256(b: Backend) {
    let mut s = SignerProcess::start(b);
    let leaves = pki_with_two_leaves(&mut s);
    rotate_responder(&mut s);
    let dir = s.dir.path().to_path_buf();
    let responses = sign_ocsp(
        &mut s,
        vec![OcspTemplate {
            singles: vec![single(
                CertIdHash::Sha256,
                &leaves.good.serial,
                CertStatus::Good,
            )],
            nonce: None,
        }],
    );
    s.write_file("sha256.ocsp", &responses[0]);

    let text = openssl_ocsp(&dir, "sha256.ocsp", "good.pem", Some("-sha256"));
    assert!(
        text.contains("Response verify OK"),
        "does not verify:\n{text}"
    );
    assert!(
        text.contains("Hash Algorithm: sha256"),
        "not SHA-256:\n{text}"
    );
    assert!(text.contains("good.pem: good"), "not good:\n{text}");

    // In DER: the CertID names id-sha256 and nowhere id-sha1.
    let sha256_oid = hex::decode("0609608648016503040201").expect("hex");
    let sha1_oid = hex::decode("06052b0e03021a").expect("hex");
    let der = &responses[0];
    assert!(
        der.windows(sha256_oid.len()).any(|w| w == sha256_oid),
        "no id-sha256 in the response"
    );
    assert!(
        !der.windows(sha1_oid.len()).any(|w| w == sha1_oid),
        "id-sha1 in a SHA-256 response"
    );
}

// ---------------------------------------------------------------- 6. journal

fn export(s: &mut SignerProcess, since: i64, until: i64) -> Vec<JournalRecord> {
    match s.ok(Request::ExportJournal(JournalWindow { since, until })) {
        Response::Journal { records } => records,
        other => panic!("ExportJournal answered with {other:?}"),
    }
}

fn every_signature_is_journaled_exactly_once(b: Backend) {
    let mut s = SignerProcess::start(b);
    let leaves = pki_with_two_leaves(&mut s); // 2 CA certificates + 2 leaves
    rotate_responder(&mut s); // 1 responder certificate
    crl_der(s.ok(crl("inter", 1, vec![]))); // 1 CRL
    let t = now();
    sign_ocsp(
        &mut s,
        vec![
            OcspTemplate {
                singles: vec![single(
                    CertIdHash::Sha1,
                    &leaves.good.serial,
                    CertStatus::Good,
                )],
                nonce: None,
            },
            OcspTemplate {
                singles: vec![single(
                    CertIdHash::Sha256,
                    &leaves.good.serial,
                    CertStatus::Good,
                )],
                nonce: None,
            },
        ],
    ); // 2 OCSP responses
    // Refusals sign nothing and journal nothing.
    s.refused(crl("inter", 1, vec![]));
    s.refused(Request::IssueCertificate(server_template(
        "nowhere",
        "x.suite.test",
    )));

    let st = s.status();
    let request = CheckpointRequest {
        sequence: st.journal_records,
        head_hash: st.journal_head,
        time: t,
    };
    let cp = match s.ok(Request::SignCheckpoint(request)) {
        Response::Checkpoint(c) => c,
        other => panic!("SignCheckpoint answered with {other:?}"),
    }; // 1 checkpoint
    let keys = match s.ok(Request::PublicKeys) {
        Response::PublicKeys(k) => k,
        other => panic!("PublicKeys answered with {other:?}"),
    };
    assert_eq!(keys.audit_algorithm, P256);
    let point = &keys.audit_spki_der[keys.audit_spki_der.len() - 65..];
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(&checkpoint_message(&cp.request), &cp.signature)
        .expect("the checkpoint signature verifies with the audit key");

    let records = export(&mut s, 0, i64::MAX);
    let count = |k: SignatureKind| records.iter().filter(|r| r.kind == k).count();
    let made = [
        (SignatureKind::CaCertificate, 2),
        (SignatureKind::Certificate, 2),
        (SignatureKind::ResponderCertificate, 1),
        (SignatureKind::Crl, 1),
        (SignatureKind::Ocsp, 2),
        (SignatureKind::Checkpoint, 1),
    ];
    for (kind, n) in made {
        assert_eq!(count(kind), n, "{kind:?} records; journal: {records:#?}");
    }
    let total: usize = made.iter().map(|(_, n)| n).sum();
    assert_eq!(
        records.len(),
        total,
        "one record per signature: {records:#?}"
    );
    let st = s.status();
    assert_eq!(st.journal_records, total as u64);
    assert_eq!(
        records.last().map(|r| r.hash),
        Some(st.journal_head),
        "the export does not end at the journal head"
    );
    let mut prev = [0u8; 32];
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64, "sequence numbers are contiguous");
        assert_eq!(r.prev_hash, prev, "record {i} does not chain");
        prev = r.hash;
    }
    for leaf in [&leaves.good, &leaves.revoked] {
        let r = &records[leaf.journal_seq as usize];
        assert_eq!(r.kind, SignatureKind::Certificate);
        assert_eq!(r.key_id, "inter");
        assert_eq!(r.subject, SignedSubject::Serial(leaf.serial.clone()));
    }
    for r in records
        .iter()
        .filter(|r| r.kind == SignatureKind::CaCertificate)
    {
        assert!(
            r.ceremony_id.is_some(),
            "a CA certificate without its ceremony: {r:?}"
        );
    }
    for r in records.iter().filter(|r| r.kind == SignatureKind::Ocsp) {
        assert_eq!(r.key_id, "ocsp:inter");
    }
}

fn a_flipped_byte_in_a_journal_copy_is_named_by_journal_verify(b: Backend) {
    let mut s = SignerProcess::start(b);
    pki_with_two_leaves(&mut s); // records 0..=3
    s.stop();
    let journal = s.state_dir.join("journal");
    let bytes = std::fs::read(&journal).expect("read journal");
    let copy = s.write_file("journal.copy", &bytes);
    let copy_arg = copy.to_str().expect("utf-8 path");

    let out = s.cli(&["journal", "verify", "--journal", copy_arg]);
    assert!(
        out.status.success() && all_text(&out).contains("4 records"),
        "an intact copy does not verify\n{}",
        describe(&out)
    );

    // Walk the v1 layout (10-octet file header; per record "CJR1", u32 LE
    // body length, body, 32-octet hash) to the body of record 2.
    let mut offset = 10usize;
    for _ in 0..2 {
        let len = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().expect("4"));
        offset += 8 + len as usize + 32;
    }
    assert_eq!(&bytes[offset..offset + 4], b"CJR1", "record 2 not found");
    let mut damaged = bytes.clone();
    damaged[offset + 8 + 12] ^= 0x01;
    std::fs::write(&copy, &damaged).expect("write damaged copy");

    let out = s.cli(&["journal", "verify", "--journal", copy_arg]);
    assert!(
        !out.status.success(),
        "a damaged journal verified\n{}",
        describe(&out)
    );
    assert!(
        all_text(&out).contains(&format!("journal record 2 (byte offset {offset})")),
        "the message does not name record 2 at byte {offset}\n{}",
        describe(&out)
    );
    // The evidence copy was damaged, not the signer's journal.
    let journal_arg = journal.to_str().expect("utf-8 path");
    let out = s.cli(&["journal", "verify", "--journal", journal_arg]);
    assert!(out.status.success(), "{}", describe(&out));
}

fn a_journal_export_by_time_window_returns_exactly_the_signatures_made_in_it(b: Backend) {
    let mut s = SignerProcess::start(b);
    s.pki(P256, P256);
    let three: Vec<u64> = (0..3)
        .map(|i| {
            s.issue(server_template("inter", &format!("w{i}.suite.test")))
                .journal_seq
        })
        .collect();
    s.issue(server_template("inter", "after.suite.test"));
    let all = export(&mut s, 0, i64::MAX);
    assert_eq!(all.len(), 6);
    let (first, last) = (&all[three[0] as usize], &all[three[2] as usize]);
    let (since, until) = (first.time_ms, last.time_ms + 1);

    // Times are non-decreasing along the chain, so the window is a run of
    // records holding the three, plus only neighbours signed in the same
    // millisecond as its first or last.
    let expected: Vec<JournalRecord> = all
        .iter()
        .filter(|r| since <= r.time_ms && r.time_ms < until)
        .cloned()
        .collect();
    for r in &expected {
        let ours = three.contains(&r.seq);
        assert!(
            ours || r.time_ms == since || r.time_ms == last.time_ms,
            "record {} outside the three lies inside their window: {r:?}",
            r.seq
        );
    }
    for seq in &three {
        assert!(
            expected.iter().any(|r| r.seq == *seq),
            "record {seq} missing"
        );
    }

    let got = export(&mut s, since, until);
    assert_eq!(got, expected, "ExportJournal over the window");
    // The end is exclusive: a window ending at the first's time excludes it.
    let before = export(&mut s, 0, since);
    assert!(
        before.iter().all(|r| r.time_ms < since && r.seq < three[0]),
        "the exclusive end leaked: {before:?}"
    );
    let e = s.refused(Request::ExportJournal(JournalWindow {
        since: until,
        until: since,
    }));
    assert_eq!(e.kind, ErrorKind::BadRequest, "{}", e.message);

    // The offline CLI (the journal is locked while the signer runs).
    s.stop();
    let journal = s.state_dir.join("journal");
    let out = s.cli(&[
        "journal",
        "export",
        "--journal",
        journal.to_str().expect("utf-8 path"),
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let cli: Vec<(u64, String)> = lines
        .iter()
        .map(|v| {
            (
                v["seq"].as_u64().expect("seq"),
                v["hash"].as_str().expect("hash").to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = expected
        .iter()
        .map(|r| (r.seq, hex::encode(r.hash)))
        .collect();
    assert_eq!(cli, want, "journal export --since {since} --until {until}");

    // What one key signed, over the whole journal: "inter" signed the
    // leaves, never the CA certificates (those are "root"'s).
    let by_key = |key: &str| {
        let out = s.cli(&[
            "journal",
            "export",
            "--journal",
            journal.to_str().expect("utf-8 path"),
            "--since",
            "0",
            "--until",
            &i64::MAX.to_string(),
            "--key",
            key,
        ]);
        assert!(out.status.success(), "{}", describe(&out));
        let seqs: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect();
        (seqs, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let want: Vec<u64> = all
        .iter()
        .filter(|r| r.key_id == "inter")
        .map(|r| r.seq)
        .collect();
    assert!(!want.is_empty() && want.len() < all.len());
    assert_eq!(by_key("inter").0, want);
    let (none, said) = by_key("no-such-ca");
    assert!(none.is_empty());
    assert!(
        said.contains("nothing signed by \"no-such-ca\"") && said.contains("inter"),
        "{said}"
    );
}

// -------------------------------------------------------------------- 7. uid

/// Connects as another uid, sends `frame`, prints in hex what comes back
/// until the signer closes.
const PROBE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
s.connect(sys.argv[1])
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
except OSError as e:
    print("send failed:", e, file=sys.stderr)
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except OSError as e:
        print("recv failed:", e, file=sys.stderr)
        break
    if not chunk:
        break
    data += chunk
print(data.hex())
"#;

const NOBODY: u32 = 65534;

fn a_peer_with_another_uid_is_refused_and_logged_and_the_daemon_uid_is_still_served(b: Backend) {
    let mut s = SignerProcess::start(b);
    s.open_socket_to_everyone();
    let mut daemon = Conn::open(&s.socket).expect("daemon connection");
    daemon.call(Request::Status).expect("status before");

    let frame = encode_frame(&RequestFrame {
        id: 9,
        request: Request::Status,
    })
    .expect("encode");
    let out = run_bounded(
        Command::new("/usr/bin/python3")
            .args(["-c", PROBE])
            .arg(&s.socket)
            .arg(hex::encode(&frame))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/")
            .uid(NOBODY)
            .gid(NOBODY),
    );
    assert!(out.status.success(), "the probe failed\n{}", describe(&out));
    let answer = hex::decode(String::from_utf8_lossy(&out.stdout).trim()).expect("hex answer");
    if !answer.is_empty() {
        match decode_frame::<ResponseFrame>(&answer) {
            Ok(ResponseFrame {
                response: Response::Error(e),
                ..
            }) => expect_kind(
                &e,
                ErrorKind::Policy,
                &format!("uid {NOBODY} may not use the signer"),
                "foreign uid",
            ),
            other => panic!("uid {NOBODY} got an answer other than a refusal: {other:?}"),
        }
    }
    let log = s.log_text();
    assert!(
        log.contains(&format!("peer_uid={NOBODY}")),
        "the log does not mention the refused uid:\n{log}"
    );
    daemon
        .call(Request::Status)
        .unwrap_or_else(|e| panic!("the daemon connection broke: {e}\n{}", s.diagnose()));
    let mut fresh = Conn::open(&s.socket).expect("new daemon connection");
    match fresh.call(Request::Status) {
        Ok(Response::Status(_)) => {}
        other => panic!("a new daemon connection is not served: {other:?}"),
    }
}

// ----------------------------------------------------------------- 8. frames

/// Sends `bytes` on a new connection (then ends its write side) and checks
/// that the signer answers with a Protocol error saying `why`, or closes,
/// and then closes.
fn bad_frame_is_refused(s: &mut SignerProcess, what: &str, why: &str, bytes: &[u8]) {
    let mut c = Conn::open(&s.socket).expect("connect");
    // The signer may close before reading everything: a failed write is fine.
    let _ = std::io::Write::write_all(&mut c.stream, bytes);
    let _ = c.stream.shutdown(std::net::Shutdown::Write);
    match read_frame::<_, ResponseFrame>(&mut c.stream) {
        Ok(ResponseFrame {
            response: Response::Error(e),
            ..
        }) => {
            expect_kind(&e, ErrorKind::Protocol, why, what);
            match read_frame::<_, ResponseFrame>(&mut c.stream) {
                Err(FrameError::Closed) | Err(FrameError::Io(_)) => {}
                other => panic!("{what}: the connection stayed open: {other:?}"),
            }
        }
        Err(FrameError::Closed) | Err(FrameError::Truncated) => {}
        Err(FrameError::Io(e)) if !e.contains("timed out") && !e.contains("would block") => {}
        other => panic!(
            "{what}: expected a Protocol error or a closed connection, got {other:?}\n{}",
            s.diagnose()
        ),
    }
}

fn header(version: u16, len: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    assert_eq!(h.len(), HEADER_LEN);
    h
}

fn malformed_frames_close_only_their_own_connection(b: Backend) {
    let mut s = SignerProcess::start(b);
    let mut bystander = Conn::open(&s.socket).expect("connect");
    bystander.call(Request::Status).expect("status");

    let valid = encode_frame(&RequestFrame {
        id: 1,
        request: Request::Status,
    })
    .expect("encode");
    let mut trailing = valid.clone();
    trailing.extend_from_slice(&[0, 0, 0]);
    let len = u32::try_from(trailing.len() - HEADER_LEN).expect("small");
    trailing[6..10].copy_from_slice(&len.to_le_bytes());
    let mut truncated = header(VERSION, 100);
    truncated.extend_from_slice(&valid[HEADER_LEN..]);

    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "garbage",
            "bad magic",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("a header, then close", "truncated", header(VERSION, 64)),
        ("a truncated payload", "truncated", truncated),
        (
            "a length above MAX_PAYLOAD",
            "exceeds the limit",
            header(VERSION, MAX_PAYLOAD + 1),
        ),
        (
            "a length of u32::MAX",
            "exceeds the limit",
            header(VERSION, u32::MAX),
        ),
        ("a wrong version", "unsupported protocol version 2", {
            let mut f = valid.clone();
            f[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
            f
        }),
        (
            "trailing bytes after a valid payload",
            "3 trailing octets",
            trailing,
        ),
        ("a payload that is not a request", "malformed payload", {
            let mut f = header(VERSION, 4);
            f.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
            f
        }),
    ];
    for (what, why, bytes) in &cases {
        bad_frame_is_refused(&mut s, what, why, bytes);
        match bystander.call(Request::Status) {
            Ok(Response::Status(_)) => {}
            other => panic!(
                "after {what}, the connection opened before it broke: {other:?}\n{}",
                s.diagnose()
            ),
        }
        let mut fresh = Conn::open(&s.socket).expect("connect after");
        match fresh.call(Request::Status) {
            Ok(Response::Status(_)) => {}
            other => panic!(
                "after {what}, a new connection is not served: {other:?}\n{}",
                s.diagnose()
            ),
        }
    }
    // Pipelined requests on one connection are answered in order.
    let mut c = Conn::open(&s.socket).expect("connect");
    let mut both = encode_frame(&RequestFrame {
        id: 41,
        request: Request::Status,
    })
    .expect("encode");
    both.extend(
        encode_frame(&RequestFrame {
            id: 42,
            request: Request::PublicKeys,
        })
        .expect("encode"),
    );
    std::io::Write::write_all(&mut c.stream, &both).expect("write");
    let a: ResponseFrame = read_frame(&mut c.stream).expect("first answer");
    let b: ResponseFrame = read_frame(&mut c.stream).expect("second answer");
    assert!(
        matches!((a.id, &a.response), (41, Response::Status(_))),
        "{a:?}"
    );
    assert!(
        matches!((b.id, &b.response), (42, Response::PublicKeys(_))),
        "{b:?}"
    );
}

// ---------------------------------------------------------------- 9. seccomp

fn the_signer_signs_under_its_seccomp_filter(b: Backend) {
    let mut s = SignerProcess::start(b);
    let st = s.status();
    assert!(st.seccomp, "Status.seccomp is false: {st:?}");
    let want_backend = match b {
        Backend::Soft => "soft",
        Backend::SoftHsm => "pkcs11",
    };
    assert_eq!(st.backend, want_backend);
    // The kernel's view, not only the signer's word.
    let pid = s.pid().expect("running");
    let proc_status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(field("Seccomp:").as_deref(), Some("2"), "{proc_status}");
    assert_eq!(field("NoNewPrivs:").as_deref(), Some("1"), "{proc_status}");
    // Key generation, signing, journaling and state writes after the filter.
    let leaves = pki_with_two_leaves(&mut s);
    rotate_responder(&mut s);
    sign_ocsp(
        &mut s,
        vec![OcspTemplate {
            singles: vec![single(
                CertIdHash::Sha1,
                &leaves.good.serial,
                CertStatus::Good,
            )],
            nonce: None,
        }],
    );
    crl_der(s.ok(crl("inter", 1, vec![])));
    // 2 CA certificates, 2 leaves, 1 responder certificate, 1 OCSP, 1 CRL.
    assert_eq!(s.status().journal_records, 7);
}

// -------------------------------------------------------------------- RSA

/// pkilint's `args[0]` over `args[1..]` in `dir` finds nothing of severity
/// NOTICE or above (`./scripts/test.sh` installs pkilint into
/// target/pkilint; elsewhere set `CASTELLAN_PKILINT` to its directory).
fn pkilint_clean(dir: &std::path::Path, args: &[&str]) {
    let bin = std::env::var_os("CASTELLAN_PKILINT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pkilint/bin")
        });
    let program = bin.join(args[0]);
    assert!(
        program.exists(),
        "pkilint is needed and is not at {}: ./scripts/test.sh installs it, or set CASTELLAN_PKILINT",
        bin.display()
    );
    let out = std::process::Command::new(&program)
        .arg("lint")
        .args(["-s", "NOTICE"])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .expect("run pkilint");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "pkilint {args:?}: {}",
        describe(&out)
    );
}

fn an_rsa_3072_root_works_on_a_token_and_is_refused_by_the_soft_store(b: Backend) {
    let mut s = SignerProcess::start(b);
    let op = CeremonyOp::CreateRoot(root_params("rsa-root", Algorithm::Rsa3072));
    let id = ceremony_id();
    let proof: QuorumProof = s.custodians.proof(id, &op, &[0, 1]);
    match b {
        Backend::Soft => {
            let e = s
                .ceremony_with(op, proof)
                .expect_err("the soft store cannot hold RSA keys");
            expect_kind(
                &e,
                ErrorKind::BadRequest,
                "rsa-3072",
                "RSA-3072 on the soft store",
            );
            assert_eq!(s.status().ca_count, 0);
            // Nothing was signed, so the ceremony was not spent.
            assert_eq!(s.status().journal_records, 0);
        }
        Backend::SoftHsm => {
            let root = match s.ceremony_with(op, proof) {
                Ok(CeremonyOutcome::Ca(info)) => info,
                other => panic!("RSA-3072 root on the token failed: {other:?}"),
            };
            assert_eq!(root.algorithm, Algorithm::Rsa3072);
            let leaf = s.issue(server_template("rsa-root", "rsa.suite.test"));
            s.write_pem("root.pem", "CERTIFICATE", &root.certificate_der);
            s.write_pem("leaf.pem", "CERTIFICATE", &leaf.der);
            let dir = s.dir.path().to_path_buf();
            let out = openssl(&dir, &["verify", "-CAfile", "root.pem", "leaf.pem"]);
            assert!(
                out.status.success() && all_text(&out).contains("leaf.pem: OK"),
                "{}",
                describe(&out)
            );
            let out = openssl(&dir, &["x509", "-in", "root.pem", "-noout", "-text"]);
            let text = all_text(&out);
            assert!(
                text.contains("Public-Key: (3072 bit)") && text.contains("sha256WithRSAEncryption"),
                "{text}"
            );
            let out = openssl(&dir, &["x509", "-in", "leaf.pem", "-noout", "-text"]);
            let text = all_text(&out);
            assert!(
                text.contains("ASN1 OID: prime256v1") && text.contains("sha256WithRSAEncryption"),
                "{text}"
            );
            // RSA signatures and keys as RFC 5280 and RFC 4055 want them
            // (e.g. the NULL parameters of sha256WithRSAEncryption).
            for args in [
                &["lint_pkix_cert", "root.pem"][..],
                &["lint_pkix_cert", "leaf.pem"],
                &["lint_pkix_signer_signee_cert_chain", "root.pem", "leaf.pem"],
            ] {
                pkilint_clean(&dir, args);
            }
        }
    }
}
