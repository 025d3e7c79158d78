//! The server's TLS identity: a fresh self-signed certificate per start, as
//! upstream's server makes one.
//!
//! Nobody needs to trust it in advance: its PEM and SHA-256 digest travel in
//! every heartbeat (or through kiln's own scheduler API), and the scheduler and
//! clients add it as a trusted root for exactly this server. Subject CN is
//! `public_addr`, the one SAN is its IP, it is not a CA, and it is good for
//! `serverAuth`: what rustls (sccache 0.19's client) checks.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the server certificate failed")]
    Generate(#[from] rcgen::Error),
    #[error("setting up TLS failed")]
    Rustls(#[from] rustls::Error),
    #[error("the certificate PEM is invalid")]
    Pem(#[from] rustls::pki_types::pem::Error),
}

/// The certificate and key this process serves HTTPS with.
pub struct ServerCert {
    pub cert_pem: Vec<u8>,
    /// SHA-256 of the certificate's DER, as the heartbeat and `alloc_job` carry it.
    pub cert_digest: Vec<u8>,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl ServerCert {
    /// A new ECDSA P-256 certificate for `public_addr` (ring cannot make RSA keys,
    /// and every TLS stack the sccache tools use accepts P-256).
    pub fn generate(public_addr: SocketAddr) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, public_addr.to_string());
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::IpAddress(public_addr.ip())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        let cert_digest = ring::digest::digest(&ring::digest::SHA256, &cert_der).as_ref().to_vec();
        Ok(ServerCert { cert_pem: cert.pem().into_bytes(), cert_digest, cert_der, key_der: key.serialize_der() })
    }

    /// The rustls configuration actix-web serves with (HTTP/1.1 only).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], key)?)
    }
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").field("cert_digest_len", &self.cert_digest.len()).finish_non_exhaustive()
    }
}

/// A client configuration that trusts exactly the certificates in `pem`, as an
/// sccache client trusts the server certificates its scheduler hands out.
pub fn client_config_trusting(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_the_public_ip_and_digest_is_sha256_of_der() {
        let cert = ServerCert::generate("10.1.2.3:10501".parse().unwrap()).unwrap();
        assert_eq!(cert.cert_digest.len(), 32);
        let der = CertificateDer::from_pem_slice(&cert.cert_pem).unwrap();
        assert_eq!(ring::digest::digest(&ring::digest::SHA256, &der).as_ref(), &cert.cert_digest[..]);
        cert.server_config().unwrap();
        client_config_trusting(&cert.cert_pem).unwrap();
        // A fresh key per start, so a new certificate every time.
        let again = ServerCert::generate("10.1.2.3:10501".parse().unwrap()).unwrap();
        assert_ne!(again.cert_digest, cert.cert_digest);
    }
}
