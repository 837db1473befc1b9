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
    /// The x86 kernel's `COMMAND_LINE_SIZE`: a longer command line is cut.
    pub const CMDLINE_LEN_MAX: usize = 2048;
    /// Free text a node or controller attaches (reasons, exit statuses).
    pub const TEXT_LEN_MAX: usize = 4096;
    /// Labels one node may carry.
    pub const LABELS_MAX: usize = 64;
    /// Bytes of a label key or value.
    pub const LABEL_LEN_MAX: usize = 253;
    /// Bytes of bad input an error message repeats.
    pub const ECHO_LEN_MAX: usize = 64;
    /// Items in a list page when the request names no limit.
    pub const PAGE_ITEMS_DEFAULT: usize = 500;
    /// Items in a list page at most (a larger limit is lowered to it).
    pub const PAGE_ITEMS_MAX: usize = 1000;
    /// Encoded bytes of the items in one page: half of gRPC's 4 MiB
    /// message limit, so a page always fits (one item, bounded by the
    /// field limits above, is far smaller).
    pub const PAGE_BYTES_MAX: usize = 2 * 1024 * 1024;
}

/// At most [`limits::ECHO_LEN_MAX`] bytes of `input`, for error messages:
/// a refused value is named, never repeated whole (a 64 KiB name would not
/// fit in a gRPC status).
pub fn echo(input: &str) -> String {
    if input.len() <= limits::ECHO_LEN_MAX {
        return input.to_string();
    }
    let mut end = limits::ECHO_LEN_MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &input[..end], input.len())
}

/// Why a request was refused before reaching the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The VM name is not a DNS label.
    #[error("invalid VM name {:?}: {reason}", echo(name))]
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
    #[error("invalid address {:?}: expected HOST:PORT", echo(address))]
    Address { address: String },
    /// A placement rule, group or strategy that makes no sense.
    #[error("invalid placement: {reason}")]
    Placement { reason: String },
    /// A replica count out of range.
    #[error("invalid replicas {replicas}: must be between 1 and {max}", max = limits::REPLICAS_MAX)]
    Replicas { replicas: u32 },
    /// A platform (document) name that is not a DNS label.
    #[error("invalid platform name {:?}: {reason}", echo(name))]
    Platform { name: String, reason: &'static str },
    /// Free text (a path, a command line, a label) out of bounds or
    /// holding control characters.
    #[error("invalid {field}: {reason}")]
    Text { field: &'static str, reason: String },
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
            path("kernel path", &k.kernel_path)?;
            path("initrd path", &k.initrd_path)?;
            cmdline(&k.cmdline)?;
            ports(&k.ports)
        }
        Some(pb::runner_source::Source::Flake(f)) => {
            if f.flake_ref.trim().is_empty() {
                return refuse("the flake reference is empty");
            }
            flake_ref(&f.flake_ref)
        }
    }
}

