//! Which gossiped records this node believes.
//!
//! Gossip spreads each node's record through third parties, so a record
//! proves who wrote it by itself: a node gossips its certificate under
//! [`CERT_KEY`], and its info signed for this incarnation (cluster, node
//! id, generation, gossip address).
//!
//! Invariant: with an [`Identity`], a member is reported only under the
//! node id its cluster-issued certificate names, with info that node signed
//! for exactly that incarnation. A record that stops verifying (a key
//! holder rewrote it) keeps the last info that verified for that
//! incarnation, and a record that never verified is not reported at all;
//! nor is one whose believed info was signed with a certificate the cluster
//! no longer accepts ([`Identity::accepts`]).

use std::collections::HashMap;
use std::sync::Arc;

use chitchat::ChitchatId;

use crate::error::Unreadable;
use crate::info::NodeInfo;

/// The chitchat key of a node's certificate (hex of DER).
pub(crate) const CERT_KEY: &str = "cert";
/// Separates the hex signature from the info it signs in the info value.
const SIGNATURE_SEPARATOR: char = ':';
/// Tells these signatures from any other use of a node's key.
const SIGNATURE_CONTEXT: &str = "blixard gossip info v1";

/// How gossip proves and checks node identity; the daemon implements it
/// over the cluster's certificates.
pub trait Identity: Send + Sync + 'static {
    /// This node's certificate now, DER (a renewal replaces it while the
    /// node runs; [`crate::Membership::publish`] gossips the new one).
    fn certificate_der(&self) -> Vec<u8>;
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, IdentityError>;
    /// The node id `certificate_der` proves, if the cluster issued it.
    fn certified_node(&self, certificate_der: &[u8]) -> Result<u64, IdentityError>;
    /// Whether the cluster still accepts `certificate_der` for `node_id`
    /// (a renewal retires the old certificate, a removal all of them).
    /// Asked again on every read of the members, so a record a retired
    /// certificate signed stops counting the moment the cluster says so.
    fn accepts(&self, node_id: u64, certificate_der: &[u8]) -> bool;
    /// Whether `certificate_der`'s key signed `message`.
    fn check_signature(
        &self,
        certificate_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError>;
}

/// Why a certificate or signature was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(pub String);

/// What a node signs to vouch for its info in one incarnation.
fn signed_message(cluster: &str, id: &ChitchatId, info_json: &str) -> Vec<u8> {
    format!(
        "{SIGNATURE_CONTEXT}\n{cluster}\n{}\n{}\n{}\n{info_json}",
        id.node_id, id.generation_id, id.gossip_advertise_addr
    )
    .into_bytes()
}

/// The info value a node gossips: its signature, then the info.
pub(crate) fn sign_info(
    identity: &dyn Identity,
    cluster: &str,
    id: &ChitchatId,
    info_json: &str,
) -> Result<String, IdentityError> {
    let signature = identity.sign(&signed_message(cluster, id, info_json))?;
    Ok(format!(
        "{}{SIGNATURE_SEPARATOR}{info_json}",
        hex::encode(signature)
    ))
}

/// Whether two info values carry the same info (signatures aside).
pub(crate) fn same_info(a: &str, b: &str) -> bool {
    let info = |value: &str| -> String {
        value
            .split_once(SIGNATURE_SEPARATOR)
            .filter(|(signature, _)| !signature.starts_with('{'))
            .map_or(value, |(_, json)| json)
            .to_string()
    };
    info(a) == info(b)
}

/// Checks records and remembers what it checked.
pub(crate) struct Verifier {
    identity: Arc<dyn Identity>,
    cluster: String,
    seen: HashMap<ChitchatId, Seen>,
}

/// What was last checked of one incarnation's record.
struct Seen {
    cert_value: String,
    certified: Result<(), Unreadable>,
    info_value: String,
    info_checked: Result<(), Unreadable>,
    /// The last info that verified, and the certificate (DER) it
    /// verified with.
    believed: Option<(NodeInfo, Vec<u8>)>,
}

impl Verifier {
    pub(crate) fn new(identity: Arc<dyn Identity>, cluster: String) -> Self {
        Self {
            identity,
            cluster,
            seen: HashMap::new(),
        }
    }

