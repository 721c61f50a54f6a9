//! This node's TLS identity: a self-signed certificate, its private key, and the SHA-256
//! fingerprint of the certificate that peers pin.
//!
//! There is no certificate authority: trust comes from the fingerprint travelling out of band
//! (the coordinator's in the join string, the workers' from the coordinator after admission).
//! The certificate's names and validity dates are therefore never checked; only the key
//! matters. A coordinator that restarts must keep its identity, or every worker's pin breaks:
//! [`NodeIdentity::load_or_generate`] keeps it in two PEM files.

use std::fmt;
use std::fs;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::ids::CertFingerprint;
use crate::quic::error::TlsError;
use crate::quic::tls::crypto_provider;

/// File name of the certificate inside an identity folder.
pub const CERT_FILE: &str = "node-cert.pem";
/// File name of the private key inside an identity folder (written with mode 0600 on Unix).
pub const KEY_FILE: &str = "node-key.pem";

/// SHA-256 of a DER-encoded certificate: what peers compare against their pin.
pub fn fingerprint_of(cert_der: &[u8]) -> CertFingerprint {
    CertFingerprint(Sha256::digest(cert_der).into())
}

/// A certificate and its private key, with the certificate's fingerprint.
///
/// `Debug` never prints the key.
pub struct NodeIdentity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    cert_pem: String,
    key_pem: String,
    fingerprint: CertFingerprint,
    /// Seed for the endpoint's own randomness (connection ids, greasing), set only by
    /// [`NodeIdentity::deterministic`].
    rng_seed: Option<[u8; 32]>,
}

impl NodeIdentity {
    /// A fresh ECDSA P-256 key and a self-signed certificate naming `name` (subject CN and
    /// DNS SAN; informational only). `name` must be ASCII.
    pub fn generate(name: &str) -> Result<Self, TlsError> {
        let fail = |source| TlsError::Generate { name: name.to_owned(), source };
        let key_pair = rcgen::KeyPair::generate().map_err(fail)?;
        Self::self_signed(name, key_pair).map_err(fail)
    }

    /// An Ed25519 identity derived from `seed` alone, for simulated runs that must replay
    /// byte for byte: the same seed gives the same key, certificate and fingerprint (Ed25519
    /// signatures are deterministic too), and an endpoint built with it seeds QUIC's random
    /// choices from the seed as well. Anyone who knows the seed holds the key: never use it
    /// on a real network.
    pub fn deterministic(name: &str, seed: [u8; 32]) -> Result<Self, TlsError> {
        let fail = |source| TlsError::Generate { name: name.to_owned(), source };
        // PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410): a fixed prefix, then the seed.
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let pkcs8 = PrivatePkcs8KeyDer::from(der);
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
            .map_err(fail)?;
        let mut identity = Self::self_signed(name, key_pair).map_err(fail)?;
        let mut rng_seed = seed;
        // A different stream than the key's, so the two never coincide.
        for b in &mut rng_seed {
            *b ^= 0x5a;
        }
        identity.rng_seed = Some(rng_seed);
        Ok(identity)
    }

