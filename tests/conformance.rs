//! What castellan signs, checked against RFC 5280 (certificates, CRLs) and
//! RFC 6960 (OCSP responses) by an independent linter, pkilint: the root,
//! an intermediate, a server and a client certificate, a delegated OCSP responder
//! certificate, a cross-certificate, each issuer/subject pair, both CAs'
//! CRLs (one with a revocation) and OCSP answers good and revoked.
//! Findings of severity NOTICE and above fail the test; INFO (e.g. which
//! method made a key identifier) does not.
//!
//! `./scripts/test.sh` installs pkilint into `target/pkilint`; elsewhere set
//! `CASTELLAN_PKILINT` to the directory holding its `lint_*` programs.
//! Build every binary first: `cargo build --workspace --bins`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{WAIT, openssl_ocsp, run};

fn pkilint_dir() -> PathBuf {
    let dir = std::env::var_os("CASTELLAN_PKILINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pkilint/bin"));
    assert!(
        dir.join("lint_pkix_cert").exists(),
        "pkilint is needed by this test and is not at {}: ./scripts/test.sh installs it \
         (python3 -m venv target/pkilint && target/pkilint/bin/pip install pkilint==0.13.3), \
         or set CASTELLAN_PKILINT to the directory of its lint_* programs",
        dir.display()
    );
    dir
}

/// Runs a pkilint program with `args` in `dir`; its findings at NOTICE
/// and above must be none.
fn lint(what: &str, program: &str, args: &[&str], dir: &Path) {
    let out = run(
        Command::new(pkilint_dir().join(program))
            .arg("lint")
            .args(["-s", "NOTICE"])
            .args(args)
            .current_dir(dir),
        WAIT,
    );
    assert!(
        out.code == Some(0) && out.stdout.trim().is_empty(),
        "{what}: pkilint {program} found something: {out}"
    );
}

/// `openssl ocsp` for `cert` against castellan; the DER answer is written
/// to `out` and its text returned.
fn ocsp(dir: &Path, port: u16, cert: &str, out: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/ocsp/issuing");
    openssl_ocsp(dir, &url, cert, &["-respout", out, "-resp_text"])
}

#[test]
fn certificates_crls_and_ocsp_answers_pass_an_rfc_5280_and_6960_linter() {
    pkilint_dir();
    let (a, port) = common::public_appliance("", "[crl]\ncoalesce_ms = 100\n");
    let dir = a.dir.path();
    common::issue(&a, "leaf");
    let client_key = a.path("client.key");
    let client_pem = a.path("client.pem");
    a.ctl(&[
        "issue",
        "--generate-key",
        "--subject",
        "CN=deploy-bot,O=castellan tests",
        "--san",
        "DNS:deploy-bot.example",
        "--profile",
        "client",
        "--issuer",
        "issuing",
        "--ttl",
        "30",
        "--key-out",
        client_key.to_str().unwrap(),
        "--out",
        client_pem.to_str().unwrap(),
    ])
    .ok();
    let revoked = common::issue(&a, "gone");
    a.ctl(&["revoke", &revoked, "--reason", "keyCompromise"])
        .ok();

    // A second root (P-384), cross-certified by the first.
    common::cross_certify_a_second_root(
        &a,
        "CN=castellan lint root 2,O=castellan tests,C=DE",
        "ecdsa-p384",
    );

    // OCSP answers, and the responder certificate they carry.
    let good = ocsp(dir, port, "leaf.pem", "good.ocsp");
    assert!(good.contains("leaf.pem: good"), "{good}");
    let gone = ocsp(dir, port, "gone.pem", "revoked.ocsp");
    assert!(gone.contains("gone.pem: revoked"), "{gone}");
    let begin = good
        .find("-----BEGIN CERTIFICATE-----")
        .expect("the responder certificate in the answer");
    let end = good[begin..]
        .find("-----END CERTIFICATE-----")
        .expect("its end")
        + begin
        + "-----END CERTIFICATE-----".len();
    std::fs::write(
        dir.join("responder.pem"),
        format!("{}\n", &good[begin..end]),
    )
    .unwrap();

    for cert in [
        "root.pem",
        "issuing.pem",
        "leaf.pem",
        "client.pem",
        "responder.pem",
        "root-2.pem",
        "cross.pem",
    ] {
        lint(cert, "lint_pkix_cert", &[cert], dir);
    }
    for (issuer, subject) in [
        ("root.pem", "issuing.pem"),
        ("issuing.pem", "leaf.pem"),
        ("issuing.pem", "client.pem"),
        ("issuing.pem", "responder.pem"),
        ("root.pem", "cross.pem"),
    ] {
        lint(
            &format!("{issuer} → {subject}"),
            "lint_pkix_signer_signee_cert_chain",
            &[issuer, subject],
            dir,
        );
    }
    let issuing_crl = common::fetch_crl(&a, port, "issuing", Some(&revoked));
    lint(
        "issuing's CRL",
        "lint_crl",
        &["-t", "CRL", "-p", "PKIX", &issuing_crl],
        dir,
    );
    // root's CRL lists CA certificates: an authority revocation list.
    let root_crl = common::fetch_crl(&a, port, "root", None);
    lint(
        "root's CRL",
        "lint_crl",
        &["-t", "ARL", "-p", "PKIX", &root_crl],
        dir,
    );
    for answer in ["good.ocsp", "revoked.ocsp"] {
        lint(answer, "lint_ocsp_response", &[answer], dir);
    }
}
