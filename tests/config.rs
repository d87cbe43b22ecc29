//! `Config::parse`: every refusal names the key at fault, and the defaults
//! alone make a working daemon. (That an invalid file makes the binary exit
//! 64 is tested against the binary.)

use std::path::Path;

use castellan::config::{Config, ConfigError, ProfileKind, Role};

fn err(text: &str) -> ConfigError {
    match Config::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn an_empty_file_gives_every_default() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.state_dir, Path::new("/var/lib/castellan"));
    assert_eq!(c.database, Path::new("/var/lib/castellan/castellan.redb"));
    assert_eq!(
        c.signer.socket,
        Path::new("/run/castellan-signer/signer.sock")
    );
    assert_eq!(c.signer.connections, 32);
    assert_eq!(c.signer.request_timeout.as_millis(), 30_000);
    assert_eq!(c.admin.socket, Path::new("/run/castellan/admin.sock"));
    assert_eq!(c.admin.socket_mode, 0o660);
    assert_eq!(c.admin.max_body_bytes, 1 << 20);
    assert_eq!(c.admin.header_timeout.as_millis(), 5_000);
    assert_eq!(c.admin.request_timeout.as_millis(), 60_000);
    assert_eq!(c.admin.max_connections, 256);
    assert_eq!(c.admin.roles.role_of(0), Some(Role::Admin));
    assert!(c.admin.https.is_none());
    assert!(c.http.enabled);
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
    assert!(c.issuance.group_commit);
    assert_eq!(c.issuance.checkpoint_interval.as_secs(), 300);
    assert_eq!(c.issuance.urls.ocsp, "http://127.0.0.1:8080/ocsp/{issuer}");
    assert_eq!(
        c.issuance.urls.expand("sub-1").crl,
        vec!["http://127.0.0.1:8080/crl/sub-1.crl".to_string()]
    );
    assert_eq!(c.profiles["server"].kind, ProfileKind::Server);
    assert_eq!(c.profiles["server"].default_validity_days, 90);
    assert_eq!(c.profiles["server"].max_validity_days, 397);
    assert_eq!(c.profiles["client"].kind, ProfileKind::Client);
    assert_eq!(c.profiles["admin-client"].max_validity_days, 30);
}

#[test]
fn no_file_and_a_state_dir_is_enough_to_run() {
    let c = Config::load(None, Some(Path::new("/srv/ca"))).unwrap();
    assert_eq!(c.state_dir, Path::new("/srv/ca"));
    assert_eq!(c.database, Path::new("/srv/ca/castellan.redb"));
}

#[test]
fn the_state_dir_override_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("castellan.toml");
    std::fs::write(&path, "state_dir = \"/from/file\"\n").unwrap();
    let c = Config::load(Some(&path), Some(Path::new("/from/cli"))).unwrap();
    assert_eq!(c.database, Path::new("/from/cli/castellan.redb"));
}

#[test]
fn a_missing_config_file_is_an_error() {
    let e = Config::load(Some(Path::new("/nonexistent/castellan.toml")), None).unwrap_err();
    assert!(e.problem.contains("/nonexistent/castellan.toml"), "{e}");
}

#[test]
fn an_unknown_key_is_refused_with_a_suggestion() {
    let e = err("[admin]\nsokcet = \"/run/x.sock\"\n");
    assert_eq!(e.key, "admin.sokcet");
    assert_eq!(
        e.to_string(),
        "configuration key `admin.sokcet`: unknown key; did you mean `admin.socket`?"
    );
}

#[test]
fn an_unknown_top_level_key_is_refused_with_a_suggestion() {
    let e = err("sate_dir = \"/srv\"\n");
    assert_eq!(e.key, "sate_dir");
    assert!(e.problem.contains("did you mean `state_dir`?"), "{e}");
}

#[test]
fn an_unknown_key_in_a_profile_names_the_full_path() {
    let e = err("[profiles.web]\nkind = \"server\"\nallowed_dsn = [\"a.example\"]\n");
    assert_eq!(e.key, "profiles.web.allowed_dsn");
    assert!(
        e.problem
            .contains("did you mean `profiles.web.allowed_dns`?"),
        "{e}"
    );
}

