//! Service plumbing: logging, systemd notifications, signals.
//!
//! Everything here degrades to a no-op outside systemd (CI, a terminal):
//! logs go to stderr, notifications are dropped.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variable holding the log filter (`tracing` directives, e.g.
/// `castellan=debug,hyper=warn`); `info` when unset.
pub const LOG_ENV: &str = "CASTELLAN_LOG";

/// Installs the global subscriber: journald when systemd connected stderr to
/// the journal (`JOURNAL_STREAM`) and the journal socket can be opened,
/// otherwise formatted lines on stderr. Calling it twice is harmless.
pub fn init_logging(component: &str) {
    let (filter, bad_filter) = match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some((v, e.to_string()))),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let journald = if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_syslog_identifier(component.to_string()))
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match journald {
        Some(layer) => registry.with(layer).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(io::stderr)
                    .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
                    .with_target(true),
            )
            .try_init(),
    };
    if installed.is_ok()
        && let Some((v, e)) = bad_filter
    {
        tracing::warn!("{LOG_ENV}={v:?} is not a valid filter ({e}); logging at info");
    }
}

/// systemd readiness, status and watchdog notifications (`Type=notify`).
/// Without `NOTIFY_SOCKET` every method does nothing.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new()
    }
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
        }
    }

    /// Listening and serving: systemd starts dependent units after this.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready], "READY=1");
    }

    /// One line shown by `systemctl status`.
    pub fn status(&self, text: &str) {
        // A newline would start another assignment in the datagram.
        let line = text.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&line)], "STATUS");
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog], "WATCHDOG=1");
    }

    /// Start of a SIGHUP reload (`Type=notify-reload` wants the monotonic
    /// time with it); follow with [`Notifier::ready`].
    pub fn reloading(&self) {
        if !self.enabled {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now], "RELOADING=1"),
            Err(_) => self.send(&[NotifyState::Reloading], "RELOADING=1"),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping], "STOPPING=1");
    }

    fn send(&self, state: &[NotifyState<'_>], what: &str) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(state) {
            tracing::warn!("cannot notify systemd ({what}): {e}");
        }
    }
}

/// How often to call [`Notifier::watchdog`]: half of `WATCHDOG_USEC`, or
/// `None` when the unit has no watchdog (or it is meant for another pid).
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// SIGHUP as a stream of reload requests. Create it early (inside the
/// runtime): a SIGHUP before it exists would terminate the process.
pub struct ReloadSignal(Signal);

impl ReloadSignal {
    /// Waits for the next SIGHUP; several pending ones count as one.
    /// `false` when the signal stream has ended.
    pub async fn recv(&mut self) -> bool {
        self.0.recv().await.is_some()
    }
}

/// Registers the SIGHUP handler. Must be called inside a tokio runtime.
pub fn reload_signal() -> io::Result<ReloadSignal> {
    signal(SignalKind::hangup()).map(ReloadSignal)
}

/// Resolves at the first SIGTERM or SIGINT. Must be called inside a tokio
/// runtime; the error is from registering the handlers.
pub async fn shutdown_signal() -> io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
