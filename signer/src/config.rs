//! The signer's configuration: one TOML file, parsed and validated before
//! anything is opened. Invalid configuration exits with status 64 naming the
//! key at fault.
//!
//! ```toml
//! state_dir = "/var/lib/castellan-signer"
//! socket = "/run/castellan-signer/signer.sock"
//! daemon_uid = 998               # the only uid allowed on the socket
//!
//! [backend]
//! kind = "soft"                  # or "pkcs11"
//! passphrase_file = "/etc/castellan/signer.pass"   # soft; or passphrase_credential = "name"
//! # module = "/usr/lib/softhsm/libsofthsm2.so"     # pkcs11
//! # token_label = "castellan"
//! # pin_file = "..."  /  pin_credential = "name"
//!
//! [profiles.server]
//! key_usage = ["digital_signature"]
//! extended_key_usage = ["server_auth"]
//! max_validity_days = 397
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::x509::{KeyUsage, eku_oid};

pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration key `{}`: {}", self.key, self.problem)
    }
}

fn cfg_err<T>(key: &str, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    daemon_uid: Option<u32>,
    /// Turns the syscall filter off. Only for debugging a new PKCS#11 module
    /// with strace; never in production.
    danger_disable_seccomp: Option<bool>,
    backend: Option<RawBackend>,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    kind: String,
    passphrase_file: Option<PathBuf>,
    passphrase_credential: Option<String>,
    key_store: Option<PathBuf>,
    module: Option<PathBuf>,
    token_label: Option<String>,
    pin_file: Option<PathBuf>,
    pin_credential: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    key_usage: Vec<String>,
    extended_key_usage: Vec<String>,
    max_validity_days: u32,
}

/// Where a secret (passphrase, PIN) comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
}

impl SecretSource {
    /// Reads the secret; a trailing newline is dropped. The error names the
    /// source, never the content.
    pub fn read(&self) -> Result<SecretString, String> {
        let path = match self {
            SecretSource::File(p) => p.clone(),
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!("systemd credential {name:?} requested but CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)")
                })?;
                Path::new(&dir).join(name)
            }
        };
        let raw = Zeroizing::new(
            std::fs::read(&path)
                .map_err(|e| format!("cannot read secret from {}: {e}", path.display()))?,
        );
        let text = std::str::from_utf8(&raw)
            .map_err(|_| format!("secret in {} is not UTF-8", path.display()))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(format!("secret in {} is empty", path.display()));
        }
        Ok(SecretString::from(text.to_string()))
    }
}

#[derive(Debug, Clone)]
pub enum BackendConfig {
    Soft {
        key_store: PathBuf,
        passphrase: SecretSource,
    },
    Pkcs11 {
        module: PathBuf,
        token_label: String,
        pin: SecretSource,
    },
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub key_usage: KeyUsage,
    pub eku: Vec<&'static str>,
    pub max_validity_secs: i64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub daemon_uid: u32,
    pub seccomp: bool,
    pub backend: BackendConfig,
    pub profiles: BTreeMap<String, Profile>,
}

/// The profiles every signer knows; the configuration may override them or
/// add more.
pub fn default_profiles() -> BTreeMap<String, Profile> {
    let ds = KeyUsage(KeyUsage::DIGITAL_SIGNATURE);
    let mut m = BTreeMap::new();
    for (name, eku, days) in [
        ("server", vec![crate::x509::oids::KP_SERVER_AUTH], 397),
        ("client", vec![crate::x509::oids::KP_CLIENT_AUTH], 397),
        (
            "server-client",
            vec![
                crate::x509::oids::KP_SERVER_AUTH,
                crate::x509::oids::KP_CLIENT_AUTH,
            ],
            397,
        ),
        ("admin-client", vec![crate::x509::oids::KP_CLIENT_AUTH], 30),
    ] {
        m.insert(
            name.to_string(),
            Profile {
                name: name.to_string(),
                key_usage: ds,
                eku,
                max_validity_secs: days * 86_400,
            },
        );
    }
    m
}

