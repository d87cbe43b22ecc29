//! Revocation as relying parties other than OpenSSL see it, against a real
//! castellan: GnuTLS (`ocsptool`, `certtool`), NSS (`certutil`, `crlutil`,
//! `vfychain`), the JDK's PKIX `CertPathValidator`, and nginx stapling
//! castellan's OCSP answers (seen by `openssl s_client` and `gnutls-cli`).
//! Each client checks castellan's signatures itself (delegated responder
//! certificate, CRL signature), says `good` for a valid certificate and
//! `revoked` for a revoked one, and each test has a control showing the
//! client really consulted what castellan served.
//!
//! A missing client is a failure naming its Debian package, never a skip
//! (scripts/test.sh installs them). Build every binary first:
//! `cargo build --workspace --bins`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    Appliance, Nginx, Out, WAIT, eventually, fetch_crl, free_port, issue, public_appliance,
    revoke_compromised, run, start_nginx,
};

/// Panics unless `program` is on the PATH (or in /usr/sbin, /sbin, where
/// Debian puts nginx), naming the Debian package that provides it.
fn require(program: &str, package: &str) {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(program).is_file());
    assert!(
        found,
        "`{program}` is not installed: install the Debian package {package} \
         (`apt-get install -y --no-install-recommends {package}`; scripts/test.sh does this)"
    );
}

/// `program args` in `dir`, bounded by `timeout` (a hang is a failure).
fn client(program: &str, args: &[&str], dir: &Path) -> Out {
    run(
        Command::new("timeout")
            .arg("90")
            .arg(program)
            .args(args)
            .current_dir(dir),
        WAIT,
    )
}

/// As [`client`], expecting exit status `code`; stdout and stderr joined.
fn client_exit(program: &str, args: &[&str], dir: &Path, code: i32) -> String {
    let out = client(program, args, dir);
    assert_eq!(out.code, Some(code), "{out}");
    format!("{}\n{}", out.stdout, out.stderr)
}

/// Issues good.pem and bad.pem (`<tag>.example`), revokes bad for
/// keyCompromise with an invalidity date through castellanctl, waits until
/// the served CRL of `issuing` lists it and the CRL of `root` is served,
/// and writes `<tag>-chain.pem` (leaf, issuing, root). Returns (good, bad)
/// serials.
fn good_and_revoked(a: &Appliance, port: u16) -> (String, String) {
    let dir = a.dir.path();
    let good = issue(a, "good");
    let bad = issue(a, "bad");
    revoke_compromised(a, &bad);
    fetch_crl(a, port, "issuing", Some(&bad));
    fetch_crl(a, port, "root", None);
    for tag in ["good", "bad"] {
        let mut chain = std::fs::read(dir.join(format!("{tag}.pem"))).unwrap();
        chain.extend(std::fs::read(dir.join("issuing.pem")).unwrap());
        chain.extend(std::fs::read(dir.join("root.pem")).unwrap());
        std::fs::write(dir.join(format!("{tag}-chain.pem")), chain).unwrap();
    }
    (good, bad)
}

/// A copy of the DER CRL `from` with one bit of its signature flipped.
fn tamper(dir: &Path, from: &str, to: &str) {
    let mut der = std::fs::read(dir.join(from)).unwrap();
    // The last octet is the end of the signature's s (or r) integer: the
    // CRL still parses, its signature no longer verifies.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    std::fs::write(dir.join(to), der).unwrap();
}

/// The DER CRL `from` as PEM in `to` (certtool reads PEM CRLs).
fn crl_to_pem(dir: &Path, from: &str, to: &str) {
    common::openssl(
        &[
            "crl", "-inform", "DER", "-in", from, "-outform", "PEM", "-out", to,
        ],
        dir,
    );
}

