//! Gossip sealed with a cluster key: every packet authenticated and encrypted, the way Consul
//! and Serf encrypt theirs.
//!
//! A sealed packet is `[version 1][24-byte random nonce][XChaCha20-Poly1305 ciphertext + tag]`.
//! Nodes hold a list of keys: they seal with the first and open with any, so a key is rotated
//! by adding the new one everywhere, then putting it first everywhere, then removing the old
//! one. A packet no key opens is dropped unread and counted
//! (`driftkv_gossip_packets_rejected_total`): a node without the key cannot join, impersonate a
//! member, or read what members publish. Replayed packets open, but gossip is idempotent
//! (state versions only move forward), so a replay can only repeat what a member once said.
//!
//! chitchat 0.13 keeps its wire codec private, so the sealing sits around an unchanged
//! chitchat UDP socket bound to loopback, which does the encoding: for each peer a loopback
//! relay socket stands in for it. What chitchat sends to a relay is sealed and sent to the
//! peer; what arrives from the peer is opened and handed to chitchat from the peer's relay,
//! and the relay's address maps chitchat's answer back to the peer. The relays only take
//! datagrams from chitchat's socket, and chitchat's socket only counts those from a relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::ChitchatEnvelope;
use driftkv_metrics::prometheus::IntCounter;
use driftkv_metrics::GOSSIP_PACKETS_REJECTED;
use rand::RngCore as _;
use tokio::task::JoinHandle;

/// The format version, first byte of every sealed packet.
const VERSION: u8 = 1;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// Bound to the ciphertext, so a sealed packet cannot pass for anything else.
const ASSOCIATED: &[u8] = b"driftkv-gossip-v1";
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// A 256-bit cluster gossip key.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey([u8; 32]);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cannot read the gossip key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A line is not a key.
    #[error("{path}, line {line}: not a gossip key (32 bytes in base64, as `driftkv certs init` writes)")]
    Invalid { path: String, line: usize },
    /// The file holds no key.
    #[error("{path} holds no gossip key")]
    Empty { path: String },
}

impl GossipKey {
    /// A new random key.
    pub fn generate() -> GossipKey {
        let mut key = [0; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        GossipKey(key)
    }

    /// The key in base64, as key files hold it.
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// A key from its base64 form.
    pub fn from_base64(text: &str) -> Option<GossipKey> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?;
        Some(GossipKey(bytes.try_into().ok()?))
    }

    /// The keys of a key file: one base64 key per line, the first one sealing; blank lines
    /// and lines starting with `#` are skipped.
    pub fn load_file(path: &Path) -> Result<Vec<GossipKey>, KeyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: name.clone(),
            source,
        })?;
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(GossipKey::from_base64(line).ok_or(KeyError::Invalid {
                path: name.clone(),
                line: index + 1,
            })?);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty { path: name });
        }
        Ok(keys)
    }
}

/// Seals and opens packets with a list of keys.
#[derive(Clone)]
pub(crate) struct Sealer {
    ciphers: Arc<Vec<XChaCha20Poly1305>>,
    unauthenticated: IntCounter,
    malformed: IntCounter,
}

/// Why a packet was dropped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    Malformed,
    Unauthenticated,
}

impl Sealer {
    /// A sealer with `keys` (the first seals), counting rejections under node label `node`.
    pub(crate) fn new(keys: &[GossipKey], node: &str) -> Sealer {
        assert!(!keys.is_empty(), "a sealer needs a key");
        Sealer {
            ciphers: Arc::new(
                keys.iter()
                    .map(|k| XChaCha20Poly1305::new((&k.0).into()))
                    .collect(),
            ),
            unauthenticated: GOSSIP_PACKETS_REJECTED.with_label_values(&[node, "unauthenticated"]),
            malformed: GOSSIP_PACKETS_REJECTED.with_label_values(&[node, "malformed"]),
        }
    }

