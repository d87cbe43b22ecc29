//! The control daemon's configuration: one TOML file, parsed and validated
//! before any socket is bound. Invalid configuration is a [`ConfigError`]
//! naming the key at fault; the binary exits with [`EXIT_CONFIG`] (64).
//!
//! Every setting has a default, so `castellan` runs with no file at all given
//! a state directory. `packaging/castellan.toml` documents every key with its
//! default; a test checks that the documented defaults are the real ones.
//!
//! Unknown keys are refused (a typo must not silently leave a default in
//! place), with a suggestion: "unknown key; did you mean `admin.socket`?".
//!
//! On SIGHUP the file is read again and [`Config::reloadable_diff`] decides
//! whether the new file can be applied: profiles, admin roles (of uids and of
//! client-certificate profiles), issuance URLs and the admin HTTPS
//! certificate paths can change; anything bound or opened at start (sockets,
//! listeners, the state directory, the database) cannot.
//!
//! Name policy of a profile ([`Profile::name_allowed`]), patterns of
//! `allowed_dns`:
//! - `*` — any syntactically valid DNS name;
//! - `host.example.com` — exactly that name;
//! - `*.example.com` — exactly one label under `example.com` (never
//!   `a.b.example.com`, never `example.com`);
//! - `.example.com` — any depth under `example.com`, not `example.com`
//!   itself (list both to allow the apex).
//!
//! Comparison is ASCII case-insensitive; internationalised names must be
//! written as A-labels (`xn--…`). A wildcard certificate name (`*.x.example.com`)
//! is refused unless the profile sets `allow_wildcard_names`, and then only
//! where a pattern covers every name the wildcard covers. `allowed_ips` holds
//! CIDRs (`10.0.0.0/8`, `::1/128`; a bare address is one host); an IPv6
//! address is matched only by IPv6 prefixes, IPv4-mapped ones included.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use castellan_proto::SubjectAltName;
use serde::{Deserialize, Serialize, Serializer};

/// Exit status for invalid configuration (sysexits' `EX_USAGE`); the unit
/// should list it in `RestartPreventExitStatus=` so it does not restart-loop.
pub const EXIT_CONFIG: i32 = 64;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/castellan";
pub const DEFAULT_SIGNER_SOCKET: &str = "/run/castellan-signer/signer.sock";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/castellan/admin.sock";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// Keys whose change a SIGHUP reload applies; any other change needs a
/// restart. Prefixes of the serialised configuration.
const RELOADABLE: &[&str] = &[
    "profiles",
    "admin.roles",
    "issuance.urls",
    "admin.https.certificate",
    "admin.https.private_key",
    "admin.https.client_ca",
    "admin.https.roles",
];

/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `admin.socket`; `(file)` when no key is at fault.
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration key `{}`: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn cfg_err<T>(key: &str, problem: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        key: key.to_string(),
        problem: problem.into(),
    })
}

// ---------------------------------------------------------------------------
// The effective configuration
// ---------------------------------------------------------------------------

/// The effective configuration. It serialises (for [`Config::sha256`] and
/// [`Config::reloadable_diff`]) under the same key names as the TOML file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub state_dir: PathBuf,
    pub database: PathBuf,
    pub signer: SignerConfig,
    pub admin: AdminConfig,
    pub http: HttpConfig,
    pub crl: CrlConfig,
    pub issuance: IssuanceConfig,
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignerConfig {
    pub socket: PathBuf,
    /// Connections the daemon keeps open to the signer.
    pub connections: usize,
    #[serde(rename = "request_timeout_ms", serialize_with = "ser_ms")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    pub socket: PathBuf,
    /// Permission bits of the admin socket; never any for "other".
    pub socket_mode: u32,
    pub max_body_bytes: usize,
    #[serde(rename = "header_timeout_ms", serialize_with = "ser_ms")]
    pub header_timeout: Duration,
    #[serde(rename = "request_timeout_ms", serialize_with = "ser_ms")]
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub roles: Roles,
    pub https: Option<AdminHttps>,
}

/// The roles of the admin API (ordered: auditor < operator < admin).
pub use crate::api::Role;

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Operator => "operator",
        Role::Auditor => "auditor",
    }
}

/// `[admin.roles]`: who may use the admin socket, by unix user name or uid.
/// Names are resolved to uids when the configuration is loaded (and again on
/// reload); the socket authorises by the peer's uid (`SO_PEERCRED`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Roles {
    pub admin: Vec<String>,
    pub operator: Vec<String>,
    pub auditor: Vec<String>,
    /// The resolved map; a uid has at most one role.
    pub uids: BTreeMap<u32, Role>,
}

impl Roles {
    pub fn role_of(&self, uid: u32) -> Option<Role> {
        self.uids.get(&uid).copied()
    }
}

/// `[admin.https]`: the optional mTLS admin listener for remote automation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminHttps {
    pub listen: SocketAddr,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// CA certificate(s) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// The profile client certificates of admins are issued under.
    pub client_profile: String,
    /// Issuance profile of a client certificate → the role it carries.
    /// Every profile named is of kind admin-client. Default:
    /// `{ <client_profile> = "operator" }`; empty: no certificate has a role.
    pub roles: BTreeMap<String, Role>,
}

/// `[http]`: the public listener for relying parties (OCSP, CRL, CA
/// certificates).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConfig {
    /// `false` on an offline root host: no network listener at all.
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Where CRLs and pre-signed OCSP responses are also written, for any
    /// web server or CDN to serve.
    pub publish_dir: Option<PathBuf>,
    /// Lifetime of each delegated OCSP responder certificate (seconds, 30
    /// to 90 days); the daemon rotates one in when less than a third of it
    /// remains.
    pub responder_validity_secs: u32,
    /// nextUpdate − thisUpdate of each OCSP answer (seconds, 60–604800, at
    /// most a third of `responder_validity_secs`).
    pub ocsp_validity_secs: u32,
    /// Longest `max-age` an OCSP GET answer carries (seconds, 0–86400): an
    /// HTTP cache may keep serving an answer that long after a revocation
    /// replaced it. Never past the answer's nextUpdate.
    pub ocsp_max_age_secs: u32,
    /// OCSP answers signed on demand per second (1–100000; those with a
    /// nonce, several CertIDs, or not pre-signed yet): each costs a
    /// signature and a signer journal record. Over it, a request is
    /// answered from the pre-signed cache (without its nonce) or tryLater.
    pub ocsp_sign_rate: u32,
    /// Threads serving the listener, each with its own event loop and its
    /// own connections (1–64); `None`: one per CPU castellan may use.
    pub workers: Option<u16>,
}

impl HttpConfig {
    /// The number of listener threads to start.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(64)),
        }
    }
}