#[test]
fn an_unknown_key_far_from_any_lists_the_allowed_ones() {
    let e = err("[signer]\nzzzzzz = 1\n");
    assert_eq!(e.key, "signer.zzzzzz");
    assert!(e.problem.contains("`signer.socket`"), "{e}");
    assert!(e.problem.contains("`signer.connections`"), "{e}");
}

#[test]
fn an_unknown_key_in_dotted_form_is_named() {
    let e = err("admin.roles.operater = [\"1000\"]\n");
    assert_eq!(e.key, "admin.roles.operater");
    assert!(
        e.problem.contains("did you mean `admin.roles.operator`?"),
        "{e}"
    );
}

#[test]
fn a_wrong_type_names_the_key() {
    let e = err("[admin]\nmax_body_bytes = \"lots\"\n");
    assert_eq!(e.key, "admin.max_body_bytes");
    assert!(e.problem.contains("expected a non-negative integer"), "{e}");
    let e = err("[signer]\nconnections = -1\n");
    assert_eq!(e.key, "signer.connections");
    let e = err("[admin]\nhttps = 5\n");
    assert_eq!(e.key, "admin.https");
    assert!(e.problem.contains("expected a table"), "{e}");
    let e = err("[profiles.server]\nallowed_dns = [\"a.example\", 5]\n");
    assert_eq!(e.key, "profiles.server.allowed_dns");
}

#[test]
fn a_syntax_error_says_where() {
    let e = err("[admin\nsocket = 1\n");
    assert_eq!(e.key, "(file)");
    assert!(e.problem.contains("line 1"), "{e}");
}

#[test]
fn a_duplicate_key_is_named() {
    let e = err("[admin]\nsocket = \"/run/a.sock\"\nsocket = \"/run/b.sock\"\n");
    assert_eq!(e.key, "socket");
    assert!(e.problem.contains("line 3"), "{e}");
}

#[test]
fn an_out_of_range_value_names_the_key_and_the_range() {
    let e = err("[signer]\nconnections = 0\n");
    assert_eq!(e.key, "signer.connections");
    assert!(e.problem.contains("1 to 64"), "{e}");
}

#[test]
fn a_world_accessible_admin_socket_is_refused() {
    let e = err("[admin]\nsocket_mode = 0o666\n");
    assert_eq!(e.key, "admin.socket_mode");
}

#[test]
fn a_bad_url_is_refused() {
    for url in [
        "ftp://ca.example/ocsp",
        "http://ca.example/oc sp",
        "http:///ocsp",
        "http://user@ca.example/ocsp",
        "http://ca.example/{ca}",
        "ca.example/ocsp",
    ] {
        let e = err(&format!("[issuance.urls]\nocsp = \"{url}\"\n"));
        assert_eq!(e.key, "issuance.urls.ocsp", "{url}: {e}");
    }
    let ok = Config::parse(
        "[issuance.urls]\nocsp = \"https://ocsp.example.com/{issuer}\"\ncrl = \"http://crl.example.com/ca.crl\"\n",
    )
    .unwrap();
    assert_eq!(
        ok.issuance.urls.expand("root-2024").ocsp,
        vec!["https://ocsp.example.com/root-2024".to_string()]
    );
}

#[test]
fn default_urls_for_an_unspecified_listen_address_are_refused() {
    let e = err("[http]\nlisten = \"0.0.0.0:80\"\n");
    assert_eq!(e.key, "issuance.urls.ocsp");
    assert!(e.problem.contains("0.0.0.0:80"), "{e}");
}

#[test]
fn an_ipv6_listen_address_gives_bracketed_default_urls() {
    let c = Config::parse("[http]\nlisten = \"[::1]:8080\"\n").unwrap();
    assert_eq!(c.issuance.urls.crl, "http://[::1]:8080/crl/{issuer}.crl");
}

#[test]
fn a_listen_address_that_is_not_one_is_refused() {
    let e = err("[http]\nlisten = \"localhost:8080\"\n");
    assert_eq!(e.key, "http.listen");
}

