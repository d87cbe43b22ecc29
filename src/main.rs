//! castellan: the control daemon.
//!
//! `castellan [--config FILE] [--state-dir DIR]` runs the daemon;
//! `castellan verify --database FILE` re-walks an event log offline (e.g. a
//! copy preserved as evidence).
//!
//! Exit statuses: 0 ok, 1 runtime failure, 2 usage, 64 invalid
//! configuration (names the key), 65 the offline verification found damage.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    Verify {
        #[arg(long)]
        database: PathBuf,
    },
    /// Check the configuration and exit (64 with the key at fault when invalid).
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Verify { database }) = &cli.command {
        return verify_offline(database);
    }
    let config = match Config::load(cli.config.as_deref(), cli.state_dir.as_deref()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
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
    match runtime.block_on(run(config, cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(m) => {
            tracing::error!("{m}");
            eprintln!("castellan: {m}");
            ExitCode::from(1)
        }
    }
}

fn verify_offline(database: &std::path::Path) -> ExitCode {
    match Store::verify_file(database) {
        Ok(r) => {
            let v = castellan::daemon::verify_view(&r);
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

fn admin_settings(config: &Config) -> castellan::admin::AdminSettings {
    castellan::admin::AdminSettings {
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

async fn run(config: Arc<Config>, config_path: Option<PathBuf>) -> Result<(), String> {
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

    let settings = Arc::new(admin_settings(&config));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let admin = {
        let daemon = Arc::clone(&daemon);
        let mut rx = shutdown_rx.clone();
        tokio::spawn(async move {
            castellan::admin::serve_unix(daemon, settings, async move {
                let _ = rx.changed().await;
            })
            .await
        })
    };

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
                if let Err(e) = daemon.sync_signer().await {
                    tracing::warn!("signer sync: {e}");
                    continue;
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
    tracing::info!(admin = %config.admin.socket.display(), "castellan ready");

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Reload what can be reloaded, atomically; a bad file keeps the old configuration.
                match Config::load(config_path.as_deref(), Some(&config.state_dir)) {
                    Ok(new) => match daemon.config().reloadable_diff(&new) {
                        Ok(()) => {
                            daemon.replace_config(Arc::new(new));
                            tracing::info!("configuration reloaded");
                        }
                        Err(e) => tracing::warn!("reload refused, keeping the running configuration: {e}"),
                    },
                    Err(e) => tracing::warn!("reload refused, keeping the running configuration: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    notifier.status("stopping");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), admin).await;
    Ok(())
}
