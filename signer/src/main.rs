//! castellan-signer: see the crate documentation of `castellan_signer`.
//!
//! Exit statuses: 0 ok; 1 runtime failure (message on stderr / journal);
//! 2 usage; 64 invalid configuration (names the key); killed by SIGSYS
//! (systemd: status=31/SYS, shell: 159) on a seccomp violation — the unit
//! sets `RestartPreventExitStatus=SIGSYS` so a violation is never
//! restart-looped.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use castellan_proto::{Custodian, CustodianSet, JournalWindow};
use castellan_signer::backend::Backend;
use castellan_signer::backend::pkcs11::Pkcs11Backend;
use castellan_signer::backend::soft::SoftBackend;
use castellan_signer::config::{BackendConfig, Config, EXIT_CONFIG};
use castellan_signer::{journal, server, service, state, sys};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "castellan-signer",
    version,
    about = "castellan's key holder: signs only what its policy and custodian quorum allow"
)]
struct Cli {
    /// Install the seccomp filter, then try a forbidden syscall (must die by SIGSYS).
    #[arg(long = "danger-seccomp-selftest", hide = true)]
    danger_seccomp_selftest: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the daemon on the configured Unix socket.
    Run {
        #[arg(long, default_value = "/etc/castellan/signer.toml")]
        config: PathBuf,
    },
    /// Initialise a new signer: key store (soft backend), audit key and the custodian set.
    Init {
        #[arg(long, default_value = "/etc/castellan/signer.toml")]
        config: PathBuf,
        /// A custodian as NAME=PUBLIC_KEY_FILE (from `castellanctl custodian keygen`); repeat n times.
        #[arg(long = "custodian", required = true)]
        custodians: Vec<String>,
        /// How many custodians must approve a CA-key operation (m of n).
        #[arg(long)]
        threshold: u8,
    },
    /// Inspect the signing journal.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Re-walk the hash chain; names the first damaged record.
    Verify {
        #[arg(
            long,
            default_value = "/etc/castellan/signer.toml",
            conflicts_with = "journal"
        )]
        config: PathBuf,
        /// Path of a journal file (e.g. a copy preserved as evidence).
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// After a crash mid-write: move an incomplete last record (never
    /// acknowledged) aside into `<journal>.torn-<offset>` so the signer can
    /// start. Refuses anything that is not a torn tail.
    RecoverTornTail {
        #[arg(
            long,
            default_value = "/etc/castellan/signer.toml",
            conflicts_with = "journal"
        )]
        config: PathBuf,
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// What was signed in a time window, as JSON lines.
    Export {
        #[arg(
            long,
            default_value = "/etc/castellan/signer.toml",
            conflicts_with = "journal"
        )]
        config: PathBuf,
        #[arg(long)]
        journal: Option<PathBuf>,
        /// Start (inclusive): RFC 3339 UTC (2026-11-23T17:00:00Z) or unix milliseconds.
        #[arg(long)]
        since: String,
        /// End (exclusive), same forms.
        #[arg(long)]
        until: String,
        /// Only what this key signed (its key id as the records name it: a
        /// CA id, `ocsp:<ca>` for its OCSP responder, `audit`); repeat for
        /// several.
        #[arg(long = "key", value_name = "KEY_ID")]
        keys: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.danger_seccomp_selftest {
        sys::seccomp_selftest();
    }
    init_logging();
    let result = match cli.command {
        None => {
            eprintln!(
                "castellan-signer: no command given; try `castellan-signer run --config FILE` or --help"
            );
            return ExitCode::from(2);
        }
        Some(Command::Run { config }) => run(&config),
        Some(Command::Init {
            config,
            custodians,
            threshold,
        }) => init(&config, &custodians, threshold),
        Some(Command::Journal { command }) => journal_cmd(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(m)) => {
            eprintln!("castellan-signer: invalid configuration: {m}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(Failure::Runtime(m)) => {
            tracing::error!("{m}");
            eprintln!("castellan-signer: {m}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Config(String),
    Runtime(String),
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Runtime(m)
    }
}

fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CASTELLAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // journald when it is there (under systemd), stderr otherwise.
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    match journald {
        Some(layer) => {
            let _ = registry.with(layer).try_init();
        }
        None => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_target(false),
                )
                .try_init();
        }
    }
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::Config(e.to_string()))
}

