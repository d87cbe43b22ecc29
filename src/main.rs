//! castellan: the control daemon.
//!
//! `castellan [--config FILE] [--state-dir DIR]` runs the daemon;
//! `castellan verify --database FILE [--audit-key FILE]` re-walks an event
//! log offline (e.g. a copy preserved as evidence).
//!
//! Exit statuses: 0 ok, 1 runtime failure, 2 usage, 64 invalid
//! configuration (names the key), 65 the offline verification found damage.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use castellan::admin::{AdminSettings, Shared, TlsSettings};
use castellan::config::Config;
use castellan::daemon::{Caller, Daemon};
use castellan::events::Actor;
use castellan::signer_pool::{PoolConfig, SignerPool};
use castellan::store::Store;
use clap::{Parser, Subcommand};

const EXIT_CONFIG: u8 = 64;
const EXIT_DAMAGED: u8 = 65;

#[derive(Parser)]
#[command(
    name = "castellan",
    version,
    about = "castellan control daemon: event log, ceremonies, issuance, admin API"
)]
struct Cli {
    /// Configuration file (TOML). Without it every setting takes its default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `state_dir` of the configuration.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Verify an event log file offline (hash chain and checkpoints).
    ///
    /// With --audit-key, every audit key recorded in the log must be that
    /// key; without it, checkpoint signatures are checked only against the
    /// keys recorded in the log itself, which whoever could write the file
    /// could have replaced (the report says so).
    Verify {
        #[arg(long)]
        database: PathBuf,
        /// The signer's audit public key: PEM (PUBLIC KEY) or DER
        /// SubjectPublicKeyInfo, as `castellanctl signer audit-key` writes it.
        #[arg(long, value_name = "FILE")]
        audit_key: Option<PathBuf>,
    },
    /// Check the configuration and exit (64 with the key at fault when invalid).
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Verify {
        database,
        audit_key,
    }) = &cli.command
    {
        return verify_offline(database, audit_key.as_deref());
    }
    let config = match Config::load(cli.config.as_deref(), cli.state_dir.as_deref()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("castellan: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The mTLS listener's files are part of the configuration: a certificate
    // or key that does not load is refused like any other bad setting.
    let tls = match config.admin.https.as_ref().map(TlsSettings::from_config) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("castellan: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    castellan::service::init_logging("castellan");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("castellan: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config, tls, cli.config, cli.state_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(m) => {
            tracing::error!("{m}");
            eprintln!("castellan: {m}");
            ExitCode::from(1)
        }
    }
}

/// The DER SubjectPublicKeyInfo in a PEM or DER file.
fn read_audit_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use der::Decode;
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the audit key {}: {e}", path.display()))?;
    let der = castellan::pem::decode(&bytes, &["PUBLIC KEY"])
        .map_err(|e| format!("audit key {}: {e}", path.display()))?;
    spki::SubjectPublicKeyInfoRef::from_der(&der).map_err(|e| {
        format!(
            "audit key {}: not a SubjectPublicKeyInfo ({e}); export it with \
             `castellanctl signer audit-key --out FILE`",
            path.display()
        )
    })?;
    Ok(der)
}

fn verify_offline(database: &std::path::Path, audit_key: Option<&std::path::Path>) -> ExitCode {
    let trusted = match audit_key.map(read_audit_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("castellan: {e}");
            return ExitCode::from(2);
        }
    };
    match Store::verify_file_against(database, trusted.as_deref()) {
        Ok(r) => {
            let mut v = castellan::daemon::verify_view(&r);
            if trusted.is_some() {
                v.checkpoint_keys = "file".into();
            } else {
                let note = "checkpoint signatures were checked only against the audit keys \
                            recorded in the log itself, which whoever could write the file could \
                            have replaced; pass --audit-key FILE (from `castellanctl signer \
                            audit-key`) to check them against the signer's key";
                eprintln!("castellan: note: {note}");
                v.checkpoint_keys_note = Some(note.to_string());
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            if v.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_DAMAGED)
            }
        }
        Err(e) => {
            eprintln!("castellan: {e}");
            ExitCode::from(1)
        }
    }
}

