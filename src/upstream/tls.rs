//! TLS to upstream registries, the way Docker and containerd do it: the
//! web's root CAs, plus per registry a `certDir` in Docker's `certs.d`
//! layout (`*.crt` are extra CAs, a `*.cert` with its `*.key` is the client
//! certificate for mutual TLS), or no verification at all with
//! `tlsVerify: false`.

use std::path::Path;
use std::sync::Arc;

use crate::config::ConfigError;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Builds the client TLS configuration for one registry.
pub fn client_config(
    tls_verify: bool,
    cert_dir: Option<&Path>,
) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut client_pair = None;
    if let Some(dir) = cert_dir {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("certDir {}: {e}", dir.display()))?;
        let mut names: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for path in names {
            match path.extension().and_then(|e| e.to_str()) {
                Some("crt") => {
                    for cert in CertificateDer::pem_file_iter(&path)
                        .map_err(|e| format!("CA file {}: {e}", path.display()))?
                    {
                        let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("CA file {}: {e}", path.display()))?;
                    }
                }
                Some("cert") => {
                    let key = path.with_extension("key");
                    let certs = CertificateDer::pem_file_iter(&path)
                        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| format!("client certificate {}: {e}", path.display()))?;
                    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| {
                        format!("client key {} (for {}): {e}", key.display(), path.display())
                    })?;
                    client_pair = Some((certs, key));
                }
                _ => {}
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls_verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    match client_pair {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| ConfigError(format!("client certificate: {e}"))),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `tlsVerify: false`: any certificate is accepted, but the handshake's
/// signatures are still checked (so the connection is at least encrypted
/// to whoever holds the presented key).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