    pub(crate) fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::rngs::OsRng);
        let sealed = self.ciphers[0]
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: ASSOCIATED,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length a datagram has");
        let mut packet = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        packet.push(VERSION);
        packet.extend_from_slice(&nonce);
        packet.extend_from_slice(&sealed);
        packet
    }

    /// The plaintext of a packet, or why it was dropped (and counted).
    pub(crate) fn open(&self, packet: &[u8]) -> Result<Vec<u8>, Rejected> {
        let outcome = self.try_open(packet);
        match outcome {
            Err(Rejected::Malformed) => self.malformed.inc(),
            Err(Rejected::Unauthenticated) => self.unauthenticated.inc(),
            Ok(_) => {}
        }
        outcome
    }

    fn try_open(&self, packet: &[u8]) -> Result<Vec<u8>, Rejected> {
        if packet.len() < 1 + NONCE_BYTES + TAG_BYTES || packet[0] != VERSION {
            return Err(Rejected::Malformed);
        }
        let (nonce, sealed) = packet[1..].split_at(NONCE_BYTES);
        self.ciphers
            .iter()
            .find_map(|cipher| {
                cipher
                    .decrypt(
                        nonce.into(),
                        Payload {
                            msg: sealed,
                            aad: ASSOCIATED,
                        },
                    )
                    .ok()
            })
            .ok_or(Rejected::Unauthenticated)
    }
}

/// chitchat's transport over UDP, every packet sealed.
pub(crate) struct SealedTransport {
    pub(crate) sealer: Sealer,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = Arc::new(tokio::net::UdpSocket::bind(listen_addr).await?);
        let codec = UdpSocket::open(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let relays = Relays {
            public: public.clone(),
            codec: codec.local_addr()?,
            sealer: self.sealer.clone(),
            by_peer: Arc::default(),
        };
        let inbound = tokio::spawn(inbound(relays.clone()));
        Ok(Box::new(SealedSocket {
            local: public.local_addr()?,
            codec,
            relays,
            inbound,
        }))
    }
}

/// A loopback socket standing in for one peer, and the task sealing what chitchat sends it.
struct Relay {
    socket: Arc<tokio::net::UdpSocket>,
    outbound: JoinHandle<()>,
}

/// The relays, by peer, and what they need.
#[derive(Clone)]
struct Relays {
    public: Arc<tokio::net::UdpSocket>,
    /// chitchat's loopback socket.
    codec: SocketAddr,
    sealer: Sealer,
    by_peer: Arc<Mutex<HashMap<SocketAddr, Arc<Relay>>>>,
}

impl Relays {
    /// The relay of `peer`, made on first use.
    async fn of(&self, peer: SocketAddr) -> std::io::Result<Arc<Relay>> {
        if let Some(relay) = self.by_peer.lock().expect("relay map").get(&peer) {
            return Ok(relay.clone());
        }
        let socket =
            Arc::new(tokio::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
        let outbound = tokio::spawn(outbound(
            socket.clone(),
            self.codec,
            peer,
            self.public.clone(),
            self.sealer.clone(),
        ));
        let relay = Arc::new(Relay { socket, outbound });
        let mut map = self.by_peer.lock().expect("relay map");
        // Another caller may have made one meanwhile: keep the first.
        let kept = map.entry(peer).or_insert_with(|| relay.clone()).clone();
        if !Arc::ptr_eq(&kept, &relay) {
            relay.outbound.abort();
        }
        Ok(kept)
    }

    /// The peer a relay address stands for.
    fn peer_of(&self, relay: SocketAddr) -> Option<SocketAddr> {
        self.by_peer
            .lock()
            .expect("relay map")
            .iter()
            .find(|(_, r)| r.socket.local_addr().ok() == Some(relay))
            .map(|(peer, _)| *peer)
    }

    fn abort_all(&self) {
        for relay in self.by_peer.lock().expect("relay map").values() {
            relay.outbound.abort();
        }
    }
}

/// Seals what chitchat sends to `relay` and sends it to `peer`.
async fn outbound(
    relay: Arc<tokio::net::UdpSocket>,
    codec: SocketAddr,
    peer: SocketAddr,
    public: Arc<tokio::net::UdpSocket>,
    sealer: Sealer,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let Ok((len, from)) = relay.recv_from(&mut buf).await else {
            continue;
        };
        if from != codec {
            continue;
        }
        if let Err(e) = public.send_to(&sealer.seal(&buf[..len]), peer).await {
            tracing::debug!(%peer, error = %e, "cannot send a gossip packet");
        }
    }
}