    /// The info to believe for incarnation `id` (gossiping as `node_id`),
    /// or why there is none.
    pub(crate) fn check(
        &mut self,
        id: &ChitchatId,
        node_id: u64,
        cert: Option<&str>,
        info: Option<&str>,
    ) -> Result<NodeInfo, Unreadable> {
        let cert = cert.ok_or(Unreadable::NoCertificate)?;
        let info = info.ok_or(Unreadable::NoInfo)?;
        let seen = self.seen.entry(id.clone()).or_insert_with(|| Seen {
            cert_value: String::new(),
            certified: Err(Unreadable::Unchecked),
            info_value: String::new(),
            info_checked: Err(Unreadable::Unchecked),
            believed: None,
        });
        let cert_changed = seen.cert_value != cert;
        if cert_changed {
            seen.cert_value = cert.to_string();
            seen.certified = certify(self.identity.as_ref(), cert, node_id);
        }
        if cert_changed || seen.info_value != info {
            seen.info_value = info.to_string();
            seen.info_checked = seen.certified.clone().and_then(|()| {
                let (signature, json) = info
                    .split_once(SIGNATURE_SEPARATOR)
                    .ok_or(Unreadable::Unsigned)?;
                let signature =
                    hex::decode(signature).map_err(|_| Unreadable::UndecodableSignature)?;
                let cert_der = hex::decode(cert).map_err(|_| Unreadable::UndecodableCertificate)?;
                self.identity
                    .check_signature(
                        &cert_der,
                        &signed_message(&self.cluster, id, json),
                        &signature,
                    )
                    .map_err(|e| Unreadable::BadSignature(e.to_string()))?;
                let decoded = NodeInfo::decode(json)?;
                if decoded.node_id != node_id {
                    return Err(Unreadable::OtherNodesInfo {
                        claims: decoded.node_id,
                        node_id,
                    });
                }
                // A replay of the node's own record from before a
                // renewal verifies, but must not displace the renewed one.
                if !self.identity.accepts(node_id, &cert_der) {
                    return Err(Unreadable::RetiredCertificate(node_id));
                }
                seen.believed = Some((decoded, cert_der));
                Ok(())
            });
            if let Err(why) = &seen.info_checked {
                tracing::warn!(
                    node_id,
                    generation = id.generation_id,
                    gossip_address = %id.gossip_advertise_addr,
                    believed = seen.believed.is_some(),
                    "ignoring an unverified gossip record: {why}"
                );
            }
        }
        // A record that verified is believed, so `info_checked` holds the
        // reason whenever nothing is.
        let (info, cert_der) = seen.believed.as_ref().ok_or_else(|| {
            seen.info_checked
                .clone()
                .err()
                .unwrap_or(Unreadable::Unchecked)
        })?;
        if !self.identity.accepts(node_id, cert_der) {
            return Err(Unreadable::RetiredCertificate(node_id));
        }
        Ok(info.clone())
    }

    /// Forgets incarnations gossip no longer holds.
    pub(crate) fn retain(&mut self, held: impl Fn(&ChitchatId) -> bool) {
        self.seen.retain(|id, _| held(id));
    }
}