fn open_backend(cfg: &Config, create: bool) -> Result<Box<dyn Backend>, String> {
    match &cfg.backend {
        BackendConfig::Soft {
            key_store,
            passphrase,
        } => {
            let pass = passphrase.read()?;
            let b = if create {
                SoftBackend::create(key_store, &pass)
            } else {
                SoftBackend::open(key_store, &pass)
            };
            Ok(Box::new(b.map_err(|e| {
                format!("soft key store {}: {e}", key_store.display())
            })?))
        }
        BackendConfig::Pkcs11 {
            module,
            token_label,
            pin,
        } => {
            let pin = pin.read()?;
            let b = Pkcs11Backend::open(module, token_label, &pin)
                .map_err(|e| format!("PKCS#11 token {token_label:?}: {e}"))?;
            Ok(Box::new(b))
        }
    }
}

fn ensure_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn read_custodian(spec: &str) -> Result<Custodian, Failure> {
    let (name, file) = spec.split_once('=').ok_or_else(|| {
        Failure::Runtime(format!(
            "--custodian {spec:?}: expected NAME=PUBLIC_KEY_FILE"
        ))
    })?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Runtime(format!("custodian {name}: cannot read {file}: {e}")))?;
    let public_key = parse_custodian_public_key(&text)
        .ok_or_else(|| Failure::Runtime(format!("custodian {name}: {file} is not a castellan custodian public key (ed25519:<64 hex digits>)")))?;
    Ok(Custodian {
        name: name.to_string(),
        public_key,
    })
}

/// Parses the first non-comment line: `ed25519:<64 hex>` (the prefix is optional).
fn parse_custodian_public_key(text: &str) -> Option<[u8; 32]> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    let hex_part = line.split_whitespace().next()?;
    let hex_part = hex_part.strip_prefix("ed25519:").unwrap_or(hex_part);
    hex::decode(hex_part).ok()?.try_into().ok()
}

fn init(config: &Path, custodians: &[String], threshold: u8) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    let set = CustodianSet {
        threshold,
        custodians: custodians
            .iter()
            .map(|c| read_custodian(c))
            .collect::<Result<_, _>>()?,
    };
    castellan_signer::quorum::validate_set(&set).map_err(Failure::Runtime)?;
    if cfg.state_dir.join(state::STATE_FILE).exists() {
        return Err(Failure::Runtime(format!(
            "{} is already initialised; refusing to overwrite an existing signer",
            cfg.state_dir.display()
        )));
    }
    ensure_dir(&cfg.state_dir)?;
    let backend = open_backend(&cfg, true)?;
    service::initialise(&cfg.state_dir, backend.as_ref(), &set)?;
    println!(
        "initialised castellan-signer in {} ({} backend, {} of {} custodians)",
        cfg.state_dir.display(),
        backend.kind(),
        set.threshold,
        set.custodians.len()
    );
    Ok(())
}

