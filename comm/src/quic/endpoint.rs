//! QUIC endpoints carrying this node's identity and tuning.
//!
//! An endpoint owns one UDP socket. A server endpoint accepts connections (checking client
//! certificates by a [`ClientAuth`] policy) and can also dial out, which is what a worker in
//! an all-gather run needs: one socket, inbound links from peers and outbound links to the
//! coordinator and other peers. A client endpoint only dials.
//!
//! The constructors take any [`quinn::AsyncUdpSocket`], so the WAN simulator's virtual
//! socket plugs in where a real one would; [`bind_server`] and [`bind_client`] bind a real
//! UDP socket. Every constructor must run inside a Tokio runtime (quinn spawns its driver
//! there); outside one they return an error instead of panicking.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{AsyncUdpSocket, Connection, EndpointConfig, Incoming, Runtime, TokioRuntime, VarInt};
use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Result;
use crate::ids::CertFingerprint;
use crate::quic::certs::NodeIdentity;
use crate::quic::config::{TransportPlan, TransportTuning};
use crate::quic::conn::peer_fingerprint;
use crate::quic::error::QuicError;
use crate::quic::tls::{client_crypto, crypto_provider, server_crypto, SERVER_NAME};
use crate::quic::verify::{ClientAuth, ServerPin};

/// A QUIC endpoint with this node's certificate and transport tuning.
///
/// - getters: [`local_addr`](Self::local_addr), [`fingerprint`](Self::fingerprint),
///   [`quinn`](Self::quinn);
/// - dialing: [`connect`](Self::connect) pins the peer's certificate fingerprint;
/// - accepting (server endpoints): [`accept`](Self::accept), or [`incoming`](Self::incoming)
///   plus [`handshake`] to run handshakes concurrently; a peer that must still prove itself
///   after its handshake: [`handshake_unverified`](Self::handshake_unverified), then
///   [`admit`](Self::admit);
/// - shutdown: [`close`](Self::close), then [`wait_idle`](Self::wait_idle) so the close
///   frames actually leave before the process exits.
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    identity: NodeIdentity,
    transport: Arc<quinn::TransportConfig>,
    plan: TransportPlan,
    /// A server endpoint's TLS config, for connections accepted with a transport of their
    /// own (`None` on a client endpoint).
    server_crypto: Option<Arc<QuicServerConfig>>,
}

impl std::fmt::Debug for QuicEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The TLS config holds the private key and has no Debug of its own.
        f.debug_struct("QuicEndpoint")
            .field("endpoint", &self.endpoint)
            .field("identity", &self.identity)
            .field("plan", &self.plan)
            .field("server", &self.server_crypto.is_some())
            .finish_non_exhaustive()
    }
}

/// An endpoint that accepts connections whose client certificate passes `auth`, and can dial.
pub fn server_endpoint(
    identity: &NodeIdentity,
    auth: ClientAuth,
    tuning: &TransportTuning,
    socket: Arc<dyn AsyncUdpSocket>,
) -> Result<QuicEndpoint> {
    let plan = tuning.plan()?;
    let transport = Arc::new(plan.transport_config());
    let crypto = Arc::new(server_crypto(identity, auth)?);
    let mut server = quinn::ServerConfig::with_crypto(crypto.clone());
    server.transport_config(transport.clone());
    let mut endpoint = build(identity, plan, transport, Some(server), socket, tuning.rng_seed)?;
    endpoint.server_crypto = Some(crypto);
    Ok(endpoint)
}

/// An endpoint that only dials out.
pub fn client_endpoint(
    identity: &NodeIdentity,
    tuning: &TransportTuning,
    socket: Arc<dyn AsyncUdpSocket>,
) -> Result<QuicEndpoint> {
    let plan = tuning.plan()?;
    let transport = Arc::new(plan.transport_config());
    build(identity, plan, transport, None, socket, tuning.rng_seed)
}

/// [`server_endpoint`] on a real UDP socket bound to `addr` (port 0 picks a free port).
pub fn bind_server(
    identity: &NodeIdentity,
    auth: ClientAuth,
    tuning: &TransportTuning,
    addr: SocketAddr,
) -> Result<QuicEndpoint> {
    server_endpoint(identity, auth, tuning, bind_udp(addr)?)
}

/// [`client_endpoint`] on a real UDP socket bound to `addr` (use an unspecified address and
/// port 0 to let the OS choose).
pub fn bind_client(
    identity: &NodeIdentity,
    tuning: &TransportTuning,
    addr: SocketAddr,
) -> Result<QuicEndpoint> {
    client_endpoint(identity, tuning, bind_udp(addr)?)
}

