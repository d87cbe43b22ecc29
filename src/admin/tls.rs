//! The mTLS admin listener for remote automation (`[admin.https]`): the
//! same routes and role table as the Unix socket, over TLS on TCP.
//!
//! Who the caller is:
//! 1. rustls verifies the client certificate against `client_ca` (chain,
//!    validity, the clientAuth extended key usage). No certificate, no
//!    connection: the handshake fails. Sessions are never resumed, so
//!    every connection is verified in full.
//! 2. At every request that needs a role, castellan looks the certificate
//!    up in its own store by serial. It must be a certificate castellan
//!    issued (the same DER), in state `issued` (not revoked, not
//!    possibly-issued), under a profile that
//!    [`TlsSettings::profile_roles`] (`admin.https.roles`) maps to a role.
//!    Otherwise the peer has no role: only `/healthz` and `/readyz` answer
//!    it, like an unknown uid on the socket. The actor is
//!    [`Actor::Mtls`] with the certificate's subject and serial.
//!
//! Because the lookup is made per request, a revocation or a reloaded role
//! mapping applies to the next request, also on an open keep-alive
//! connection. A reloaded certificate, key or client CA applies to new
//! connections; one connection lives at most
//! [`TlsSettings::max_connection_age`], so none keeps the old ones for long.

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
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::{AdminBackend, AdminSettings, Call, Identify, Peer, Shared, accept_loop, serve_http};
use crate::api::{CertView, Role};
use crate::config::{AdminHttps, ConfigError};
use crate::daemon::Caller;
use crate::events::Actor;

/// Longest life of one mTLS connection when castellan's configuration
/// starts the listener.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// Settings of the mTLS listener (mapped from `[admin.https]`).
#[derive(Clone)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    /// From [`server_config`].
    pub server_config: Arc<rustls::ServerConfig>,
    /// Issuance profile of a client certificate → the role it carries,
    /// e.g. "admin-client" → operator.
    pub profile_roles: HashMap<String, Role>,
    /// Longest time one connection is served (see the module doc).
    pub max_connection_age: Duration,
}

impl TlsSettings {
    /// The listener's settings from castellan's configuration: reads and
    /// checks the certificate, key and client CA files. Errors name the key
    /// whose file is at fault.
    pub fn from_config(https: &AdminHttps) -> Result<TlsSettings, ConfigError> {
        let server_config =
            build_server_config(&https.certificate, &https.private_key, &https.client_ca).map_err(
                |(key, e)| ConfigError {
                    key: key.to_string(),
                    problem: e.to_string(),
                },
            )?;
        Ok(TlsSettings {
            listen: https.listen,
            server_config,
            profile_roles: https.roles.iter().map(|(p, r)| (p.clone(), *r)).collect(),
            max_connection_age: MAX_CONNECTION_AGE,
        })
    }
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
    build_server_config(certificate, private_key, client_ca).map_err(|(_, e)| e)
}

