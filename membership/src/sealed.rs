//! Gossip over UDP, every datagram sealed with the cluster's gossip key.
//!
//! Invariant: with a keyring, no datagram reaches chitchat's decoder unless
//! it opened under one of the keys (ChaCha20-Poly1305; the authenticated
//! data binds the format tag and the cluster name), and every datagram
//! sent is sealed with the first key under a fresh random nonce, naming
//! that key by id so a receiver opens it with that key alone. So a sender
//! without the key can neither be heard nor read, nor make a node try
//! every key it holds.
//!
//! Replays of a sealed datagram are not detected. Chitchat ignores state
//! no newer than what it holds, so a replay changes nothing but can draw a
//! reply.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, TRANSPORT_OVERHEAD_MAX};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Leads every sealed datagram; a new format gets a new tag.
const FORMAT_TAG: &[u8; 4] = b"BXG2";
/// Names the sealing key (the head of its SHA-256), so a receiver tries
/// only the key it names rather than every key it holds.
const KEY_ID_LEN: usize = 4;
const TAG_LEN: usize = 16;
/// What sealing adds to a datagram.
const SEAL_OVERHEAD: usize = FORMAT_TAG.len() + KEY_ID_LEN + NONCE_LEN + TAG_LEN;
const _: () = assert!(SEAL_OVERHEAD <= TRANSPORT_OVERHEAD_MAX);
/// The largest UDP payload over IPv4.
const DATAGRAM_LEN_MAX: usize = 65_507;
/// Refused datagrams are logged at most once per this interval (with the
/// count since), so a flood cannot flood the log.
const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// The cluster's gossip keys: the first seals, each opens.
pub struct Keyring {
    /// Each key with its id.
    keys: Vec<([u8; KEY_ID_LEN], LessSafeKey)>,
    /// Format tag and cluster name.
    aad: Vec<u8>,
    rng: SystemRandom,
    refused: AtomicU64,
}

impl Keyring {
    /// A keyring for gossip within `cluster_name`; `keys` is not empty.
    pub fn new(keys: &[[u8; 32]], cluster_name: &str) -> Self {
        assert!(!keys.is_empty(), "a keyring needs a key to seal with");
        let keys = keys
            .iter()
            .map(|key| {
                let digest = ring::digest::digest(&ring::digest::SHA256, key);
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
                let key = LessSafeKey::new(
                    UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20 key"),
                );
                (id, key)
            })
            .collect();
        let mut aad = FORMAT_TAG.to_vec();
        aad.extend_from_slice(cluster_name.as_bytes());
        Self {
            keys,
            aad,
            rng: SystemRandom::new(),
            refused: AtomicU64::new(0),
        }
    }

    /// Datagrams refused since start (no key opened them).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Seals `plain` into `out` (cleared first).
    fn seal(&self, plain: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let (id, key) = &self.keys[0];
        out.clear();
        out.extend_from_slice(FORMAT_TAG);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.aad),
                &mut out[FORMAT_TAG.len() + KEY_ID_LEN + NONCE_LEN..],
            )
            .map_err(|_| anyhow::anyhow!("sealing a gossip datagram failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// The plain text of `datagram` in `scratch`, if a key opens it.
    fn open<'a>(&self, datagram: &[u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        let rest = datagram.strip_prefix(FORMAT_TAG)?;
        if rest.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = rest.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let mut opened_len = None;
        // Only the key the datagram names (two keys sharing an id, one in
        // 2^32, are both tried).
        for (_, key) in self.keys.iter().filter(|(key_id, _)| key_id == id) {
            // A failed open leaves the buffer unspecified: start over from
            // the datagram for each key.
            scratch.clear();
            scratch.extend_from_slice(sealed);
            if let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.aad),
                scratch,
            ) {
                opened_len = Some(plain.len());
                break;
            }
        }
        opened_len.map(|len| &scratch[..len])
    }
}

/// Chitchat's UDP transport with every datagram sealed by a [`Keyring`].
pub struct SealedUdpTransport {
    pub keyring: Arc<Keyring>,
}

