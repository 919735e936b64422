//! The QUIC mesh between nodes: how a request for a pod on another node
//! gets there.
//!
//! Each agent runs one [`Mesh`]: a quinn endpoint that is both server and
//! client on one UDP port. Nodes authenticate each other with mutual TLS
//! (TLS 1.3, ALPN `skiff-mesh/1`): both sides present their node
//! certificate ([`MeshIdentity`]) and require the peer's to chain to the
//! cluster CA; a client also checks that the server's certificate names the
//! node it meant to reach (DNS SAN = node name).
//!
//! There is one long-lived connection per peer node, opened on first use
//! and replaced on the next request once it is found closed or broken (the
//! peer restarted, the link died: keep-alives every
//! [`KEEP_ALIVE_INTERVAL`], given up after [`IDLE_TIMEOUT`] of silence).
//! Every HTTP request is one bidirectional stream on it, so requests never
//! wait for each other; bodies stream both ways without being buffered.
//!
//! A node that crashed and came back with the same identity answers its
//! peers' stale connections with a stateless reset they trust (the reset
//! key is derived from the node's private key), so they reconnect on the
//! next request instead of waiting out the idle timeout.
//!
//! # Wire format (one bidirectional stream per request)
//!
//! A *frame* is a 4-byte big-endian length, then that many bytes (at most
//! [`MAX_FRAME`]). Strings and byte fields inside a frame are a 2-byte
//! big-endian length then the bytes; headers are a 2-byte count then
//! `name, value` pairs. Hop-by-hop headers (`connection`, `keep-alive`,
//! `proxy-connection`, `te`, `transfer-encoding`, `upgrade`) are not
//! carried: each hop frames its own body.
//!
//! 1. Client → server: a request frame: kind `0x01`, namespace, pod,
//!    port (u16), method, URI (as the caller gave it: origin-form or
//!    absolute), headers. If the request body is empty the client finishes
//!    its side right after it.
//! 2. Server → client: a verdict frame: `0x02` *accepted*, or `0x03` *no
//!    such pod* followed by a reason string (the server then finishes the
//!    stream; nothing was delivered).
//! 3. Once accepted, client → server: the request body, raw, until the
//!    client finishes its side. The client holds the body back until the
//!    verdict (one round trip), so a request refused with *no such pod*,
//!    or that never reached the peer, is handed back untouched for a retry
//!    on another endpoint ([`Mesh::try_send`]).
//! 4. Server → client: a response frame: kind `0x04`, status (u16),
//!    headers; then the response body, raw, until the server finishes.
//!
//! A body that fails mid-way is signalled by resetting that direction of
//! the stream ([`code::BODY`]), never by finishing it, so a truncated body
//! is never mistaken for a complete one; a malformed frame resets the
//! stream with [`code::PROTOCOL`]. Trailers are not carried. A bad stream
//! ends that stream only: the connection and the endpoint carry on.
//!
//! Retries: [`MeshError::Unreachable`] means nothing was delivered (the
//! connection or the stream could not be set up, or the peer refused the
//! handshake); [`MeshError::NoSuchPod`] means the peer does not run that
//! pod; both are [`MeshError::retryable`]. Any other failure once the
//! request frame was sent (no verdict in time, or a failure after it) is
//! [`MeshError::Failed`]: the pod may have seen the request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body, Frame};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use skiff_runtime::ResponseBody;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use super::identity::MeshIdentity;
use super::proxy::Deliver;

/// The ALPN protocol of the mesh; a new incompatible wire format gets a
/// new one.
pub const ALPN: &[u8] = b"skiff-mesh/1";

/// Largest request, verdict or response frame. Bounds what a peer can
/// make us buffer before a body starts; 64 KiB holds any sane HTTP head.
pub const MAX_FRAME: usize = 64 * 1024;

/// How long connecting to a peer may take before it counts as unreachable:
/// long enough for a handshake over a slow link, short enough that callers
/// move on to another endpoint quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep-alive period: keeps NAT bindings open and notices a dead link
/// within a few lost probes.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// A connection silent this long is dead (six missed keep-alives: tolerant
/// of lossy links, still bounded).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server waits for a stream's request frame, and a client for
/// the verdict: both are sent right away by a healthy peer.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent requests per connection; more wait for a free stream
/// (backpressure rather than unbounded tasks on the peer).
const MAX_STREAMS: u32 = 1024;

/// Largest chunk read from a stream at once.
const CHUNK: usize = 64 * 1024;

/// Application error codes on the wire.
pub mod code {
    use quinn::VarInt;

    /// Connection closed because its mesh is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// Stream abandoned: its request or response was dropped.
    pub const CANCELLED: VarInt = VarInt::from_u32(1);
    /// Stream reset: a frame was malformed or unexpected.
    pub const PROTOCOL: VarInt = VarInt::from_u32(2);
    /// Stream reset: the body's source failed mid-way.
    pub const BODY: VarInt = VarInt::from_u32(3);
}

