//! Intent before sign, under the periodic reconciliation: the daemon
//! reconciles intents left without a result against the signer's journal
//! every `checkpoint_interval_secs`. An intent whose issuance is still
//! running must never be settled there — before, the periodic round marked
//! in-flight intents "not issued", and their certificates, acknowledged to
//! the client moments later, were missing from the log's tables and could
//! not be revoked.
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use castellan::admin_client::AdminClient;
use castellan::api::{CertView, IssueRequest, IssuedView};
use common::{Appliance, Settings, openssl_csr};

/// Issuing clients; with this many in flight at every reconciliation round
/// the old behaviour lost certificates in every round.
const CLIENTS: usize = 8;

#[test]
fn certificates_issued_while_intents_are_reconciled_are_all_recorded_and_revocable() {
    let mut a = Appliance::prepare(Settings::default());
    // The shortest round the configuration allows; the burst spans one.
    let text = a.config_text(None) + "[issuance]\ncheckpoint_interval_secs = 10\n";
    std::fs::write(&a.config, text).expect("write the daemon configuration");
    a.start_signer();
    a.start_daemon();
    a.make_cas();
    let csr = openssl_csr(
        a.dir.path(),
        "r.key",
        "r.csr",
        "/CN=reconcile.test",
        Some("DNS:reconcile.test"),
    );

    let acked = Mutex::new(Vec::<String>::new());
    let errors = Mutex::new(Vec::<String>::new());
    let stop = Instant::now() + Duration::from_secs(12);
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                let c = AdminClient::new(&a.admin_socket);
                while Instant::now() < stop {
                    let r: Result<IssuedView, _> = c.post(
                        "/v1/certificates",
                        &IssueRequest {
                            csr_pem: csr.clone(),
                            profile: "server".into(),
                            ttl_days: Some(30),
                            issuer: Some("issuing".into()),
                            identity: None,
                        },
                    );
                    match r {
                        Ok(v) => acked.lock().expect("lock").push(v.serial),
                        Err(e) => errors.lock().expect("lock").push(e.message),
                    }
                }
            });
        }
    });
    let acked = acked.into_inner().expect("lock");
    let errors = errors.into_inner().expect("lock");
    assert!(errors.is_empty(), "issuances failed: {errors:?}");
    assert!(!acked.is_empty(), "nothing was issued");

    let events = a.events();
    let started = events
        .iter()
        .filter(|e| e["kind"] == "daemon-started")
        .count();
    assert_eq!(started, 1, "the daemon restarted during the burst");
    let recovered: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "issuance-recovered")
        .collect();
    assert!(
        recovered.is_empty(),
        "intents of running issuances were reconciled: {recovered:?}"
    );

    let c = AdminClient::new(&a.admin_socket);
    let mut wrong = Vec::new();
    for s in &acked {
        match c.get::<CertView>(&format!("/v1/certificates/{s}")) {
            Ok(v) if v.state == "issued" && v.certificate_pem.is_some() => {}
            Ok(v) => wrong.push(format!("{s}: state {}", v.state)),
            Err(e) => wrong.push(format!("{s}: {}", e.message)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged certificates are not recorded as issued: {:?}",
        wrong.len(),
        acked.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Each one is revocable: the last one, for the record.
    let last = acked.last().expect("one serial");
    let out = a.ctl(&["revoke", last, "--reason", "superseded"]);
    assert!(out.code == Some(0), "{out}");
}