fn secret_source(
    file: Option<PathBuf>,
    cred: Option<String>,
    key: &str,
) -> Result<SecretSource, ConfigError> {
    match (file, cred) {
        (Some(f), None) => Ok(SecretSource::File(f)),
        (None, Some(c)) => {
            if c.is_empty() || c.contains('/') {
                return cfg_err(
                    &format!("backend.{key}_credential"),
                    "must be a credential name without '/'",
                );
            }
            Ok(SecretSource::Credential(c))
        }
        (Some(_), Some(_)) => cfg_err(
            &format!("backend.{key}_file"),
            format!("set either {key}_file or {key}_credential, not both"),
        ),
        (None, None) => cfg_err(
            &format!("backend.{key}_file"),
            format!("missing: the backend needs {key}_file or {key}_credential"),
        ),
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: "(file)".into(),
            problem: format!("cannot read {}: {e}", path.display()),
        })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = e
                .span()
                .and_then(|s| text.get(s))
                .map(|s| s.split(['=', '\n']).next().unwrap_or(s).trim().to_string())
                .unwrap_or_else(|| "(file)".into());
            ConfigError {
                key,
                problem: e.message().to_string(),
            }
        })?;
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/castellan-signer"));
        if !state_dir.is_absolute() {
            return cfg_err("state_dir", "must be an absolute path");
        }
        let socket = raw
            .socket
            .unwrap_or_else(|| PathBuf::from("/run/castellan-signer/signer.sock"));
        if !socket.is_absolute() {
            return cfg_err("socket", "must be an absolute path");
        }
        if socket.as_os_str().len() > 100 {
            return cfg_err("socket", "path too long for a Unix socket (max 100 bytes)");
        }
        let Some(daemon_uid) = raw.daemon_uid else {
            return cfg_err(
                "daemon_uid",
                "missing: the uid of the castellan daemon, the only peer allowed on the socket",
            );
        };
        let Some(b) = raw.backend else {
            return cfg_err(
                "backend",
                "missing: a [backend] table with kind = \"soft\" or \"pkcs11\"",
            );
        };
        let backend = match b.kind.as_str() {
            "soft" => BackendConfig::Soft {
                key_store: b.key_store.unwrap_or_else(|| state_dir.join("keys")),
                passphrase: secret_source(
                    b.passphrase_file,
                    b.passphrase_credential,
                    "passphrase",
                )?,
            },
            "pkcs11" => {
                let Some(module) = b.module else {
                    return cfg_err(
                        "backend.module",
                        "missing: path of the PKCS#11 module (.so)",
                    );
                };
                let Some(token_label) = b.token_label else {
                    return cfg_err(
                        "backend.token_label",
                        "missing: label of the token holding castellan's keys",
                    );
                };
                BackendConfig::Pkcs11 {
                    module,
                    token_label,
                    pin: secret_source(b.pin_file, b.pin_credential, "pin")?,
                }
            }
            "tpm" => {
                return cfg_err(
                    "backend.kind",
                    "the TPM 2.0 backend is not available in this release; use \"pkcs11\" or \"soft\"",
                );
            }
            other => {
                return cfg_err(
                    "backend.kind",
                    format!("unknown backend {other:?}; use \"soft\" or \"pkcs11\""),
                );
            }
        };
        let mut profiles = default_profiles();
        for (name, p) in raw.profiles {
            let key = format!("profiles.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return cfg_err(&key, "profile names use letters, digits, '-' and '_'");
            }
            let mut ku = 0u16;
            for k in &p.key_usage {
                match KeyUsage::parse_name(k) {
                    Some(KeyUsage::KEY_CERT_SIGN) | Some(KeyUsage::CRL_SIGN) => {
                        return cfg_err(
                            &format!("{key}.key_usage"),
                            format!(
                                "{k} is for CA certificates, which only a custodian ceremony creates"
                            ),
                        );
                    }
                    Some(bit) => ku |= bit,
                    None => {
                        return cfg_err(
                            &format!("{key}.key_usage"),
                            format!("unknown key usage {k:?}"),
                        );
                    }
                }
            }
            if ku == 0 {
                // An empty keyUsage would be written as a BIT STRING with no
                // bit set, which RFC 5280 §4.2.1.3 does not allow.
                return cfg_err(
                    &format!("{key}.key_usage"),
                    "must name at least one key usage, e.g. [\"digital_signature\"]",
                );
            }
            let mut eku = Vec::new();
            for e in &p.extended_key_usage {
                match eku_oid(e) {
                    Some(o) if o == crate::x509::oids::KP_OCSP_SIGNING => {
                        return cfg_err(
                            &format!("{key}.extended_key_usage"),
                            "OCSPSigning is reserved for the signer's own delegated responders",
                        );
                    }
                    Some(o) => eku.push(o),
                    None => {
                        return cfg_err(
                            &format!("{key}.extended_key_usage"),
                            format!("unknown extended key usage {e:?}"),
                        );
                    }
                }
            }
            if p.max_validity_days == 0 || p.max_validity_days > 3650 {
                return cfg_err(&format!("{key}.max_validity_days"), "must be 1 to 3650");
            }
            profiles.insert(
                name.clone(),
                Profile {
                    name,
                    key_usage: KeyUsage(ku),
                    eku,
                    max_validity_secs: i64::from(p.max_validity_days) * 86_400,
                },
            );
        }
        Ok(Config {
            state_dir,
            socket,
            daemon_uid,
            seccomp: !raw.danger_disable_seccomp.unwrap_or(false),
            backend,
            profiles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_backend_names_the_key() {
        let e = Config::parse("daemon_uid = 1\n[backend]\nkind = \"floppy\"\n").unwrap_err();
        assert_eq!(e.key, "backend.kind");
    }

    #[test]
    fn missing_daemon_uid_is_refused() {
        let e =
            Config::parse("[backend]\nkind = \"soft\"\npassphrase_file = \"/x\"\n").unwrap_err();
        assert_eq!(e.key, "daemon_uid");
    }

    #[test]
    fn profiles_cannot_grant_ca_powers() {
        let e = Config::parse(
            "daemon_uid = 1\n[backend]\nkind = \"soft\"\npassphrase_file = \"/x\"\n[profiles.evil]\nkey_usage=[\"key_cert_sign\"]\nextended_key_usage=[]\nmax_validity_days=1\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "profiles.evil.key_usage");
    }

    #[test]
    fn a_profile_without_key_usage_is_refused() {
        let e = Config::parse(
            "daemon_uid = 1\n[backend]\nkind = \"soft\"\npassphrase_file = \"/x\"\n[profiles.p]\nkey_usage=[]\nextended_key_usage=[]\nmax_validity_days=1\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "profiles.p.key_usage");
        assert!(e.to_string().contains("at least one key usage"), "{e}");
    }

    #[test]
    fn a_minimal_soft_config_parses_with_defaults() {
        let c =
            Config::parse("daemon_uid = 0\n[backend]\nkind = \"soft\"\npassphrase_file = \"/p\"\n")
                .unwrap();
        assert!(c.seccomp);
        assert!(c.profiles.contains_key("server"));
    }
}