#[test]
fn a_bad_cidr_is_refused() {
    for cidr in [
        "10.0.0.0/33",
        "10.0.0.1/8",
        "10.0.0/8",
        "fd00::/200",
        "banana",
    ] {
        let e = err(&format!("[profiles.server]\nallowed_ips = [\"{cidr}\"]\n"));
        assert_eq!(e.key, "profiles.server.allowed_ips", "{cidr}: {e}");
    }
}

#[test]
fn a_bad_dns_pattern_is_refused() {
    let e = err("[profiles.server]\nallowed_dns = [\"foo.*.example.com\"]\n");
    assert_eq!(e.key, "profiles.server.allowed_dns");
}

#[test]
fn a_uid_in_two_roles_is_refused_naming_both() {
    let e = err("[admin.roles]\nadmin = [\"root\"]\noperator = [\"1000\"]\nauditor = [\"1000\"]\n");
    assert_eq!(e.key, "admin.roles.auditor");
    assert!(e.problem.contains("admin.roles.operator"), "{e}");
    // The same uid by name and by number.
    let e = err("[admin.roles]\nadmin = [\"root\"]\nauditor = [\"0\"]\n");
    assert_eq!(e.key, "admin.roles.auditor");
    assert!(e.problem.contains("admin.roles.admin"), "{e}");
}

#[test]
fn an_unknown_user_in_roles_is_refused() {
    let e = err("[admin.roles]\noperator = [\"no-such-user-castellan\"]\n");
    assert_eq!(e.key, "admin.roles.operator");
}

#[test]
fn roles_resolve_names_and_uids() {
    let c =
        Config::parse("[admin.roles]\nadmin = []\noperator = [\"root\"]\nauditor = [\"4242\"]\n")
            .unwrap();
    assert_eq!(c.admin.roles.role_of(0), Some(Role::Operator));
    assert_eq!(c.admin.roles.role_of(4242), Some(Role::Auditor));
    assert_eq!(c.admin.roles.role_of(1), None);
}

#[test]
fn missing_https_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("admin.crt");
    std::fs::write(&cert, "x").unwrap();
    let text = format!(
        "[admin.https]\nlisten = \"127.0.0.1:8443\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nclient_ca = \"{}\"\n",
        cert.display(),
        dir.path().join("missing.key").display(),
        cert.display()
    );
    let e = err(&text);
    assert_eq!(e.key, "admin.https.private_key");
    assert!(e.problem.contains("missing.key"), "{e}");

    let e = err("[admin.https]\nlisten = \"127.0.0.1:8443\"\n");
    assert_eq!(e.key, "admin.https.certificate");
}

fn https_files(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin.crt", "admin.key", "clients.crt"] {
        std::fs::write(dir.join(f), "x").unwrap();
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    format!(
        "[admin.https]\nlisten = \"127.0.0.1:8443\"\ncertificate = \"{d}/admin.crt\"\nprivate_key = \"{d}/admin.key\"\nclient_ca = \"{d}/clients.crt\"\n",
        d = dir.display()
    )
}

