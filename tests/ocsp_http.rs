//! OCSP over HTTP with the real binaries: `castellan-signer`, `castellan`
//! (public listener on a free port) and `castellanctl`, checked with the
//! real `openssl ocsp` and `curl`.
//!
//! Build every binary first: `cargo build --workspace --bins`.

mod common;

use std::process::Command;

use base64::Engine;
use common::{
    WAIT, curl, issue, openssl, openssl_exit, openssl_ocsp, public_appliance, run, wait_http,
};

#[test]
fn ocsp_over_http_answers_good_revoked_unknown_and_errors_with_openssl_and_curl() {
    let (a, port) = public_appliance("", "");
    let dir = a.dir.path();
    let url = format!("http://127.0.0.1:{port}/ocsp");
    let serial = issue(&a, "leaf");
    issue(&a, "leaf2");

    let ask = |extra: &[&str]| -> String {
        let mut args = vec!["ocsp", "-issuer", "issuing.pem"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-url", &url, "-CAfile", "chain.pem", "-resp_text"]);
        openssl(&args, dir)
    };

    // Good, signed by the delegated responder (rotated in on demand: the
    // CAs were made after start-up), nonce echoed.
    let t = ask(&["-cert", "leaf.pem"]);
    assert!(t.contains("leaf.pem: good"), "{t}");
    assert!(t.contains("Response verify OK"), "{t}");
    assert!(!t.contains("WARNING: no nonce"), "{t}");
    assert!(!t.contains("Nonce Verify error"), "{t}");
    // The responder certificate printed in the response, trusted directly
    // with -VAfile (no chain needed).
    let begin = t
        .find("-----BEGIN CERTIFICATE-----")
        .expect("the responder certificate in the response");
    let end = t[begin..]
        .find("-----END CERTIFICATE-----")
        .expect("the end of the responder certificate")
        + begin
        + "-----END CERTIFICATE-----".len();
    std::fs::write(dir.join("responder.pem"), format!("{}\n", &t[begin..end])).unwrap();
    let v = openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-url",
            &url,
            "-VAfile",
            "responder.pem",
        ],
        dir,
    );
    assert!(v.contains("leaf.pem: good"), "{v}");
    assert!(v.contains("Response verify OK"), "{v}");
    let text = openssl(&["x509", "-in", "responder.pem", "-noout", "-text"], dir);
    assert!(text.contains("OCSP Signing"), "{text}");
    assert!(text.contains("OCSP No Check"), "{text}");
    let events = a.events();
    assert!(
        events
            .iter()
            .any(|e| common::kind(e) == "responder-rotated"),
        "no responder-rotated event"
    );

    // SHA-256 CertID, answered in SHA-256.
    let t = ask(&["-sha256", "-cert", "leaf.pem"]);
    assert!(t.contains("leaf.pem: good"), "{t}");
    assert!(t.contains("Hash Algorithm: sha256"), "{t}");
    assert!(t.contains("Response verify OK"), "{t}");

    // Two CertIDs, two answers.
    let t = ask(&["-cert", "leaf.pem", "-cert", "leaf2.pem"]);
    assert!(t.contains("leaf.pem: good"), "{t}");
    assert!(t.contains("leaf2.pem: good"), "{t}");

    // A serial castellan never issued.
    let t = ask(&["-serial", "0x1234"]);
    assert!(t.contains("0x1234: unknown"), "{t}");
    assert!(t.contains("Response verify OK"), "{t}");

    // Revoked on the very next request.
    let v = a
        .ctl(&["revoke", &serial, "--reason", "keyCompromise"])
        .ok()
        .json();
    assert_eq!(v["state"], "revoked", "{v}");
    let t = ask(&["-cert", "leaf.pem"]);
    assert!(t.contains("leaf.pem: revoked"), "{t}");
    assert!(t.contains("Reason: keyCompromise"), "{t}");
    assert!(t.contains("Response verify OK"), "{t}");

    // GET (RFC 5019), decoded by openssl, with caching headers and 304.
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf2.pem",
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
        dir,
    );
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join("req.der")).unwrap());
    let enc = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let get_url = format!("{url}/{enc}");
    curl(&["-D", "headers.txt", "-o", "resp.der", &get_url], dir);
    let t = openssl(
        &["ocsp", "-respin", "resp.der", "-resp_text", "-noverify"],
        dir,
    );
    assert!(t.contains("Cert Status: good"), "{t}");
    let headers = std::fs::read_to_string(dir.join("headers.txt")).unwrap();
    let lower = headers.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/ocsp-response"),
        "{headers}"
    );
    assert!(
        lower.contains("cache-control: max-age=")
            && lower.contains("public, no-transform, must-revalidate"),
        "{headers}"
    );
    for h in ["expires: ", "last-modified: ", "etag: \""] {
        assert!(lower.contains(h), "{h} missing: {headers}");
    }
    let etag = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("etag:")
                .then(|| l[5..].trim().to_string())
        })
        .unwrap();
    let out = curl(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("If-None-Match: {etag}"),
            &get_url,
        ],
        dir,
    );
    assert_eq!(out.stdout.trim(), "304", "{out}");

    // GET with the issuer in the path, for the revoked one.
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-reqout",
            "req2.der",
        ],
        dir,
    );
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join("req2.der")).unwrap());
    curl(&["-o", "resp2.der", &format!("{url}/issuing/{b64}")], dir);
    let t = openssl(
        &["ocsp", "-respin", "resp2.der", "-resp_text", "-noverify"],
        dir,
    );
    assert!(t.contains("Cert Status: revoked"), "{t}");

    // Garbage → malformedRequest, as an OCSP response.
    std::fs::write(dir.join("garbage"), b"this is not DER").unwrap();
    curl(
        &[
            "-o",
            "err.der",
            "-H",
            "Content-Type: application/ocsp-request",
            "--data-binary",
            "@garbage",
            &url,
        ],
        dir,
    );
    assert_eq!(
        std::fs::read(dir.join("err.der")).unwrap(),
        [0x30, 0x03, 0x0a, 0x01, 0x01]
    );

    // A CA castellan does not hold → unauthorized.
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "foreign.key",
            "-out",
            "foreign.pem",
            "-subj",
            "/CN=foreign",
            "-days",
            "2",
        ],
        dir,
    );
    // openssl exits 1 on an error status.
    let t = openssl_exit(
        &[
            "ocsp",
            "-issuer",
            "foreign.pem",
            "-serial",
            "0x1234",
            "-url",
            &url,
            "-resp_text",
        ],
        dir,
        1,
    );
    assert!(t.contains("unauthorized (6)"), "{t}");

    // The CA certificate, and 404 elsewhere.
    curl(
        &[
            "-o",
            "issuing.der",
            &format!("http://127.0.0.1:{port}/ca/issuing.crt"),
        ],
        dir,
    );
    let t = openssl(
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "issuing.der",
            "-noout",
            "-subject",
        ],
        dir,
    );
    assert!(t.contains("subject"), "{t}");
    let out = curl(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{port}/nope"),
        ],
        dir,
    );
    assert_eq!(out.stdout.trim(), "404", "{out}");
}