fn ensure_runtime() -> Result<(), QuicError> {
    tokio::runtime::Handle::try_current().map(drop).map_err(|_| {
        QuicError::Endpoint(std::io::Error::other(
            "QUIC endpoints must be built inside a Tokio runtime",
        ))
    })
}

/// UDP socket buffers asked of the OS, so bursts at Gb/s rates are not dropped in the
/// kernel. The OS may grant less (Linux caps them at `net.core.rmem_max`/`wmem_max`), which
/// only costs throughput; the granted size is logged.
const UDP_BUFFER_BYTES: usize = 8 << 20;

fn bind_udp(addr: SocketAddr) -> Result<Arc<dyn AsyncUdpSocket>, QuicError> {
    ensure_runtime()?;
    let fail = |source| QuicError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if addr.is_ipv6() {
        // Dual stack, so a coordinator bound to [::] also serves IPv4 workers; not every OS
        // allows it, and an IPv6-only socket still works for IPv6 peers.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: failure leaves the OS default, which still works.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into()).map_err(fail)?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < UDP_BUFFER_BYTES {
        tracing::info!(
            granted,
            wanted = UDP_BUFFER_BYTES,
            "the OS granted a smaller UDP receive buffer; raise net.core.rmem_max for multi-Gb/s links"
        );
    }
    TokioRuntime.wrap_udp_socket(socket.into()).map_err(QuicError::Endpoint)
}

fn build(
    identity: &NodeIdentity,
    plan: TransportPlan,
    transport: Arc<quinn::TransportConfig>,
    server: Option<quinn::ServerConfig>,
    socket: Arc<dyn AsyncUdpSocket>,
    rng_seed: Option<u64>,
) -> Result<QuicEndpoint> {
    ensure_runtime()?;
    // Reset tokens and connection ids a restarted node with this identity still
    // recognizes: it answers its old peers' packets with a stateless reset, and they
    // reconnect at once instead of waiting out the idle timeout.
    let reset = identity.stateless_reset_key();
    let mut config = EndpointConfig::new(Arc::new(ResetKey(reset)));
    let cid_key = u64::from_le_bytes([
        reset[24], reset[25], reset[26], reset[27], reset[28], reset[29], reset[30], reset[31],
    ]);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // A deterministic identity (simulated runs) makes QUIC's own random choices replayable
    // too; a transport seed, when given, takes precedence.
    config.rng_seed(identity.rng_seed());
    if let Some(seed) = rng_seed {
        // One stream per endpoint: the run's seed and this socket's address.
        let addr = socket.local_addr().map_err(QuicError::Endpoint)?;
        let mut hash = Sha256::new();
        hash.update(seed.to_le_bytes());
        hash.update(addr.to_string().as_bytes());
        config.rng_seed(Some(hash.finalize().into()));
    }
    // Build one client config now so a bad identity fails here, not at the first dial.
    client_crypto(
        Some(identity),
        Arc::new(ServerPin::new(identity.fingerprint(), crypto_provider())),
        crypto_provider(),
    )?;
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(config, server, socket, Arc::new(TokioRuntime))
            .map_err(QuicError::Endpoint)?;
    Ok(QuicEndpoint { endpoint, identity: identity.clone(), transport, plan, server_crypto: None })
}