#[test]
fn gnutls_ocsptool_and_certtool_see_good_and_revoked_and_verify_castellans_signatures() {
    require("ocsptool", "gnutls-bin");
    require("certtool", "gnutls-bin");
    let (a, port) = public_appliance("", "");
    let dir = a.dir.path();
    let (good, bad) = good_and_revoked(&a, port);

    // OCSP: ocsptool asks the responder named in the certificate's AIA,
    // then verifies the response with the issuer (castellan's delegated
    // responder certificate must be issued by it for OCSP signing) and
    // again with the chain as its trust anchors.
    for (tag, serial, status) in [("good", &good, "good"), ("bad", &bad, "revoked")] {
        let cert = format!("{tag}.pem");
        let resp = format!("{tag}.ocsp");
        let serial = serial.trim_start_matches('0').to_ascii_lowercase();
        let t = client_exit(
            "ocsptool",
            &[
                "--ask",
                "--load-cert",
                &cert,
                "--load-issuer",
                "issuing.pem",
                "--outfile",
                &resp,
            ],
            dir,
            0,
        );
        assert!(t.contains("Verifying OCSP Response: Success."), "{t}");
        assert!(t.contains(&format!("Certificate Status: {status}")), "{t}");
        assert!(t.contains(&serial), "{serial} not in {t}");
        let t = client_exit(
            "ocsptool",
            &["-e", "--load-trust", "chain.pem", "--infile", &resp],
            dir,
            0,
        );
        assert!(t.contains("Verifying OCSP Response: Success."), "{t}");
        assert!(t.contains(&format!("Certificate Status: {status}")), "{t}");
        assert!(t.contains(&serial), "{serial} not in {t}");
    }
    // Control: ocsptool really checks the signer (the root did not sign).
    let t = client_exit(
        "ocsptool",
        &["-e", "--load-signer", "root.pem", "--infile", "good.ocsp"],
        dir,
        1,
    );
    assert!(t.contains("Signer cert is not trusted"), "{t}");

    // The whole chain: the leaf asked of issuing's responder, the
    // intermediate of root's, each response verified with its issuer.
    for (tag, leaf) in [("good", "good"), ("bad", "revoked")] {
        let t = client_exit(
            "ocsptool",
            &["--ask", "--load-chain", &format!("{tag}-chain.pem")],
            dir,
            0,
        );
        assert_eq!(
            t.matches("Verifying OCSP Response: Success.").count(),
            2,
            "{t}"
        );
        let statuses: Vec<&str> = t
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Certificate Status: "))
            .collect();
        assert_eq!(statuses, [leaf, "good"], "{t}");
    }

    // CRLs: certtool verifies each CRL's signature with its issuer, then
    // the chain against the root with both CRLs.
    crl_to_pem(dir, "issuing.crl", "issuing-crl.pem");
    crl_to_pem(dir, "root.crl", "root-crl.pem");
    for (ca, crl) in [
        ("issuing.pem", "issuing-crl.pem"),
        ("root.pem", "root-crl.pem"),
    ] {
        let t = client_exit(
            "certtool",
            &["--verify-crl", "--load-ca-certificate", ca, "--infile", crl],
            dir,
            0,
        );
        assert!(t.contains("Verification output: Verified."), "{t}");
    }
    // Control: a CRL whose signature does not verify is refused.
    tamper(dir, "issuing.crl", "tampered.crl");
    crl_to_pem(dir, "tampered.crl", "tampered-crl.pem");
    let t = client_exit(
        "certtool",
        &[
            "--verify-crl",
            "--load-ca-certificate",
            "issuing.pem",
            "--infile",
            "tampered-crl.pem",
        ],
        dir,
        1,
    );
    assert!(t.contains("signature in the certificate is invalid"), "{t}");

    let mut crls = std::fs::read(dir.join("issuing-crl.pem")).unwrap();
    crls.extend(std::fs::read(dir.join("root-crl.pem")).unwrap());
    std::fs::write(dir.join("crls.pem"), crls).unwrap();
    let verify = |tag: &str, code: i32| {
        client_exit(
            "certtool",
            &[
                "--verify",
                "--load-ca-certificate",
                "root.pem",
                "--load-crl",
                "crls.pem",
                "--infile",
                &format!("{tag}-chain.pem"),
            ],
            dir,
            code,
        )
    };
    let t = verify("good", 0);
    assert!(
        t.contains("Chain verification output: Verified. The certificate is trusted."),
        "{t}"
    );
    assert!(t.contains("Checked against CRL"), "{t}");
    let t = verify("bad", 1);
    assert!(t.contains("The certificate chain is revoked."), "{t}");
}