const KIND_REQUEST: u8 = 0x01;
const KIND_ACCEPTED: u8 = 0x02;
const KIND_NO_SUCH_POD: u8 = 0x03;
const KIND_RESPONSE: u8 = 0x04;

/// A node to send to: its name (checked against its certificate) and the
/// UDP address of its mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The node's name.
    pub node: String,
    /// Where its mesh listens.
    pub addr: SocketAddr,
}

/// The pod port a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The container port.
    pub port: u16,
}

/// Why a request could not be sent or answered over the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Nothing was delivered: connecting or the handshake failed, or no
    /// stream could be opened. The caller may retry on another endpoint.
    #[error("node {node} is unreachable over the mesh: {reason}")]
    Unreachable {
        /// The peer node.
        node: String,
        /// What failed.
        reason: String,
    },
    /// The peer does not run that pod and port; nothing was delivered. The
    /// caller may retry on another endpoint.
    #[error("node {node} does not run pod {namespace}/{pod} port {port}")]
    NoSuchPod {
        /// The peer node.
        node: String,
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// The port.
        port: u16,
    },
    /// The exchange failed after the request was (perhaps partly) sent.
    #[error("mesh request failed: {0}")]
    Failed(String),
}

impl MeshError {
    /// Whether nothing was delivered, so the request may go to another
    /// endpoint.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            MeshError::Unreachable { .. } | MeshError::NoSuchPod { .. }
        )
    }
}

/// A failed [`Mesh::try_send`]: the error, and the request back whenever
/// none of its body was consumed (always so for a
/// [`retryable`](MeshError::retryable) error).
pub struct SendError<B> {
    /// What failed.
    pub error: MeshError,
    /// The untouched request, if it can be sent again.
    pub request: Option<hyper::Request<B>>,
}

impl<B> std::fmt::Debug for SendError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .field("request_returned", &self.request.is_some())
            .finish()
    }
}

/// Counters of one mesh since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshMetrics {
    /// Outgoing connections established.
    pub connections_opened: u64,
    /// Handshakes that failed on authentication (certificate, name or
    /// ALPN), incoming and outgoing.
    pub connections_refused: u64,
    /// Requests sent (streams opened and their request frame written).
    pub streams_sent: u64,
    /// Requests delivered to a local pod.
    pub streams_served: u64,
}

#[derive(Default)]
struct Counters {
    connections_opened: AtomicU64,
    connections_refused: AtomicU64,
    streams_sent: AtomicU64,
    streams_served: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The connection to one peer, and the last failure to make it (so that
/// requests that queued behind a failing attempt share its outcome instead
/// of each waiting out their own).
#[derive(Default)]
struct Slot {
    connection: Option<Connection>,
    failed: Option<(Instant, String)>,
}

/// A node's QUIC mesh endpoint: serves requests for local pods and sends
/// requests to pods on other nodes. Share it through the `Arc` that
/// [`Mesh::start`] returns; dropping the last one closes it.
pub struct Mesh {
    node: String,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    client: quinn::ClientConfig,
    peers: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    counters: Arc<Counters>,
    closed: AtomicBool,
    /// Per peer, the last connection whose refusal was counted.
    refusals: parking_lot::Mutex<HashMap<String, usize>>,
    /// The accept loop.
    tasks: parking_lot::Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node", &self.node)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.close();
    }
}

impl Mesh {
    /// Binds the mesh on `bind` (UDP) with `identity` and serves incoming
    /// requests through `deliver`.
    ///
    /// Errors if the identity's PEM cannot be parsed or does not form a
    /// usable TLS configuration, or if the port cannot be bound. Must be
    /// called within a tokio runtime.
    pub async fn start(
        bind: SocketAddr,
        identity: MeshIdentity,
        deliver: Arc<dyn Deliver>,
    ) -> anyhow::Result<Arc<Mesh>> {
        let (server, client) = tls_configs(&identity)?;
        let socket = std::net::UdpSocket::bind(bind)
            .map_err(|e| anyhow::anyhow!("cannot bind the mesh on UDP {bind}: {e}"))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| anyhow::anyhow!("the mesh needs a tokio runtime"))?;
        let mut config = quinn::EndpointConfig::new(Arc::new(ResetKey::new(&identity)));
        config.cid_generator(|| Box::new(RandomCids));
        let mut endpoint = quinn::Endpoint::new(config, Some(server), socket, runtime)
            .map_err(|e| anyhow::anyhow!("cannot start the mesh on UDP {bind}: {e}"))?;
        endpoint.set_default_client_config(client.clone());
        let local_addr = endpoint.local_addr()?;
        let counters = Arc::new(Counters::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(endpoint.clone(), deliver, counters.clone()));
        tracing::info!(node = %identity.node, addr = %local_addr, "mesh listening");
        Ok(Arc::new(Mesh {
            node: identity.node,
            endpoint,
            local_addr,
            client,
            peers: parking_lot::Mutex::default(),
            counters,
            closed: AtomicBool::new(false),
            refusals: parking_lot::Mutex::default(),
            tasks: parking_lot::Mutex::new(tasks),
        }))
    }