    fn self_signed(name: &str, key_pair: rcgen::KeyPair) -> Result<Self, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key_pair)?;
        let key = PrivatePkcs8KeyDer::from(key_pair.serialize_der());
        Ok(Self {
            fingerprint: fingerprint_of(cert.der()),
            cert: cert.der().clone(),
            key: key.into(),
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
            rng_seed: None,
        })
    }

    /// The seed for the endpoint's randomness, for a [`deterministic`](Self::deterministic)
    /// identity.
    pub fn rng_seed(&self) -> Option<[u8; 32]> {
        self.rng_seed
    }

    /// The key that signs this node's QUIC stateless resets: derived from its private key,
    /// so a restarted node with the same identity can tell its old peers at once that their
    /// connections are gone (they would otherwise wait out the idle timeout), and nobody
    /// without the key can.
    pub fn stateless_reset_key(&self) -> [u8; 32] {
        let mut hash = blake3::Hasher::new_derive_key("meridian 2026 QUIC stateless reset key");
        hash.update(self.key.secret_der());
        *hash.finalize().as_bytes()
    }

    /// An identity from PEM text: the first certificate of `cert_pem` and the first private
    /// key of `key_pem` (PKCS#8, SEC1 or PKCS#1). Fails unless the key belongs to the
    /// certificate, so a mixed-up pair is caught here rather than as a failed handshake.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Pem { what: "certificate PEM".into(), reason: e.to_string() })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Pem { what: "private key PEM".into(), reason: e.to_string() })?;
        CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &crypto_provider())
            .map_err(TlsError::Config)?;
        Ok(Self {
            fingerprint: fingerprint_of(&cert),
            cert,
            key,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            rng_seed: None,
        })
    }

    /// Reads `dir/`[`CERT_FILE`] and `dir/`[`KEY_FILE`].
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(&dir.join(CERT_FILE))?;
        let key_pem = read(&dir.join(KEY_FILE))?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// Writes the identity into `dir` (created if needed). Each file is written to a
    /// temporary name and renamed, so a crash never leaves half a key behind; the key file
    /// is readable by its owner only.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;
        write_atomically(&dir.join(KEY_FILE), &self.key_pem, true)?;
        write_atomically(&dir.join(CERT_FILE), &self.cert_pem, false)
    }

    /// The identity stored in `dir`, or a new one (named `name`) saved there when `dir` holds
    /// none. Refuses to replace a folder that holds only one of the two files.
    pub fn load_or_generate(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let has_cert = cert_path.try_exists().map_err(|e| io_err(&cert_path, e))?;
        let has_key = key_path.try_exists().map_err(|e| io_err(&key_path, e))?;
        match (has_cert, has_key) {
            (true, true) => {
                let identity = Self::load(dir)?;
                tracing::info!(dir = %dir.display(), fingerprint = %identity.fingerprint, "loaded node identity");
                Ok(identity)
            }
            (false, false) => {
                let identity = Self::generate(name)?;
                identity.save(dir)?;
                tracing::info!(dir = %dir.display(), fingerprint = %identity.fingerprint, "generated node identity");
                Ok(identity)
            }
            (true, false) => {
                Err(TlsError::IncompleteIdentity { dir: dir.to_owned(), missing: key_path })
            }
            (false, true) => {
                Err(TlsError::IncompleteIdentity { dir: dir.to_owned(), missing: cert_path })
            }
        }
    }

    /// SHA-256 of the certificate: what peers pin.
    pub fn fingerprint(&self) -> CertFingerprint {
        self.fingerprint
    }

    /// The DER-encoded certificate.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate as PEM text.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            fingerprint: self.fingerprint,
            rng_seed: self.rng_seed,
        }
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io { path: path.to_owned(), source }
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|e| io_err(path, e))
}

fn write_atomically(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    crate::fsutil::write_atomically(path, contents.as_bytes(), private)
        .map_err(|(p, e)| io_err(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("meridian-comm-certs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn fingerprint_is_sha256_of_the_der() {
        let id = NodeIdentity::generate("coordinator").unwrap();
        let expected: [u8; 32] = Sha256::digest(id.certificate_der().as_ref()).into();
        assert_eq!(id.fingerprint().0, expected);
        let other = NodeIdentity::generate("coordinator").unwrap();
        assert_ne!(id.fingerprint(), other.fingerprint(), "each identity has its own key");
    }

    #[test]
    fn a_deterministic_identity_depends_on_its_seed_only() {
        let a = NodeIdentity::deterministic("w0", [7; 32]).unwrap();
        let b = NodeIdentity::deterministic("w0", [7; 32]).unwrap();
        let c = NodeIdentity::deterministic("w0", [8; 32]).unwrap();
        assert_eq!(a.certificate_der(), b.certificate_der());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert!(a.rng_seed().is_some() && a.rng_seed() != Some([7; 32]));
        assert!(NodeIdentity::generate("w0").unwrap().rng_seed().is_none());
        // It is a usable TLS identity: the key matches the certificate.
        let back = NodeIdentity::from_pem(a.certificate_pem(), &a.key_pem).unwrap();
        assert_eq!(back.fingerprint(), a.fingerprint());
    }

    #[test]
    fn pem_round_trip_keeps_the_fingerprint() {
        let id = NodeIdentity::generate("w1").unwrap();
        let back = NodeIdentity::from_pem(&id.cert_pem, &id.key_pem).unwrap();
        assert_eq!(back.fingerprint(), id.fingerprint());
        assert_eq!(back.private_key().secret_der(), id.private_key().secret_der());
    }

    #[test]
    fn mismatched_key_and_certificate_are_refused() {
        let a = NodeIdentity::generate("a").unwrap();
        let b = NodeIdentity::generate("b").unwrap();
        let err = NodeIdentity::from_pem(&a.cert_pem, &b.key_pem).unwrap_err();
        assert!(matches!(err, TlsError::Config(_)), "{err}");
        let err = NodeIdentity::from_pem("not pem", &a.key_pem).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    }

    #[test]
    fn load_or_generate_keeps_the_identity_across_restarts() {
        let dir = temp_dir("restart");
        let first = NodeIdentity::load_or_generate(&dir, "coordinator").unwrap();
        let second = NodeIdentity::load_or_generate(&dir, "coordinator").unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file must not be group/world readable");
        }
        fs::remove_file(dir.join(KEY_FILE)).unwrap();
        let err = NodeIdentity::load_or_generate(&dir, "coordinator").unwrap_err();
        assert!(matches!(err, TlsError::IncompleteIdentity { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let id = NodeIdentity::generate("w").unwrap();
        let shown = format!("{id:?}");
        assert!(!shown.contains("PRIVATE"));
        assert!(!shown.contains(&id.key_pem[40..80]));
    }
}
