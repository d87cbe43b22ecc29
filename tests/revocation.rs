//! Revocation as relying parties see it, with the real binaries: CRLs
//! checked by `openssl verify -crl_check`, pre-signed OCSP answers, the
//! publish directory served by a real nginx, emergency CRLs, a burst of
//! revocations, and responder rotation on its own.
//!
//! Build every binary first: `cargo build --workspace --bins`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{
    Appliance, Nginx, WAIT, curl, eventually, eventually_within, free_port, issue, openssl,
    openssl_exit, openssl_ocsp, public_appliance, public_appliance_with, revoke_compromised, run,
    start_nginx, wait_http, wait_published_revoked,
};
use serde_json::Value;

/// `castellanctl crl show` as JSON, once a CRL exists.
fn crl_view(a: &Appliance, issuer: &str) -> Option<Value> {
    let out = a.ctl(&["crl", "show", "--issuer", issuer]);
    (out.code == Some(0)).then(|| out.json())
}

fn crl_number(v: &Value) -> u64 {
    v["crl_number"].as_u64().expect("a CRL number")
}

/// Waits for a CRL of `issuer` numbered above `above`; returns its view.
fn crl_after(a: &Appliance, issuer: &str, above: u64) -> Value {
    eventually(&format!("a CRL of {issuer} numbered above {above}"), || {
        crl_view(a, issuer).filter(|v| crl_number(v) > above)
    })
}

/// GET `path` from the public listener into `file` (in the appliance dir).
fn fetch(a: &Appliance, port: u16, path: &str, file: &str) -> Vec<u8> {
    let dir = a.dir.path();
    curl(
        &["-f", "-o", file, &format!("http://127.0.0.1:{port}{path}")],
        dir,
    );
    std::fs::read(dir.join(file)).unwrap()
}

/// The served DER CRL of issuing as crl.pem, and its text.
fn served_crl(a: &Appliance, port: u16) -> String {
    let dir = a.dir.path();
    fetch(a, port, "/crl/issuing.crl", "crl.der");
    openssl(
        &["crl", "-inform", "DER", "-in", "crl.der", "-out", "crl.pem"],
        dir,
    );
    openssl(&["crl", "-in", "crl.pem", "-noout", "-text"], dir)
}

fn verify_with_crl(dir: &Path, cert: &str, code: i32) -> String {
    openssl_exit(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "chain.pem",
            "-CRLfile",
            "crl.pem",
            cert,
        ],
        dir,
        code,
    )
}

/// The standard base64 of `openssl ocsp -reqout` for `cert`, URL-encoded.
fn get_path(dir: &Path, cert: &str) -> String {
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            cert,
            "-no_nonce",
            "-reqout",
            "get-req.der",
        ],
        dir,
    );
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join("get-req.der")).unwrap());
    b64.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn ocsp_text(dir: &Path, port: u16, cert: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/ocsp/issuing");
    openssl_ocsp(dir, &url, cert, &["-resp_text"])
}