#[test]
fn responders_are_rotated_at_start_up_and_the_root_answers_for_its_intermediate() {
    let (mut a, port) = public_appliance("", "");
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    // Restart: start-up gives every CA (root and issuing) a responder
    // without any operator step.
    a.stop_daemon();
    a.start_daemon();
    wait_http(port);
    let rotated: Vec<Vec<String>> = a
        .events()
        .iter()
        .filter(|e| common::kind(e) == "responder-rotated")
        .map(common::subjects)
        .collect();
    for ca in ["root", "issuing"] {
        assert!(
            rotated.iter().any(|s| s.iter().any(|x| x == ca)),
            "no responder for {ca}: {rotated:?}"
        );
    }
    let t = openssl(
        &[
            "ocsp",
            "-issuer",
            "root.pem",
            "-cert",
            "issuing.pem",
            "-url",
            &format!("http://127.0.0.1:{port}/ocsp/root"),
            "-CAfile",
            "root.pem",
            "-resp_text",
        ],
        dir,
    );
    assert!(t.contains("issuing.pem: good"), "{t}");
    assert!(t.contains("Response verify OK"), "{t}");
    // A request for issuing's certificates sent to /ocsp/root: unauthorized.
    let t = openssl_exit(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-serial",
            "0x1234",
            "-url",
            &format!("http://127.0.0.1:{port}/ocsp/root"),
        ],
        dir,
        1,
    );
    assert!(t.contains("unauthorized (6)"), "{t}");
}