/// A fresh NSS database in `dir/<name>`: the root trusted as a CA, the
/// intermediate known (crlutil needs the issuer of a CRL it imports).
fn nss_db(dir: &Path, name: &str) -> String {
    std::fs::create_dir(dir.join(name)).unwrap();
    let db = format!("sql:{name}");
    client_exit("certutil", &["-N", "-d", &db, "--empty-password"], dir, 0);
    client_exit(
        "certutil",
        &["-A", "-d", &db, "-n", "root", "-t", "C,,", "-i", "root.pem"],
        dir,
        0,
    );
    client_exit(
        "certutil",
        &[
            "-A",
            "-d",
            &db,
            "-n",
            "issuing",
            "-t",
            ",,",
            "-i",
            "issuing.pem",
        ],
        dir,
        0,
    );
    db
}

/// `vfychain` (CERT_PKIXVerifyCert, usage SSL server) of `<tag>.pem` with
/// issuing.pem, revocation configured by `revocation` (vfychain's -g/-m/-s).
fn vfychain(dir: &Path, db: &str, revocation: &[&str], tag: &str, code: i32) -> String {
    let leaf = format!("{tag}.pem");
    let mut args = vec!["-d", db, "-pp", "-v", "-u", "1"];
    args.extend_from_slice(revocation);
    args.extend_from_slice(&["-a", &leaf, "-a", "issuing.pem"]);
    client_exit("vfychain", &args, dir, code)
}

fn nss_says_good(t: &str) {
    assert!(t.contains("Chain is good!"), "{t}");
}

fn nss_says_revoked(t: &str) {
    assert!(t.contains("Chain is bad!"), "{t}");
    // SEC_ERROR_REVOKED_CERTIFICATE
    assert!(t.contains("ERROR -8180"), "{t}");
    assert!(t.contains("Peer's Certificate has been revoked."), "{t}");
}

#[test]
fn nss_vfychain_sees_good_and_revoked_by_ocsp_by_fetched_crl_and_by_imported_crl() {
    for program in ["certutil", "crlutil", "vfychain"] {
        require(program, "libnss3-tools");
    }
    let (a, port) = public_appliance("", "");
    let dir = a.dir.path();
    good_and_revoked(&a, port);
    let db = nss_db(dir, "nssdb");

    // OCSP for the leaf (issuing's responder) and the intermediate (root's
    // responder), fetched from the AIA URLs castellan wrote; no answer
    // would be a failure (failIfNoInfo). NSS verifies each response's
    // signature and the delegated responder certificate itself.
    let ocsp = [
        "-g",
        "leaf",
        "-m",
        "ocsp",
        "-s",
        "failIfNoInfo",
        "-g",
        "chain",
        "-m",
        "ocsp",
        "-s",
        "failIfNoInfo",
    ];
    nss_says_good(&vfychain(dir, &db, &ocsp, "good", 0));
    nss_says_revoked(&vfychain(dir, &db, &ocsp, "bad", 1));

    // CRLs fetched by NSS from the CRL distribution points. Control first:
    // with fetching forbidden and no CRL in the database NSS has no
    // information and fails closed, so the `good` below comes from the
    // CRLs castellan served.
    let no_fetch = [
        "-g",
        "leaf",
        "-m",
        "crl",
        "-s",
        "forbidFetching,failIfNoInfo",
    ];
    nss_says_revoked(&vfychain(dir, &db, &no_fetch, "good", 1));
    let fetched = [
        "-g",
        "leaf",
        "-m",
        "crl",
        "-s",
        "failIfNoInfo",
        "-g",
        "chain",
        "-m",
        "crl",
        "-s",
        "failIfNoInfo",
    ];
    nss_says_good(&vfychain(dir, &db, &fetched, "good", 0));
    nss_says_revoked(&vfychain(dir, &db, &fetched, "bad", 1));

    // CRLs imported with crlutil (which checks their signature: a tampered
    // one is refused) into a fresh database, then used without fetching.
    // castellan's full CRLs carry no IssuingDistributionPoint: NSS would
    // refuse one and fail the good certificate too.
    let db = nss_db(dir, "nssdb-crl");
    tamper(dir, "issuing.crl", "tampered.crl");
    let t = client_exit(
        "crlutil",
        &["-I", "-d", &db, "-t", "1", "-i", "tampered.crl"],
        dir,
        1,
    );
    assert!(t.contains("SEC_ERROR_CRL_BAD_SIGNATURE"), "{t}");
    for crl in ["issuing.crl", "root.crl"] {
        client_exit("crlutil", &["-I", "-d", &db, "-t", "1", "-i", crl], dir, 0);
    }
    let t = client_exit("crlutil", &["-L", "-d", &db], dir, 0);
    assert!(t.contains("issuing") && t.contains("root"), "{t}");
    let imported = [
        "-g",
        "leaf",
        "-m",
        "crl",
        "-s",
        "forbidFetching",
        "-g",
        "chain",
        "-m",
        "crl",
        "-s",
        "forbidFetching",
    ];
    nss_says_good(&vfychain(dir, &db, &imported, "good", 0));
    nss_says_revoked(&vfychain(dir, &db, &imported, "bad", 1));
}