/// `openssl ocsp` for goes.pem (with `extra` arguments) through `port`
/// gets tryLater, never good.
fn says_try_later(dir: &Path, port: u16, extra: &[&str]) {
    let url = format!("http://127.0.0.1:{port}/ocsp/issuing");
    let mut args = vec!["ocsp", "-issuer", "issuing.pem", "-cert", "goes.pem"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-url", &url]);
    let t = openssl_exit(&args, dir, 1);
    assert!(t.to_lowercase().contains("trylater"), "{t}");
    assert!(!t.contains("goes.pem: good"), "{t}");
}

#[test]
fn crls_follow_revocations_emergency_mode_and_restarts_and_cert_show_says_what_is_served() {
    let (mut a, port) = public_appliance("", "[crl]\ncoalesce_ms = 100\n");
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    let bad = issue(&a, "bad");
    issue(&a, "fine");

    // A CRL appears on its own, lists nothing, and openssl accepts it.
    let first = eventually("the first CRL of issuing", || crl_view(&a, "issuing"));
    let text = served_crl(&a, port);
    assert!(text.contains("No Revoked Certificates"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    // A full CRL: no IssuingDistributionPoint (NSS refuses one).
    assert!(!text.contains("Issuing Distribution Point"), "{text}");
    let t = verify_with_crl(dir, "bad.pem", 0);
    assert!(t.contains("bad.pem: OK"), "{t}");
    assert_eq!(
        first["url"],
        format!("http://127.0.0.1:{port}/crl/issuing.crl"),
        "{first}"
    );

    // What cert show says before the revocation.
    let v = a.ctl(&["cert", "show", &bad]).ok().json();
    assert!(
        v["crl"].as_str().unwrap().starts_with("not listed in CRL"),
        "{v}"
    );

    // Revoke: acknowledged with OCSP already answering revoked; the next
    // CRL lists it with its reason; openssl verify now fails for it only.
    revoke_compromised(&a, &bad);
    let t = ocsp_text(dir, port, "bad.pem");
    assert!(t.contains("bad.pem: revoked"), "{t}");
    let second = crl_after(&a, "issuing", crl_number(&first));
    assert_eq!(second["entries"], 1, "{second}");
    let text = served_crl(&a, port);
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("Invalidity Date"), "{text}");
    assert!(
        text.contains(&format!("Serial Number: {}", bad.to_uppercase()))
            || text.contains(&format!(
                "Serial Number: {}",
                bad.trim_start_matches('0').to_uppercase()
            )),
        "{bad} not in {text}"
    );
    let t = verify_with_crl(dir, "bad.pem", 2);
    assert!(t.contains("certificate revoked"), "{t}");
    let t = verify_with_crl(dir, "fine.pem", 0);
    assert!(t.contains("fine.pem: OK"), "{t}");

    // cert show reports both channels.
    let v = a.ctl(&["cert", "show", &bad]).ok().json();
    assert!(v["ocsp"].as_str().unwrap().starts_with("revoked"), "{v}");
    assert!(
        v["crl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("listed in CRL {}", crl_number(&second))),
        "{v}"
    );
    let human = a.ctl_command(&["cert", "show", &bad]);
    let mut human_args: Vec<String> = human
        .get_args()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    human_args.retain(|x| x != "--json");
    let out = run(Command::new(common::ctl_bin()).args(&human_args), WAIT).ok();
    assert!(out.stdout.contains("OCSP:      revoked"), "{out}");
    assert!(out.stdout.contains("CRL:       listed in CRL"), "{out}");

    // Emergency: a CRL with a one-hour nextUpdate at once, kept until ended.
    let em = a
        .ctl(&[
            "crl",
            "emergency",
            "--issuer",
            "issuing",
            "--next-update",
            "1h",
        ])
        .ok()
        .json();
    assert!(crl_number(&em) > crl_number(&second), "{em}");
    assert_eq!(em["emergency_validity_secs"], 3600, "{em}");
    served_crl(&a, port);
    let dates = openssl(
        &[
            "crl",
            "-in",
            "crl.pem",
            "-noout",
            "-crlnumber",
            "-lastupdate",
            "-nextupdate",
        ],
        dir,
    );
    assert!(
        dates.contains(&format!("crlNumber=0x{:02X}", crl_number(&em))),
        "{dates} vs {em}"
    );
    let bad_args = a.ctl(&[
        "crl",
        "emergency",
        "--issuer",
        "issuing",
        "--next-update",
        "soon",
    ]);
    assert_eq!(bad_args.code, Some(2), "{bad_args}");
    assert!(bad_args.stdout.contains("1h"), "{bad_args}");
    let unknown = a.ctl(&[
        "crl",
        "emergency",
        "--issuer",
        "nope",
        "--next-update",
        "1h",
    ]);
    assert_eq!(unknown.code, Some(3), "{unknown}");
    assert!(unknown.stdout.contains("issuing"), "{unknown}");
    // The operator who asked is the actor of the emergency CRL.
    let emergency_event = a
        .events()
        .into_iter()
        .rfind(|e| common::kind(e) == "crl-published")
        .expect("a crl-published event");
    assert!(
        !emergency_event["actor"]
            .as_str()
            .unwrap_or("system")
            .starts_with("system"),
        "{emergency_event}"
    );
    let ended = a
        .ctl(&["crl", "emergency", "--issuer", "issuing", "--end"])
        .ok()
        .json();
    assert!(ended["emergency_validity_secs"].is_null(), "{ended}");
    assert!(crl_number(&ended) > crl_number(&em), "{ended}");

    // Restart: the last CRL is served as it was, then numbers go on.
    served_crl(&a, port);
    let before = std::fs::read(dir.join("crl.der")).unwrap();
    a.stop_daemon();
    a.start_daemon();
    wait_http(port);
    let after = fetch(&a, port, "/crl/issuing.crl", "crl-after.der");
    assert_eq!(before, after, "the CRL served after a restart changed");
    let next = a
        .ctl(&["crl", "publish", "--issuer", "issuing"])
        .ok()
        .json();
    assert!(
        crl_number(&next) > crl_number(&ended),
        "{next} after {ended}"
    );
    assert_eq!(next["entries"], 1, "{next}");
    served_crl(&a, port);
    let t = verify_with_crl(dir, "bad.pem", 2);
    assert!(t.contains("certificate revoked"), "{t}");
}

/// A throwaway nginx serving `root` with castellan's site config on `port`.
fn nginx_site(work: &Path, root: &Path, port: u16, castellan_port: u16) -> Nginx {
    let site = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/nginx/castellan-revocation.conf"),
    )
    .unwrap();
    assert!(site.contains("listen 80;") && site.contains("/var/lib/castellan/publish"));
    let site = site
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("listen [::]:80;", "")
        .replace("/var/lib/castellan/publish", root.to_str().unwrap())
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{castellan_port}"));
    std::fs::write(work.join("site.conf"), site).unwrap();
    std::fs::write(
        work.join("nginx.conf"),
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {0}/nginx.pid;\nerror_log {0}/nginx-error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {0};\n  proxy_temp_path {0};\n  fastcgi_temp_path {0};\n  uwsgi_temp_path {0};\n  scgi_temp_path {0};\n  include {0}/site.conf;\n}}\n",
            work.display()
        ),
    )
    .unwrap();
    start_nginx(work, &work.join("nginx.conf"), port)
}