#[test]
fn out_of_range_ocsp_settings_exit_64_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (line, key) in [
        (
            "[http]\nresponder_validity_secs = 7776001",
            "http.responder_validity_secs",
        ),
        (
            "[http]\nresponder_validity_secs = 29",
            "http.responder_validity_secs",
        ),
        ("[http]\nocsp_validity_secs = 10", "http.ocsp_validity_secs"),
        (
            "[http]\nresponder_validity_secs = 300\nocsp_validity_secs = 600",
            "http.ocsp_validity_secs",
        ),
        (
            "[http]\nresponder_validity_secs = 299\nocsp_validity_secs = 100",
            "http.ocsp_validity_secs",
        ),
        (
            "[http]\nocsp_max_age_secs = 86401",
            "http.ocsp_max_age_secs",
        ),
        ("[crl]\nvalidity_secs = 299", "crl.validity_secs"),
        ("[crl]\ncoalesce_ms = 60001", "crl.coalesce_ms"),
        ("[crl]\nvalidity = 3600", "crl.validity_secs"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let out = run(
            Command::new(common::castellan_bin())
                .arg("--config")
                .arg(&path)
                .arg("check-config"),
            WAIT,
        );
        assert_eq!(out.code, Some(64), "{out}");
        assert!(out.stderr.contains(key), "{out}");
    }
}

/// The headers of `curl -D` as lower-case text (for one answer).
fn headers_of(dir: &std::path::Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .to_ascii_lowercase()
}