#[test]
fn https_with_existing_files_parses() {
    let dir = tempfile::tempdir().unwrap();
    let c = Config::parse(&https_files(dir.path())).unwrap();
    let h = c.admin.https.unwrap();
    assert_eq!(h.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(h.client_profile, "admin-client");
}

#[test]
fn a_world_readable_https_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let text = https_files(dir.path());
    std::fs::set_permissions(
        dir.path().join("admin.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_eq!(err(&text).key, "admin.https.private_key");
}

#[test]
fn a_new_profile_needs_a_kind_and_inherits_its_defaults() {
    let e = err("[profiles.web]\nallowed_dns = [\"*.example.com\"]\n");
    assert_eq!(e.key, "profiles.web.kind");
    let c = Config::parse("[profiles.web]\nkind = \"server-client\"\nmax_validity_days = 30\n")
        .unwrap();
    let p = &c.profiles["web"];
    assert_eq!(p.kind, ProfileKind::ServerClient);
    assert_eq!(p.default_validity_days, 30);
    assert!(p.require_san);
}

#[test]
fn key_types_below_min_rsa_bits_are_refused() {
    let e = err("[profiles.server]\nmin_rsa_bits = 3072\n");
    assert_eq!(e.key, "profiles.server.key_types");
    Config::parse(
        "[profiles.server]\nmin_rsa_bits = 3072\nkey_types = [\"ecdsa-p256\", \"rsa-3072\"]\n",
    )
    .unwrap();
    let e = err("[profiles.server]\nkey_types = [\"dsa-1024\"]\n");
    assert_eq!(e.key, "profiles.server.key_types");
}

#[test]
fn reload_refuses_a_socket_change() {
    let old = Config::parse("").unwrap();
    let new = Config::parse("[admin]\nsocket = \"/run/castellan/other.sock\"\n").unwrap();
    let e = old.reloadable_diff(&new).unwrap_err();
    assert_eq!(e.key, "admin.socket");
    assert!(
        e.problem
            .contains("`admin.socket` cannot change on reload; restart castellan"),
        "{e}"
    );
    let new = Config::parse("[signer]\nrequest_timeout_ms = 1000\n").unwrap();
    assert_eq!(
        old.reloadable_diff(&new).unwrap_err().key,
        "signer.request_timeout_ms"
    );
    let new = Config::load(None, Some(Path::new("/elsewhere"))).unwrap();
    assert_eq!(old.reloadable_diff(&new).unwrap_err().key, "database");
}

#[test]
fn reload_accepts_profile_role_and_url_changes() {
    let old = Config::parse("").unwrap();
    let new = Config::parse(
        "[profiles.server]\nmax_validity_days = 47\n[profiles.web]\nkind = \"server\"\n\
         [admin.roles]\noperator = [\"1000\"]\n\
         [issuance.urls]\nocsp = \"http://ocsp.example.com/{issuer}\"\n",
    )
    .unwrap();
    old.reloadable_diff(&new).unwrap();
    assert_ne!(old.sha256(), new.sha256());
}

#[test]
fn reload_accepts_new_https_certificate_paths_but_not_adding_https() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let old = Config::parse(&https_files(a.path())).unwrap();
    let new = Config::parse(&https_files(b.path())).unwrap();
    old.reloadable_diff(&new).unwrap();
    let none = Config::parse("").unwrap();
    assert_eq!(none.reloadable_diff(&new).unwrap_err().key, "admin.https");
}

#[test]
fn the_hash_is_stable_and_follows_the_effective_config() {
    let a = Config::parse("").unwrap();
    let b = Config::parse("[signer]\nconnections = 32\n").unwrap();
    assert_eq!(a.sha256(), b.sha256());
    let c = Config::parse("[signer]\nconnections = 5\n").unwrap();
    assert_ne!(a.sha256(), c.sha256());
}

/// `packaging/castellan.toml` documents each setting as `#key = default`
/// (no space after `#`). Uncommenting all of them must change nothing.
#[test]
fn the_packaged_file_documents_the_real_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/castellan.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let defaults = Config::parse("").unwrap();
    let as_shipped = Config::parse(&text).unwrap();
    assert_eq!(as_shipped, defaults);
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with([' ', '#']) && !rest.is_empty() => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let all_set = Config::parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(all_set, defaults);
    assert_eq!(all_set.sha256(), defaults.sha256());
}

#[test]
fn public_listener_workers_are_bounded_and_not_reloadable() {
    let auto = Config::parse("").unwrap();
    assert_eq!(auto.http.workers, None);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
    assert_eq!(auto.http.worker_threads(), cpus);
    let three = Config::parse("[http]\nworkers = 3\n").unwrap();
    assert_eq!(three.http.worker_threads(), 3);
    for bad in ["0", "65"] {
        let e = err(&format!("[http]\nworkers = {bad}\n"));
        assert_eq!(e.key, "http.workers", "{e}");
        assert!(e.problem.contains("must be 1 to 64"), "{e}");
    }
    assert_eq!(
        auto.reloadable_diff(&three).unwrap_err().key,
        "http.workers"
    );
}