#[async_trait]
impl Transport for SealedUdpTransport {
    async fn open(&self, bind_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(bind_addr)
            .await
            .map_err(|e| anyhow::anyhow!("failed to bind to {bind_addr}/UDP for gossip: {e}"))?;
        Ok(Box::new(SealedSocket {
            socket,
            keyring: self.keyring.clone(),
            plain: Vec::with_capacity(DATAGRAM_LEN_MAX),
            sealed: Vec::with_capacity(DATAGRAM_LEN_MAX),
            received: vec![0u8; DATAGRAM_LEN_MAX].into_boxed_slice(),
            refusals_logged: None,
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    keyring: Arc<Keyring>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    received: Box<[u8]>,
    /// When refusals were last logged, and the count then.
    refusals_logged: Option<(tokio::time::Instant, u64)>,
}

impl SealedSocket {
    fn refuse(&mut self, from: SocketAddr, len: usize, why: &str) {
        let refused = self.keyring.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = tokio::time::Instant::now();
        let due = self.refusals_logged.is_none_or(|(at, _)| {
            now.duration_since(at).as_millis() as u64 >= REFUSAL_LOG_INTERVAL_MS
        });
        if due {
            let since = refused - self.refusals_logged.map_or(0, |(_, count)| count);
            tracing::warn!(
                %from,
                len,
                refused_since_last_report = since,
                "refused a gossip datagram: {why}"
            );
            self.refusals_logged = Some((now, refused));
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.plain.clear();
        envelope.serialize(&mut self.plain);
        self.keyring.seal(&self.plain, &mut self.sealed)?;
        #[cfg(not(madsim))]
        self.socket.send_to(&self.sealed, to).await?;
        #[cfg(madsim)]
        self.socket.send_to(to, &self.sealed).await?;
        Ok(SendOutcome {
            num_bytes_sent: self.sealed.len(),
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from_addr) = match self.socket.recv_from(&mut self.received).await {
                Ok(received) => received,
                // A peer that went away (ICMP unreachable) or a moment of
                // memory pressure is not the end of gossip.
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::OutOfMemory
                    ) =>
                {
                    tracing::debug!(%error, "transient gossip receive error");
                    continue;
                }
                Err(error) => return Err(anyhow::anyhow!("gossip socket failed: {error}")),
            };
            let keyring = self.keyring.clone();
            let Some(mut plain) = keyring.open(&self.received[..len], &mut self.plain) else {
                self.refuse(from_addr, len, "not sealed with this cluster's gossip key");
                continue;
            };
            match ChitchatEnvelope::deserialize(&mut plain) {
                Ok(envelope) => {
                    return Ok(RecvOutcome {
                        from_addr,
                        envelope,
                        num_bytes_received: len,
                    })
                }
                // Sealed by a key holder, so a bug or a version skew
                // rather than an attack: still never decoded further.
                Err(error) => {
                    tracing::warn!(from = %from_addr, %error, "undecodable sealed gossip datagram")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(keys: &[[u8; 32]], cluster: &str) -> Keyring {
        Keyring::new(keys, cluster)
    }

    #[test]
    fn only_a_keyring_holding_the_sealing_key_for_the_same_cluster_opens() {
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let sender = keyring(&[new, old], "prod");
        let mut sealed = Vec::new();
        sender.seal(b"hello", &mut sealed).unwrap();
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        let mut scratch = Vec::new();

        // Mid-rotation: a node holding both keys opens it either way round.
        for receiver in [keyring(&[old, new], "prod"), keyring(&[new], "prod")] {
            assert_eq!(receiver.open(&sealed, &mut scratch), Some(&b"hello"[..]));
        }
        assert_eq!(keyring(&[old], "prod").open(&sealed, &mut scratch), None);
        assert_eq!(keyring(&[new], "dev").open(&sealed, &mut scratch), None);

        // Any flipped bit, a truncation or a missing tag is refused.
        for index in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            assert_eq!(sender.open(&tampered, &mut scratch), None, "byte {index}");
        }
        assert_eq!(sender.open(&sealed[..sealed.len() - 1], &mut scratch), None);
        assert_eq!(sender.open(b"BXG2", &mut scratch), None);
        assert_eq!(sender.open(b"", &mut scratch), None);

        // Fresh nonces: the same text never seals to the same bytes.
        let mut again = Vec::new();
        sender.seal(b"hello", &mut again).unwrap();
        assert_ne!(sealed, again);
    }
}