/// A relying party on the JDK: validates [leaf, issuing] against the root
/// as trust anchor with PKIXRevocationChecker, by OCSP only (`ocsp`: AIA
/// URLs, no CRL fallback) or by CRLs only (`crl`: the CRL files given with
/// --crl in a CertStore, then the distribution points, no OCSP). Prints
/// `<leaf>: VALID` or `<leaf>: <reason> at index <i>: <message>`.
const JAVA_RELYING_PARTY: &str = r#"
import java.io.FileInputStream;
import java.io.InputStream;
import java.security.cert.*;
import java.util.*;

public class RelyingParty {
    public static void main(String[] args) throws Exception {
        String mode = args[0];
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        X509Certificate root = load(cf, args[1]);
        X509Certificate issuing = load(cf, args[2]);
        List<X509CRL> crls = new ArrayList<>();
        List<String> leaves = new ArrayList<>();
        for (int i = 3; i < args.length; i++) {
            if (args[i].equals("--crl")) {
                try (InputStream in = new FileInputStream(args[++i])) {
                    crls.add((X509CRL) cf.generateCRL(in));
                }
            } else {
                leaves.add(args[i]);
            }
        }
        CertPathValidator cpv = CertPathValidator.getInstance("PKIX");
        for (String leafFile : leaves) {
            CertPath path = cf.generateCertPath(List.of(load(cf, leafFile), issuing));
            PKIXParameters params = new PKIXParameters(Set.of(new TrustAnchor(root, null)));
            params.setRevocationEnabled(true);
            PKIXRevocationChecker rc = (PKIXRevocationChecker) cpv.getRevocationChecker();
            if (mode.equals("ocsp")) {
                rc.setOptions(EnumSet.of(PKIXRevocationChecker.Option.NO_FALLBACK));
            } else if (mode.equals("crl")) {
                rc.setOptions(EnumSet.of(PKIXRevocationChecker.Option.PREFER_CRLS,
                                         PKIXRevocationChecker.Option.NO_FALLBACK));
                params.addCertStore(CertStore.getInstance("Collection",
                        new CollectionCertStoreParameters(crls)));
            } else {
                throw new IllegalArgumentException("mode must be ocsp or crl, not " + mode);
            }
            params.addCertPathChecker(rc);
            try {
                cpv.validate(path, params);
                System.out.println(leafFile + ": VALID");
            } catch (CertPathValidatorException e) {
                System.out.println(leafFile + ": " + e.getReason() + " at index " + e.getIndex()
                        + ": " + e.getMessage());
            }
        }
    }

    static X509Certificate load(CertificateFactory cf, String file) throws Exception {
        try (InputStream in = new FileInputStream(file)) {
            return (X509Certificate) cf.generateCertificate(in);
        }
    }
}
"#;

