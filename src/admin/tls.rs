//! The mTLS admin listener for remote automation (`[admin.https]`): the
//! same routes and role table as the Unix socket, over TLS on TCP.
//!
//! Who the caller is:
//! 1. rustls verifies the client certificate against `client_ca` (chain,
//!    validity, the clientAuth extended key usage). No certificate, no
//!    connection.
//! 2. castellan looks the certificate up in its own store by serial. It must
//!    be a certificate castellan issued (the same DER), in state `issued`
//!    (not revoked, not possibly-issued), under a profile that
//!    [`TlsSettings::profile_roles`] maps to a role. Otherwise the peer has
//!    no role: only `/healthz` and `/readyz` answer it, like an unknown uid
//!    on the socket.
//!
//! The lookup is made once per connection, so a connection lives at most
//! [`TlsSettings::max_connection_age`]: a revocation reaches open
//! keep-alive connections within that time, new ones at once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::{AdminBackend, AdminSettings, Call, Peer, serve_http};
use crate::api::{CertView, Role};
use crate::daemon::Caller;
use crate::events::Actor;

/// Settings of the mTLS listener (mapped from `[admin.https]`).
#[derive(Clone)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    /// From [`server_config`].
    pub server_config: Arc<rustls::ServerConfig>,
    /// Issuance profile of a client certificate → the role it carries,
    /// e.g. "admin-client" → admin.
    pub profile_roles: HashMap<String, Role>,
    /// Longest time one connection is served (see the module doc).
    pub max_connection_age: Duration,
}

fn bad_file(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} ({what}): {e}", path.display()),
    )
}

/// A rustls server configuration: `certificate` (chain, PEM) and
/// `private_key` (PEM) for the listener; client certificates must chain to
/// a CA certificate in `client_ca` (PEM, one or more).
pub fn server_config(
    certificate: &Path,
    private_key: &Path,
    client_ca: &Path,
) -> io::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let what = "client CA certificates";
    for c in CertificateDer::pem_file_iter(client_ca).map_err(|e| bad_file(client_ca, what, e))? {
        let c = c.map_err(|e| bad_file(client_ca, what, e))?;
        roots.add(c).map_err(|e| bad_file(client_ca, what, e))?;
    }
    if roots.is_empty() {
        return Err(bad_file(client_ca, what, "no certificate in the file"));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad_file(client_ca, what, e))?;
    let what = "the listener's certificate chain";
    let chain = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| bad_file(certificate, what, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(certificate, what, e))?;
    if chain.is_empty() {
        return Err(bad_file(certificate, what, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(private_key)
        .map_err(|e| bad_file(private_key, "the listener's private key", e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad_file(certificate, "certificate and private key", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the admin API over mTLS on `tls.listen` until `shutdown` completes.
pub async fn serve_tls<B: AdminBackend>(
    backend: Arc<B>,
    settings: Arc<AdminSettings>,
    tls: Arc<TlsSettings>,
    shutdown: impl Future,
) -> io::Result<()> {
    let listener = TcpListener::bind(tls.listen).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {} (admin.https.listen): {e}", tls.listen),
        )
    })?;
    tracing::info!(listen = %tls.listen, "admin API (mTLS) listening");
    serve_tls_listener(backend, settings, tls, listener, shutdown).await;
    Ok(())
}

/// The accept loop of [`serve_tls`] on a bound listener.
pub async fn serve_tls_listener<B: AdminBackend>(
    backend: Arc<B>,
    settings: Arc<AdminSettings>,
    tls: Arc<TlsSettings>,
    listener: TcpListener,
    shutdown: impl Future,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(
                            max = settings.max_connections,
                            %addr,
                            "admin mTLS: connection limit reached; closing a new connection"
                        );
                        continue;
                    };
                    tasks.spawn(connection(
                        backend.clone(),
                        settings.clone(),
                        tls.clone(),
                        stream,
                        addr,
                        stop_rx.clone(),
                        permit,
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin mTLS: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = settings.request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

async fn connection<B: AdminBackend>(
    backend: Arc<B>,
    settings: Arc<AdminSettings>,
    tls: Arc<TlsSettings>,
    stream: TcpStream,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
    let stream = match tokio::time::timeout(settings.header_timeout, acceptor.accept(stream)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%addr, error = %e, "admin mTLS: handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%addr, "admin mTLS: handshake timed out");
            return;
        }
    };
    let presented = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let peer = identify(&*backend, &tls, presented.as_deref(), addr).await;
    // A connection is re-authenticated by reconnecting: see the module doc.
    let (age_tx, age_rx) = watch::channel(false);
    let mut outer = stop;
    let age = tls.max_connection_age;
    let timer = tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(age) => {}
            _ = outer.changed() => {}
        }
        let _ = age_tx.send(true);
    });
    serve_http(backend, settings, TokioIo::new(stream), peer, age_rx).await;
    timer.abort();
}

fn refuse(who: String, why: String) -> Peer {
    Peer::Unknown { who, why }
}

/// The role of a verified client certificate, from castellan's own record of it.
async fn identify<B: AdminBackend>(
    backend: &B,
    tls: &TlsSettings,
    der: Option<&[u8]>,
    addr: SocketAddr,
) -> Peer {
    use der::Decode;
    let Some(der) = der else {
        return refuse(
            format!("mtls client {addr}"),
            "a client certificate is required".into(),
        );
    };
    let cert = match x509_cert::Certificate::from_der(der) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                format!("mtls client {addr}"),
                format!("the client certificate does not parse: {e}"),
            );
        }
    };
    let serial = cert.tbs_certificate().serial_number().as_bytes().to_vec();
    let subject = cert.tbs_certificate().subject().to_string();
    let serial_hex = hex::encode(&serial);
    let who = format!("mtls:{subject} (serial {serial_hex})");
    let system = Caller {
        actor: Actor::System,
        role: Role::Auditor,
    };
    let record = backend
        .call(
            &system,
            Call::Certificate {
                serial: serial_hex.clone(),
            },
        )
        .await
        .and_then(|v| {
            serde_json::from_value::<CertView>(v).map_err(|e| {
                crate::api::ApiError::new(crate::api::ErrorKind::Internal, e.to_string())
            })
        });
    let view = match record {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                who,
                format!(
                    "castellan has no usable record of client certificate {serial_hex}: {}",
                    e.message
                ),
            );
        }
    };
    let same = view
        .certificate_pem
        .as_deref()
        .and_then(|p| crate::pem::decode(p.as_bytes(), &["CERTIFICATE"]).ok())
        .is_some_and(|d| d == der);
    if !same {
        return refuse(
            who,
            format!("client certificate {serial_hex} is not one castellan issued"),
        );
    }
    if view.state != "issued" {
        return refuse(
            who,
            format!(
                "client certificate {serial_hex} is {}; issue a new one",
                view.state
            ),
        );
    }
    let Some(role) = tls.profile_roles.get(&view.profile).copied() else {
        return refuse(
            who,
            format!(
                "client certificate {serial_hex} was issued under profile {:?}, which carries \
                 no admin role",
                view.profile
            ),
        );
    };
    Peer::Known(Caller {
        actor: Actor::Mtls { subject, serial },
        role,
    })
}