fn certify(identity: &dyn Identity, cert: &str, node_id: u64) -> Result<(), Unreadable> {
    let der = hex::decode(cert).map_err(|_| Unreadable::UndecodableCertificate)?;
    let named = identity
        .certified_node(&der)
        .map_err(|e| Unreadable::CertificateRefused(e.to_string()))?;
    if named != node_id {
        return Err(Unreadable::OtherNodesCertificate {
            certified: named,
            node_id,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stand-in identity for unit tests: a "certificate" is `cert:ID`
    /// (or `cert:ID/SERIAL` once renewed), accepted for ids below 100
    /// unless listed in `retired`, and a "signature" is the message with
    /// the certificate prefixed. The real one (over the cluster CA) is
    /// tested in the api crate and against real daemons.
    pub(crate) struct FakeIdentity {
        cert: std::sync::Mutex<Vec<u8>>,
        /// Certificates the "cluster" no longer accepts.
        pub(crate) retired: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    impl FakeIdentity {
        pub(crate) fn new(node_id: u64) -> Self {
            Self {
                cert: std::sync::Mutex::new(format!("cert:{node_id}").into_bytes()),
                retired: Arc::default(),
            }
        }

        /// Signs with `cert:ID/serial` from now on.
        pub(crate) fn renew(&self, node_id: u64, serial: u64) {
            *self.cert.lock().unwrap() = format!("cert:{node_id}/{serial}").into_bytes();
        }
    }

    impl Identity for FakeIdentity {
        fn certificate_der(&self) -> Vec<u8> {
            self.cert.lock().unwrap().clone()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
            Ok([self.certificate_der().as_slice(), message].concat())
        }
        fn certified_node(&self, der: &[u8]) -> Result<u64, IdentityError> {
            std::str::from_utf8(der)
                .ok()
                .and_then(|text| text.strip_prefix("cert:"))
                .and_then(|id| id.split('/').next()?.parse::<u64>().ok())
                .filter(|id| *id < 100)
                .ok_or_else(|| IdentityError("not issued by this cluster".into()))
        }
        fn accepts(&self, _node_id: u64, der: &[u8]) -> bool {
            !self
                .retired
                .lock()
                .unwrap()
                .iter()
                .any(|retired| retired == der)
        }
        fn check_signature(
            &self,
            der: &[u8],
            message: &[u8],
            signature: &[u8],
        ) -> Result<(), IdentityError> {
            (signature == [der, message].concat())
                .then_some(())
                .ok_or_else(|| IdentityError("mismatch".into()))
        }
    }

    fn info(node_id: u64, vms_running: u32) -> NodeInfo {
        let mut info = crate::gossip::tests::info(node_id);
        info.vms_running = vms_running;
        info
    }

    fn id(node: &str, generation: u64) -> ChitchatId {
        ChitchatId::new(node, generation, "127.0.0.1:7000".parse().unwrap())
    }

    fn record(signer: u64, id: &ChitchatId, info: &NodeInfo) -> (String, String) {
        let identity = FakeIdentity::new(signer);
        let cert = hex::encode(identity.certificate_der());
        let value = sign_info(&identity, "test", id, &info.encode()).unwrap();
        (cert, value)
    }

    #[test]
    fn a_record_is_believed_only_from_the_node_it_names_for_that_incarnation() {
        let mut verifier = Verifier::new(Arc::new(FakeIdentity::new(1)), "test".into());
        let two = id("2", 10);
        let (cert, value) = record(2, &two, &info(2, 0));
        assert_eq!(
            verifier.check(&two, 2, Some(&cert), Some(&value)),
            Ok(info(2, 0))
        );

        // Node 5's certificate cannot speak for node 2.
        let (cert5, value5) = record(5, &two, &info(2, 0));
        let error = verifier
            .check(&id("2", 11), 2, Some(&cert5), Some(&value5))
            .unwrap_err();
        assert_eq!(
            error,
            Unreadable::OtherNodesCertificate {
                certified: 5,
                node_id: 2
            }
        );

        // A signed record replayed under a newer generation or another
        // address does not verify.
        let newer = id("2", 11);
        assert!(matches!(
            verifier.check(&newer, 2, Some(&cert), Some(&value)),
            Err(Unreadable::BadSignature(_))
        ));
        let moved = ChitchatId::new("2", 10, "127.0.0.1:7999".parse().unwrap());
        assert!(verifier
            .check(&moved, 2, Some(&cert), Some(&value))
            .is_err());

        // Unsigned, unissued or absent records are not believed.
        assert!(verifier
            .check(
                &id("3", 1),
                3,
                Some(&hex::encode("cert:3")),
                Some(&info(3, 0).encode())
            )
            .is_err());
        let (cert_far, value_far) = record(300, &id("300", 1), &info(300, 0));
        assert!(matches!(
            verifier.check(&id("300", 1), 300, Some(&cert_far), Some(&value_far)),
            Err(Unreadable::CertificateRefused(_))
        ));
        assert!(verifier.check(&two, 2, None, Some(&value)).is_err());
    }

    #[test]
    fn a_rewritten_record_keeps_the_last_info_that_verified() {
        let mut verifier = Verifier::new(Arc::new(FakeIdentity::new(1)), "test".into());
        let two = id("2", 10);
        let (cert, first) = record(2, &two, &info(2, 1));
        verifier.check(&two, 2, Some(&cert), Some(&first)).unwrap();
        let (_, second) = record(2, &two, &info(2, 2));
        assert_eq!(
            verifier.check(&two, 2, Some(&cert), Some(&second)),
            Ok(info(2, 2))
        );
        // A key holder rewrites node 2's record with a forged signature.
        let forged =
            format!("00{}", &second[2..]).replace("\"vms_running\":2", "\"vms_running\":9");
        assert_eq!(
            verifier.check(&two, 2, Some(&cert), Some(&forged)),
            Ok(info(2, 2))
        );
        verifier.retain(|held| held != &two);
        assert!(verifier.check(&two, 2, Some(&cert), Some(&forged)).is_err());
    }

    #[test]
    fn a_record_signed_with_a_retired_certificate_stops_counting() {
        let own = FakeIdentity::new(1);
        let retired = own.retired.clone();
        let mut verifier = Verifier::new(Arc::new(own), "test".into());
        let two = id("2", 10);
        let (old_cert, old_value) = record(2, &two, &info(2, 1));
        assert!(verifier
            .check(&two, 2, Some(&old_cert), Some(&old_value))
            .is_ok());
        // Node 2 renews; a copy of its old key keeps gossiping a newer
        // incarnation, and the cluster retires the old certificate.
        let renewed = FakeIdentity::new(2);
        renewed.renew(2, 1);
        let new_cert = hex::encode(renewed.certificate_der());
        let new_value = sign_info(&renewed, "test", &two, &info(2, 2).encode()).unwrap();
        let impostor = id("2", 11);
        let (_, impostor_value) = record(2, &impostor, &info(2, 7));
        assert!(verifier
            .check(&impostor, 2, Some(&old_cert), Some(&impostor_value))
            .is_ok());
        retired
            .lock()
            .unwrap()
            .push(hex::decode(&old_cert).unwrap());
        let refused = verifier
            .check(&impostor, 2, Some(&old_cert), Some(&impostor_value))
            .unwrap_err();
        assert_eq!(refused, Unreadable::RetiredCertificate(2));
        // Until the renewed record arrives, the old one does not count
        // either; then the renewed one does.
        assert!(verifier
            .check(&two, 2, Some(&old_cert), Some(&old_value))
            .is_err());
        assert_eq!(
            verifier.check(&two, 2, Some(&new_cert), Some(&new_value)),
            Ok(info(2, 2))
        );
        // A key holder replaying the record from before the renewal (a
        // valid signature) does not displace the renewed one.
        assert_eq!(
            verifier.check(&two, 2, Some(&old_cert), Some(&old_value)),
            Ok(info(2, 2))
        );
    }
}