/// `text` made acceptable to [`text`]: control characters become spaces
/// and it is cut to at most `len_max` bytes. For text Blixard writes
/// itself from outside sources (a failed build's output, a reason), which
/// must never make its own report invalid.
pub fn clip(text: &str, len_max: usize) -> String {
    let mut clipped = String::with_capacity(text.len().min(len_max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if clipped.len() + c.len_utf8() > len_max {
            break;
        }
        clipped.push(c);
    }
    clipped
}

/// Refuses text longer than `len_max` bytes or holding control
/// characters (a newline or NUL would end a line in a script, a unit file
/// or a log).
pub fn text(field: &'static str, value: &str, len_max: usize) -> Result<(), ValidationError> {
    let refuse = |reason: String| Err(ValidationError::Text { field, reason });
    if value.len() > len_max {
        return refuse(format!("{} bytes, at most {len_max}", value.len()));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return refuse(format!("control character {c:?} in {:?}", echo(value)));
    }
    Ok(())
}

/// A host path the node agent opens (kernel, initrd): absolute, since it
/// names a file on the VM's node, not the client's.
pub fn path(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if !value.starts_with('/') {
        return Err(ValidationError::Text {
            field,
            reason: format!(
                "{:?} must be an absolute path (on the VM's node)",
                echo(value)
            ),
        });
    }
    text(field, value, limits::PATH_LEN_MAX)
}

/// The guest kernel's command line: what the x86 kernel takes, one line.
pub fn cmdline(value: &str) -> Result<(), ValidationError> {
    text("kernel command line", value, limits::CMDLINE_LEN_MAX)
}

/// A flake reference, passed to `nix build` as one argument: never empty,
/// never an option (`-...`), no white space.
pub fn flake_ref(value: &str) -> Result<(), ValidationError> {
    let field = "flake reference";
    text(field, value, limits::PATH_LEN_MAX)?;
    let refuse = |reason: &str| {
        Err(ValidationError::Text {
            field,
            reason: format!("{reason}: {:?}", echo(value)),
        })
    };
    if value.is_empty() {
        return refuse("empty");
    }
    if value.starts_with('-') {
        return refuse("must not start with '-'");
    }
    if value.chars().any(char::is_whitespace) {
        return refuse("must not contain white space");
    }
    Ok(())
}

/// A node label (`zone=a`): bounded key and value, the key a DNS-ish name.
pub fn label(key: &str, value: &str) -> Result<(), ValidationError> {
    let field = "label";
    let key_ok = !key.is_empty()
        && key.len() <= limits::LABEL_LEN_MAX
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if !key_ok {
        return Err(ValidationError::Text {
            field,
            reason: format!(
                "key {:?} must be 1-{} of letters, digits, '-', '_', '.', '/'",
                echo(key),
                limits::LABEL_LEN_MAX
            ),
        });
    }
    text(field, value, limits::LABEL_LEN_MAX)
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
    // Host names are at most 253 bytes (RFC 1035), IPv6 literals less.
    if address.len() > 260 || address.chars().any(|c| c.is_control() || c.is_whitespace()) {
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
        for bad in [
            "127.0.0.1",
            ":7000",
            "h:0",
            "h:99999",
            "h:x",
            "h\n:7000",
            "h :7000",
        ] {
            assert!(address(bad).is_err(), "{bad}");
        }
        assert!(address(&format!("{}:7000", "h".repeat(300))).is_err());
    }

    #[test]
    fn text_that_reaches_scripts_and_commands_is_one_bounded_line() {
        assert_eq!(cmdline("console=ttyS0 http=1"), Ok(()));
        assert!(cmdline("a\nb").is_err());
        assert!(cmdline("a\0b").is_err());
        assert!(cmdline(&"x".repeat(limits::CMDLINE_LEN_MAX + 1)).is_err());
        assert_eq!(flake_ref("/etc/vms#web"), Ok(()));
        for bad in ["", "--impure", "/etc/vms #x", "a\nb"] {
            assert!(flake_ref(bad).is_err(), "{bad:?}");
        }
        assert!(path("kernel path", "/boot/vmlinuz\n").is_err());
        assert_eq!(label("zone", "a"), Ok(()));
        assert!(label("", "a").is_err());
        assert!(label("a b", "a").is_err());
    }

    #[test]
    fn clipped_text_always_passes() {
        let clipped = clip(&"é\n".repeat(5000), limits::TEXT_LEN_MAX);
        assert_eq!(text("reason", &clipped, limits::TEXT_LEN_MAX), Ok(()));
        assert_eq!(clip("exit code 1", 100), "exit code 1");
    }

    #[test]
    fn errors_echo_a_short_prefix_of_bad_input() {
        let long = "A".repeat(65_536);
        let message = vm_name(&long).unwrap_err().to_string();
        assert!(message.len() < 200, "{} bytes", message.len());
        assert!(message.contains("65536 bytes"), "{message}");
        assert!(echo("é".repeat(40).as_str()).len() < 90);
    }
}