fn admin_settings(config: &Config) -> AdminSettings {
    AdminSettings {
        socket: config.admin.socket.clone(),
        socket_mode: config.admin.socket_mode,
        max_body_bytes: config.admin.max_body_bytes,
        header_timeout: config.admin.header_timeout,
        request_timeout: config.admin.request_timeout,
        max_connections: config.admin.max_connections,
        roles: config
            .admin
            .roles
            .uids
            .iter()
            .map(|(u, r)| (*u, *r))
            .collect(),
    }
}

/// A reload checked and ready to apply: the configuration, the mTLS
/// settings, and the SHA-256 of the file it was read from.
struct Reload {
    config: Config,
    tls: Option<TlsSettings>,
    file_sha256: Option<[u8; 32]>,
}

fn file_sha256(path: &std::path::Path) -> Result<[u8; 32], String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(castellan::sha256(&bytes))
}

/// Reads the configuration file again for SIGHUP. Everything that can fail
/// (parsing, what may change, the mTLS files) is checked before anything is
/// applied: a reload applies whole or not at all.
fn reload(
    daemon: &Daemon,
    config_path: Option<&std::path::Path>,
    state_dir_override: Option<&std::path::Path>,
) -> Result<Reload, String> {
    let before = config_path.map(file_sha256).transpose()?;
    let new = Config::load(config_path, state_dir_override).map_err(|e| e.to_string())?;
    // The digest recorded must be of the file that was parsed.
    let after = config_path.map(file_sha256).transpose()?;
    if before != after {
        return Err("the configuration file changed while it was read; send SIGHUP again".into());
    }
    daemon
        .config()
        .reloadable_diff(&new)
        .map_err(|e| e.to_string())?;
    let tls = match &new.admin.https {
        None => None,
        Some(h) => Some(TlsSettings::from_config(h).map_err(|e| e.to_string())?),
    };
    Ok(Reload {
        config: new,
        tls,
        file_sha256: after,
    })
}

