//! Certificate pinning: rustls verifiers that trust a peer because the SHA-256 of its
//! certificate is one we were told to expect, not because a CA signed it.
//!
//! Both verifiers still check the TLS 1.3 handshake signature with the crypto provider's
//! algorithms, so a peer must hold the private key of the certificate it presents: copying a
//! certificate is not enough to impersonate its owner. TLS 1.2 is refused (QUIC requires 1.3
//! anyway). Names, dates and intermediates in the certificate are ignored: the pin is the
//! whole of the trust decision.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::ids::CertFingerprint;
use crate::quic::certs::fingerprint_of;

/// A set of pinned peer fingerprints that can change while an endpoint runs: the coordinator
/// admits and removes members, and a worker's endpoint accepts exactly the current members.
///
/// Clones share the same set. A change applies to handshakes that start afterwards;
/// established connections are not re-checked (close them to evict a peer).
#[derive(Clone, Default)]
pub struct PinSet(Arc<RwLock<BTreeSet<CertFingerprint>>>);

impl PinSet {
    /// An empty set: every peer is refused until one is inserted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins `fingerprint`; returns whether it was new.
    pub fn insert(&self, fingerprint: CertFingerprint) -> bool {
        // A poisoned lock only means another thread panicked mid-update of a plain set;
        // the set itself is still a valid set.
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(fingerprint)
    }

    /// Unpins `fingerprint`; returns whether it was there.
    pub fn remove(&self, fingerprint: &CertFingerprint) -> bool {
        self.0.write().unwrap_or_else(PoisonError::into_inner).remove(fingerprint)
    }

    /// Whether `fingerprint` is pinned.
    pub fn contains(&self, fingerprint: &CertFingerprint) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(fingerprint)
    }

    /// The pinned fingerprints, in ascending order.
    pub fn to_vec(&self) -> Vec<CertFingerprint> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }
}

impl FromIterator<CertFingerprint> for PinSet {
    fn from_iter<I: IntoIterator<Item = CertFingerprint>>(iter: I) -> Self {
        Self(Arc::new(RwLock::new(iter.into_iter().collect())))
    }
}

impl fmt::Debug for PinSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.to_vec().iter().map(ToString::to_string)).finish()
    }
}

/// Which client certificates a server endpoint accepts. A client certificate is always
/// required; a client that presents none is refused in either mode.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// Any certificate whose key signs the handshake (the coordinator: it learns who a
    /// newcomer is from its fingerprint, read with
    /// [`peer_fingerprint`](crate::quic::peer_fingerprint), and admits it on the join secret).
    AcceptAny,
    /// Only certificates in the set (worker-to-worker links: peers the coordinator announced).
    Pinned(PinSet),
}

/// The rustls error for "this certificate is not the one pinned".
#[derive(Debug)]
struct NotPinned(String);

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPinned {}

fn not_pinned(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NotPinned(
        message,
    )))))
}

/// The handshake-signature methods both verifiers share (the server and the client verifier
/// traits declare the same three): TLS 1.2 is refused, TLS 1.3 signatures are checked with
/// the `provider` field's algorithms.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
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
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    };
}

/// Client side: accepts exactly one server certificate. One is built per connection, so the
/// fingerprint a mismatching server presented can be reported in a typed error afterwards.
#[derive(Debug)]
pub(crate) struct ServerPin {
    pinned: CertFingerprint,
    provider: Arc<CryptoProvider>,
    mismatch: Mutex<Option<CertFingerprint>>,
}

impl ServerPin {
    pub(crate) fn new(pinned: CertFingerprint, provider: Arc<CryptoProvider>) -> Self {
        Self { pinned, provider, mismatch: Mutex::new(None) }
    }

    /// The fingerprint the server presented, if it was not the pinned one.
    pub(crate) fn mismatch(&self) -> Option<CertFingerprint> {
        *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ServerCertVerifier for ServerPin {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint_of(end_entity);
        if presented == self.pinned {
            return Ok(ServerCertVerified::assertion());
        }
        *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner) = Some(presented);
        Err(not_pinned(format!(
            "certificate fingerprint {presented} does not match the pinned {}",
            self.pinned
        )))
    }

    signature_checks!();
}

/// Server side: requires a client certificate and applies a [`ClientAuth`] policy to it.
#[derive(Debug)]
pub(crate) struct ClientCheck {
    auth: ClientAuth,
    provider: Arc<CryptoProvider>,
}

impl ClientCheck {
    pub(crate) fn new(auth: ClientAuth, provider: Arc<CryptoProvider>) -> Self {
        Self { auth, provider }
    }
}

impl ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA: the client sends its only certificate whatever we hint.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.auth {
            ClientAuth::AcceptAny => Ok(ClientCertVerified::assertion()),
            ClientAuth::Pinned(set) => {
                let presented = fingerprint_of(end_entity);
                if set.contains(&presented) {
                    Ok(ClientCertVerified::assertion())
                } else {
                    Err(not_pinned(format!(
                        "client certificate fingerprint {presented} is not a pinned peer"
                    )))
                }
            }
        }
    }

    signature_checks!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::certs::NodeIdentity;
    use crate::quic::tls::crypto_provider;

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn server_pin_accepts_only_the_pinned_certificate() {
        let good = NodeIdentity::generate("good").unwrap();
        let bad = NodeIdentity::generate("bad").unwrap();
        let pin = ServerPin::new(good.fingerprint(), crypto_provider());
        let name = ServerName::try_from("meridian").unwrap();
        assert!(pin.verify_server_cert(good.certificate_der(), &[], &name, &[], now()).is_ok());
        assert_eq!(pin.mismatch(), None);
        let err = pin.verify_server_cert(bad.certificate_der(), &[], &name, &[], now());
        let message = err.unwrap_err().to_string();
        assert!(message.contains(&bad.fingerprint().to_string()), "{message}");
        assert!(message.contains(&good.fingerprint().to_string()), "{message}");
        assert_eq!(pin.mismatch(), Some(bad.fingerprint()));
    }

    #[test]
    fn client_check_modes() {
        let member = NodeIdentity::generate("member").unwrap();
        let stranger = NodeIdentity::generate("stranger").unwrap();
        let any = ClientCheck::new(ClientAuth::AcceptAny, crypto_provider());
        assert!(any.client_auth_mandatory());
        assert!(any.verify_client_cert(stranger.certificate_der(), &[], now()).is_ok());

        let set: PinSet = [member.fingerprint()].into_iter().collect();
        let pinned = ClientCheck::new(ClientAuth::Pinned(set.clone()), crypto_provider());
        assert!(pinned.verify_client_cert(member.certificate_der(), &[], now()).is_ok());
        assert!(pinned.verify_client_cert(stranger.certificate_der(), &[], now()).is_err());
        // The set is live: admitting the stranger later lets its next handshake through.
        assert!(set.insert(stranger.fingerprint()));
        assert!(pinned.verify_client_cert(stranger.certificate_der(), &[], now()).is_ok());
        assert!(set.remove(&member.fingerprint()));
        assert!(pinned.verify_client_cert(member.certificate_der(), &[], now()).is_err());
    }
}
