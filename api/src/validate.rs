//! Input checks shared by the CLI and the gRPC servers.
//!
//! Every check returns a [`ValidationError`] that names the offending field
//! and value, so a user sees what to fix without reading logs.

use crate::pb;

/// Bounds on what a VM may ask for.
pub mod limits {
    /// DNS labels are at most 63 bytes (RFC 1035).
    pub const VM_NAME_LEN_MAX: usize = 63;
    pub const VCPUS_MAX: u32 = 256;
    /// A guest smaller than this cannot boot a Linux kernel.
    pub const MEMORY_MIB_MIN: u64 = 16;
    /// 4 TiB: far beyond any host Blixard targets; larger is a typo.
    pub const MEMORY_MIB_MAX: u64 = 4 * 1024 * 1024;
    pub const PATH_LEN_MAX: usize = 4096;
    pub const PORT_FORWARDS_MAX: usize = 32;
    /// Members of one replica group.
    pub const REPLICAS_MAX: u32 = 1000;
    /// Constraints plus preferences on one VM.
    pub const PLACEMENT_RULES_MAX: usize = 32;
}

/// Why a request was refused before reaching the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The VM name is not a DNS label.
    #[error("invalid VM name {name:?}: {reason}")]
    VmName { name: String, reason: &'static str },
    /// vCPU count outside `1..=VCPUS_MAX`.
    #[error("invalid vcpus {vcpus}: must be between 1 and {max}", max = limits::VCPUS_MAX)]
    Vcpus { vcpus: u32 },
    /// Memory outside `MEMORY_MIB_MIN..=MEMORY_MIB_MAX`.
    #[error(
        "invalid memory {memory_mib} MiB: must be between {min} and {max} MiB",
        min = limits::MEMORY_MIB_MIN,
        max = limits::MEMORY_MIB_MAX
    )]
    Memory { memory_mib: u64 },
    /// The runner source is missing or incomplete.
    #[error("invalid runner: {reason}")]
    Runner { reason: String },
    /// A required field was absent from the request.
    #[error("missing field {field}")]
    Missing { field: &'static str },
    /// A node id of zero (raft reserves 0 for "none").
    #[error("invalid node id 0: node ids start at 1")]
    NodeIdZero,
    /// A network address that is not HOST:PORT.
    #[error("invalid address {address:?}: expected HOST:PORT")]
    Address { address: String },
    /// A placement rule, group or strategy that makes no sense.
    #[error("invalid placement: {reason}")]
    Placement { reason: String },
    /// A replica count out of range.
    #[error("invalid replicas {replicas}: must be between 1 and {max}", max = limits::REPLICAS_MAX)]
    Replicas { replicas: u32 },
    /// A platform (document) name that is not a DNS label.
    #[error("invalid platform name {name:?}: {reason}")]
    Platform { name: String, reason: &'static str },
}

/// Checks a platform document's name: a DNS label, like a VM name.
pub fn platform_name(name: &str) -> Result<(), ValidationError> {
    vm_name(name).map_err(|e| match e {
        ValidationError::VmName { name, reason } => ValidationError::Platform { name, reason },
        other => other,
    })
}

/// Checks that `name` is a DNS label: 1-63 of `[a-z0-9-]`, not starting or
/// ending with `-`. VM names become host names, unit names and directory
/// names, so anything else would break one of them.
pub fn vm_name(name: &str) -> Result<(), ValidationError> {
    let refuse = |reason| {
        Err(ValidationError::VmName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("must not be empty");
    }
    if name.len() > limits::VM_NAME_LEN_MAX {
        return refuse("must be at most 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return refuse("may contain only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return refuse("must not start or end with '-'");
    }
    Ok(())
}

/// Checks a whole VM spec (see the crate invariant).
pub fn vm_spec(spec: &pb::VmSpec) -> Result<(), ValidationError> {
    vm_name(&spec.name)?;
    if spec.vcpus == 0 || spec.vcpus > limits::VCPUS_MAX {
        return Err(ValidationError::Vcpus { vcpus: spec.vcpus });
    }
    if spec.memory_mib < limits::MEMORY_MIB_MIN || spec.memory_mib > limits::MEMORY_MIB_MAX {
        return Err(ValidationError::Memory {
            memory_mib: spec.memory_mib,
        });
    }
    runner(spec.runner.as_ref())?;
    placement(spec)
}

fn placement(spec: &pb::VmSpec) -> Result<(), ValidationError> {
    let refuse = |reason: String| Err(ValidationError::Placement { reason });
    if spec.constraints.len() + spec.preferences.len() > limits::PLACEMENT_RULES_MAX {
        return refuse(format!(
            "at most {} constraints and preferences",
            limits::PLACEMENT_RULES_MAX
        ));
    }
    if !spec.anti_affinity_group.is_empty() {
        if let Err(ValidationError::VmName { reason, .. }) = vm_name(&spec.anti_affinity_group) {
            return refuse(format!(
                "anti-affinity group {:?} {reason}",
                spec.anti_affinity_group
            ));
        }
    }
    if !spec.affinity_group.is_empty() {
        if let Err(ValidationError::VmName { reason, .. }) = vm_name(&spec.affinity_group) {
            return refuse(format!("affinity group {:?} {reason}", spec.affinity_group));
        }
    }
    if !spec.platform.is_empty() {
        platform_name(&spec.platform)?;
    }
    if !matches!(spec.strategy.as_str(), "" | "spread" | "binpack") {
        return refuse(format!(
            "unknown strategy {:?} (expected spread or binpack)",
            spec.strategy
        ));
    }
    if spec.lost_after_ms != 0 && spec.lost_after_ms < 1_000 {
        return refuse(format!(
            "lost-after {} ms is below the 1000 ms minimum",
            spec.lost_after_ms
        ));
    }
    Ok(())
}

/// Checks a replica count and that NAME-N stays a valid VM name.
pub fn replicas(name: &str, replicas: u32) -> Result<(), ValidationError> {
    if replicas == 0 || replicas > limits::REPLICAS_MAX {
        return Err(ValidationError::Replicas { replicas });
    }
    vm_name(&format!("{name}-{replicas}"))
}

fn runner(runner: Option<&pb::RunnerSource>) -> Result<(), ValidationError> {
    let refuse = |reason: &str| {
        Err(ValidationError::Runner {
            reason: reason.to_string(),
        })
    };
    match runner.and_then(|r| r.source.as_ref()) {
        None => refuse("give either a kernel and initrd or a flake reference"),
        Some(pb::runner_source::Source::Kernel(k)) => {
            if k.kernel_path.is_empty() || k.initrd_path.is_empty() {
                return refuse("a kernel runner needs both a kernel path and an initrd path");
            }
            if k.kernel_path.len() > limits::PATH_LEN_MAX
                || k.initrd_path.len() > limits::PATH_LEN_MAX
            {
                return refuse("path longer than 4096 bytes");
            }
            ports(&k.ports)
        }
        Some(pb::runner_source::Source::Flake(f)) => {
            if f.flake_ref.trim().is_empty() {
                return refuse("the flake reference is empty");
            }
            if f.flake_ref.len() > limits::PATH_LEN_MAX {
                return refuse("flake reference longer than 4096 bytes");
            }
            Ok(())
        }
    }
}

fn ports(ports: &[pb::PortForward]) -> Result<(), ValidationError> {
    let refuse = |reason: String| Err(ValidationError::Runner { reason });
    if ports.len() > limits::PORT_FORWARDS_MAX {
        return refuse(format!(
            "at most {} port forwards",
            limits::PORT_FORWARDS_MAX
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for port in ports {
        for (what, value) in [("host", port.host_port), ("guest", port.guest_port)] {
            if value == 0 || value > u32::from(u16::MAX) {
                return refuse(format!("{what} port {value} is not between 1 and 65535"));
            }
        }
        if !seen.insert(port.host_port) {
            return refuse(format!("host port {} is forwarded twice", port.host_port));
        }
    }
    Ok(())
}

/// Checks a `HOST:PORT` address (host may be a name, IPv4 or `[IPv6]`).
pub fn address(address: &str) -> Result<(), ValidationError> {
    let refuse = || {
        Err(ValidationError::Address {
            address: address.to_string(),
        })
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return refuse();
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return refuse();
    }
    Ok(())
}

/// Checks a node id.
pub fn node_id(node_id: u64) -> Result<(), ValidationError> {
    if node_id == 0 {
        return Err(ValidationError::NodeIdZero);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel_spec(name: &str, vcpus: u32, memory_mib: u64) -> pb::VmSpec {
        pb::VmSpec {
            name: name.into(),
            vcpus,
            memory_mib,
            pinned_node: 0,
            runner: Some(pb::RunnerSource {
                source: Some(pb::runner_source::Source::Kernel(pb::KernelRunner {
                    kernel_path: "/k".into(),
                    initrd_path: "/i".into(),
                    cmdline: String::new(),
                    ports: Vec::new(),
                })),
            }),
            ..pb::VmSpec::default()
        }
    }

    #[test]
    fn placement_and_replicas_are_checked() {
        let mut spec = kernel_spec("web", 1, 64);
        spec.strategy = "pack".into();
        assert!(matches!(
            vm_spec(&spec),
            Err(ValidationError::Placement { .. })
        ));
        spec.strategy = "binpack".into();
        spec.anti_affinity_group = "Web Tier".into();
        assert!(matches!(
            vm_spec(&spec),
            Err(ValidationError::Placement { .. })
        ));
        spec.anti_affinity_group = "web".into();
        spec.lost_after_ms = 5;
        assert!(matches!(
            vm_spec(&spec),
            Err(ValidationError::Placement { .. })
        ));
        spec.lost_after_ms = 0;
        assert_eq!(vm_spec(&spec), Ok(()));
        assert_eq!(replicas("web", 3), Ok(()));
        assert!(matches!(
            replicas("web", 0),
            Err(ValidationError::Replicas { .. })
        ));
        assert!(
            replicas(&"x".repeat(62), 10).is_err(),
            "NAME-10 must stay a DNS label"
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        for good in ["a", "webapp", "web-1", "0abc", &"x".repeat(63)] {
            assert_eq!(vm_name(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", "é", &"x".repeat(64)] {
            assert!(vm_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(vm_spec(&kernel_spec("a", 1, 16)), Ok(()));
        assert_eq!(
            vm_spec(&kernel_spec("a", 0, 128)),
            Err(ValidationError::Vcpus { vcpus: 0 })
        );
        assert!(vm_spec(&kernel_spec("a", 257, 128)).is_err());
        assert!(vm_spec(&kernel_spec("a", 1, 15)).is_err());
        assert!(vm_spec(&kernel_spec("a", 1, limits::MEMORY_MIB_MAX + 1)).is_err());
    }

    #[test]
    fn runner_is_required() {
        let mut spec = kernel_spec("a", 1, 64);
        spec.runner = None;
        assert!(matches!(
            vm_spec(&spec),
            Err(ValidationError::Runner { .. })
        ));
    }

    #[test]
    fn addresses_need_host_and_port() {
        assert_eq!(address("127.0.0.1:7000"), Ok(()));
        assert_eq!(address("[::1]:7000"), Ok(()));
        for bad in ["127.0.0.1", ":7000", "h:0", "h:99999", "h:x"] {
            assert!(address(bad).is_err(), "{bad}");
        }
    }
}