    /// The UDP address the mesh is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters since start.
    pub fn metrics(&self) -> MeshMetrics {
        let c = &self.counters;
        MeshMetrics {
            connections_opened: c.connections_opened.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            streams_sent: c.streams_sent.load(Ordering::Relaxed),
            streams_served: c.streams_served.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection (peers see [`code::SHUTDOWN`]) and stops
    /// serving; requests in flight fail. Later sends fail with
    /// [`MeshError::Unreachable`]. The UDP port is released once the last
    /// `Arc<Mesh>` is dropped and [`Mesh::wait_idle`] (or a moment) has
    /// passed.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.endpoint.close(code::SHUTDOWN, b"mesh shutting down");
        self.tasks.lock().abort_all();
        self.peers.lock().clear();
    }

    /// Closes the connection to `node`, if any (for a node that left the
    /// cluster); requests in flight on it fail. A later send reconnects.
    pub fn disconnect(&self, node: &str) {
        let Some(slot) = self.peers.lock().remove(node) else {
            return;
        };
        // A request holding the slot is connecting right now; the
        // connection it makes closes once that request lets go of it.
        if let Ok(mut slot) = slot.try_lock()
            && let Some(connection) = slot.connection.take()
        {
            connection.close(code::SHUTDOWN, b"node left");
        }
    }

    /// Waits until every connection closed by [`Mesh::close`] has told its
    /// peer and drained.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// Sends `request` to pod `target` on `peer` and returns its response,
    /// whose body streams in as the pod writes it. Like [`Mesh::try_send`]
    /// without getting the request back.
    pub async fn send<B>(
        &self,
        peer: &Peer,
        target: &Target,
        request: hyper::Request<B>,
    ) -> Result<hyper::Response<ResponseBody>, MeshError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.try_send(peer, target, request)
            .await
            .map_err(|e| e.error)
    }

    /// Sends `request` to pod `target` on `peer` over the one connection to
    /// that peer, opening it (or replacing a closed one) first if needed.
    ///
    /// The request body is held back until the peer accepts the stream,
    /// then streamed; the response is returned as soon as its head arrives
    /// and its body streams after. On failure the request comes back in
    /// [`SendError::request`] if none of its body was consumed (always for
    /// [`MeshError::Unreachable`] and [`MeshError::NoSuchPod`]). Trailers
    /// are dropped.
    pub async fn try_send<B>(
        &self,
        peer: &Peer,
        target: &Target,
        request: hyper::Request<B>,
    ) -> Result<hyper::Response<ResponseBody>, SendError<B>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let unreachable = |reason: String| MeshError::Unreachable {
            node: peer.node.clone(),
            reason,
        };
        let head = match encode_request(target, &request) {
            Ok(head) => head,
            Err(reason) => {
                return Err(SendError {
                    error: MeshError::Failed(reason),
                    request: Some(request),
                });
            }
        };
        let empty = request.body().is_end_stream();
        // A connection reused from earlier may turn out dead only now (the
        // peer restarted); nothing was delivered on it, so one fresh
        // connection is tried before giving up.
        let mut reused_failed = false;
        'attempt: loop {
            let (connection, send, mut recv) = loop {
                let (connection, fresh) = match self.connection(peer).await {
                    Ok(c) => c,
                    Err(error) => {
                        return Err(SendError {
                            error,
                            request: Some(request),
                        });
                    }
                };
                match open_stream(&connection, head.clone(), empty).await {
                    Ok((send, recv)) => break (connection, send, recv),
                    Err(reason) if self.refused(peer, &connection) => {
                        return Err(SendError {
                            error: unreachable(format!("the peer refused the handshake: {reason}")),
                            request: Some(request),
                        });
                    }
                    Err(reason) if !fresh && !reused_failed => {
                        tracing::debug!(node = %peer.node, %reason, "stale mesh connection; reconnecting");
                        reused_failed = true;
                    }
                    Err(reason) => {
                        return Err(SendError {
                            error: unreachable(reason),
                            request: Some(request),
                        });
                    }
                }
            };
            Counters::bump(&self.counters.streams_sent);