/// `[crl]`: the full CRL each CA publishes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrlConfig {
    /// nextUpdate − thisUpdate (seconds, 300 to 30 days). A new CRL is
    /// published after revocations and when half of this has passed.
    pub validity_secs: u32,
    /// Revocations arriving within this window after the first share one
    /// new CRL (milliseconds, 0–60000).
    pub coalesce_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssuanceConfig {
    pub default_issuer: Option<String>,
    /// Let concurrent operations share one durable commit.
    pub group_commit: bool,
    #[serde(rename = "checkpoint_interval_secs", serialize_with = "ser_secs")]
    pub checkpoint_interval: Duration,
    pub urls: UrlTemplates,
}

/// URL templates put into certificates (AIA and CRL distribution points);
/// `{issuer}` is replaced by the issuing CA's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UrlTemplates {
    pub ocsp: String,
    pub ca_issuers: String,
    pub crl: String,
}

impl UrlTemplates {
    pub fn expand(&self, issuer: &str) -> castellan_proto::Urls {
        let e = |t: &str| vec![t.replace("{issuer}", issuer)];
        castellan_proto::Urls {
            ocsp: e(&self.ocsp),
            ca_issuers: e(&self.ca_issuers),
            crl: e(&self.crl),
        }
    }
}

/// The signer-side profile a daemon profile maps to (the signer fixes key
/// usage and EKU from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileKind {
    Server,
    Client,
    ServerClient,
    AdminClient,
}

impl ProfileKind {
    const ALL: [ProfileKind; 4] = [
        ProfileKind::Server,
        ProfileKind::Client,
        ProfileKind::ServerClient,
        ProfileKind::AdminClient,
    ];

    /// The name of the signer's profile.
    pub fn signer_profile(self) -> &'static str {
        match self {
            ProfileKind::Server => "server",
            ProfileKind::Client => "client",
            ProfileKind::ServerClient => "server-client",
            ProfileKind::AdminClient => "admin-client",
        }
    }

    pub fn parse(s: &str) -> Option<ProfileKind> {
        ProfileKind::ALL
            .into_iter()
            .find(|k| k.signer_profile() == s)
    }
}

impl Serialize for ProfileKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.signer_profile())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    pub const ALL: [KeyType; 5] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    pub fn parse(s: &str) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            KeyType::Rsa2048 => Some(2048),
            KeyType::Rsa3072 => Some(3072),
            KeyType::Rsa4096 => Some(4096),
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => None,
        }
    }
}

impl Serialize for KeyType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One pattern of `allowed_dns` (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsPattern {
    /// `*`: any valid name.
    Any,
    /// `host.example.com`.
    Exact(String),
    /// `*.example.com`: one label under the suffix.
    OneLabel(String),
    /// `.example.com`: any depth under the suffix.
    Subtree(String),
}

impl DnsPattern {
    pub fn parse(s: &str) -> Result<DnsPattern, String> {
        if s == "*" {
            return Ok(DnsPattern::Any);
        }
        let (ctor, rest): (fn(String) -> DnsPattern, &str) =
            if let Some(rest) = s.strip_prefix("*.") {
                (DnsPattern::OneLabel, rest)
            } else if let Some(rest) = s.strip_prefix('.') {
                (DnsPattern::Subtree, rest)
            } else {
                (DnsPattern::Exact, s)
            };
        if rest.contains('*') {
            return Err(format!(
                "{s:?}: `*` is allowed only as the whole pattern or as its first label (`*.example.com`)"
            ));
        }
        let name = check_dns_name(rest).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(ctor(name))
    }

    /// Whether `name` (valid, lowercase, not a wildcard) matches.
    fn matches(&self, name: &str) -> bool {
        match self {
            DnsPattern::Any => true,
            DnsPattern::Exact(p) => name == p,
            DnsPattern::OneLabel(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            DnsPattern::Subtree(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }

    /// Whether every name the wildcard `*.base` stands for matches.
    fn covers_wildcard(&self, base: &str) -> bool {
        match self {
            DnsPattern::Any => true,
            DnsPattern::Exact(_) => false,
            DnsPattern::OneLabel(suffix) => base == suffix,
            DnsPattern::Subtree(suffix) => {
                base == suffix
                    || base
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            }
        }
    }
}

impl fmt::Display for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsPattern::Any => f.write_str("*"),
            DnsPattern::Exact(n) => f.write_str(n),
            DnsPattern::OneLabel(n) => write!(f, "*.{n}"),
            DnsPattern::Subtree(n) => write!(f, ".{n}"),
        }
    }
}

impl Serialize for DnsPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An IP prefix of `allowed_ips`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR like \"10.0.0.0/8\" or \"fd00::/8\""))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: prefix length must be 0 to {max}")),
            },
        };
        let net = IpNet { addr, prefix };
        let masked = net.network();
        if masked != addr {
            // A set host bit is usually a mistyped prefix; refuse rather
            // than guess which of the two the operator meant.
            return Err(format!(
                "{s:?} has host bits set; did you mean \"{masked}/{prefix}\"?"
            ));
        }
        Ok(net)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                IpNet {
                    addr: ip,
                    prefix: self.prefix,
                }
                .network()
                    == self.addr
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `[profiles.<name>]`: what the daemon lets be issued under a name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub kind: ProfileKind,
    pub max_validity_days: u32,
    pub default_validity_days: u32,
    pub allowed_dns: Vec<DnsPattern>,
    pub allowed_ips: Vec<IpNet>,
    pub allow_email: bool,
    pub allow_uri_prefixes: Vec<String>,
    /// Refuse a request without any subject alternative name.
    pub require_san: bool,
    /// Allow wildcard certificate names (`*.example.com`).
    pub allow_wildcard_names: bool,
    pub key_types: Vec<KeyType>,
    pub min_rsa_bits: u32,
}

impl Profile {
    /// The defaults of a kind; a configured profile starts from these.
    pub fn defaults(kind: ProfileKind) -> Profile {
        let (max, default, dns, require_san) = match kind {
            ProfileKind::Server | ProfileKind::ServerClient | ProfileKind::Client => {
                (397, 90, vec![DnsPattern::Any], true)
            }
            // Admin client certificates identify a person by subject; they
            // name no host.
            ProfileKind::AdminClient => (30, 30, Vec::new(), false),
        };
        Profile {
            kind,
            max_validity_days: max,
            default_validity_days: default,
            allowed_dns: dns,
            allowed_ips: Vec::new(),
            allow_email: false,
            allow_uri_prefixes: Vec::new(),
            require_san,
            allow_wildcard_names: false,
            key_types: KeyType::ALL.to_vec(),
            min_rsa_bits: 2048,
        }
    }