/// `state_dir_override` is `--state-dir`: it wins over the file at a reload
/// as at start, and without it a reload reads `state_dir` from the file (so
/// that a change is refused, not silently ignored).
async fn run(
    config: Arc<Config>,
    tls: Option<TlsSettings>,
    config_path: Option<PathBuf>,
    state_dir_override: Option<PathBuf>,
) -> Result<(), String> {
    // Handled before anything is bound: from the moment the admin socket
    // answers, a SIGHUP (`systemctl reload`) is a reload, never the
    // signal's default action, which ends the process. One arriving during
    // start-up is acted on once castellan serves.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.state_dir.display()))?;
    let store =
        Store::open(&config.database, config.issuance.group_commit).map_err(|e| e.to_string())?;
    let pool = SignerPool::new(PoolConfig {
        socket: config.signer.socket.clone(),
        connections: config.signer.connections,
        connect_timeout: Duration::from_millis(500),
        request_timeout: config.signer.request_timeout,
        max_in_flight_per_connection: 64,
    });
    let daemon = Arc::new(Daemon::new(Arc::clone(&config), store, pool));
    daemon.startup().await.map_err(|e| e.to_string())?;

    // Replaced whole by SIGHUP; the servers read them per request.
    let settings = Shared::new(admin_settings(&config));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // Bound before castellan reports ready: admins (and units ordered
    // after castellan) can reach the socket once systemd says it started.
    let socket = castellan::admin::AdminSocket::bind(&settings.current())
        .map_err(|e| format!("admin socket (admin.socket): {e}"))?;
    let mut admin = {
        let daemon = Arc::clone(&daemon);
        let settings = settings.clone();
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            socket
                .serve(daemon, settings, async move {
                    let _ = rx.changed().await;
                })
                .await;
            Ok::<(), std::io::Error>(())
        })
    };
    // The mTLS listener is bound before castellan reports ready: an address
    // in use fails the start instead of leaving remote automation locked out.
    let mut https = None;
    if let Some(tls) = tls {
        let listener = tokio::net::TcpListener::bind(tls.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (admin.https.listen): {e}", tls.listen))?;
        tracing::info!(listen = %tls.listen, "admin API (mTLS) listening");
        let tls = Shared::new(tls);
        let task = {
            let daemon = Arc::clone(&daemon);
            let settings = settings.clone();
            let tls = tls.clone();
            let mut rx = shutdown_rx.clone();
            tokio::spawn(async move {
                castellan::admin::tls::serve_tls_listener(
                    daemon,
                    settings,
                    tls,
                    listener,
                    async move {
                        let _ = rx.changed().await;
                    },
                )
                .await
            })
        };
        https = Some((tls, task));
    }

    // The public listener (OCSP, CRLs, CA certificates). Bound before
    // castellan reports ready: an address in use fails the start (and
    // systemd's restart) instead of leaving relying parties without OCSP.
    let mut public = None;
    if config.http.enabled {
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .and_then(|l| l.into_std())
            .map_err(|e| format!("cannot listen on {} (http.listen): {e}", config.http.listen))?;
        let workers = config.http.worker_threads();
        public = Some(castellan::public_http::start(
            Arc::clone(&daemon),
            listener,
            workers,
            shutdown_rx.clone(),
        )?);
        tracing::info!(listen = %config.http.listen, workers, "public HTTP (OCSP, CRL) listening");
    }
    // Responders, pre-signed OCSP answers and CRLs, kept current in the
    // background.
    tokio::spawn(Arc::clone(&daemon).ocsp_task());
    tokio::spawn(Arc::clone(&daemon).crl_task());

    // Periodic checkpoints and reconciliation of intents left by a signer
    // outage.
    {
        let daemon = Arc::clone(&daemon);
        let interval = config
            .issuance
            .checkpoint_interval
            .max(Duration::from_secs(1));
        tokio::spawn(async move {
            let system = Caller {
                actor: Actor::System,
                role: castellan::api::Role::Admin,
            };
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                // A failed sync (signer down, an intent it cannot settle)
                // must not stop the checkpoints: they are independent.
                if let Err(e) = daemon.sync_signer().await {
                    tracing::warn!("signer sync: {e}");
                }
                if let Err(e) = daemon.checkpoint(&system).await {
                    tracing::warn!("checkpoint: {e}");
                }
            }
        });
    }

    let notifier = castellan::service::Notifier::new();
    notifier.ready();
    notifier.status("serving");
    if let Some(every) = castellan::service::watchdog_interval() {
        tokio::spawn(async move {
            let n = castellan::service::Notifier::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                n.watchdog();
            }
        });
    }
    tracing::info!(
        admin = %config.admin.socket.display(),
        https = ?config.admin.https.as_ref().map(|h| h.listen),
        "castellan ready"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            _ = hup.recv() => match reload(&daemon, config_path.as_deref(), state_dir_override.as_deref()) {
                Ok(Reload { config: new, tls: new_tls, file_sha256 }) => {
                    // Recorded in the log first, then swapped with no admin
                    // request running: each request sees one configuration.
                    let applied = daemon
                        .reload(new, file_sha256, |new| {
                            settings.replace(admin_settings(new));
                            if let (Some((tls, _)), Some(new_tls)) = (&https, new_tls) {
                                tls.replace(new_tls);
                            }
                        })
                        .await;
                    match applied {
                        Ok(changed) => tracing::info!(?changed, "configuration reloaded"),
                        Err(e) => tracing::warn!(
                            "reload not recorded in the event log, keeping the running \
                             configuration: {e}"
                        ),
                    }
                }
                // A bad file keeps the running configuration, whole.
                Err(e) => tracing::warn!("reload refused, keeping the running configuration: {e}"),
            },
            // The admin socket is castellan's only control path: without it,
            // stop rather than run unmanageable.
            r = &mut admin => {
                return Err(match r {
                    Ok(Ok(())) => "the admin socket server stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("the admin socket server failed: {e}"),
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    notifier.status("stopping");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    if let Some((_, task)) = https {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(listener) = public {
        listener.wait(Duration::from_secs(5)).await;
    }
    daemon.finish_writes().await;
    Ok(())
}