            let verdict = match tokio::time::timeout(HEAD_TIMEOUT, read_frame(&mut recv)).await {
                Ok(Ok(frame)) => decode_verdict(&frame),
                Ok(Err(FrameError::Read(ReadFail::Connection(ConnectionError::Reset))))
                    if !reused_failed =>
                {
                    // A stateless reset: the peer holds no state for this
                    // connection (it restarted), so the new process never saw
                    // the request. Once more on a fresh connection.
                    tracing::debug!(node = %peer.node, "mesh connection reset by a restarted peer; reconnecting");
                    reused_failed = true;
                    continue 'attempt;
                }
                Ok(Err(FrameError::Read(ReadFail::Connection(e))))
                    if self.refused(peer, &connection) =>
                {
                    // Nothing was delivered.
                    return Err(SendError {
                        error: unreachable(format!("the peer refused the handshake: {e}")),
                        request: Some(request),
                    });
                }
                Ok(Err(e)) => Err(format!("no verdict from node {}: {e}", peer.node)),
                Err(_) => Err(format!(
                    "node {} did not answer within {HEAD_TIMEOUT:?}",
                    peer.node
                )),
            };
            let mut send = Sending(Some(send));
            match verdict {
                Ok(Verdict::Accepted) => {}
                Ok(Verdict::NoSuchPod(reason)) => {
                    tracing::debug!(node = %peer.node, %reason, "peer does not run the pod");
                    return Err(SendError {
                        error: MeshError::NoSuchPod {
                            node: peer.node.clone(),
                            namespace: target.namespace.clone(),
                            pod: target.pod.clone(),
                            port: target.port,
                        },
                        request: Some(request),
                    });
                }
                Err(reason) => {
                    send.reset(code::PROTOCOL);
                    let _ = recv.stop(code::PROTOCOL);
                    return Err(SendError {
                        error: MeshError::Failed(reason),
                        request: Some(request),
                    });
                }
            }

            let body = request.into_body();
            let upload = if empty {
                send.finished();
                None
            } else {
                let node = peer.node.clone();
                Some(AbortOnDrop(tokio::spawn(async move {
                    if let Err(reason) = pump_caller_body(body, &mut send).await {
                        tracing::debug!(%node, %reason, "mesh request body not sent whole");
                    }
                })))
            };

            let frame = match read_frame(&mut recv).await {
                Ok(frame) => frame,
                Err(e) => {
                    return Err(SendError {
                        error: MeshError::Failed(format!(
                            "no response from node {} for {}/{}: {e}",
                            peer.node, target.namespace, target.pod
                        )),
                        request: None,
                    });
                }
            };
            let (status, headers) = match decode_response(&frame) {
                Ok(head) => head,
                Err(reason) => {
                    let _ = recv.stop(code::PROTOCOL);
                    return Err(SendError {
                        error: MeshError::Failed(format!(
                            "bad response from node {}: {reason}",
                            peer.node
                        )),
                        request: None,
                    });
                }
            };
            let origin = format!("node {}", peer.node);
            let mut response = hyper::Response::new(recv_body(recv, origin, upload));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            // The connection stays shared; this handle only kept it alive while
            // the stream opened.
            drop(connection);
            return Ok(response);
        }
    }

    /// The connection to `peer`, opened now if there is none or it closed;
    /// `true` when it was just opened.
    async fn connection(&self, peer: &Peer) -> Result<(Connection, bool), MeshError> {
        let unreachable = |reason: String| MeshError::Unreachable {
            node: peer.node.clone(),
            reason,
        };
        if self.closed.load(Ordering::SeqCst) {
            return Err(unreachable("the local mesh is closed".into()));
        }
        let queued = Instant::now();
        let slot = self
            .peers
            .lock()
            .entry(peer.node.clone())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(connection) = &slot.connection
            && connection.close_reason().is_none()
            && connection.remote_address() == peer.addr
        {
            return Ok((connection.clone(), false));
        }
        if let Some((at, reason)) = &slot.failed
            && *at >= queued
        {
            return Err(unreachable(reason.clone()));
        }
        // A live connection to an address the peer left closes once the
        // requests still using it let go of it.
        slot.connection = None;
        match self.connect(peer).await {
            Ok(connection) => {
                slot.connection = Some(connection.clone());
                slot.failed = None;
                Ok((connection, true))
            }
            Err(reason) => {
                slot.failed = Some((Instant::now(), reason.clone()));
                Err(unreachable(reason))
            }
        }
    }

    async fn connect(&self, peer: &Peer) -> Result<Connection, String> {
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), peer.addr, &peer.node)
            .map_err(|e| format!("cannot connect to {}: {e}", peer.addr))?;
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                if is_refusal(&e) {
                    Counters::bump(&self.counters.connections_refused);
                    tracing::warn!(node = %peer.node, addr = %peer.addr, error = %e, "mesh handshake refused");
                }
                return Err(format!("handshake with {} failed: {e}", peer.addr));
            }
            Err(_) => {
                return Err(format!(
                    "no handshake with {} within {CONNECT_TIMEOUT:?}",
                    peer.addr
                ));
            }
        };
        Counters::bump(&self.counters.connections_opened);
        tracing::debug!(node = %peer.node, addr = %peer.addr, "mesh connection open");
        Ok(connection)
    }

    /// Whether `connection` was closed because the peer refused our
    /// certificate. With TLS 1.3 the server checks it after our side of the
    /// handshake is done, so the refusal shows up as the connection closing
    /// under the first request; it is counted once per connection.
    fn refused(&self, peer: &Peer, connection: &Connection) -> bool {
        let Some(reason) = connection.close_reason() else {
            return false;
        };
        if !is_refusal(&reason) {
            return false;
        }
        let id = connection.stable_id();
        if self.refusals.lock().insert(peer.node.clone(), id) != Some(id) {
            Counters::bump(&self.counters.connections_refused);
            tracing::warn!(node = %peer.node, error = %reason, "mesh peer refused our certificate");
        }
        true
    }
}