    /// Checks one subject alternative name against this profile.
    pub fn name_allowed(&self, san: &SubjectAltName) -> Result<(), String> {
        match san {
            SubjectAltName::Dns(raw) => self.dns_allowed(raw),
            SubjectAltName::Ip(bytes) => {
                let ip = match bytes.len() {
                    4 => {
                        let mut b = [0u8; 4];
                        b.copy_from_slice(bytes);
                        IpAddr::from(b)
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(bytes);
                        IpAddr::from(b)
                    }
                    n => return Err(format!("IP address of {n} octets (4 or 16 expected)")),
                };
                if self.allowed_ips.iter().any(|net| net.contains(ip)) {
                    Ok(())
                } else if self.allowed_ips.is_empty() {
                    Err(format!(
                        "IP address {ip}: this profile allows no IP addresses (allowed_ips is empty)"
                    ))
                } else {
                    Err(format!(
                        "IP address {ip} is outside allowed_ips [{}]",
                        join(&self.allowed_ips)
                    ))
                }
            }
            SubjectAltName::Email(addr) => {
                if !self.allow_email {
                    return Err(format!(
                        "email address {addr:?}: this profile does not allow email addresses (allow_email = false)"
                    ));
                }
                check_email(addr).map_err(|e| format!("email address {addr:?}: {e}"))
            }
            SubjectAltName::Uri(uri) => {
                check_uri_chars(uri).map_err(|e| format!("URI {uri:?}: {e}"))?;
                if self
                    .allow_uri_prefixes
                    .iter()
                    .any(|p| uri.starts_with(p.as_str()))
                {
                    Ok(())
                } else if self.allow_uri_prefixes.is_empty() {
                    Err(format!(
                        "URI {uri:?}: this profile allows no URIs (allow_uri_prefixes is empty)"
                    ))
                } else {
                    Err(format!(
                        "URI {uri:?} does not start with any of allow_uri_prefixes [{}]",
                        self.allow_uri_prefixes.join(", ")
                    ))
                }
            }
        }
    }

    /// Checks all names of a request, including `require_san`.
    pub fn sans_allowed(&self, sans: &[SubjectAltName]) -> Result<(), String> {
        if sans.is_empty() && self.require_san {
            return Err("the request names no subject alternative name and this profile requires one (require_san = true)".into());
        }
        sans.iter().try_for_each(|s| self.name_allowed(s))
    }