/// [`server_config`], with the configuration key of the file at fault.
fn build_server_config(
    certificate: &Path,
    private_key: &Path,
    client_ca: &Path,
) -> Result<Arc<rustls::ServerConfig>, (&'static str, io::Error)> {
    const CERT: &str = "admin.https.certificate";
    const KEY: &str = "admin.https.private_key";
    const CLIENT_CA: &str = "admin.https.client_ca";
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let what = "client CA certificates";
    let ca_err = |e: &dyn std::fmt::Display| (CLIENT_CA, bad_file(client_ca, what, e));
    for c in CertificateDer::pem_file_iter(client_ca).map_err(|e| ca_err(&e))? {
        let c = c.map_err(|e| ca_err(&e))?;
        roots.add(c).map_err(|e| ca_err(&e))?;
    }
    if roots.is_empty() {
        return Err(ca_err(&"no certificate in the file"));
    }
    // Without `allow_unauthenticated`: a client without a certificate fails
    // the handshake.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ca_err(&e))?;
    let what = "the listener's certificate chain";
    let chain = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| (CERT, bad_file(certificate, what, e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (CERT, bad_file(certificate, what, e)))?;
    if chain.is_empty() {
        return Err((
            CERT,
            bad_file(certificate, what, "no certificate in the file"),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(private_key)
        .map_err(|e| (KEY, bad_file(private_key, "the listener's private key", e)))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| (CERT, io::Error::other(format!("TLS versions: {e}"))))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            (
                KEY,
                bad_file(
                    private_key,
                    "the listener's private key",
                    format!("does not go with {}: {e}", certificate.display()),
                ),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session resumption: a resumed session carries the client
    // certificate of its first handshake without verifying it again, and
    // each resumption hands out new tickets, so a certificate that has
    // expired since (or no longer chains to a reloaded client CA) would go
    // on working. Every connection makes a full handshake instead.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Serves the admin API over mTLS on `tls.listen` until `shutdown`
/// completes. Both settings are either fixed (`Arc<…>`) or a [`Shared`]
/// that a reload replaces; the listen address is read once.
pub async fn serve_tls<B: AdminBackend>(
    backend: Arc<B>,
    settings: impl Into<Shared<AdminSettings>>,
    tls: impl Into<Shared<TlsSettings>>,
    shutdown: impl Future,
) -> io::Result<()> {
    let tls = tls.into();
    let listen = tls.current().listen;
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {listen} (admin.https.listen): {e}"),
        )
    })?;
    tracing::info!(%listen, "admin API (mTLS) listening");
    serve_tls_listener(backend, settings, tls, listener, shutdown).await;
    Ok(())
}

/// The accept loop of [`serve_tls`] on a bound listener.
pub async fn serve_tls_listener<B: AdminBackend>(
    backend: Arc<B>,
    settings: impl Into<Shared<AdminSettings>>,
    tls: impl Into<Shared<TlsSettings>>,
    listener: TcpListener,
    shutdown: impl Future,
) {
    let (settings, tls) = (settings.into(), tls.into());
    let s = settings.clone();
    accept_loop(
        "admin mTLS",
        listener,
        &settings,
        shutdown,
        move |stream: TcpStream, addr, stop, permit| {
            connection(
                backend.clone(),
                s.clone(),
                tls.clone(),
                stream,
                addr,
                stop,
                permit,
            )
        },
    )
    .await;
}

async fn connection<B: AdminBackend>(
    backend: Arc<B>,
    settings: Shared<AdminSettings>,
    tls: Shared<TlsSettings>,
    stream: TcpStream,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    // The certificate, key and client CA in force when the client connected.
    let now = tls.current();
    let header_timeout = settings.current().header_timeout;
    let acceptor = tokio_rustls::TlsAcceptor::from(now.server_config.clone());
    // A client that stops reading is cut off, in the handshake or later.
    let stream = super::WriteStall::new(stream, header_timeout);
    let stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
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
    let peer = CertPeer {
        backend: backend.clone(),
        tls,
        cert: ClientCert::parse(presented, addr),
    };
    let (age_tx, age_rx) = watch::channel(false);
    let mut outer = stop;
    let age = now.max_connection_age;
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

/// The client certificate rustls verified, as presented.
struct ClientCert {
    der: Vec<u8>,
    subject: String,
    /// Without leading zero octets, as castellan records serials.
    serial: Vec<u8>,
}

impl ClientCert {
    /// `Err((who, why))` when there is no usable certificate.
    fn parse(der: Option<Vec<u8>>, addr: SocketAddr) -> Result<ClientCert, (String, String)> {
        use der::Decode;
        let who = || format!("mtls client {addr}");
        let Some(der) = der else {
            return Err((who(), "a client certificate is required".into()));
        };
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| (who(), format!("the client certificate does not parse: {e}")))?;
        let mut serial = cert.tbs_certificate().serial_number().as_bytes();
        while serial.len() > 1 && serial[0] == 0 {
            serial = &serial[1..];
        }
        let serial = serial.to_vec();
        let subject = cert.tbs_certificate().subject().to_string();
        Ok(ClientCert {
            der,
            subject,
            serial,
        })
    }
}

/// A peer authenticated by a client certificate; its role comes from
/// castellan's record of the certificate at each request.
struct CertPeer<B> {
    backend: Arc<B>,
    tls: Shared<TlsSettings>,
    cert: Result<ClientCert, (String, String)>,
}

impl<B: AdminBackend> Identify for CertPeer<B> {
    fn who(&self) -> String {
        match &self.cert {
            Ok(c) => format!("mtls:{} (serial {})", c.subject, hex::encode(&c.serial)),
            Err((who, _)) => who.clone(),
        }
    }

    async fn peer(&self, _settings: &AdminSettings) -> Peer {
        let c = match &self.cert {
            Ok(c) => c,
            Err((who, why)) => {
                return Peer::Unknown {
                    who: who.clone(),
                    why: why.clone(),
                };
            }
        };
        let refuse = |why: String| Peer::Unknown {
            who: self.who(),
            why,
        };
        let serial_hex = hex::encode(&c.serial);
        let system = Caller {
            actor: Actor::System,
            role: Role::Auditor,
        };
        let record = self
            .backend
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
                return refuse(format!(
                    "castellan has no usable record of client certificate {serial_hex}: {}",
                    e.message
                ));
            }
        };
        let same = view
            .certificate_pem
            .as_deref()
            .and_then(|p| crate::pem::decode(p.as_bytes(), &["CERTIFICATE"]).ok())
            .is_some_and(|d| d == c.der);
        if !same {
            return refuse(format!(
                "client certificate {serial_hex} is not one castellan issued"
            ));
        }
        if view.state != "issued" {
            return refuse(format!(
                "client certificate {serial_hex} is {}; issue a new one",
                view.state
            ));
        }
        // Checked at every request, not only at the handshake: a connection
        // may outlive its certificate.
        if let Some(problem) = outside_validity(&c.der, std::time::SystemTime::now()) {
            return refuse(format!(
                "client certificate {serial_hex} {problem}; issue a new one"
            ));
        }
        let Some(role) = self.tls.current().profile_roles.get(&view.profile).copied() else {
            return refuse(format!(
                "client certificate {serial_hex} was issued under profile {:?}, which carries \
                 no admin role ([admin.https] roles)",
                view.profile
            ));
        };
        Peer::Known(Caller {
            actor: Actor::Mtls {
                subject: c.subject.clone(),
                serial: c.serial.clone(),
            },
            role,
        })
    }
}