#[test]
fn the_publish_directory_holds_what_the_listener_serves_and_nginx_serves_it_to_openssl() {
    let publish = tempfile::tempdir().unwrap();
    let (a, port) = public_appliance(
        &format!("publish_dir = \"{}\"\n", publish.path().display()),
        "[crl]\ncoalesce_ms = 100\n",
    );
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    let root = publish.path();
    let gone = issue(&a, "gone");
    let serial_kept = issue(&a, "kept");
    a.ctl(&["revoke", &gone, "--reason", "superseded"]).ok();
    eventually("a CRL listing the revocation", || {
        crl_view(&a, "issuing").filter(|v| v["entries"] == 1)
    });
    // `kept` gets its answer pre-signed in the background.
    eventually("kept's OCSP answer to be pre-signed", || {
        let v = a.ctl(&["cert", "show", &serial_kept]).ok().json();
        v["ocsp"]
            .as_str()
            .is_some_and(|o| o.starts_with("good (pre-signed"))
            .then_some(())
    });

    // Byte-identical: CRL (DER and PEM), CA certificate, OCSP answers.
    for (path, file) in [
        ("/crl/issuing.crl", "crl/issuing.crl"),
        ("/crl/issuing.pem", "crl/issuing.pem"),
        ("/ca/issuing.crt", "ca/issuing.crt"),
    ] {
        // The publish directory is written right after the CRL is
        // installed for the listener.
        eventually(&format!("{file} to hold what {path} serves"), || {
            let served = fetch(&a, port, path, "served.bin");
            let published = std::fs::read(root.join(file)).ok()?;
            (served == published).then_some(())
        });
    }
    for cert in ["kept.pem", "gone.pem"] {
        let enc = get_path(dir, cert);
        let served = fetch(&a, port, &format!("/ocsp/issuing/{enc}"), "served.bin");
        let b64 = enc
            .replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=");
        let published = std::fs::read(root.join("ocsp/issuing").join(&b64)).unwrap_or_else(|e| {
            panic!("no published answer for {cert} at ocsp/issuing/{b64}: {e}")
        });
        assert_eq!(served, published, "the published answer for {cert} differs");
    }

    // nginx with the shipped site config serves the same files.
    let nginx_port = free_port();
    let work = tempfile::tempdir().unwrap();
    let _nginx = nginx_site(work.path(), root, nginx_port, port);
    for (cert, status) in [("kept.pem", "good"), ("gone.pem", "revoked")] {
        let enc = get_path(dir, cert);
        curl(
            &[
                "-f",
                "-D",
                "nginx-headers.txt",
                "-o",
                "nginx-resp.der",
                &format!("http://127.0.0.1:{nginx_port}/ocsp/issuing/{enc}"),
            ],
            dir,
        );
        let headers = std::fs::read_to_string(dir.join("nginx-headers.txt")).unwrap();
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("content-type: application/ocsp-response"),
            "{headers}"
        );
        let t = openssl(
            &[
                "ocsp",
                "-respin",
                "nginx-resp.der",
                "-issuer",
                "issuing.pem",
                "-cert",
                cert,
                "-CAfile",
                "chain.pem",
                "-resp_text",
            ],
            dir,
        );
        assert!(t.contains("Response verify OK"), "{t}");
        assert!(t.contains(&format!("{cert}: {status}")), "{t}");
    }
    curl(
        &[
            "-f",
            "-o",
            "nginx-crl.der",
            &format!("http://127.0.0.1:{nginx_port}/crl/issuing.crl"),
        ],
        dir,
    );
    openssl(
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "nginx-crl.der",
            "-out",
            "crl.pem",
        ],
        dir,
    );
    let t = verify_with_crl(dir, "gone.pem", 2);
    assert!(t.contains("certificate revoked"), "{t}");
    verify_with_crl(dir, "kept.pem", 0);
}