/// Opens a stream and writes the request frame (finishing the send side
/// at once for an empty body). Errors mean nothing was delivered.
async fn open_stream(
    connection: &Connection,
    head: Bytes,
    empty: bool,
) -> Result<(SendStream, RecvStream), String> {
    let (mut send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("cannot open a stream: {e}"))?;
    if let Err(e) = send.write_chunk(head).await {
        return Err(format!("cannot send the request: {e}"));
    }
    if empty {
        // Cannot fail: the stream was neither finished nor reset.
        let _ = send.finish();
    }
    Ok((send, recv))
}

/// Whether a connection ended because a handshake was refused: a TLS
/// alert (QUIC crypto error codes 0x100-0x1ff), sent or received.
fn is_refusal(error: &ConnectionError) -> bool {
    let code = match error {
        ConnectionError::TransportError(e) => e.code,
        ConnectionError::ConnectionClosed(close) => close.error_code,
        _ => return false,
    };
    (0x100..0x200).contains(&u64::from(code))
}

/// The key of the endpoint's stateless resets, derived from the node's
/// private key so that it survives a restart: packets of a connection the
/// restarted node no longer knows are answered with a reset its peers
/// accept, and they replace the connection at once instead of waiting out
/// the idle timeout.
struct ResetKey(hmac::Hmac<sha2::Sha256>);

impl ResetKey {
    fn new(identity: &MeshIdentity) -> ResetKey {
        use hmac::Mac;
        use sha2::Digest;
        let secret = sha2::Sha256::new()
            .chain_update(b"skiff-mesh stateless reset key\0")
            .chain_update(identity.key_pem.as_bytes())
            .finalize();
        // HMAC takes keys of any length.
        let mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        ResetKey(mac)
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        use hmac::Mac;
        let tag = self.0.clone().chain_update(data).finalize().into_bytes();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use hmac::Mac;
        self.0
            .clone()
            .chain_update(data)
            .verify_slice(signature)
            .map_err(|_| quinn::crypto::CryptoError)
    }
}

/// Random 8-byte connection IDs, all of which [`quinn`] treats as
/// possibly ours (its default generator only recognises those of the
/// current process, so a restarted node would drop its peers' packets
/// instead of answering them with a stateless reset).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut bytes = [0u8; 8];
        if rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .is_err()
        {
            // The system RNG failed (practically never): fall back to a
            // process-unique value; IDs then merely become guessable.
            static NEXT: AtomicU64 = AtomicU64::new(1);
            let n = NEXT.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u64) << 40;
            bytes = n.to_be_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn tls_configs(
    identity: &MeshIdentity,
) -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("mesh certificate of node {}: {e}", identity.node))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "mesh certificate of node {} holds no certificate",
        identity.node
    );
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("mesh key of node {}: {e}", identity.node))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| anyhow::anyhow!("cluster CA: {e}"))?;
        roots
            .add(ca)
            .map_err(|e| anyhow::anyhow!("cluster CA: {e}"))?;
    }
    anyhow::ensure!(!roots.is_empty(), "the cluster CA PEM holds no certificate");
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));

    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));

    let transport = Arc::new(transport());
    server.transport_config(transport.clone());
    client.transport_config(transport);
    Ok((server, client))
}

fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    // 30 s fits in a VarInt of milliseconds.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        transport.max_idle_timeout(Some(idle));
    }
    transport
}

// ----- serving -----

