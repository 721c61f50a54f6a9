//! rustls configurations for Meridian's QUIC links, wrapped for quinn.
//!
//! One explicit crypto provider (ring) is passed to every builder, so nothing depends on a
//! process-wide default provider being installed. TLS 1.3 only; session resumption is off on
//! both sides, because a resumed TLS 1.3 session skips certificate verification and would
//! let a connection bypass its pin.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::NoServerSessionStorage;

use crate::quic::certs::NodeIdentity;
use crate::quic::error::TlsError;
use crate::quic::verify::{ClientAuth, ClientCheck};

/// The ALPN protocol id: a QUIC peer that does not speak it fails the handshake early.
pub(crate) const ALPN: &[u8] = b"meridian/1";

/// The server name clients send. Certificates are pinned, not matched to names, so every
/// peer is addressed by this one name.
pub(crate) const SERVER_NAME: &str = "meridian";

/// The one crypto provider Meridian uses.
pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client crypto that trusts the server through `verifier` and authenticates with `identity`.
/// `identity` is optional only so tests can show that a certificate-less client is refused.
pub(crate) fn client_crypto(
    identity: Option<&NodeIdentity>,
    verifier: Arc<dyn ServerCertVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<QuicClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.certificate_der().clone()], id.private_key())
            .map_err(TlsError::Config)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = Resumption::disabled();
    QuicClientConfig::try_from(Arc::new(config)).map_err(|e| TlsError::QuicCrypto(e.to_string()))
}

/// Server crypto presenting `identity` and checking client certificates by `auth`.
pub(crate) fn server_crypto(
    identity: &NodeIdentity,
    auth: ClientAuth,
) -> Result<QuicServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(ClientCheck::new(auth, provider.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate_der().clone()], identity.private_key())
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    QuicServerConfig::try_from(Arc::new(config)).map_err(|e| TlsError::QuicCrypto(e.to_string()))
}
