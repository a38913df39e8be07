//! The HTTPS listener's certificate, reloaded when its files change.
//!
//! Certificates rotate (cert-manager, ACME, a Kubernetes secret swapped
//! under a mounted volume), and a cache in front of every node's pulls
//! should not need a restart for it. [`CertStore`] answers each handshake
//! with the current certificate; [`CertStore::reload_if_changed`], run on an
//! interval, loads the files again when their size or modification time
//! changed. A half-rotated pair (new certificate, old key) fails the
//! key-match check and is not taken: the old certificate stays in use and
//! the next tick tries again.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::ListenerTls;

/// What a file looked like when it was read.
type Stamp = Option<(SystemTime, u64)>;

/// The certificate in use, and where it came from.
#[derive(Debug)]
pub struct CertStore {
    files: ListenerTls,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Stamp, Stamp)>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

impl CertStore {
    pub fn load(files: &ListenerTls) -> std::io::Result<Arc<CertStore>> {
        let stamps = (stamp(&files.cert), stamp(&files.key));
        let key = read_pair(files)?;
        Ok(Arc::new(CertStore {
            files: files.clone(),
            current: RwLock::new(Arc::new(key)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Reads the files again if they changed since the last read. `Ok(true)`
    /// when a new certificate is now in use.
    pub fn reload_if_changed(&self) -> std::io::Result<bool> {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        let mut seen = self.stamps.lock().expect("stamp lock");
        if *seen == now {
            return Ok(false);
        }
        let key = read_pair(&self.files)?;
        *self.current.write().expect("cert lock") = Arc::new(key);
        *seen = now;
        Ok(true)
    }

    /// The end-entity certificate being served (DER).
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        self.current.read().expect("cert lock").cert[0].clone()
    }

    /// A rustls acceptor that asks this store on every handshake; HTTP/2
    /// and HTTP/1.1 by ALPN.
    /// With `cacert`, every client must show a certificate from its CAs.
    pub fn acceptor(self: &Arc<Self>) -> std::io::Result<tokio_rustls::TlsAcceptor> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("http.tls: protocol versions: {e}")))?;
        let builder = match &self.files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let bad = |e: String| invalid(format!("http.tls.cacert {}: {e}", path.display()));
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                    roots
                        .add(cert.map_err(|e| bad(e.to_string()))?)
                        .map_err(|e| bad(e.to_string()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| bad(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// Reads and checks a certificate chain and its key.
fn read_pair(t: &ListenerTls) -> std::io::Result<CertifiedKey> {
    let certs = CertificateDer::pem_file_iter(&t.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("http.tls: certificate {}: {e}", t.cert.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "http.tls: certificate {} holds no certificate",
            t.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| invalid(format!("http.tls: key {}: {e}", t.key.display())))?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        invalid(format!(
            "http.tls: certificate {} and key {} do not go together: {e}",
            t.cert.display(),
            t.key.display()
        ))
    })
}

/// Checks the certificate files every `every` and loads them when they
/// changed (certificate renewal without a restart); runs until dropped.
pub async fn reload_loop(certs: Arc<CertStore>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = certs.clone();
        match tokio::task::spawn_blocking(move || c.reload_if_changed()).await {
            Ok(Ok(true)) => tracing::info!("TLS certificate reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "TLS certificate files changed but cannot be used; keeping the current certificate")
            }
            Err(_) => {}
        }
    }
}