async fn accept_loop(
    endpoint: quinn::Endpoint,
    deliver: Arc<dyn Deliver>,
    counters: Arc<Counters>,
) {
    // Dropping this set (when the loop's task is aborted) aborts every
    // connection's task, and with them their streams'.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                connections.spawn(serve_connection(incoming, deliver.clone(), counters.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    incoming: quinn::Incoming,
    deliver: Arc<dyn Deliver>,
    counters: Arc<Counters>,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            tracing::debug!(%remote, %error, "mesh connection not accepted");
            return;
        }
    };
    let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            if is_refusal(&error) {
                Counters::bump(&counters.connections_refused);
                tracing::warn!(%remote, %error, "mesh handshake refused");
            } else {
                tracing::debug!(%remote, %error, "mesh handshake failed");
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "mesh handshake timed out");
            return;
        }
    };
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(serve_stream(send, recv, deliver.clone(), counters.clone(), remote));
                }
                Err(reason) => {
                    tracing::debug!(%remote, %reason, "mesh connection closed");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

async fn serve_stream(
    send: SendStream,
    mut recv: RecvStream,
    deliver: Arc<dyn Deliver>,
    counters: Arc<Counters>,
    remote: SocketAddr,
) {
    let mut send = Sending(Some(send));
    let frame = match tokio::time::timeout(HEAD_TIMEOUT, read_frame(&mut recv)).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "mesh stream without a request");
            send.reset(code::PROTOCOL);
            let _ = recv.stop(code::PROTOCOL);
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "mesh stream sent no request in time");
            send.reset(code::PROTOCOL);
            let _ = recv.stop(code::PROTOCOL);
            return;
        }
    };
    let (target, parts) = match decode_request(&frame) {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(%remote, %error, "malformed mesh request");
            send.reset(code::PROTOCOL);
            let _ = recv.stop(code::PROTOCOL);
            return;
        }
    };
    let Some((component, sandbox)) = deliver.handler(&target.namespace, &target.pod, target.port)
    else {
        let mut verdict = Encoder::new(KIND_NO_SUCH_POD);
        // The reason is informational; it always fits.
        let _ = verdict.bytes(
            format!(
                "no pod {}/{} serving port {} here",
                target.namespace, target.pod, target.port
            )
            .as_bytes(),
        );
        if let Ok(frame) = verdict.finish()
            && send.write(frame).await.is_ok()
        {
            send.finished();
        }
        let _ = recv.stop(code::CANCELLED);
        return;
    };
    let accepted = match Encoder::new(KIND_ACCEPTED).finish() {
        Ok(frame) => frame,
        Err(_) => return,
    };
    if let Err(error) = send.write(accepted).await {
        tracing::debug!(%remote, %error, "mesh client went away");
        return;
    }
    Counters::bump(&counters.streams_served);
    let span = tracing::debug_span!(
        "mesh request",
        %remote,
        namespace = %target.namespace,
        pod = %target.pod,
        port = target.port
    );
    let body = recv_body(recv, format!("mesh client {remote}"), None);
    let request = hyper::Request::from_parts(parts, body);
    async move {
        let response = component.serve(request, &sandbox).await;
        let (parts, body) = response.into_parts();
        let head = match encode_response(parts.status, &parts.headers) {
            Ok(head) => head,
            Err(error) => {
                // `send` resets on drop.
                tracing::warn!(%error, "pod response head cannot be sent");
                return;
            }
        };
        if let Err(error) = send.write(head).await {
            tracing::debug!(%error, "mesh client went away");
            return;
        }
        if let Err(error) = pump(body, &mut send).await {
            tracing::debug!(%error, "mesh response body not sent whole");
        }
    }
    .instrument(span)
    .await;
}

// ----- bodies -----

/// A send stream that is reset unless finished explicitly: quinn finishes
/// a dropped stream, which would pass a truncated body off as complete.
struct Sending(Option<SendStream>);

impl Sending {
    async fn write(&mut self, bytes: Bytes) -> Result<(), String> {
        match &mut self.0 {
            Some(stream) => stream.write_chunk(bytes).await.map_err(|e| e.to_string()),
            None => Err("stream already closed".into()),
        }
    }

    fn finished(&mut self) {
        if let Some(mut stream) = self.0.take() {
            let _ = stream.finish();
        }
    }

    fn reset(&mut self, code: VarInt) {
        if let Some(mut stream) = self.0.take() {
            let _ = stream.reset(code);
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.reset(code::CANCELLED);
    }
}

/// Streams `body` into `send` and finishes it; a body error resets the
/// stream instead.
async fn pump<B>(body: B, send: &mut Sending) -> Result<(), String>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    send.write(data).await?;
                }
                // Trailers are not carried.
            }
            Err(e) => {
                send.reset(code::BODY);
                return Err(format!("body failed: {e}"));
            }
        }
    }
    send.finished();
    Ok(())
}

/// Boxes a caller's body error so it can be displayed.
fn boxed_error<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    e.into()
}

// `pump` wants `Display` errors; adapt a caller's body once here.
async fn pump_caller_body<B>(body: B, send: &mut Sending) -> Result<(), String>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pump(body.map_err(boxed_error), send).await
}

