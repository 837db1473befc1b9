//! Who may call which RPC: the one table [`super::Authorize`] applies to
//! every request.
//!
//! Invariant: every RPC of `blixard.proto` has exactly one rule here (a
//! test walks the compiled descriptor set, so an RPC added without a rule
//! fails it), and a request for a path without a rule is refused.

pub use blixard_consensus::Permission;
use blixard_consensus::TokenRole;

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Cluster nodes only, by their certificate (tokens are not enough).
    Peer,
    /// Clients whose token allows this; nodes always.
    Client(Permission),
    /// Anyone: the request carries its own credential (a join token),
    /// which the service checks.
    JoinToken,
}

/// The rule for a gRPC path (`/blixard.v1.Vm/Create`).
pub fn rule(path: &str) -> Option<Rule> {
    use Permission::*;
    let (service, method) = path.strip_prefix("/blixard.v1.")?.split_once('/')?;
    let client = |permission| Some(Rule::Client(permission));
    match (service, method) {
        ("RaftTransport", "Stream") => Some(Rule::Peer),
        ("StateFeed", "Subscribe" | "Propose" | "Barrier") => Some(Rule::Peer),
        ("Cluster", "Join" | "SignCertificate") => Some(Rule::Peer),
        ("Cluster", "RenewCertificate") => client(ClusterAdmin),
        ("Cluster", "IssueCertificate") => Some(Rule::JoinToken),
        // A join token makes a node identity: as powerful as a token.
        ("Cluster", "CreateJoinToken" | "ListJoinTokens" | "RevokeJoinToken") => client(AclAdmin),
        ("Cluster", "Status" | "GetSettings" | "Events") => client(ClusterRead),
        ("Cluster", "RemoveNode" | "UpdateSettings") => client(ClusterAdmin),
        ("Node", "List" | "Get") => client(NodeRead),
        ("Node", "SetEligibility" | "Drain") => client(NodeWrite),
        ("Vm", "Get" | "List" | "Watch" | "Logs" | "Stats") => client(VmRead),
        ("Vm", "Create" | "Scale" | "Start" | "Stop" | "Delete") => client(VmWrite),
        (
            "Acl",
            "CreateToken" | "ListTokens" | "RevokeToken" | "CreateRole" | "ListRoles"
            | "DeleteRole",
        ) => client(AclAdmin),
        ("Acl", "Audit") => client(AuditRead),
        _ => None,
    }
}

/// Whether a token of a built-in `role` allows `permission` (custom
/// roles are the state's to answer: `ClusterState::role_allows`).
pub fn allows(role: &TokenRole, permission: Permission) -> bool {
    role.built_in_allows(permission).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of every service the proto declares.
    fn declared_paths() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(blixard_api::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        let mut paths = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        paths
    }

    #[test]
    fn every_rpc_in_the_proto_has_a_rule() {
        let paths = declared_paths();
        assert!(paths.len() > 25, "found only {paths:?}");
        for path in &paths {
            assert!(rule(path).is_some(), "{path} has no access rule");
        }
        assert_eq!(rule("/blixard.v1.Vm/Format"), None);
        assert_eq!(rule("/other.v1.Vm/Create"), None);
    }

    #[test]
    fn roles_nest() {
        use Permission::*;
        for permission in Permission::ALL {
            assert!(allows(&TokenRole::Admin, permission));
            if allows(&TokenRole::Viewer, permission) {
                assert!(allows(&TokenRole::Operator, permission), "{permission:?}");
            }
        }
        assert!(!allows(&TokenRole::Operator, AclAdmin));
        assert!(!allows(&TokenRole::Viewer, VmWrite));
        assert!(allows(&TokenRole::Viewer, VmRead));
        // Whoever may write VMs reads them whole (an export applies back
        // unchanged); a viewer sees secrets redacted.
        assert!(allows(&TokenRole::Operator, VmReadSecrets));
        assert!(!allows(&TokenRole::Viewer, VmReadSecrets));
        assert!(!allows(&TokenRole::Custom("ops".into()), VmRead));
    }
}
