//! citd's TLS: a rustls acceptor whose certificates, key and client CA are read again on
//! SIGHUP (or a file change) without dropping open connections, since each connection keeps
//! the configuration it was accepted with; client certificates are optional at the handshake
//! (people use tokens) and, when presented, must chain to the client CA with the ClientAuth
//! usage. And the identity a unit's certificate carries.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{GATEWAY_URI, Kind, Principal, Roles, UNIT_URI, Via};

/// The TLS files as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// citd's certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CA certificates units' and gateways' client certificates must chain to, PEM. Unset:
    /// no client certificates (units cannot connect).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// A rustls server configuration from the files.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca.display()))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The acceptor of the configuration in force; [`Reloadable::reload`] replaces it for the
/// connections accepted from then on.
pub struct Reloadable {
    files: TlsFiles,
    current: RwLock<(TlsAcceptor, Vec<Option<SystemTime>>)>,
}

fn modified(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

impl std::fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloadable")
            .field("files", &self.files)
            .finish()
    }
}

impl Reloadable {
    pub fn load(files: TlsFiles) -> Result<Reloadable, String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&files)?));
        let stamps = modified(&files);
        Ok(Reloadable {
            files,
            current: RwLock::new((acceptor, stamps)),
        })
    }

    fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(c) => c.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        }
    }

    /// Reads the files again. A configuration that does not load leaves the one in force.
    pub fn reload(&self) -> Result<(), String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&self.files)?));
        let stamps = modified(&self.files);
        match self.current.write() {
            Ok(mut c) => *c = (acceptor, stamps),
            Err(p) => *p.into_inner() = (acceptor, stamps),
        }
        Ok(())
    }

    /// True when a file changed since the last load.
    pub fn changed(&self) -> bool {
        let now = modified(&self.files);
        match self.current.read() {
            Ok(c) => c.1 != now,
            Err(p) => p.into_inner().1 != now,
        }
    }
}

/// Accepted TLS connections of `listener`: each handshake runs in a task of its own (a slow
/// client holds up nobody), with a deadline; failures are counted and logged, not fatal.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloadable>,
    failed: prometheus_client::metrics::counter::Counter,
) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            let failed = failed.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        failed.inc();
                        tracing::info!(%peer, cause = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        failed.inc();
                        tracing::info!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The unit or gateway a verified client certificate names (its first `urn:cit:unit:` or
/// `urn:cit:gateway:` SAN URI). The chain was verified in the handshake.
pub fn principal_of(cert: &CertificateDer<'_>) -> Result<Principal, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| "the client certificate does not parse".to_string())?;
    let sans = parsed
        .subject_alternative_name()
        .map_err(|_| "the client certificate's subject alternative names do not parse")?;
    let fingerprint = cit_store::chain::to_hex(&sha2::Sha256::digest(cert.as_ref()));
    for name in sans.iter().flat_map(|s| s.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            let (kind, id) = if let Some(id) = uri.strip_prefix(UNIT_URI) {
                (Kind::Unit, id)
            } else if let Some(id) = uri.strip_prefix(GATEWAY_URI) {
                (Kind::Gateway, id)
            } else {
                continue;
            };
            if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
                return Err(
                    "the client certificate's unit id is empty, too long or not text".into(),
                );
            }
            return Ok(Principal {
                id: id.to_string(),
                kind,
                roles: Roles::of(&[match kind {
                    Kind::Gateway => super::Role::Gateway,
                    _ => super::Role::Unit,
                }]),
                via: Via::Certificate { fingerprint },
            });
        }
    }
    Err(format!(
        "the client certificate names no unit (a SAN URI {UNIT_URI}<id> or {GATEWAY_URI}<id>)"
    ))
}