/// The relying party's verdict on each of `leaves` (one line each).
fn java(dir: &Path, mode: &str, crls: &[&str], leaves: &[&str]) -> String {
    let mut args = vec![
        "-Dcom.sun.security.ocsp.timeout=30",
        "-Dcom.sun.security.crl.timeout=30",
        "-cp",
        "java",
        "RelyingParty",
        mode,
        "root.pem",
        "issuing.pem",
    ];
    for crl in crls {
        args.extend_from_slice(&["--crl", crl]);
    }
    args.extend_from_slice(leaves);
    let t = client_exit("java", &args, dir, 0);
    assert_eq!(
        t.lines().filter(|l| l.contains(".pem: ")).count(),
        leaves.len(),
        "{t}"
    );
    t
}

fn java_says_valid(t: &str, leaf: &str) {
    assert!(t.contains(&format!("{leaf}: VALID")), "{t}");
}

fn java_says_revoked(t: &str, leaf: &str) {
    // The end-entity certificate (index 0) is the revoked one, for the
    // reason given to castellanctl.
    assert!(t.contains(&format!("{leaf}: REVOKED at index 0")), "{t}");
    assert!(t.contains("reason: KEY_COMPROMISE"), "{t}");
}

#[test]
fn the_jdk_certpathvalidator_sees_good_and_revoked_by_ocsp_and_by_crl() {
    require("java", "default-jdk-headless");
    require("javac", "default-jdk-headless");
    let (mut a, port) = public_appliance("", "");
    let dir = a.dir.path().to_path_buf();
    let dir = dir.as_path();
    good_and_revoked(&a, port);
    std::fs::create_dir(dir.join("java")).unwrap();
    std::fs::write(dir.join("java/RelyingParty.java"), JAVA_RELYING_PARTY).unwrap();
    client_exit("javac", &["-d", "java", "java/RelyingParty.java"], dir, 0);

    // OCSP only: the JDK asks the AIA responders (leaf and intermediate)
    // and verifies castellan's delegated responder certificates.
    let t = java(dir, "ocsp", &[], &["good.pem", "bad.pem"]);
    java_says_valid(&t, "good.pem");
    java_says_revoked(&t, "bad.pem");
    assert!(
        t.contains("authority: CN=OCSP responder for issuing"),
        "{t}"
    );

    // CRLs only, fetched by the JDK from the distribution points.
    let t = java(dir, "crl", &[], &["good.pem", "bad.pem"]);
    java_says_valid(&t, "good.pem");
    java_says_revoked(&t, "bad.pem");
    assert!(
        t.contains("authority: CN=castellan test issuing CA, O=castellan tests"),
        "{t}"
    );
    // The CRL entry's extensions as the JDK parsed them: reason code and
    // invalidity date.
    assert!(t.contains("extension OIDs: [2.5.29.21, 2.5.29.24]"), "{t}");

    // CRLs only, from the files alone: with castellan stopped nothing can
    // be fetched, so the verdicts come from the CRLs given.
    a.stop_daemon();
    let crls = ["issuing.crl", "root.crl"];
    let t = java(dir, "crl", &crls, &["good.pem", "bad.pem"]);
    java_says_valid(&t, "good.pem");
    java_says_revoked(&t, "bad.pem");
    // Control: the JDK checks the CRL's signature; with a tampered CRL of
    // issuing it knows nothing of the leaf.
    tamper(dir, "issuing.crl", "tampered.crl");
    let t = java(dir, "crl", &["tampered.crl", "root.crl"], &["good.pem"]);
    assert!(
        t.contains("good.pem: UNDETERMINED_REVOCATION_STATUS at index 0"),
        "{t}"
    );
}

/// An nginx serving `<tag>.pem` (with issuing.pem) and stapling its OCSP
/// answer, verified against chain.pem, on `port`; its configuration and
/// error log in `dir/<name>`.
fn stapling_nginx(dir: &Path, name: &str, tag: &str, port: u16) -> Nginx {
    let work = dir.join(name);
    std::fs::create_dir(&work).unwrap();
    let mut full = std::fs::read(dir.join(format!("{tag}.pem"))).unwrap();
    full.extend(std::fs::read(dir.join("issuing.pem")).unwrap());
    std::fs::write(work.join("full.pem"), full).unwrap();
    // No resolver: the OCSP URL in the certificate is 127.0.0.1.
    std::fs::write(
        work.join("nginx.conf"),
        format!(
            "daemon off;\nworker_processes 1;\npid {w}/nginx.pid;\nerror_log {w}/error.log info;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {w};\n  proxy_temp_path {w};\n  fastcgi_temp_path {w};\n  uwsgi_temp_path {w};\n  scgi_temp_path {w};\n  server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {w}/full.pem;\n    ssl_certificate_key {d}/{tag}.key;\n    ssl_stapling on;\n    ssl_stapling_verify on;\n    ssl_trusted_certificate {d}/chain.pem;\n  }}\n}}\n",
            w = work.display(),
            d = dir.display(),
        ),
    )
    .unwrap();
    start_nginx(&work, &work.join("nginx.conf"), port)
}