/// A body read from `recv` until the peer finishes; a reset or lost
/// connection is a body error. `keep` (the upload of a request's body)
/// lives as long as the body.
fn recv_body(recv: RecvStream, origin: String, keep: Option<AbortOnDrop>) -> ResponseBody {
    let state = Some((recv, keep));
    let stream = futures::stream::unfold(state, move |state| {
        let origin = origin.clone();
        async move {
            let (mut recv, keep) = state?;
            match recv.read_chunk(CHUNK, true).await {
                Ok(Some(chunk)) => Some((Ok(Frame::data(chunk.bytes)), Some((recv, keep)))),
                Ok(None) => None,
                Err(e) => Some((
                    Err(wasmtime_wasi_http::Error::InternalError(Some(format!(
                        "body from {origin} broken off: {e}"
                    )))),
                    None,
                )),
            }
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ----- frames -----

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("{0}")]
    Read(ReadFail),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
}

#[derive(Debug, thiserror::Error)]
enum ReadFail {
    #[error("connection lost: {0}")]
    Connection(ConnectionError),
    #[error("stream ended early")]
    Ended,
    #[error("{0}")]
    Other(String),
}

impl From<quinn::ReadExactError> for FrameError {
    fn from(e: quinn::ReadExactError) -> Self {
        FrameError::Read(match e {
            quinn::ReadExactError::FinishedEarly(_) => ReadFail::Ended,
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
                ReadFail::Connection(c)
            }
            quinn::ReadExactError::ReadError(other) => ReadFail::Other(other.to_string()),
        })
    }
}

async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut frame = vec![0u8; len];
    recv.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Builds one frame: the kind byte, then fields.
struct Encoder(BytesMut);

impl Encoder {
    fn new(kind: u8) -> Encoder {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_u32(0);
        buf.put_u8(kind);
        Encoder(buf)
    }

    fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }

    fn bytes(&mut self, v: &[u8]) -> Result<(), String> {
        let len = u16::try_from(v.len()).map_err(|_| format!("field of {} bytes", v.len()))?;
        self.0.put_u16(len);
        self.0.put_slice(v);
        Ok(())
    }

    fn headers(&mut self, headers: &http::HeaderMap) -> Result<(), String> {
        let carried: Vec<_> = headers.iter().filter(|(n, _)| !hop_by_hop(n)).collect();
        let count = u16::try_from(carried.len()).map_err(|_| "too many headers".to_string())?;
        self.u16(count);
        for (name, value) in carried {
            self.bytes(name.as_str().as_bytes())?;
            self.bytes(value.as_bytes())?;
        }
        Ok(())
    }

    fn finish(self) -> Result<Bytes, String> {
        let mut buf = self.0;
        let len = buf.len() - 4;
        if len > MAX_FRAME {
            return Err(format!(
                "head of {len} bytes exceeds the {MAX_FRAME}-byte limit"
            ));
        }
        // `len` <= MAX_FRAME fits in a u32.
        buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(buf.freeze())
    }
}

fn hop_by_hop(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "te" | "transfer-encoding" | "upgrade"
    )
}