impl QuicEndpoint {
    /// The socket's local address (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, QuicError> {
        self.endpoint.local_addr().map_err(QuicError::Endpoint)
    }

    /// This node's certificate fingerprint, what peers must pin.
    pub fn fingerprint(&self) -> CertFingerprint {
        self.identity.fingerprint()
    }

    /// The underlying quinn endpoint (statistics, rebinding).
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Connects to `addr`, accepting only a server whose certificate fingerprint is `pin`,
    /// and authenticating with this node's certificate.
    ///
    /// Errors: [`QuicError::PinMismatch`] when the server presented another certificate;
    /// [`QuicError::Refused`] when it refused us during the handshake; otherwise
    /// [`QuicError::Handshake`]. A server that rejects our *client* certificate does so
    /// after our side of the handshake is complete, so that shows up on the first stream
    /// operation (or [`wait_closed`](crate::quic::wait_closed)) as
    /// [`QuicError::Connection`].
    pub async fn connect(&self, addr: SocketAddr, pin: CertFingerprint) -> Result<Connection> {
        let provider = crypto_provider();
        let verifier = Arc::new(ServerPin::new(pin, provider.clone()));
        let crypto = client_crypto(Some(&self.identity), verifier.clone(), provider)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        let connecting = self
            .endpoint
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|source| QuicError::Connect { addr, source })?;
        match connecting.await {
            Ok(conn) => {
                tracing::debug!(peer = %addr, %pin, "connected");
                Ok(conn)
            }
            Err(source) => {
                let err = match (verifier.mismatch(), QuicError::from(source.clone())) {
                    (Some(presented), _) => QuicError::PinMismatch { addr, presented, pinned: pin },
                    (None, refusal @ (QuicError::Refused { .. } | QuicError::Closed { .. })) => {
                        refusal
                    }
                    (None, _) => QuicError::Handshake { addr, source },
                };
                tracing::warn!(peer = %addr, error = %err, "connection failed");
                Err(err.into())
            }
        }
    }

    /// The next connection attempt with its handshake completed, or `None` once the
    /// endpoint is closed. Handshakes run one at a time here; a server expecting many
    /// peers should take [`incoming`](Self::incoming) and spawn [`handshake`] per attempt.
    pub async fn accept(&self) -> Option<Result<Connection>> {
        let incoming = self.incoming().await?;
        Some(handshake(incoming).await.map_err(Into::into))
    }

    /// The next connection attempt, handshake not yet run; `None` once the endpoint is
    /// closed. Client endpoints never yield one.
    pub async fn incoming(&self) -> Option<Incoming> {
        self.endpoint.accept().await
    }

    /// Completes the handshake of an incoming connection whose peer has yet to prove it
    /// belongs to the run (a coordinator accepts any certificate; the join secret is
    /// checked on the first frame). Until [`admit`](Self::admit) is called, the peer may
    /// open one stream at a time and is granted `allowance` bytes of connection credit (see
    /// [`TransportPlan::unverified_transport_config`]), so a stranger cannot make this node
    /// buffer more than that. Errors as [`handshake`]; on a client endpoint, which has no
    /// incoming connections, [`QuicError::Endpoint`].
    pub async fn handshake_unverified(
        &self,
        incoming: Incoming,
        allowance: u32,
    ) -> Result<Connection, QuicError> {
        let addr = incoming.remote_address();
        let Some(crypto) = self.server_crypto.clone() else {
            incoming.ignore();
            return Err(QuicError::Endpoint(std::io::Error::other(
                "a client endpoint cannot accept connections",
            )));
        };
        let mut server = quinn::ServerConfig::with_crypto(crypto);
        server.transport_config(Arc::new(self.plan.unverified_transport_config(allowance)));
        let connecting = incoming
            .accept_with(Arc::new(server))
            .map_err(|source| QuicError::Handshake { addr, source })?;
        finish_handshake(addr, connecting.await)
    }

    /// Lifts the limits of [`handshake_unverified`](Self::handshake_unverified) once the
    /// peer proved itself: the connection gets this endpoint's usual receive window and
    /// stream count (QUIC tells the peer at once).
    pub fn admit(&self, conn: &Connection) {
        conn.set_receive_window(
            VarInt::from_u64(self.plan.connection_receive_window()).unwrap_or(VarInt::MAX),
        );
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(
            self.plan.max_concurrent_uni_streams(),
        ));
    }

    /// Closes every connection with `code` and `reason` and stops accepting.
    pub fn close(&self, code: u32, reason: &str) {
        self.endpoint.close(code.into(), reason.as_bytes());
    }

    /// Waits until every connection is fully closed, so close frames reach the peers.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// Completes the handshake of an incoming connection. Failures (a client with the wrong or
/// no certificate, a client that rejected our certificate) are logged and returned as
/// [`QuicError::Handshake`].
pub async fn handshake(incoming: Incoming) -> Result<Connection, QuicError> {
    let addr = incoming.remote_address();
    finish_handshake(addr, incoming.await)
}

fn finish_handshake(
    addr: SocketAddr,
    result: Result<Connection, quinn::ConnectionError>,
) -> Result<Connection, QuicError> {
    match result {
        Ok(conn) => {
            let fingerprint = peer_fingerprint(&conn);
            tracing::info!(peer = %addr, fingerprint = ?fingerprint.map(|f| f.to_string()), "accepted connection");
            Ok(conn)
        }
        Err(source) => {
            tracing::warn!(peer = %addr, error = %source, "incoming handshake failed");
            Err(QuicError::Handshake { addr, source })
        }
    }
}

/// Signs stateless reset tokens (keyed BLAKE3), with a key that survives restarts (see
/// [`NodeIdentity::stateless_reset_key`]).
struct ResetKey([u8; 32]);

impl quinn_proto::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(32);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(
        &self,
        data: &[u8],
        signature: &[u8],
    ) -> Result<(), quinn_proto::crypto::CryptoError> {
        let mac = blake3::keyed_hash(&self.0, data);
        if signature.len() == 32 && constant_time_eq::constant_time_eq(mac.as_bytes(), signature) {
            Ok(())
        } else {
            Err(quinn_proto::crypto::CryptoError)
        }
    }
}
