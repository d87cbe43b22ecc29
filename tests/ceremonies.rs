//! Every ceremony purpose through the daemon, end to end: the real
//! `castellan`, `castellan-signer` and `castellanctl`, checked with
//! `openssl`. Root and intermediate are covered by the demo path in
//! `tests/daemon.rs`; here: rotation, cross-signature and a change of the
//! custodian set, and what each leaves in the log.
//!
//! Build every binary first: `cargo build --workspace --bins`.

mod common;

use std::process::Command;

use common::{Appliance, WAIT, ctl_bin, kind, openssl, openssl_exit, run, subjects};
use serde_json::Value;

fn ca<'a>(cas: &'a Value, id: &str) -> &'a Value {
    cas.as_array()
        .expect("ca list is a list")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no CA {id} in {cas}"))
}

/// The subject or issuer line `openssl x509` prints for `file`.
fn x509_line(a: &Appliance, file: &str, what: &str) -> String {
    openssl(&["x509", "-in", file, "-noout", what], a.dir.path())
        .trim()
        .to_string()
}

#[test]
fn rotation_retires_the_old_ca_moves_issuance_to_its_successor_and_keeps_revocation() {
    let a = Appliance::start();
    a.make_cas();
    let old_serial = common::issue(&a, "before");

    let rot = a.open_ceremony(&[
        "--purpose",
        "rotate",
        "--ca-id",
        "issuing",
        "--new-ca-id",
        "issuing-2",
        "--subject",
        "CN=castellan test issuing CA 2,O=castellan tests",
        "--days",
        "1000",
        "--path-len",
        "0",
    ]);
    a.approve(&rot, "alice").ok();
    a.approve(&rot, "carol").ok();
    let v = a.execute(&rot, Some(&a.path("issuing-2.pem"))).ok().json();
    assert_eq!(v["state"], "executed", "{v}");
    assert_eq!(v["ca"]["id"], "issuing-2", "{v}");
    assert_eq!(v["ca"]["parent"], "root", "{v}");

    // The log says at once that the old CA is retired (not only after the
    // next periodic look at the signer).
    let cas = a.ctl(&["ca", "list"]).ok().json();
    assert_eq!(ca(&cas, "issuing")["status"], "retired", "{cas}");
    assert_eq!(ca(&cas, "issuing-2")["status"], "active", "{cas}");
    openssl(
        &["verify", "-CAfile", "root.pem", "issuing-2.pem"],
        a.dir.path(),
    );
    // The subject as typed reads back the same in RFC 4514 form (most
    // specific first), from castellan and from openssl: the DER holds O
    // before CN.
    let typed = "CN=castellan test issuing CA 2,O=castellan tests";
    assert_eq!(ca(&cas, "issuing-2")["subject"], typed, "{cas}");
    let rfc = openssl(
        &[
            "x509",
            "-in",
            "issuing-2.pem",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
        a.dir.path(),
    );
    assert_eq!(rfc.trim(), format!("subject={typed}"), "{rfc}");
    let der_order = openssl(
        &["x509", "-in", "issuing-2.pem", "-noout", "-subject"],
        a.dir.path(),
    );
    assert!(
        der_order.contains("O = castellan tests, CN = castellan test issuing CA 2"),
        "{der_order}"
    );

    // The retired CA issues nothing; its successor does.
    let refused = a.issue_generated("late", "late.example");
    assert_ne!(refused.code, Some(0), "{refused}");
    let (_, m) = refused.error();
    assert!(m.contains("issuing"), "{m}");
    let key = a.path("after.key");
    let pem = a.path("after.pem");
    let v = a
        .ctl(&[
            "issue",
            "--generate-key",
            "--subject",
            "CN=after.example",
            "--san",
            "DNS:after.example",
            "--key-out",
            key.to_str().unwrap(),
            "--profile",
            "server",
            "--issuer",
            "issuing-2",
            "--ttl",
            "30",
            "--out",
            pem.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(v["issuer"], "issuing-2", "{v}");
    openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "issuing-2.pem",
            "after.pem",
        ],
        a.dir.path(),
    );

    // What the retired CA issued stays revocable.
    let v = a
        .ctl(&["revoke", &old_serial, "--reason", "superseded"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
}

#[test]
fn a_cross_certificate_is_kept_in_the_log_listed_written_out_and_revocable() {
    let (a, port) = common::public_appliance("", "");
    let dir = a.dir.path();
    // An intermediate carries its issuer's revocation URLs as leaves do; a
    // root none.
    let base = format!("http://127.0.0.1:{port}");
    let text = openssl(&["x509", "-in", "issuing.pem", "-noout", "-text"], dir);
    for url in [
        format!("URI:{base}/crl/root.crl"),
        format!("OCSP - URI:{base}/ocsp/root"),
        format!("CA Issuers - URI:{base}/ca/root.crt"),
    ] {
        assert!(text.contains(&url), "no {url} in {text}");
    }
    let ocsp = openssl(
        &[
            "ocsp",
            "-issuer",
            "root.pem",
            "-cert",
            "issuing.pem",
            "-CAfile",
            "root.pem",
            "-url",
            &format!("{base}/ocsp/root"),
        ],
        dir,
    );
    assert!(ocsp.contains("issuing.pem: good"), "{ocsp}");
    assert!(ocsp.contains("Response verify OK"), "{ocsp}");
    let text = openssl(&["x509", "-in", "root.pem", "-noout", "-text"], dir);
    assert!(!text.contains("CRL Distribution"), "{text}");
    assert!(!text.contains("Authority Information Access"), "{text}");
    // With both CAs' CRLs, the whole chain checks.
    common::issue(&a, "leaf");
    for ca in ["root", "issuing"] {
        let crl = common::fetch_crl(&a, port, ca, None);
        openssl(
            &[
                "crl",
                "-inform",
                "DER",
                "-in",
                &crl,
                "-out",
                &format!("{ca}.crl.pem"),
            ],
            dir,
        );
    }
    let ok = openssl(
        &[
            "verify",
            "-crl_check_all",
            "-CAfile",
            "chain.pem",
            "-CRLfile",
            "root.crl.pem",
            "-CRLfile",
            "issuing.crl.pem",
            "leaf.pem",
        ],
        dir,
    );
    assert!(ok.contains("leaf.pem: OK"), "{ok}");
    // A second root to be cross-certified by the first.
    let v = common::cross_certify_a_second_root(
        &a,
        "CN=castellan test root 2,O=castellan tests",
        "ecdsa-p256",
    );
    let out = a.path("cross.pem");
    let cross = v["id"].as_str().expect("the ceremony id").to_string();
    assert_eq!(v["state"], "executed", "{v}");
    let serial = v["certificate"]["serial"]
        .as_str()
        .unwrap_or_else(|| panic!("the executed cross-sign names its certificate: {v}"))
        .to_string();
    assert!(out.exists(), "the cross-certificate is written to --out");

    // The cross-certificate: root-2's name and key, issued by root.
    assert_eq!(
        x509_line(&a, "cross.pem", "-subject"),
        x509_line(&a, "root-2.pem", "-subject")
    );
    assert_eq!(
        x509_line(&a, "cross.pem", "-issuer").replace("issuer=", ""),
        x509_line(&a, "root.pem", "-subject").replace("subject=", "")
    );
    assert_eq!(
        x509_line(&a, "cross.pem", "-pubkey"),
        x509_line(&a, "root-2.pem", "-pubkey")
    );
    openssl(
        &["verify", "-CAfile", "root.pem", "cross.pem"],
        a.dir.path(),
    );
    let serial_line = x509_line(&a, "cross.pem", "-serial");
    assert_eq!(
        serial_line
            .trim_start_matches("serial=")
            .to_ascii_lowercase(),
        serial.trim_start_matches("0").to_ascii_lowercase(),
        "{serial_line} vs {serial}"
    );

    // `ceremony show` still has it, and the log recorded it.
    let v = a.ctl(&["ceremony", "show", &cross]).ok().json();
    assert_eq!(v["certificate"]["serial"], serial.as_str(), "{v}");
    assert!(
        v["certificate"]["certificate_pem"]
            .as_str()
            .is_some_and(|p| p == std::fs::read_to_string(&out).unwrap()),
        "{v}"
    );
    let events = a.events();
    let issued: Vec<&Value> = events
        .iter()
        .filter(|e| kind(e) == "cross-certificate-issued")
        .collect();
    assert_eq!(issued.len(), 1, "{events:?}");
    assert!(subjects(issued[0]).contains(&serial), "{:?}", issued[0]);

    // Listed with the certificates root issued, and revocable like them.
    let c = a.ctl(&["cert", "show", &serial]).ok().json();
    assert_eq!(c["issuer"], "root", "{c}");
    assert_eq!(c["profile"], "cross-certificate", "{c}");
    assert_eq!(c["state"], "issued", "{c}");
    let v = a
        .ctl(&["revoke", &serial, "--reason", "cACompromise"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
    // Relying parties see it: root's OCSP answer, then root's CRL.
    let ocsp = openssl(
        &[
            "ocsp",
            "-issuer",
            "root.pem",
            "-cert",
            "cross.pem",
            "-CAfile",
            "root.pem",
            "-url",
            &format!("http://127.0.0.1:{port}/ocsp"),
        ],
        dir,
    );
    assert!(ocsp.contains("Response verify OK"), "{ocsp}");
    assert!(ocsp.contains("cross.pem: revoked"), "{ocsp}");
    assert!(ocsp.contains("Reason: cACompromise"), "{ocsp}");
    let crl = common::fetch_crl(&a, port, "root", Some(&serial));
    let listed = openssl(
        &["crl", "-inform", "DER", "-in", &crl, "-noout", "-text"],
        dir,
    );
    assert!(listed.contains("CA Compromise"), "{listed}");
    let v = a.ctl(&["audit", "verify"]).ok().json();
    assert_eq!(v["ok"], true, "{v}");

    // The same ceremony cannot make a second one.
    let again = a.execute(&cross, None);
    assert_ne!(again.code, Some(0), "{again}");
    assert!(again.error().1.contains("already executed"), "{again}");
}

#[test]
fn a_new_custodian_set_takes_over_and_approvals_under_the_old_set_stop_counting() {
    let a = Appliance::start();
    a.make_cas();
    // dave joins: 3 of 4.
    common::write_secret(&a.path("dave.pass"), "dave-passphrase\n");
    run(
        Command::new(ctl_bin())
            .args(["custodian", "keygen", "--name", "dave", "--out"])
            .arg(a.path("dave.key"))
            .arg("--passphrase-file")
            .arg(a.path("dave.pass")),
        WAIT,
    )
    .ok();
    let member = |who: &str| format!("{who}={}", a.path(&format!("{who}.key.pub")).display());
    let (al, bo, ca_, da) = (
        member("alice"),
        member("bob"),
        member("carol"),
        member("dave"),
    );

    // A ceremony approved under the old set, not yet executed.
    let stale = a.open_ceremony(&[
        "--purpose",
        "root",
        "--ca-id",
        "stale-root",
        "--subject",
        "CN=castellan stale root",
        "--days",
        "100",
    ]);
    a.approve(&stale, "alice").ok();
    a.approve(&stale, "bob").ok();

    let change = a.open_ceremony(&[
        "--purpose",
        "custodians",
        "--custodian",
        &al,
        "--custodian",
        &bo,
        "--custodian",
        &ca_,
        "--custodian",
        &da,
        "--threshold",
        "3",
    ]);
    a.approve(&change, "alice").ok();
    a.approve(&change, "carol").ok();
    let v = a.execute(&change, None).ok().json();
    assert_eq!(v["state"], "executed", "{v}");

    // The log knows the new set at once.
    let status = a.ctl(&["status"]).ok().json();
    assert_eq!(status["custodians"]["threshold"], 3, "{status}");
    let members = status["custodians"]["members"].as_array().expect("members");
    assert_eq!(members.len(), 4, "{status}");
    assert!(members.iter().any(|m| m["name"] == "dave"), "{status}");
    let observed = a
        .events()
        .into_iter()
        .filter(|e| kind(e) == "signer-keys-observed")
        .count();
    assert!(observed >= 2, "the new set is recorded");

    // The old approvals no longer count.
    let refused = a.execute(&stale, None);
    assert_ne!(refused.code, Some(0), "{refused}");
    let (_, m) = refused.error();
    assert!(m.contains("custodian"), "{m}");

    // Under the new set: two approvals are not enough, three are, and dave
    // counts.
    let next = a.open_ceremony(&[
        "--purpose",
        "root",
        "--ca-id",
        "root-3",
        "--subject",
        "CN=castellan test root 3",
        "--days",
        "100",
    ]);
    a.approve(&next, "alice").ok();
    a.approve(&next, "dave").ok();
    let refused = a.execute(&next, None);
    assert_ne!(refused.code, Some(0), "{refused}");
    assert!(
        refused.error().1.contains("quorum not met: 2 of 3"),
        "{refused}"
    );
    a.approve(&next, "bob").ok();
    let v = a.execute(&next, Some(&a.path("root-3.pem"))).ok().json();
    assert_eq!(v["state"], "executed", "{v}");
    let text = openssl_exit(
        &["x509", "-in", "root-3.pem", "-noout", "-subject"],
        a.dir.path(),
        0,
    );
    assert!(text.contains("castellan test root 3"), "{text}");
}

/// The signer executes a ceremony whose answer never reaches the log (as
/// when castellan dies between the signer's answer and its commit). The
/// operator runs `ceremony execute` again: the signer refuses to execute
/// twice, and castellan records what the first execution made instead of
/// calling the ceremony failed.
#[test]
fn a_ceremony_whose_answer_was_lost_is_recorded_from_the_signer_when_executed_again() {
    use castellan::custodian::{CustodianKey, read_passphrase};
    use castellan::signer_client::SignerClient;
    use castellan_proto::{CeremonyContext, CeremonyOp, QuorumProof, Request, Response};

    let a = Appliance::start();
    let id = a.open_root();
    let view = a.ctl(&["ceremony", "show", &id]).ok().json();
    let op: CeremonyOp = serde_json::from_value(view["op"].clone()).expect("the op");
    let hex32 = |v: &Value| -> [u8; 32] {
        hex::decode(v.as_str().expect("hex"))
            .expect("hex")
            .try_into()
            .expect("32 octets")
    };
    let ctx = CeremonyContext {
        signer_id: hex32(&view["signer_id"]),
        custodians_sha256: hex32(&view["custodians_sha256"]),
    };
    let cid: [u8; 16] = hex::decode(&id).unwrap().try_into().unwrap();
    let approvals = ["alice", "bob"]
        .iter()
        .map(|who| {
            let pass = read_passphrase(&a.path(&format!("{who}.pass"))).unwrap();
            CustodianKey::load(&a.path(&format!("{who}.key")), &pass)
                .unwrap()
                .approve(&ctx, &cid, &op)
        })
        .collect();
    // Straight to the signer: castellan never hears the answer.
    let mut signer = SignerClient::connect(&a.signer_socket).expect("the signer socket");
    let made = match signer
        .call(Request::Ceremony {
            op: op.clone(),
            proof: QuorumProof {
                ceremony_id: cid,
                approvals,
            },
        })
        .expect("an answer")
    {
        Response::Ceremony(castellan_proto::CeremonyOutcome::Ca(info)) => info,
        other => panic!("the ceremony was not executed: {other:?}"),
    };
    let v = a.ctl(&["ceremony", "show", &id]).ok().json();
    assert_eq!(v["state"], "open", "{v}");

    a.approve(&id, "alice").ok();
    a.approve(&id, "bob").ok();
    let v = a.execute(&id, Some(&a.path("root.pem"))).ok().json();
    assert_eq!(v["state"], "executed", "{v}");
    assert_eq!(v["last_error"], Value::Null, "{v}");
    assert_eq!(v["ca"]["id"], "root", "{v}");
    let pem = std::fs::read_to_string(a.path("root.pem")).unwrap();
    assert_eq!(
        pem,
        castellan::pem::encode("CERTIFICATE", &made.certificate_der),
        "the CA the signer made, not another"
    );
    let kinds: Vec<String> = a.events().iter().map(|e| kind(e).to_string()).collect();
    assert!(kinds.contains(&"ceremony-executed".into()), "{kinds:?}");
    assert!(!kinds.contains(&"ceremony-failed".into()), "{kinds:?}");
    // And it is still one ceremony, one operation.
    let again = a.execute(&id, None);
    assert!(again.error().1.contains("already executed"), "{again}");
}