/// Reads one frame's fields; every read is bounds-checked.
struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn u8(&mut self) -> Result<u8, String> {
        let (&v, rest) = self.0.split_first().ok_or("frame truncated")?;
        self.0 = rest;
        Ok(v)
    }

    fn u16(&mut self) -> Result<u16, String> {
        if self.0.len() < 2 {
            return Err("frame truncated".into());
        }
        let (v, rest) = self.0.split_at(2);
        self.0 = rest;
        Ok(u16::from_be_bytes([v[0], v[1]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = usize::from(self.u16()?);
        if self.0.len() < len {
            return Err("frame truncated".into());
        }
        let (v, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(v)
    }

    fn string(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "string is not UTF-8".to_string())
    }

    fn headers(&mut self) -> Result<http::HeaderMap, String> {
        let count = self.u16()?;
        let mut headers = http::HeaderMap::with_capacity(usize::from(count).min(128));
        for _ in 0..count {
            let name = http::HeaderName::from_bytes(self.bytes()?)
                .map_err(|_| "invalid header name".to_string())?;
            let value = http::HeaderValue::from_bytes(self.bytes()?)
                .map_err(|_| format!("invalid value of header {name}"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }

    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes in frame".into())
        }
    }
}

fn encode_request<B>(target: &Target, request: &hyper::Request<B>) -> Result<Bytes, String> {
    let mut e = Encoder::new(KIND_REQUEST);
    e.bytes(target.namespace.as_bytes())?;
    e.bytes(target.pod.as_bytes())?;
    e.u16(target.port);
    e.bytes(request.method().as_str().as_bytes())?;
    e.bytes(request.uri().to_string().as_bytes())?;
    e.headers(request.headers())?;
    e.finish()
}

fn decode_request(frame: &[u8]) -> Result<(Target, http::request::Parts), String> {
    let mut d = Decoder(frame);
    if d.u8()? != KIND_REQUEST {
        return Err("not a request frame".into());
    }
    let target = Target {
        namespace: d.string()?.to_owned(),
        pod: d.string()?.to_owned(),
        port: d.u16()?,
    };
    let method = http::Method::from_bytes(d.bytes()?).map_err(|_| "invalid method".to_string())?;
    let uri: http::Uri = d.string()?.parse().map_err(|_| "invalid URI".to_string())?;
    let headers = d.headers()?;
    d.end()?;
    let (mut parts, ()) = hyper::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.headers = headers;
    Ok((target, parts))
}

enum Verdict {
    Accepted,
    NoSuchPod(String),
}

fn decode_verdict(frame: &[u8]) -> Result<Verdict, String> {
    let mut d = Decoder(frame);
    match d.u8()? {
        KIND_ACCEPTED => {
            d.end()?;
            Ok(Verdict::Accepted)
        }
        KIND_NO_SUCH_POD => {
            let reason = String::from_utf8_lossy(d.bytes()?).into_owned();
            d.end()?;
            Ok(Verdict::NoSuchPod(reason))
        }
        kind => Err(format!("expected a verdict, got frame kind {kind:#x}")),
    }
}

fn encode_response(status: http::StatusCode, headers: &http::HeaderMap) -> Result<Bytes, String> {
    let mut e = Encoder::new(KIND_RESPONSE);
    e.u16(status.as_u16());
    e.headers(headers)?;
    e.finish()
}

fn decode_response(frame: &[u8]) -> Result<(http::StatusCode, http::HeaderMap), String> {
    let mut d = Decoder(frame);
    if d.u8()? != KIND_RESPONSE {
        return Err("not a response frame".into());
    }
    let status = http::StatusCode::from_u16(d.u16()?).map_err(|_| "invalid status".to_string())?;
    let headers = d.headers()?;
    d.end()?;
    Ok((status, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            namespace: "default".into(),
            pod: "web-1".into(),
            port: 8080,
        }
    }

    #[test]
    fn request_frames_round_trip() {
        let request = hyper::Request::post("/submit?x=1")
            .header("host", "web")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .header(
                "x-opaque",
                http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
            )
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let frame = encode_request(&target(), &request).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let (t, parts) = decode_request(&frame[4..]).unwrap();
        assert_eq!(t, target());
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri, "/submit?x=1");
        let multi: Vec<_> = parts.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(parts.headers["x-opaque"].as_bytes(), b"caf\xe9");
        assert!(!parts.headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn response_and_verdict_frames_round_trip() {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "text/plain".parse().unwrap());
        let frame = encode_response(http::StatusCode::NOT_FOUND, &headers).unwrap();
        let (status, back) = decode_response(&frame[4..]).unwrap();
        assert_eq!(status, 404);
        assert_eq!(back, headers);
        assert!(matches!(
            decode_verdict(&Encoder::new(KIND_ACCEPTED).finish().unwrap()[4..]),
            Ok(Verdict::Accepted)
        ));
        // A response is not a verdict, nor a verdict a response.
        assert!(decode_verdict(&frame[4..]).is_err());
        assert!(decode_response(&Encoder::new(KIND_ACCEPTED).finish().unwrap()[4..]).is_err());
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let frame = encode_request(
            &target(),
            &hyper::Request::get("/").header("a", "b").body(()).unwrap(),
        )
        .unwrap();
        // Every truncation and every single-byte corruption decodes to an
        // error or a value, never a panic.
        for end in 0..frame.len() - 4 {
            assert!(decode_request(&frame[4..4 + end]).is_err());
        }
        for i in 4..frame.len() {
            for b in [0u8, 0x7f, 0xff] {
                let mut bad = frame.to_vec();
                bad[i] = b;
                let _ = decode_request(&bad[4..]);
                let _ = decode_response(&bad[4..]);
                let _ = decode_verdict(&bad[4..]);
            }
        }
        assert!(decode_request(&[]).is_err());
        // A header count larger than the frame holds.
        assert!(decode_response(&[KIND_RESPONSE, 0, 200, 0xff, 0xff]).is_err());
    }

    #[test]
    fn oversized_heads_are_refused_before_sending() {
        let big = "x".repeat(40 * 1024);
        let request = hyper::Request::get("/")
            .header("a", big.as_str())
            .header("b", big.as_str())
            .body(())
            .unwrap();
        assert!(encode_request(&target(), &request).is_err());
    }

    #[test]
    fn only_unreachable_and_no_such_pod_are_retryable() {
        assert!(
            MeshError::Unreachable {
                node: "n".into(),
                reason: "r".into()
            }
            .retryable()
        );
        assert!(
            MeshError::NoSuchPod {
                node: "n".into(),
                namespace: "d".into(),
                pod: "p".into(),
                port: 1
            }
            .retryable()
        );
        assert!(!MeshError::Failed("x".into()).retryable());
    }
}