/// The max-age of a `cache-control` header in `headers`.
fn max_age(headers: &str) -> Option<i64> {
    let line = headers.lines().find(|l| l.starts_with("cache-control:"))?;
    let v = line.split("max-age=").nth(1)?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The standard base64 of a DER request file, percent-encoded for a URL.
fn url_encoded(dir: &std::path::Path, file: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir.join(file)).unwrap())
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`):
/// everything castellan sent.
fn raw_http(port: u16, request: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn http_caching_head_allow_and_lenient_paths() {
    let (a, port) = public_appliance("", "");
    let dir = a.dir.path();
    let url = format!("http://127.0.0.1:{port}/ocsp");
    let serial = issue(&a, "leaf");
    // The pre-signed answer: the same bytes for GET and HEAD below.
    common::eventually("leaf's answer to be pre-signed", || {
        let v = a.ctl(&["cert", "show", &serial]).ok().json();
        v["ocsp"]
            .as_str()
            .is_some_and(|o| o.starts_with("good (pre-signed"))
            .then_some(())
    });
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-no_nonce",
            "-reqout",
            "req.der",
        ],
        dir,
    );
    let enc = url_encoded(dir, "req.der");

    // A signed good answer: max-age capped by http.ocsp_max_age_secs
    // (300 by default) although nextUpdate is some 10 minutes away.
    let get_url = format!("{url}/issuing/{enc}");
    curl(&["-D", "h-good.txt", "-o", "good.der", &get_url], dir);
    let h = headers_of(dir, "h-good.txt");
    let age = max_age(&h).unwrap_or_else(|| panic!("no max-age: {h}"));
    assert!((1..=300).contains(&age), "max-age {age} over the cap: {h}");
    assert!(h.contains("public"), "{h}");

    // HEAD: the same headers, no body.
    let head = raw_http(
        port,
        &format!("HEAD /ocsp/issuing/{enc} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let end = text.find("\r\n\r\n").expect("a complete head") + 4;
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert_eq!(end, head.len(), "HEAD answered with a body: {text}");
    assert!(
        text.contains("content-type: application/ocsp-response"),
        "{text}"
    );
    assert!(text.contains("etag:"), "{text}");
    let good_len = std::fs::metadata(dir.join("good.der")).unwrap().len();
    assert!(
        text.contains(&format!("content-length: {good_len}")),
        "{text}"
    );
    for path in ["/crl/issuing.crl", "/ca/issuing.crt"] {
        let code = |m: &str| {
            curl(
                &[
                    "-s",
                    "-X",
                    m,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "10",
                    &format!("http://127.0.0.1:{port}{path}"),
                ],
                dir,
            )
            .stdout
            .trim()
            .to_string()
        };
        // The first CRL is published in the background.
        common::eventually(&format!("GET {path} to answer"), || {
            (code("GET") == "200").then_some(())
        });
        let out = curl(
            &[
                "-s",
                "-I",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://127.0.0.1:{port}{path}"),
            ],
            dir,
        );
        assert_eq!(out.stdout.trim(), "200", "HEAD {path}");
    }

    // 405 says what is allowed.
    for (path, allow) in [
        (format!("/ocsp/issuing/{enc}"), "get, head, post"),
        ("/ocsp".to_string(), "get, head, post"),
        ("/crl/issuing.crl".to_string(), "get, head"),
        ("/ca/issuing.crt".to_string(), "get, head"),
    ] {
        curl(
            &[
                "-s",
                "-X",
                "PUT",
                "-D",
                "h-405.txt",
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{port}{path}"),
            ],
            dir,
        );
        let h = headers_of(dir, "h-405.txt");
        assert!(h.starts_with("http/1.1 405"), "PUT {path}: {h}");
        assert!(
            h.contains(&format!("allow: {allow}\r\n")),
            "PUT {path}: {h}"
        );
    }

    // Never kept by an HTTP cache: unsigned errors, nonces, `unknown`.
    curl(
        &[
            "-s",
            "-D",
            "h-bad.txt",
            "-o",
            "bad.der",
            &format!("{url}/issuing/%21%21"),
        ],
        dir,
    );
    let h = headers_of(dir, "h-bad.txt");
    assert_eq!(
        std::fs::read(dir.join("bad.der")).unwrap(),
        [0x30, 0x03, 0x0a, 0x01, 0x01]
    );
    assert!(
        h.contains("cache-control: no-store"),
        "malformedRequest: {h}"
    );
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-serial",
            "0x1234",
            "-no_nonce",
            "-reqout",
            "unknown.der",
        ],
        dir,
    );
    curl(
        &[
            "-D",
            "h-unknown.txt",
            "-o",
            "unknown-resp.der",
            &format!("{url}/issuing/{}", url_encoded(dir, "unknown.der")),
        ],
        dir,
    );
    let t = openssl(
        &[
            "ocsp",
            "-respin",
            "unknown-resp.der",
            "-resp_text",
            "-noverify",
        ],
        dir,
    );
    assert!(t.contains("Cert Status: unknown"), "{t}");
    let h = headers_of(dir, "h-unknown.txt");
    assert!(h.contains("cache-control: no-store"), "unknown: {h}");
    assert!(max_age(&h).is_none(), "unknown: {h}");
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-reqout",
            "nonce.der",
        ],
        dir,
    );
    curl(
        &[
            "-D",
            "h-nonce.txt",
            "-o",
            "nonce-resp.der",
            "-H",
            "Content-Type: application/ocsp-request",
            "--data-binary",
            "@nonce.der",
            &url,
        ],
        dir,
    );
    let h = headers_of(dir, "h-nonce.txt");
    assert!(h.contains("cache-control: no-store"), "nonce: {h}");
    curl(
        &[
            "-D",
            "h-nonce-get.txt",
            "-o",
            "nonce-get.der",
            &format!("{url}/{}", url_encoded(dir, "nonce.der")),
        ],
        dir,
    );
    let h = headers_of(dir, "h-nonce-get.txt");
    assert!(h.contains("cache-control: no-store"), "nonce over GET: {h}");

    // An AIA URL ending in `/`, and POST to `/ocsp/{issuer}/`.
    for get in [format!("{url}/issuing//{enc}"), format!("{url}//{enc}")] {
        curl(&["--path-as-is", "-o", "slash.der", &get], dir);
        let t = openssl(
            &[
                "ocsp",
                "-respin",
                "slash.der",
                "-issuer",
                "issuing.pem",
                "-cert",
                "leaf.pem",
                "-CAfile",
                "chain.pem",
            ],
            dir,
        );
        assert!(t.contains("leaf.pem: good"), "GET {get}: {t}");
    }
    let t = openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-cert",
            "leaf.pem",
            "-url",
            &format!("{url}/issuing/"),
            "-CAfile",
            "chain.pem",
        ],
        dir,
    );
    assert!(t.contains("leaf.pem: good"), "POST /ocsp/issuing/: {t}");
    assert!(t.contains("Response verify OK"), "{t}");
}

/// `Mon DD HH:MM:SS YYYY GMT` (as openssl prints times) as a sortable tuple.
fn openssl_time(text: &str, label: &str) -> (u32, u32, u32, String) {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label} in {text}"));
    let parts: Vec<&str> = line.split_whitespace().collect();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[0]).unwrap() as u32;
    let day: u32 = parts[1].parse().unwrap();
    let year: u32 = parts[3].parse().unwrap();
    (year, month, day, parts[2].to_string())
}

#[test]
fn revoked_answers_omit_unspecified_and_start_at_the_revocation() {
    let (a, port) = public_appliance("", "");
    let dir = a.dir.path();
    let url = format!("http://127.0.0.1:{port}/ocsp/issuing");
    let u = issue(&a, "u");
    let k = issue(&a, "k");
    a.ctl(&["revoke", &u, "--reason", "unspecified"]).ok();
    a.ctl(&["revoke", &k, "--reason", "keyCompromise"]).ok();
    for (cert, reason) in [("u.pem", None), ("k.pem", Some("keyCompromise"))] {
        for nonce in [true, false] {
            let mut args = vec![
                "ocsp",
                "-issuer",
                "issuing.pem",
                "-cert",
                cert,
                "-url",
                &url,
            ];
            args.extend(["-CAfile", "chain.pem", "-resp_text"]);
            if !nonce {
                args.push("-no_nonce");
            }
            let t = openssl(&args, dir);
            assert!(t.contains(&format!("{cert}: revoked")), "{t}");
            assert!(t.contains("Response verify OK"), "{t}");
            match reason {
                None => assert!(
                    !t.contains("Reason"),
                    "unspecified (0) is sent although RFC 5280 says to omit it: {t}"
                ),
                Some(r) => assert!(t.contains(&format!("Reason: {r}")), "{t}"),
            }
            let revoked = openssl_time(&t, "Revocation Time:");
            let this_update = openssl_time(&t, "This Update:");
            assert!(
                this_update >= revoked,
                "thisUpdate {this_update:?} before the revocation {revoked:?}: {t}"
            );
            assert!(t.contains("Next Update:"), "{t}");
        }
    }
}

#[test]
fn on_demand_signing_is_bounded_and_unknown_answers_are_kept() {
    let (a, port) = public_appliance("ocsp_sign_rate = 1\n", "");
    let dir = a.dir.path();
    let url = format!("http://127.0.0.1:{port}/ocsp/issuing");
    for tag in ["leaf", "leaf2"] {
        let serial = issue(&a, tag);
        common::eventually(&format!("{tag}'s answer to be pre-signed"), || {
            let v = a.ctl(&["cert", "show", &serial]).ok().json();
            v["ocsp"]
                .as_str()
                .is_some_and(|o| o.starts_with("good (pre-signed"))
                .then_some(())
        });
    }

    // A serial never issued: signed once, then the same answer.
    openssl(
        &[
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-serial",
            "0x4321",
            "-no_nonce",
            "-reqout",
            "unknown.der",
        ],
        dir,
    );
    let get = format!("{url}/{}", url_encoded(dir, "unknown.der"));
    curl(&["-o", "unknown-1.der", &get], dir);
    curl(&["-o", "unknown-2.der", &get], dir);
    let first = std::fs::read(dir.join("unknown-1.der")).unwrap();
    let t = openssl(
        &[
            "ocsp",
            "-respin",
            "unknown-1.der",
            "-resp_text",
            "-noverify",
        ],
        dir,
    );
    assert!(t.contains("Cert Status: unknown"), "{t}");
    assert!(
        first == std::fs::read(dir.join("unknown-2.der")).unwrap(),
        "a repeated unknown request was signed again"
    );

    // Requests with a nonce (openssl's default): about one signature per
    // second; the others get the pre-signed answer, without the nonce.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let start = std::time::Instant::now();
    let mut echoed = 0u64;
    for _ in 0..10 {
        let t = openssl_ocsp(dir, &url, "leaf.pem", &[]);
        assert!(t.contains("leaf.pem: good"), "{t}");
        assert!(t.contains("Response verify OK"), "{t}");
        if !t.contains("WARNING: no nonce in response") {
            echoed += 1;
        }
    }
    let secs = start.elapsed().as_secs();
    assert!(
        echoed <= 2 + secs,
        "{echoed} answers signed with their nonce in {secs} s at ocsp_sign_rate = 1"
    );

    // Two CertIDs are never pre-signed: tryLater once the rate is spent.
    let mut try_later = 0;
    for _ in 0..5 {
        let out = run(
            Command::new("openssl")
                .args([
                    "ocsp",
                    "-issuer",
                    "issuing.pem",
                    "-cert",
                    "leaf.pem",
                    "-cert",
                    "leaf2.pem",
                    "-no_nonce",
                    "-url",
                    &url,
                    "-CAfile",
                    "chain.pem",
                ])
                .current_dir(dir),
            WAIT,
        );
        let t = format!("{}\n{}", out.stdout, out.stderr).to_lowercase();
        if t.contains("trylater") {
            try_later += 1;
        } else {
            assert!(
                t.contains("leaf.pem: good") && t.contains("leaf2.pem: good"),
                "{t}"
            );
        }
    }
    assert!(
        try_later >= 3,
        "only {try_later} of 5 over the rate got tryLater"
    );
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend([0x81, n as u8]);
    } else {
        out.extend([0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// RFC 6960 §4.2.1: the answer's CertID is the request's, octet for octet —
/// whether the client wrote the hash algorithm's parameters as NULL (as
/// OpenSSL does) or left them out (as RFC 5754 asks SHA-2 generators to).
/// Clients that compare CertIDs structurally find no answer otherwise. The
/// absent form is no way around a revocation either.
#[test]
fn the_cert_id_is_echoed_exactly_with_null_or_absent_hash_parameters() {
    let (a, port) = public_appliance("", "");
    let dir = a.dir.path();
    let serial = issue(&a, "echo");
    let url = format!("http://127.0.0.1:{port}/ocsp/issuing");
    let mut forms = Vec::new();
    for (digest, oid) in [
        ("-sha1", &[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a][..]),
        (
            "-sha256",
            &[
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
            ][..],
        ),
    ] {
        let out = format!("req{digest}.der");
        openssl(
            &[
                "ocsp",
                "-issuer",
                "issuing.pem",
                digest,
                "-cert",
                "echo.pem",
                "-no_nonce",
                "-reqout",
                &out,
            ],
            dir,
        );
        let req = std::fs::read(dir.join(&out)).expect("the request openssl wrote");
        let id = castellan::ocsp::parse_request(&req).expect("openssl's request parses");
        let id = &id.cert_ids[0];
        let mut serial_content = id.serial.clone();
        if serial_content[0] & 0x80 != 0 {
            serial_content.insert(0, 0);
        }
        for with_null in [true, false] {
            let mut alg = oid.to_vec();
            if with_null {
                alg.extend([0x05, 0x00]);
            }
            let mut cid = der_tlv(0x30, &alg);
            cid.extend(der_tlv(0x04, &id.issuer_name_hash));
            cid.extend(der_tlv(0x04, &id.issuer_key_hash));
            cid.extend(der_tlv(0x02, &serial_content));
            forms.push((format!("{digest} NULL={with_null}"), der_tlv(0x30, &cid)));
        }
    }
    let ask = |name: &str, cert_id: &[u8], file: &str| -> (Vec<u8>, String) {
        // OCSPRequest { TBSRequest { requestList { Request { reqCert } } } }
        let der = der_tlv(
            0x30,
            &der_tlv(0x30, &der_tlv(0x30, &der_tlv(0x30, cert_id))),
        );
        let req = format!("{file}.req");
        std::fs::write(dir.join(&req), der).expect("write the request");
        curl(
            &[
                "-sS",
                "-o",
                file,
                "-H",
                "Content-Type: application/ocsp-request",
                "--data-binary",
                &format!("@{req}"),
                &url,
            ],
            dir,
        );
        let resp = std::fs::read(dir.join(file)).expect("the answer");
        let text = openssl(
            &[
                "ocsp",
                "-respin",
                file,
                "-resp_text",
                "-CAfile",
                "chain.pem",
            ],
            dir,
        );
        assert!(text.contains("Response verify OK"), "{name}: {text}");
        (resp, text)
    };
    for (i, (name, cert_id)) in forms.iter().enumerate() {
        let (resp, text) = ask(name, cert_id, &format!("good{i}.der"));
        assert!(text.contains("Cert Status: good"), "{name}: {text}");
        assert!(
            resp.windows(cert_id.len()).any(|w| w == cert_id.as_slice()),
            "{name}: the answer does not carry the request's CertID octet for octet"
        );
    }
    a.ctl(&["revoke", &serial, "--reason", "keyCompromise"])
        .ok();
    for (i, (name, cert_id)) in forms.iter().enumerate() {
        let (resp, text) = ask(name, cert_id, &format!("revoked{i}.der"));
        assert!(
            text.contains("Cert Status: revoked"),
            "{name} after the revocation: {text}"
        );
        assert!(
            resp.windows(cert_id.len()).any(|w| w == cert_id.as_slice()),
            "{name}: the revoked answer does not carry the request's CertID"
        );
    }
}

/// The names of the daemon's threads (`comm`, at most 15 characters).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// `http.workers` threads serve the public listener, each with its own
/// connections; answers signed on demand (a nonce each), the pre-signed
/// cache and a revocation are the same whichever worker a connection lands
/// on.
#[test]
fn several_listener_workers_serve_the_same_answers() {
    let (a, port) = public_appliance("workers = 3\n", "");
    let dir = a.dir.path();
    let pid = a.daemon_pid().unwrap();
    let workers: Vec<String> = thread_names(pid)
        .into_iter()
        .filter(|n| n.starts_with("public-http-"))
        .collect();
    assert_eq!(workers, ["public-http-0", "public-http-1", "public-http-2"]);

    let serial = issue(&a, "leaf");
    let url = format!("http://127.0.0.1:{port}/ocsp/issuing");
    let ask = |nonce: bool| {
        let extra: &[&str] = if nonce { &[] } else { &["-no_nonce"] };
        openssl_ocsp(dir, &url, "leaf.pem", extra)
    };
    // Twelve connections at once, each with its own nonce: each is signed
    // on demand by the daemon's runtime and handed back to the worker that
    // holds the connection.
    let answers: Vec<String> = std::thread::scope(|s| {
        let asks: Vec<_> = (0..12).map(|_| s.spawn(|| ask(true))).collect();
        asks.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for t in &answers {
        assert!(t.contains("leaf.pem: good"), "{t}");
        assert!(t.contains("Response verify OK"), "{t}");
    }
    assert!(
        answers
            .iter()
            .any(|t| !t.contains("WARNING: no nonce in response")),
        "no answer carried its nonce: {answers:?}"
    );

    a.ctl(&["revoke", &serial, "--reason", "keyCompromise"])
        .ok();
    // The very next requests, on new connections spread over the workers.
    let after: Vec<String> = std::thread::scope(|s| {
        let asks: Vec<_> = (0..12).map(|i| s.spawn(move || ask(i % 2 == 0))).collect();
        asks.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for t in &after {
        assert!(t.contains("leaf.pem: revoked"), "{t}");
        assert!(t.contains("Reason: keyCompromise"), "{t}");
    }
}