    /// Checks a key type (RSA size included) against this profile.
    pub fn key_allowed(&self, key: KeyType) -> Result<(), String> {
        if !self.key_types.contains(&key) {
            return Err(format!(
                "key type {} is not in this profile's key_types [{}]",
                key.as_str(),
                self.key_types
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        match key.rsa_bits() {
            Some(bits) if bits < self.min_rsa_bits => Err(format!(
                "RSA key of {bits} bits is below this profile's min_rsa_bits ({})",
                self.min_rsa_bits
            )),
            _ => Ok(()),
        }
    }

    fn dns_allowed(&self, raw: &str) -> Result<(), String> {
        if let Some(base) = raw.strip_prefix("*.") {
            let base = check_dns_name(base).map_err(|e| format!("DNS name {raw:?}: {e}"))?;
            if !self.allow_wildcard_names {
                return Err(format!(
                    "DNS name {raw:?}: this profile does not allow wildcard names (allow_wildcard_names = false)"
                ));
            }
            if self.allowed_dns.iter().any(|p| p.covers_wildcard(&base)) {
                return Ok(());
            }
        } else {
            let name = check_dns_name(raw).map_err(|e| format!("DNS name {raw:?}: {e}"))?;
            if self.allowed_dns.iter().any(|p| p.matches(&name)) {
                return Ok(());
            }
        }
        if self.allowed_dns.is_empty() {
            Err(format!(
                "DNS name {raw:?}: this profile allows no DNS names (allowed_dns is empty)"
            ))
        } else {
            Err(format!(
                "DNS name {raw:?} is not covered by allowed_dns [{}]",
                join(&self.allowed_dns)
            ))
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A DNS name as certificates carry it: ASCII letters, digits and hyphens,
/// labels of 1–63, at most 253 in all, no trailing dot. Returns it
/// lowercased.
fn check_dns_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if name.ends_with('.') {
        return Err("remove the trailing dot".into());
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("an IP address belongs in an IP name, not a DNS name".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "label {label:?} may hold only letters, digits and '-' (write internationalised names as xn-- A-labels)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

fn check_email(addr: &str) -> Result<(), String> {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err("no '@'".into());
    };
    if local.is_empty() || local.len() > 64 {
        return Err("the local part must be 1 to 64 characters".into());
    }
    if !local
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"@\"\\()<>[]:;,".contains(&b))
    {
        return Err("the local part holds a character certificates cannot carry".into());
    }
    check_dns_name(domain).map(|_| ())
}

/// Characters of an IA5String URI without spaces or controls.
fn check_uri_chars(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("spaces, control and non-ASCII characters are not allowed".into());
    }
    let scheme_ok = s.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    if !scheme_ok {
        return Err("no scheme (like `spiffe:` or `https:`)".into());
    }
    Ok(())
}

fn ser_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

// ---------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    database: Option<PathBuf>,
    #[serde(default)]
    signer: RawSigner,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    crl: RawCrl,
    #[serde(default)]
    issuance: RawIssuance,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSigner {
    socket: Option<PathBuf>,
    connections: Option<u64>,
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    socket_mode: Option<u32>,
    max_body_bytes: Option<u64>,
    header_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
    #[serde(default)]
    roles: RawRoles,
    https: Option<RawHttps>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoles {
    admin: Option<Vec<String>>,
    operator: Option<Vec<String>>,
    auditor: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttps {
    listen: Option<String>,
    certificate: Option<PathBuf>,
    private_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_profile: Option<String>,
    roles: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    enabled: Option<bool>,
    listen: Option<String>,
    publish_dir: Option<PathBuf>,
    responder_validity_secs: Option<u32>,
    ocsp_validity_secs: Option<u32>,
    ocsp_max_age_secs: Option<u32>,
    ocsp_sign_rate: Option<u32>,
    workers: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrl {
    validity_secs: Option<u32>,
    coalesce_ms: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuance {
    default_issuer: Option<String>,
    group_commit: Option<bool>,
    checkpoint_interval_secs: Option<u64>,
    #[serde(default)]
    urls: RawUrls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUrls {
    ocsp: Option<String>,
    ca_issuers: Option<String>,
    crl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    kind: Option<String>,
    max_validity_days: Option<u32>,
    default_validity_days: Option<u32>,
    allowed_dns: Option<Vec<String>>,
    allowed_ips: Option<Vec<String>>,
    allow_email: Option<bool>,
    allow_uri_prefixes: Option<Vec<String>>,
    require_san: Option<bool>,
    allow_wildcard_names: Option<bool>,
    key_types: Option<Vec<String>>,
    min_rsa_bits: Option<u32>,
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl Config {
    /// Reads and validates the configuration. With no file, every default
    /// applies. `state_dir_override` (the command line) wins over the file;
    /// a `database` not set in the file follows it.
    pub fn load(
        path: Option<&Path>,
        state_dir_override: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            None => String::new(),
            Some(p) => std::fs::read_to_string(p).map_err(|e| ConfigError {
                key: "(file)".into(),
                problem: format!("cannot read {}: {e}", p.display()),
            })?,
        };
        Config::parse_with(&text, state_dir_override)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, None)
    }

    fn parse_with(text: &str, state_dir_override: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        build(raw, state_dir_override)
    }

    /// SHA-256 of the canonical effective configuration (JSON of the
    /// structure, maps sorted), recorded in the DaemonStarted event.
    pub fn sha256(&self) -> [u8; 32] {
        // Every path came from TOML text (UTF-8) or was checked to be UTF-8,
        // so serialisation cannot fail; should it ever, the Debug form still
        // identifies the configuration.
        let bytes = serde_json::to_vec(self).unwrap_or_else(|_| format!("{self:?}").into_bytes());
        crate::sha256(&bytes)
    }

    /// Whether `new` can replace `self` on SIGHUP: only profiles, admin
    /// roles (`admin.roles`, `admin.https.roles`), issuance URLs and the
    /// admin HTTPS certificate paths may change. The error names the first
    /// other key that changed.
    pub fn reloadable_diff(&self, new: &Config) -> Result<(), ConfigError> {
        let (Ok(a), Ok(b)) = (serde_json::to_value(self), serde_json::to_value(new)) else {
            return cfg_err(
                "(file)",
                "cannot compare the configurations; restart castellan",
            );
        };
        match differing_settings(&a, &b, RELOADABLE).into_iter().next() {
            None => Ok(()),
            Some(key) => {
                let problem = format!("`{key}` cannot change on reload; restart castellan");
                cfg_err(&key, problem)
            }
        }
    }

    /// Dotted names of the settings that differ from `new` (values left
    /// out), for the audit log's record of a reload.
    pub fn changed_settings(&self, new: &Config) -> Vec<String> {
        match (serde_json::to_value(self), serde_json::to_value(new)) {
            (Ok(a), Ok(b)) => differing_settings(&a, &b, &[]),
            // Cannot happen (see Config::sha256); the digests still differ.
            _ => vec!["(unknown)".into()],
        }
    }
}

/// Dotted names of the settings that differ between two configurations as
/// they serialise (under the file's key names), in key order, without
/// descending into the names in `skip`.
fn differing_settings(a: &serde_json::Value, b: &serde_json::Value, skip: &[&str]) -> Vec<String> {
    fn walk(
        a: &serde_json::Value,
        b: &serde_json::Value,
        path: &str,
        skip: &[&str],
        out: &mut Vec<String>,
    ) {
        use serde_json::Value;
        if skip.contains(&path) {
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match (x.get(k.as_str()), y.get(k.as_str())) {
                        (Some(va), Some(vb)) => walk(va, vb, &p, skip, out),
                        _ if skip.contains(&p.as_str()) => {}
                        _ => out.push(p),
                    }
                }
            }
            _ if a == b => {}
            _ => out.push(path.to_string()),
        }
    }
    let mut out = Vec::new();
    walk(a, b, "", skip, &mut out);
    out
}

fn build(raw: RawConfig, state_dir_override: Option<&Path>) -> Result<Config, ConfigError> {
    let state_dir = match state_dir_override {
        Some(p) => p.to_path_buf(),
        None => raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    };
    check_abs_path("state_dir", &state_dir)?;
    let database = match raw.database {
        None => state_dir.join("castellan.redb"),
        Some(p) if p.is_absolute() => p,
        // A relative database is inside the state directory.
        Some(p) => state_dir.join(p),
    };
    check_abs_path("database", &database)?;

    let signer = SignerConfig {
        socket: socket_path("signer.socket", raw.signer.socket, DEFAULT_SIGNER_SOCKET)?,
        // The signer serves one request per connection at a time: with 4, a
        // loaded daemon queued in its pool and the signer's journal synced
        // few records at a time (benches/issuance.rs: 32 gave +25–50 %
        // issuances/s over 4 and matched 64, with half the signer threads).
        connections: bounded_usize("signer.connections", raw.signer.connections, 32, 1, 64)?,
        request_timeout: millis(
            "signer.request_timeout_ms",
            raw.signer.request_timeout_ms,
            30_000,
        )?,
    };

    let a = raw.admin;
    let socket_mode = a.socket_mode.unwrap_or(0o660);
    if socket_mode > 0o777 {
        return cfg_err(
            "admin.socket_mode",
            format!("{socket_mode:#o} is not a permission mode (write it like 0o660)"),
        );
    }
    if socket_mode & 0o007 != 0 {
        return cfg_err(
            "admin.socket_mode",
            format!(
                "{socket_mode:#o} lets every local user connect to the admin socket; grant access by group (0o660) and [admin.roles]"
            ),
        );
    }
    if socket_mode & 0o600 != 0o600 {
        return cfg_err(
            "admin.socket_mode",
            format!(
                "{socket_mode:#o} does not let castellan's own user use its socket (include 0o600)"
            ),
        );
    }
    let profiles = build_profiles(raw.profiles)?;
    let https = match a.https {
        None => None,
        Some(h) => Some(build_https(h, &profiles)?),
    };
    let admin = AdminConfig {
        socket: socket_path("admin.socket", a.socket, DEFAULT_ADMIN_SOCKET)?,
        socket_mode,
        max_body_bytes: bounded_usize(
            "admin.max_body_bytes",
            a.max_body_bytes,
            1 << 20,
            1024,
            64 << 20,
        )?,
        header_timeout: millis("admin.header_timeout_ms", a.header_timeout_ms, 5_000)?,
        request_timeout: millis("admin.request_timeout_ms", a.request_timeout_ms, 60_000)?,
        max_connections: bounded_usize("admin.max_connections", a.max_connections, 256, 1, 65_536)?,
        roles: build_roles(a.roles)?,
        https,
    };
    if admin.socket == signer.socket {
        return cfg_err("admin.socket", "is the same path as signer.socket");
    }

    let enabled = raw.http.enabled.unwrap_or(true);
    let listen = parse_listen(
        "http.listen",
        raw.http.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN),
    )?;
    if let Some(p) = &raw.http.publish_dir {
        check_abs_path("http.publish_dir", p)?;
    }
    let responder_validity_secs = raw.http.responder_validity_secs.unwrap_or(7 * 86_400);
    if !(30..=90 * 86_400).contains(&responder_validity_secs) {
        return cfg_err(
            "http.responder_validity_secs",
            "must be 30 to 7776000 (90 days, the signer's limit for a delegated responder)",
        );
    }
    let ocsp_validity_secs = raw.http.ocsp_validity_secs.unwrap_or(3600);
    if !(60..=604_800).contains(&ocsp_validity_secs) {
        return cfg_err("http.ocsp_validity_secs", "must be 60 to 604800 (7 days)");
    }
    // An answer never outlives its responder, and a responder is rotated
    // with a third of its life left: a longer answer validity would end
    // every answer early and have it re-signed over and over.
    if ocsp_validity_secs > responder_validity_secs / 3 {
        return cfg_err(
            "http.ocsp_validity_secs",
            format!(
                "{ocsp_validity_secs} is more than a third of http.responder_validity_secs ({responder_validity_secs}): lower it to at most {} or raise http.responder_validity_secs to at least {}",
                responder_validity_secs / 3,
                u64::from(ocsp_validity_secs) * 3
            ),
        );
    }
    let ocsp_max_age_secs = raw.http.ocsp_max_age_secs.unwrap_or(300);
    if ocsp_max_age_secs > 86_400 {
        return cfg_err(
            "http.ocsp_max_age_secs",
            "must be 0 to 86400 (1 day): HTTP caches keep an answer that long after a revocation",
        );
    }
    let ocsp_sign_rate = raw.http.ocsp_sign_rate.unwrap_or(100);
    if !(1..=100_000).contains(&ocsp_sign_rate) {
        return cfg_err(
            "http.ocsp_sign_rate",
            "must be 1 to 100000 (OCSP answers signed on demand per second)",
        );
    }
    if let Some(w) = raw.http.workers
        && !(1..=64).contains(&w)
    {
        return cfg_err(
            "http.workers",
            "must be 1 to 64 (threads serving the public listener); leave it out for one per CPU",
        );
    }
    let http = HttpConfig {
        enabled,
        listen,
        publish_dir: raw.http.publish_dir,
        responder_validity_secs,
        ocsp_validity_secs,
        ocsp_max_age_secs,
        ocsp_sign_rate,
        workers: raw.http.workers,
    };
    let crl = CrlConfig {
        validity_secs: bounded(
            "crl.validity_secs",
            raw.crl.validity_secs.map(u64::from),
            86_400,
            300,
            30 * 86_400,
        )? as u32,
        coalesce_ms: bounded(
            "crl.coalesce_ms",
            raw.crl.coalesce_ms.map(u64::from),
            1_000,
            0,
            60_000,
        )? as u32,
    };
    if let Some(h) = &admin.https
        && enabled
        && h.listen == http.listen
    {
        return cfg_err("admin.https.listen", "is the same address as http.listen");
    }

    let i = raw.issuance;
    if let Some(id) = &i.default_issuer
        && !castellan_proto::valid_ca_id(id)
    {
        return cfg_err(
            "issuance.default_issuer",
            format!("{id:?} is not a CA id (lowercase letters, digits, '.', '_', '-'; at most 63)"),
        );
    }
    let issuance = IssuanceConfig {
        default_issuer: i.default_issuer,
        group_commit: i.group_commit.unwrap_or(true),
        checkpoint_interval: Duration::from_secs(bounded(
            "issuance.checkpoint_interval_secs",
            i.checkpoint_interval_secs,
            300,
            10,
            7 * 86_400,
        )?),
        urls: UrlTemplates {
            ocsp: url_template("issuance.urls.ocsp", i.urls.ocsp, listen, "/ocsp/{issuer}")?,
            ca_issuers: url_template(
                "issuance.urls.ca_issuers",
                i.urls.ca_issuers,
                listen,
                "/ca/{issuer}.crt",
            )?,
            crl: url_template("issuance.urls.crl", i.urls.crl, listen, "/crl/{issuer}.crl")?,
        },
    };

    Ok(Config {
        state_dir,
        database,
        signer,
        admin,
        http,
        crl,
        issuance,
        profiles,
    })
}

fn check_abs_path(key: &str, p: &Path) -> Result<(), ConfigError> {
    if p.to_str().is_none() {
        return cfg_err(key, format!("{} is not valid UTF-8", p.display()));
    }
    if !p.is_absolute() {
        return cfg_err(key, format!("{} must be an absolute path", p.display()));
    }
    Ok(())
}

fn socket_path(key: &str, p: Option<PathBuf>, default: &str) -> Result<PathBuf, ConfigError> {
    let p = p.unwrap_or_else(|| PathBuf::from(default));
    check_abs_path(key, &p)?;
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        return cfg_err(
            key,
            format!("path too long for a Unix socket (at most {MAX_SOCKET_PATH} bytes)"),
        );
    }
    Ok(p)
}

fn bounded(
    key: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if v < min || v > max {
        return cfg_err(key, format!("{v} is out of range: must be {min} to {max}"));
    }
    Ok(v)
}

fn bounded_usize(
    key: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<usize, ConfigError> {
    let v = bounded(key, v, default, min, max)?;
    usize::try_from(v).or_else(|_| cfg_err(key, format!("{v} is too large for this machine")))
}

fn millis(key: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(bounded(
        key, v, default, 100, 3_600_000,
    )?))
}

fn parse_listen(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| ConfigError {
        key: key.into(),
        problem: format!(
            "{s:?} is not an address and port like \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)"
        ),
    })
}

/// An http(s) URL template for certificates: ASCII (IA5String), no spaces,
/// no user info, a host, and no placeholder other than `{issuer}`.
fn url_template(
    key: &str,
    v: Option<String>,
    listen: SocketAddr,
    path: &str,
) -> Result<String, ConfigError> {
    let url = match v {
        Some(u) => u,
        None => {
            if listen.ip().is_unspecified() {
                return cfg_err(
                    key,
                    format!(
                        "http.listen is {listen}, which no relying party can reach; set the URL relying parties use (e.g. \"http://ca.example.com{path}\")"
                    ),
                );
            }
            return Ok(format!("http://{listen}{path}"));
        }
    };
    check_url(&url).map_err(|p| ConfigError {
        key: key.into(),
        problem: format!("{url:?}: {p}"),
    })?;
    Ok(url)
}

fn check_url(url: &str) -> Result<(), String> {
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "spaces, control and non-ASCII characters are not allowed in a certificate URL".into(),
        );
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err("no host".into());
    }
    if authority.contains('@') {
        return Err("user information (`user@`) does not belong in a certificate URL".into());
    }
    if authority.contains('{') {
        return Err("the host cannot be a placeholder".into());
    }
    let rest_without = url.replace("{issuer}", "");
    if rest_without.contains(['{', '}']) {
        return Err("the only placeholder is {issuer}".into());
    }
    Ok(())
}

fn build_roles(raw: RawRoles) -> Result<Roles, ConfigError> {
    let admin = raw.admin.unwrap_or_else(|| vec!["root".to_string()]);
    let operator = raw.operator.unwrap_or_default();
    let auditor = raw.auditor.unwrap_or_default();
    let mut uids: BTreeMap<u32, (Role, String)> = BTreeMap::new();
    for (role, list) in [
        (Role::Admin, &admin),
        (Role::Operator, &operator),
        (Role::Auditor, &auditor),
    ] {
        let key = format!("admin.roles.{}", role_name(role));
        for entry in list {
            let uid = resolve_principal(&key, entry)?;
            if let Some((other, other_entry)) = uids.get(&uid) {
                if *other != role {
                    return cfg_err(
                        &key,
                        format!(
                            "uid {uid} ({entry:?}) is also in admin.roles.{} (as {other_entry:?}); a user has exactly one role",
                            role_name(*other)
                        ),
                    );
                }
                continue;
            }
            uids.insert(uid, (role, entry.clone()));
        }
    }
    Ok(Roles {
        admin,
        operator,
        auditor,
        uids: uids.into_iter().map(|(u, (r, _))| (u, r)).collect(),
    })
}

fn resolve_principal(key: &str, entry: &str) -> Result<u32, ConfigError> {
    if let Ok(uid) = entry.parse::<u32>() {
        return Ok(uid);
    }
    let name_ok = !entry.is_empty()
        && entry.len() <= 32
        && entry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !name_ok {
        return cfg_err(key, format!("{entry:?} is neither a user name nor a uid"));
    }
    match nix::unistd::User::from_name(entry) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => cfg_err(
            key,
            format!("no user {entry:?} on this host; create it or give its uid"),
        ),
        Err(e) => cfg_err(key, format!("cannot look up user {entry:?}: {e}")),
    }
}

fn build_https(
    h: RawHttps,
    profiles: &BTreeMap<String, Profile>,
) -> Result<AdminHttps, ConfigError> {
    let Some(listen) = h.listen else {
        return cfg_err(
            "admin.https.listen",
            "missing: the address of the mTLS admin listener, like \"127.0.0.1:8443\"",
        );
    };
    let listen = parse_listen("admin.https.listen", &listen)?;
    let file = |key: &str, p: Option<PathBuf>, what: &str| -> Result<PathBuf, ConfigError> {
        let Some(p) = p else {
            return cfg_err(key, format!("missing: the path of {what}"));
        };
        check_abs_path(key, &p)?;
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(p),
            Ok(_) => cfg_err(key, format!("{} is not a regular file", p.display())),
            Err(e) => cfg_err(key, format!("{}: {e}", p.display())),
        }
    };
    let certificate = file(
        "admin.https.certificate",
        h.certificate,
        "the listener's certificate chain (PEM)",
    )?;
    let private_key = file(
        "admin.https.private_key",
        h.private_key,
        "the listener's private key (PEM)",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(&private_key) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                return cfg_err(
                    "admin.https.private_key",
                    format!(
                        "{} is readable by every user (mode {mode:#o}); chmod 0640 and give it to castellan's group",
                        private_key.display()
                    ),
                );
            }
        }
    }
    let client_ca = file(
        "admin.https.client_ca",
        h.client_ca,
        "the CA certificate(s) admin clients must chain to (PEM)",
    )?;
    let client_profile = h.client_profile.unwrap_or_else(|| "admin-client".into());
    admin_client_profile("admin.https.client_profile", &client_profile, profiles)?;
    let roles = match h.roles {
        None => BTreeMap::from([(client_profile.clone(), Role::Operator)]),
        Some(raw) => {
            let mut roles = BTreeMap::new();
            for (profile, role) in raw {
                let key = format!("admin.https.roles.{profile}");
                let Some(role) = parse_role(&role) else {
                    return cfg_err(
                        &key,
                        format!(
                            "unknown role {role:?}; use \"auditor\", \"operator\" or \"admin\""
                        ),
                    );
                };
                admin_client_profile(&key, &profile, profiles)?;
                roles.insert(profile, role);
            }
            roles
        }
    };
    Ok(AdminHttps {
        listen,
        certificate,
        private_key,
        client_ca,
        client_profile,
        roles,
    })
}