/// One TLS handshake with `openssl s_client -status`, the chain verified.
fn s_client_status(dir: &Path, port: u16, name: &str) -> String {
    let out = client(
        "openssl",
        &[
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            name,
            "-status",
            "-CAfile",
            "chain.pem",
            "-verify_return_error",
        ],
        dir,
    );
    assert_eq!(out.code, Some(0), "{out}");
    format!("{}\n{}", out.stdout, out.stderr)
}

/// One TLS handshake with `gnutls-cli --ocsp` (stapled responses checked,
/// the responder asked when there is none), exiting with `code`.
fn gnutls_cli(dir: &Path, port: u16, name: &str, code: i32) -> String {
    client_exit(
        "gnutls-cli",
        &[
            "--ocsp",
            "--x509cafile",
            "chain.pem",
            "--sni-hostname",
            name,
            "--verify-hostname",
            name,
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ],
        dir,
        code,
    )
}

#[test]
fn nginx_staples_castellans_good_answer_and_a_fresh_nginx_refuses_to_staple_after_revocation() {
    require("nginx", "nginx");
    require("openssl", "openssl");
    require("gnutls-cli", "gnutls-bin");
    let (a, port) = public_appliance("", "");
    let dir = a.dir.path();
    let serial = issue(&a, "web");

    // nginx fetches the staple lazily after the first handshakes and
    // staples it only if it verified it against chain.pem.
    let web_port = free_port();
    let nginx = stapling_nginx(dir, "nginx-good", "web", web_port);
    let t = eventually("nginx stapling castellan's OCSP answer", || {
        let t = s_client_status(dir, web_port, "web.example");
        t.contains("OCSP Response Status: successful").then_some(t)
    });
    assert!(t.contains("Cert Status: good"), "{t}");
    assert!(t.contains("CN=OCSP responder for issuing"), "{t}");
    assert!(t.contains("Verify return code: 0 (ok)"), "{t}");
    // GnuTLS's TLS client checks the staple itself: "OCSP status request"
    // among the options means a stapled response was received, verified
    // and valid.
    let t = gnutls_cli(dir, web_port, "web.example", 0);
    assert!(t.contains("The certificate is trusted."), "{t}");
    assert!(t.contains("OCSP status request"), "{t}");
    drop(nginx);

    // Revoked: nginx staples only good answers. A fresh nginx (no staple
    // cached) asks castellan, logs the revocation and staples nothing.
    let v = a
        .ctl(&["revoke", &serial, "--reason", "keyCompromise"])
        .ok()
        .json();
    assert!(
        v["ocsp"].as_str().unwrap_or("").starts_with("revoked"),
        "{v}"
    );
    let web_port = free_port();
    let _nginx = stapling_nginx(dir, "nginx-revoked", "web", web_port);
    let log = dir.join("nginx-revoked/error.log");
    let logged = eventually("nginx logging the revoked OCSP answer", || {
        s_client_status(dir, web_port, "web.example");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("certificate status \"revoked\" in the OCSP response"))
            .map(str::to_string)
    });
    assert!(logged.contains(&format!("127.0.0.1:{port}")), "{logged}");
    let t = s_client_status(dir, web_port, "web.example");
    assert!(t.contains("OCSP response: no response sent"), "{t}");
    assert!(!t.contains("Cert Status: good"), "{t}");
    // Without a staple, GnuTLS's TLS client asks castellan itself.
    let t = gnutls_cli(dir, web_port, "web.example", 1);
    assert!(t.contains("Certificate was revoked"), "{t}");
}