fn run(config: &Path) -> Result<(), Failure> {
    let cfg = load_config(config)?;
    // Before any key is in memory: no core dumps, no ptrace by same-uid peers.
    sys::harden_process().map_err(|e| format!("cannot harden the process: {e}"))?;
    let backend = open_backend(&cfg, false)?;
    let signer = service::Signer::open(&cfg.state_dir, backend, cfg.profiles.clone())?;
    if let Some(parent) = cfg.socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    match std::fs::remove_file(&cfg.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!("cannot remove stale socket {}: {e}", cfg.socket.display()).into());
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(&cfg.socket)
        .map_err(|e| format!("cannot bind {}: {e}", cfg.socket.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("cannot set permissions on {}: {e}", cfg.socket.display()))?;
    }
    if cfg.seccomp {
        sys::install_seccomp().map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
        signer.set_seccomp_active();
    } else {
        tracing::warn!("danger_disable_seccomp is set: the signer runs WITHOUT its syscall filter");
    }
    tracing::info!(
        socket = %cfg.socket.display(),
        backend = signer.backend_kind(),
        seccomp = cfg.seccomp,
        "castellan-signer ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    server::serve(Arc::new(signer), listener, cfg.daemon_uid);
    Ok(())
}

use castellan_proto::time::parse_time_ms;

fn journal_path(config: &Path, journal: Option<PathBuf>) -> Result<PathBuf, Failure> {
    match journal {
        Some(p) => Ok(p),
        None => Ok(load_config(config)?.state_dir.join(state::JOURNAL_FILE)),
    }
}

fn journal_cmd(command: JournalCommand) -> Result<(), Failure> {
    match command {
        JournalCommand::Verify { config, journal } => {
            let path = journal_path(&config, journal)?;
            let summary =
                journal::verify_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "journal {} verifies: {} records, head {}",
                path.display(),
                summary.records,
                hex::encode(summary.head)
            );
            Ok(())
        }
        JournalCommand::RecoverTornTail { config, journal } => {
            let path = journal_path(&config, journal)?;
            let (_journal, records, torn) = journal::Journal::open_truncating_torn_tail(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            match torn {
                Some(t) => println!(
                    "removed an incomplete record {} ({} octets at offset {}), saved to {}; {} records remain",
                    t.record,
                    t.removed,
                    t.offset,
                    t.evidence.display(),
                    records.len()
                ),
                None => println!(
                    "journal {} has no torn tail; nothing changed",
                    path.display()
                ),
            }
            Ok(())
        }
        JournalCommand::Export {
            config,
            journal,
            since,
            until,
            keys,
        } => {
            let path = journal_path(&config, journal)?;
            let since = parse_time_ms(&since)
                .ok_or_else(|| Failure::Runtime(format!("--since {since:?}: use RFC 3339 UTC (2026-11-23T17:00:00Z) or unix milliseconds")))?;
            let until = parse_time_ms(&until)
                .ok_or_else(|| Failure::Runtime(format!("--until {until:?}: use RFC 3339 UTC (2026-11-23T17:00:00Z) or unix milliseconds")))?;
            if until <= since {
                return Err(Failure::Runtime("--until must be after --since".into()));
            }
            let records = journal::read_window(&path, JournalWindow { since, until })
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let unknown: Vec<&String> = keys
                .iter()
                .filter(|k| !records.iter().any(|r| &r.key_id == *k))
                .collect();
            if !unknown.is_empty() {
                let mut seen: Vec<&str> = records.iter().map(|r| r.key_id.as_str()).collect();
                seen.sort_unstable();
                seen.dedup();
                eprintln!(
                    "nothing signed by {} in this window; keys that signed in it: {}",
                    unknown
                        .iter()
                        .map(|k| format!("{k:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if seen.is_empty() {
                        "none".to_string()
                    } else {
                        seen.join(", ")
                    }
                );
            }
            for r in records
                .iter()
                .filter(|r| keys.is_empty() || keys.contains(&r.key_id))
            {
                println!("{}", journal::record_to_json(r));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_both_forms() {
        assert_eq!(parse_time_ms("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(
            parse_time_ms("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_time_ms("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000_500)
        );
        assert_eq!(parse_time_ms("yesterday"), None);
    }

    #[test]
    fn custodian_keys_parse_with_and_without_prefix() {
        let hex64 = "11".repeat(32);
        assert_eq!(
            parse_custodian_public_key(&format!("ed25519:{hex64} alice\n")),
            Some([0x11; 32])
        );
        assert_eq!(
            parse_custodian_public_key(&format!("# c\n{hex64}\n")),
            Some([0x11; 32])
        );
        assert_eq!(parse_custodian_public_key("ed25519:abcd"), None);
    }
}