#[test]
fn a_burst_of_revocations_gives_few_crls_and_the_last_lists_them_all() {
    const N: usize = 1000;
    const THREADS: usize = 8;
    let (mut a, port) = public_appliance("", "[crl]\ncoalesce_ms = 500\n");
    // Issue N certificates, THREADS castellanctl processes at a time.
    let serials: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let a = &a;
                s.spawn(move || {
                    (0..N / THREADS)
                        .map(|i| issue(a, &format!("b{t}-{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("an issuing thread"))
            .collect()
    });
    assert_eq!(serials.len(), N);
    let before = crl_view(&a, "issuing").map_or(0, |v| crl_number(&v));
    let published_before = a
        .events()
        .iter()
        .filter(|e| common::kind(e) == "crl-published")
        .count();
    std::thread::scope(|s| {
        for chunk in serials.chunks(N / THREADS) {
            let a = &a;
            s.spawn(move || {
                for serial in chunk {
                    a.ctl(&["revoke", serial, "--reason", "cessationOfOperation"])
                        .ok();
                }
            });
        }
    });
    let last = eventually("a CRL listing all revocations", || {
        crl_view(&a, "issuing").filter(|v| v["entries"] == N as u64)
    });
    assert!(crl_number(&last) > before);
    let published = a
        .events()
        .iter()
        .filter(|e| common::kind(e) == "crl-published")
        .count()
        - published_before;
    assert!(
        published * 5 < N,
        "{published} CRLs for {N} revocations: bursts are not coalesced"
    );
    let text = served_crl(&a, port);
    assert_eq!(
        text.matches("Serial Number:").count(),
        N,
        "the served CRL does not list every revocation"
    );

    // The CRLs of the burst were built from the previous CRL's entries and
    // the revocations logged since; after a restart the next one reads the
    // whole revocation index: both list the same entries, in the same order.
    let entries = |text: &str| -> String {
        let from = text
            .find("Revoked Certificates:")
            .expect("a list of revocations");
        let to = text[from..]
            .find("Signature Algorithm")
            .expect("the signature after it");
        text[from..from + to].to_string()
    };
    let incremental = entries(&text);
    a.stop_daemon();
    a.start_daemon();
    common::wait_http(port);
    let v = a
        .ctl(&["crl", "publish", "--issuer", "issuing"])
        .ok()
        .json();
    assert!(crl_number(&v) > crl_number(&last), "{v}");
    let rescanned = served_crl(&a, port);
    assert_eq!(
        entries(&rescanned),
        incremental,
        "a CRL read from the whole index lists other entries than the one built since the last CRL"
    );
}

#[test]
fn the_responder_rotates_on_its_own_and_ocsp_keeps_verifying() {
    // The shortest responder life the answers' validity allows (three
    // times the shortest ocsp_validity_secs).
    let (a, port) = public_appliance_with(60, "responder_validity_secs = 180\n", "");
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    issue(&a, "leaf");
    let responder_id = |t: &str| -> String {
        t.lines()
            .find(|l| l.contains("Responder Id:"))
            .expect("a responder id")
            .trim()
            .to_string()
    };
    let t = ocsp_text(dir, port, "leaf.pem");
    assert!(
        t.contains("leaf.pem: good") && t.contains("Response verify OK"),
        "{t}"
    );
    let first = responder_id(&t);
    let rotations = |a: &Appliance| {
        a.events()
            .iter()
            .filter(|e| {
                common::kind(e) == "responder-rotated"
                    && common::subjects(e).iter().any(|s| s == "issuing")
            })
            .count()
    };
    let initial = rotations(&a);
    // A third of 180 s left: the daemon rotates by itself, nobody asks.
    eventually_within(
        "the issuing responder to rotate",
        Duration::from_secs(240),
        || (rotations(&a) > initial).then_some(()),
    );
    // The pre-signed answer is re-signed by the new responder.
    let t = eventually("an answer from the new responder", || {
        let t = ocsp_text(dir, port, "leaf.pem");
        (responder_id(&t) != first).then_some(t)
    });
    assert!(t.contains("leaf.pem: good"), "{t}");
    assert!(t.contains("Response verify OK"), "{t}");
}

#[test]
fn with_the_signer_down_cached_answers_are_served_and_a_revoked_certificate_is_never_good() {
    let (mut a, port) = public_appliance("", "");
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    let stays = issue(&a, "stays");
    let goes = issue(&a, "goes");
    for serial in [&stays, &goes] {
        eventually("the answers to be pre-signed", || {
            let v = a.ctl(&["cert", "show", serial]).ok().json();
            v["ocsp"]
                .as_str()
                .is_some_and(|o| o.starts_with("good (pre-signed"))
                .then_some(())
        });
    }
    a.kill_signer();

    // Pre-signed answers need no signer — also for a request with a nonce
    // (openssl's default), answered without it rather than tryLater.
    let t = ocsp_text(dir, port, "stays.pem");
    assert!(t.contains("stays.pem: good"), "{t}");
    assert!(t.contains("Response verify OK"), "{t}");
    assert!(t.contains("WARNING: no nonce in response"), "{t}");

    // The revocation is recorded; OCSP stops saying good at once and
    // says tryLater until it can sign `revoked`.
    let v = a
        .ctl(&["revoke", &goes, "--reason", "keyCompromise"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
    assert!(
        v["ocsp"].as_str().unwrap().starts_with("not yet signed"),
        "{v}"
    );
    says_try_later(dir, port, &[]);
    let t = ocsp_text(dir, port, "stays.pem");
    assert!(t.contains("stays.pem: good"), "{t}");

    // The signer is back: the revoked answer is signed on its own.
    a.start_signer();
    let t = eventually("OCSP to say revoked once the signer is back", || {
        if let Some(status) = a.signer_exited() {
            panic!("castellan-signer ended: {status:?}");
        }
        let out = run(
            Command::new("openssl")
                .args([
                    "ocsp",
                    "-issuer",
                    "issuing.pem",
                    "-cert",
                    "goes.pem",
                    "-url",
                    &format!("http://127.0.0.1:{port}/ocsp/issuing"),
                    "-CAfile",
                    "chain.pem",
                ])
                .current_dir(dir),
            WAIT,
        );
        let t = format!("{}\n{}", out.stdout, out.stderr);
        assert!(!t.contains("goes.pem: good"), "{t}");
        t.contains("goes.pem: revoked").then_some(t)
    });
    assert!(t.contains("Response verify OK"), "{t}");
}

/// The standard base64 of the DER request for `cert` (one SHA-1 CertID, no
/// nonce): the name of its published answer below `ocsp/issuing/`.
fn published_name(dir: &Path, cert: &str) -> String {
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            cert,
            "-no_nonce",
            "-reqout",
            "published-req.der",
        ],
        dir,
    );
    base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join("published-req.der")).unwrap())
}

/// An appliance with a publish directory and one leaf, "goes", whose `good`
/// answer is pre-signed and published; the answer's file.
struct Published {
    publish: tempfile::TempDir,
    a: Appliance,
    port: u16,
    goes: String,
    file: PathBuf,
}

fn with_a_published_answer() -> Published {
    let publish = tempfile::tempdir().unwrap();
    let (a, port) = public_appliance(
        &format!("publish_dir = \"{}\"\n", publish.path().display()),
        "",
    );
    let goes = issue(&a, "goes");
    eventually("goes's answer to be pre-signed", || {
        let v = a.ctl(&["cert", "show", &goes]).ok().json();
        v["ocsp"]
            .as_str()
            .is_some_and(|o| o.starts_with("good (pre-signed"))
            .then_some(())
    });
    let file = publish
        .path()
        .join("ocsp/issuing")
        .join(published_name(a.dir.path(), "goes.pem"));
    eventually("goes's answer to be published", || {
        file.exists().then_some(())
    });
    Published {
        publish,
        a,
        port,
        goes,
        file,
    }
}

#[test]
fn a_revoke_acknowledged_with_the_signer_down_leaves_no_good_answer_in_the_publish_directory() {
    let Published {
        publish,
        mut a,
        port,
        goes,
        file,
    } = with_a_published_answer();
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    let nginx_port = free_port();
    let work = tempfile::tempdir().unwrap();
    let _nginx = nginx_site(work.path(), publish.path(), nginx_port, port);

    a.kill_signer();
    let v = a
        .ctl(&["revoke", &goes, "--reason", "keyCompromise"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
    let said = v["ocsp"].as_str().unwrap();
    assert!(said.starts_with("not yet signed"), "{v}");
    assert!(
        said.contains("the publish directory holds no answer for it"),
        "{v}"
    );
    // Acknowledged: the published `good` is gone already, not later.
    assert!(
        !file.exists(),
        "the publish directory still holds goes's answer after the revoke was acknowledged: {}",
        openssl(
            &[
                "ocsp",
                "-respin",
                file.to_str().unwrap(),
                "-issuer",
                "issuing.pem",
                "-cert",
                "goes.pem",
                "-CAfile",
                "chain.pem",
            ],
            dir
        )
    );
    // nginx passes what it does not hold to castellan: tryLater, never good.
    says_try_later(dir, nginx_port, &["-no_nonce"]);

    // The signer is back: the revoked answer is signed and published.
    a.start_signer();
    eventually("the revoked answer to be published", || {
        if let Some(status) = a.signer_exited() {
            panic!("castellan-signer ended: {status:?}");
        }
        std::fs::copy(&file, dir.join("published.der")).ok()?;
        let t = openssl(
            &[
                "ocsp",
                "-respin",
                "published.der",
                "-issuer",
                "issuing.pem",
                "-cert",
                "goes.pem",
                "-CAfile",
                "chain.pem",
            ],
            dir,
        );
        assert!(!t.contains("goes.pem: good"), "{t}");
        t.contains("goes.pem: revoked").then_some(())
    });
    let t = openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "goes.pem",
            "-no_nonce",
            "-url",
            &format!("http://127.0.0.1:{nginx_port}/ocsp/issuing"),
            "-CAfile",
            "chain.pem",
        ],
        dir,
    );
    assert!(t.contains("goes.pem: revoked"), "{t}");
    assert!(t.contains("Response verify OK"), "{t}");
}

#[test]
fn answers_are_re_signed_at_their_half_life_not_on_every_tick() {
    // Answers valid 100 s, a responder living 300 s (rotated with 100 s
    // left): an answer is re-signed some 40 s after it was signed.
    let (a, _port) = public_appliance_with(100, "responder_validity_secs = 300\n", "");
    let serial = issue(&a, "leaf");
    eventually("leaf's answer to be pre-signed", || {
        let v = a.ctl(&["cert", "show", &serial]).ok().json();
        v["ocsp"]
            .as_str()
            .is_some_and(|o| o.starts_with("good (pre-signed"))
            .then_some(())
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let v = a.ctl(&["cert", "show", &serial]).ok().json();
        seen.insert(v["ocsp"].as_str().unwrap_or_default().to_string());
        std::thread::sleep(Duration::from_secs(2));
    }
    // Once at most in 20 s (the half-life may fall inside them).
    assert!(
        seen.len() <= 2,
        "the answer was signed {} times in 20 s: {seen:?}",
        seen.len()
    );
}

#[test]
fn a_publish_directory_that_cannot_be_written_is_said_in_the_revoke_and_caught_up() {
    // The publish directory lives as long as `_publish`.
    let Published {
        publish: _publish,
        a,
        goes,
        file,
        ..
    } = with_a_published_answer();
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    // The answer's path made unwritable: a non-empty directory (root
    // ignores permissions) that no rename can replace.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir_all(file.join("blocker")).unwrap();
    let v = a
        .ctl(&["revoke", &goes, "--reason", "keyCompromise"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
    let said = v["ocsp"].as_str().unwrap();
    assert!(said.starts_with("revoked"), "{v}");
    assert!(
        said.contains("the publish directory could not be updated"),
        "a failed publish is not said: {v}"
    );
    // Fixed: castellan catches up by itself.
    std::fs::remove_dir_all(&file).unwrap();
    wait_published_revoked(dir, &file);
}

#[test]
fn a_full_publish_directory_is_said_in_the_revoke_keeps_no_partial_files_and_is_caught_up() {
    let outer = tempfile::tempdir().unwrap();
    let fs = common::Tmpfs::mount_at(outer.path(), "1m");
    let root = fs.path.clone();
    let (a, _port) = public_appliance(
        &format!("publish_dir = \"{}\"\n", root.display()),
        "[crl]\ncoalesce_ms = 100\n",
    );
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    let goes = issue(&a, "goes");
    let file = root
        .join("ocsp/issuing")
        .join(published_name(dir, "goes.pem"));
    eventually("goes's answer to be published", || {
        file.exists().then_some(())
    });

    fs.fill();
    let v = a
        .ctl(&["revoke", &goes, "--reason", "keyCompromise"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
    let said = v["ocsp"].as_str().unwrap();
    assert!(
        said.contains("the publish directory could not be updated")
            && said.contains("No space left on device"),
        "a failed publish is not said: {v}"
    );
    let partial: Vec<PathBuf> = walk(&root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".tmp"))
        })
        .collect();
    assert!(
        partial.is_empty(),
        "partial temporary files left in the full publish directory: {partial:?}"
    );

    fs.free();
    wait_published_revoked(dir, &file);
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