fn parse_role(s: &str) -> Option<Role> {
    [Role::Auditor, Role::Operator, Role::Admin]
        .into_iter()
        .find(|r| role_name(*r) == s)
}

/// A profile whose certificates may carry an admin role: it must exist and
/// be of kind admin-client. A workload's `client` certificate must never
/// open the admin API, so the other kinds are refused.
fn admin_client_profile(
    key: &str,
    name: &str,
    profiles: &BTreeMap<String, Profile>,
) -> Result<(), ConfigError> {
    match profiles.get(name) {
        None => cfg_err(key, format!("no profile {name:?} in [profiles]")),
        Some(p) if p.kind != ProfileKind::AdminClient => cfg_err(
            key,
            format!(
                "profile {name:?} is of kind \"{}\"; only certificates of a profile of kind \"admin-client\" may carry an admin role",
                p.kind.signer_profile()
            ),
        ),
        Some(_) => Ok(()),
    }
}

fn build_profiles(
    raw: BTreeMap<String, RawProfile>,
) -> Result<BTreeMap<String, Profile>, ConfigError> {
    let mut profiles: BTreeMap<String, Profile> = [
        ("server", ProfileKind::Server),
        ("client", ProfileKind::Client),
        ("admin-client", ProfileKind::AdminClient),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_string(), Profile::defaults(k)))
    .collect();
    for (name, p) in raw {
        let key = format!("profiles.{name}");
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return cfg_err(
                &key,
                "profile names use letters, digits, '-' and '_' (at most 63)",
            );
        }
        if name == crate::store::records::CROSS_CERTIFICATE_PROFILE {
            return cfg_err(
                &key,
                "this name is reserved for cross-certificates made by `cross-sign` ceremonies; choose another",
            );
        }
        let k = |field: &str| format!("{key}.{field}");
        let kind = match (&p.kind, ProfileKind::parse(&name)) {
            (Some(s), _) => ProfileKind::parse(s).ok_or_else(|| ConfigError {
                key: k("kind"),
                problem: format!(
                    "unknown kind {s:?}; use \"server\", \"client\", \"server-client\" or \"admin-client\""
                ),
            })?,
            (None, Some(kind)) => kind,
            (None, None) => {
                return cfg_err(
                    &k("kind"),
                    "missing: \"server\", \"client\", \"server-client\" or \"admin-client\"",
                );
            }
        };
        let d = Profile::defaults(kind);
        let max_validity_days = p.max_validity_days.unwrap_or(d.max_validity_days);
        if !(1..=3650).contains(&max_validity_days) {
            return cfg_err(&k("max_validity_days"), "must be 1 to 3650");
        }
        let default_validity_days = p
            .default_validity_days
            .unwrap_or(d.default_validity_days.min(max_validity_days));
        if default_validity_days == 0 || default_validity_days > max_validity_days {
            return cfg_err(
                &k("default_validity_days"),
                format!("must be 1 to max_validity_days ({max_validity_days})"),
            );
        }
        let allowed_dns = match p.allowed_dns {
            None => d.allowed_dns,
            Some(list) => list
                .iter()
                .map(|s| DnsPattern::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError {
                    key: k("allowed_dns"),
                    problem: e,
                })?,
        };
        let allowed_ips = match p.allowed_ips {
            None => d.allowed_ips,
            Some(list) => list
                .iter()
                .map(|s| IpNet::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError {
                    key: k("allowed_ips"),
                    problem: e,
                })?,
        };
        let allow_uri_prefixes = p.allow_uri_prefixes.unwrap_or(d.allow_uri_prefixes);
        for prefix in &allow_uri_prefixes {
            check_uri_prefix(prefix).map_err(|e| ConfigError {
                key: k("allow_uri_prefixes"),
                problem: format!("{prefix:?}: {e}"),
            })?;
        }
        let key_types = match p.key_types {
            None => d.key_types,
            Some(list) => {
                let mut out = Vec::new();
                for s in &list {
                    let Some(t) = KeyType::parse(s) else {
                        return cfg_err(
                            &k("key_types"),
                            format!(
                                "unknown key type {s:?}; use {}",
                                KeyType::ALL.map(|t| t.as_str()).join(", ")
                            ),
                        );
                    };
                    if !out.contains(&t) {
                        out.push(t);
                    }
                }
                if out.is_empty() {
                    return cfg_err(&k("key_types"), "must list at least one key type");
                }
                out
            }
        };
        let min_rsa_bits = p.min_rsa_bits.unwrap_or(d.min_rsa_bits);
        if !(2048..=16384).contains(&min_rsa_bits) {
            return cfg_err(&k("min_rsa_bits"), "must be 2048 to 16384");
        }
        if let Some(t) = key_types
            .iter()
            .find(|t| t.rsa_bits().is_some_and(|b| b < min_rsa_bits))
        {
            return cfg_err(
                &k("key_types"),
                format!(
                    "{} is listed but min_rsa_bits is {min_rsa_bits}; remove one of the two",
                    t.as_str()
                ),
            );
        }
        profiles.insert(
            name,
            Profile {
                kind,
                max_validity_days,
                default_validity_days,
                allowed_dns,
                allowed_ips,
                allow_email: p.allow_email.unwrap_or(d.allow_email),
                allow_uri_prefixes,
                require_san: p.require_san.unwrap_or(d.require_san),
                allow_wildcard_names: p.allow_wildcard_names.unwrap_or(d.allow_wildcard_names),
                key_types,
                min_rsa_bits,
            },
        );
    }
    Ok(profiles)
}