/// Why a certificate is not valid at `now` (notAfter is its last valid
/// second), or `None` when it is. A certificate that does not parse is
/// refused too.
fn outside_validity(der: &[u8], now: std::time::SystemTime) -> Option<String> {
    use der::Decode;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return Some("does not parse".into());
    };
    let v = cert.tbs_certificate().validity();
    if now < v.not_before.to_system_time() {
        return Some(format!("is not valid before {}", v.not_before));
    }
    // notAfter is inclusive: valid through its whole second.
    if now >= v.not_after.to_system_time() + Duration::from_secs(1) {
        return Some(format!("expired at {}", v.not_after));
    }
    None
}

#[cfg(test)]
mod validity_tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn cert(not_before: u64, not_after: u64) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["client.test".into()]).expect("params");
        p.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_before);
        p.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after);
        let key = rcgen::KeyPair::generate().expect("key");
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn a_client_certificate_is_valid_through_its_last_second_and_not_after() {
        let der = cert(1_800_000_000, 1_800_000_100);
        assert!(
            outside_validity(&der, at(1_799_999_999))
                .is_some_and(|m| m.contains("not valid before"))
        );
        assert_eq!(outside_validity(&der, at(1_800_000_000)), None);
        assert_eq!(outside_validity(&der, at(1_800_000_100)), None);
        assert!(outside_validity(&der, at(1_800_000_101)).is_some_and(|m| m.contains("expired")));
        assert!(outside_validity(b"garbage", at(1_800_000_050)).is_some());
    }
}