/// Opens what arrives from peers and hands it to chitchat from each peer's relay.
async fn inbound(relays: Relays) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let (len, peer) = match relays.public.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                // ICMP port-unreachable and the like surface here; they end nothing.
                tracing::debug!(error = %e, "gossip receive error");
                continue;
            }
        };
        let Ok(plain) = relays.sealer.open(&buf[..len]) else {
            tracing::debug!(%peer, "dropped a gossip packet no cluster key opens");
            continue;
        };
        match relays.of(peer).await {
            Ok(relay) => {
                let _ = relay.socket.send_to(&plain, relays.codec).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot open a gossip relay socket"),
        }
    }
}

struct SealedSocket {
    local: SocketAddr,
    codec: UdpSocket,
    relays: Relays,
    inbound: JoinHandle<()>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.inbound.abort();
        self.relays.abort_all();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let relay = self.relays.of(to).await?;
        self.codec.send(relay.socket.local_addr()?, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let mut outcome = self.codec.recv().await?;
            // Only what a relay handed over came from a peer.
            if let Some(peer) = self.relays.peer_of(outcome.from_addr) {
                outcome.from_addr = peer;
                return Ok(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_open_with_any_listed_key_and_seal_with_the_first() {
        let (old, new) = (GossipKey::generate(), GossipKey::generate());
        let rotating = Sealer::new(&[new.clone(), old.clone()], "sealed-test");
        let old_only = Sealer::new(std::slice::from_ref(&old), "sealed-test");
        let new_only = Sealer::new(std::slice::from_ref(&new), "sealed-test");
        let packet = old_only.seal(b"hello");
        assert_eq!(rotating.open(&packet).unwrap(), b"hello");
        let packet = rotating.seal(b"hi");
        assert_eq!(new_only.open(&packet).unwrap(), b"hi");
        assert_eq!(old_only.open(&packet), Err(Rejected::Unauthenticated));
    }

    #[test]
    fn tampered_short_and_foreign_packets_are_rejected_and_counted() {
        let key = GossipKey::generate();
        let sealer = Sealer::new(std::slice::from_ref(&key), "sealed-reject-test");
        let mut packet = sealer.seal(b"state");
        let last = packet.len() - 1;
        packet[last] ^= 1;
        assert_eq!(sealer.open(&packet), Err(Rejected::Unauthenticated));
        assert_eq!(sealer.open(b"short"), Err(Rejected::Malformed));
        // A plain chitchat packet (magic number first) is not a sealed one.
        assert_eq!(
            sealer.open(&[0x53, 0xb0, 0, 0].repeat(20)),
            Err(Rejected::Malformed)
        );
        let other = Sealer::new(&[GossipKey::generate()], "sealed-reject-test");
        assert_eq!(
            sealer.open(&other.seal(b"x")),
            Err(Rejected::Unauthenticated)
        );
        let counted = |reason| {
            GOSSIP_PACKETS_REJECTED
                .with_label_values(&["sealed-reject-test", reason])
                .get()
        };
        assert_eq!((counted("unauthenticated"), counted("malformed")), (2, 2));
    }

    #[test]
    fn key_files_list_keys_first_sealing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (GossipKey::generate(), GossipKey::generate());
        let path = dir.path().join("gossip.key");
        std::fs::write(
            &path,
            format!(
                "# rotated 2026-11\n{}\n\n{}\n",
                a.to_base64(),
                b.to_base64()
            ),
        )
        .unwrap();
        assert_eq!(GossipKey::load_file(&path).unwrap(), vec![a, b]);
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(matches!(
            GossipKey::load_file(&path),
            Err(KeyError::Empty { .. })
        ));
        std::fs::write(&path, "not-a-key\n").unwrap();
        assert!(matches!(
            GossipKey::load_file(&path),
            Err(KeyError::Invalid { line: 1, .. })
        ));
        assert!(GossipKey::from_base64(&base64_of(&[1; 31])).is_none());
    }

    fn base64_of(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}