/// A URI prefix must end its authority, or `spiffe://example.org` would
/// also allow `spiffe://example.org.attacker.net/`.
fn check_uri_prefix(prefix: &str) -> Result<(), String> {
    check_uri_chars(prefix)?;
    if let Some((_, rest)) = prefix.split_once("://") {
        if !rest.contains('/') {
            return Err(format!(
                "end the authority with '/' (\"{prefix}/\"), or the prefix also matches other hosts"
            ));
        }
    } else if !prefix.ends_with(':') && !prefix.contains('/') && prefix.split(':').count() < 3 {
        // `urn:uuid:` style prefixes end with a separator.
        return Err("end the prefix with a separator (`:` or `/`)".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Errors from the TOML layer, mapped to dotted keys
// ---------------------------------------------------------------------------

fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_string();
    let span = e.span();
    let location = span
        .as_ref()
        .map(|s| {
            let before = text.get(..s.start).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default();
    // Syntax errors: the document does not parse, so only a duplicate key
    // (where the span is the key itself) can be named.
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        let key = span
            .filter(|_| message.starts_with("duplicate key"))
            .and_then(|s| text.get(s))
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "(file)".into());
        return ConfigError {
            key,
            problem: format!("not valid TOML{location}: {message}"),
        };
    };
    let mut entries = Vec::new();
    index_table(doc.get_ref(), "", &mut entries);
    let path = span.and_then(|s| locate(&entries, &s));

    if let Some(unknown) = message.strip_prefix("unknown field ") {
        let names = backticked(unknown);
        let Some((bad, allowed)) = names.split_first() else {
            return ConfigError {
                key: path.unwrap_or_else(|| "(file)".into()),
                problem: message,
            };
        };
        let key = path.unwrap_or_else(|| bad.clone());
        let parent = key.strip_suffix(bad.as_str()).unwrap_or("").to_string();
        let problem = match suggest(bad, allowed) {
            Some(s) => format!("unknown key; did you mean `{parent}{s}`?"),
            None if allowed.is_empty() => "unknown key".to_string(),
            None => format!(
                "unknown key; allowed here: {}",
                allowed
                    .iter()
                    .map(|a| format!("`{parent}{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return ConfigError { key, problem };
    }
    ConfigError {
        key: path.unwrap_or_else(|| "(file)".into()),
        problem: format!("{}{location}", plain_types(&message)),
    }
}

/// serde's type names in the words of a TOML file.
fn plain_types(message: &str) -> String {
    let Some((head, expected)) = message.split_once(", expected ") else {
        return message.to_string();
    };
    let expected = if expected.starts_with("struct ") || expected.starts_with("a map") {
        "a table"
    } else if expected
        .strip_prefix('u')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        "a non-negative integer"
    } else if expected.starts_with("a sequence") {
        "an array"
    } else {
        expected
    };
    format!("{head}, expected {expected}")
}

/// Every key of the document with its dotted path, key span and value span.
fn index_table(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    out: &mut Vec<(String, Range<usize>, Range<usize>)>,
) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.push((path.clone(), k.span(), v.span()));
        index_value(v.get_ref(), &path, out);
    }
}

fn index_value(
    v: &toml::de::DeValue<'_>,
    path: &str,
    out: &mut Vec<(String, Range<usize>, Range<usize>)>,
) {
    match v {
        toml::de::DeValue::Table(t) => index_table(t, path, out),
        toml::de::DeValue::Array(a) => {
            for item in a.iter() {
                index_value(item.get_ref(), path, out);
            }
        }
        _ => {}
    }
}

/// The key an error span points at: a key whose name it falls on, else the
/// smallest value that contains it.
fn locate(entries: &[(String, Range<usize>, Range<usize>)], span: &Range<usize>) -> Option<String> {
    if let Some((p, _, _)) = entries
        .iter()
        .find(|(_, k, _)| k.start <= span.start && span.start < k.end.max(k.start + 1))
    {
        return Some(p.clone());
    }
    entries
        .iter()
        .filter(|(_, _, v)| v.start <= span.start && span.end <= v.end)
        .min_by_key(|(_, _, v)| v.end - v.start)
        .map(|(p, _, _)| p.clone())
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn suggest<'a>(bad: &str, allowed: &'a [String]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(bad, a), a))
        .filter(|(d, a)| *d <= (a.len() / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a.as_str())
}

/// Optimal string alignment distance (Levenshtein plus adjacent
/// transpositions, so `sokcet` is one edit from `socket`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(dns: &[&str], ips: &[&str]) -> Profile {
        Profile {
            allowed_dns: dns.iter().map(|s| DnsPattern::parse(s).unwrap()).collect(),
            allowed_ips: ips.iter().map(|s| IpNet::parse(s).unwrap()).collect(),
            ..Profile::defaults(ProfileKind::Server)
        }
    }

    fn dns(s: &str) -> SubjectAltName {
        SubjectAltName::Dns(s.into())
    }

    fn ip(s: &str) -> SubjectAltName {
        match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => SubjectAltName::Ip(a.octets().to_vec()),
            IpAddr::V6(a) => SubjectAltName::Ip(a.octets().to_vec()),
        }
    }

    #[test]
    fn star_dot_pattern_matches_exactly_one_label() {
        let p = profile(&["*.example.com"], &[]);
        assert!(p.name_allowed(&dns("www.example.com")).is_ok());
        assert!(p.name_allowed(&dns("a.b.example.com")).is_err());
        assert!(p.name_allowed(&dns("example.com")).is_err());
        assert!(p.name_allowed(&dns("wwwexample.com")).is_err());
        assert!(p.name_allowed(&dns("www.example.com.evil.net")).is_err());
    }

    #[test]
    fn leading_dot_pattern_matches_any_depth_but_not_the_apex() {
        let p = profile(&[".example.com"], &[]);
        assert!(p.name_allowed(&dns("a.example.com")).is_ok());
        assert!(p.name_allowed(&dns("a.b.c.example.com")).is_ok());
        assert!(p.name_allowed(&dns("example.com")).is_err());
        assert!(p.name_allowed(&dns("badexample.com")).is_err());
    }

    #[test]
    fn exact_pattern_matches_only_that_name_case_insensitively() {
        let p = profile(&["Host.Example.com"], &[]);
        assert!(p.name_allowed(&dns("host.example.com")).is_ok());
        assert!(p.name_allowed(&dns("HOST.EXAMPLE.COM")).is_ok());
        assert!(p.name_allowed(&dns("x.host.example.com")).is_err());
    }

    #[test]
    fn any_pattern_still_requires_a_valid_name() {
        let p = profile(&["*"], &[]);
        assert!(p.name_allowed(&dns("anything.internal")).is_ok());
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a_b.c",
            "host.",
            "10.0.0.1",
            "bücher.de",
            "a b.c",
        ] {
            assert!(p.name_allowed(&dns(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn wildcard_names_need_the_flag_and_a_covering_pattern() {
        let mut p = profile(&["*.example.com", ".corp.net", "exact.org"], &[]);
        assert!(p.name_allowed(&dns("*.example.com")).is_err());
        p.allow_wildcard_names = true;
        assert!(p.name_allowed(&dns("*.example.com")).is_ok());
        assert!(p.name_allowed(&dns("*.a.example.com")).is_err());
        assert!(p.name_allowed(&dns("*.corp.net")).is_ok());
        assert!(p.name_allowed(&dns("*.x.y.corp.net")).is_ok());
        assert!(p.name_allowed(&dns("*.org")).is_err());
        assert!(p.name_allowed(&dns("*.exact.org")).is_err());
    }

    #[test]
    fn ipv4_cidr_matches_inside_only() {
        let p = profile(&[], &["10.0.0.0/8", "192.168.1.7"]);
        assert!(p.name_allowed(&ip("10.255.0.1")).is_ok());
        assert!(p.name_allowed(&ip("11.0.0.1")).is_err());
        assert!(p.name_allowed(&ip("192.168.1.7")).is_ok());
        assert!(p.name_allowed(&ip("192.168.1.8")).is_err());
        assert!(p.name_allowed(&ip("::ffff:10.0.0.1")).is_err());
    }

    #[test]
    fn ipv6_cidr_matches_inside_only() {
        let p = profile(&[], &["::1/128", "fd00::/8"]);
        assert!(p.name_allowed(&ip("::1")).is_ok());
        assert!(p.name_allowed(&ip("::2")).is_err());
        assert!(p.name_allowed(&ip("fd12:3456::1")).is_ok());
        assert!(p.name_allowed(&ip("fe80::1")).is_err());
        assert!(p.name_allowed(&ip("10.0.0.1")).is_err());
        assert!(p.name_allowed(&SubjectAltName::Ip(vec![1, 2, 3])).is_err());
    }

    #[test]
    fn zero_prefix_matches_its_whole_family() {
        let p = profile(&[], &["0.0.0.0/0"]);
        assert!(p.name_allowed(&ip("203.0.113.9")).is_ok());
        assert!(p.name_allowed(&ip("2001:db8::1")).is_err());
    }

    #[test]
    fn cidr_with_host_bits_or_bad_prefix_is_refused() {
        assert!(
            IpNet::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("::/129").is_err());
        assert!(IpNet::parse("10.0.0/8").is_err());
    }

    #[test]
    fn misplaced_stars_in_patterns_are_refused() {
        for bad in ["foo.*.com", "f*.com", "**.com", "*.", ".", "*.-a.com"] {
            assert!(DnsPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn email_and_uri_follow_their_settings() {
        let mut p = profile(&[], &[]);
        let mail = SubjectAltName::Email("ops@example.com".into());
        assert!(p.name_allowed(&mail).is_err());
        p.allow_email = true;
        assert!(p.name_allowed(&mail).is_ok());
        assert!(
            p.name_allowed(&SubjectAltName::Email("no-at".into()))
                .is_err()
        );
        p.allow_uri_prefixes = vec!["spiffe://example.org/".into()];
        assert!(
            p.name_allowed(&SubjectAltName::Uri("spiffe://example.org/ns/a".into()))
                .is_ok()
        );
        assert!(
            p.name_allowed(&SubjectAltName::Uri(
                "spiffe://example.org.evil.net/x".into()
            ))
            .is_err()
        );
    }

    #[test]
    fn uri_prefix_without_an_ended_authority_is_refused() {
        assert!(check_uri_prefix("spiffe://example.org").is_err());
        assert!(check_uri_prefix("spiffe://example.org/").is_ok());
        assert!(check_uri_prefix("urn:uuid:").is_ok());
    }

    #[test]
    fn edit_distance_counts_a_transposition_once() {
        assert_eq!(edit_distance("sokcet", "socket"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
