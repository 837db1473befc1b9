//! Blixard's wire protocol and the checks every entry point applies to it.
//!
//! Invariant: a `VmSpec` that passes [`validate::vm_spec`] has a DNS-label
//! name, a vCPU count and memory size within [`limits`], and exactly one
//! runner source with non-empty paths or flake reference. Servers validate
//! before proposing anything, so the replicated log never holds a spec that
//! fails these checks.

pub mod backoff;
pub mod connect;
pub mod follow;
pub mod identity;
pub mod pages;
pub mod placement;
pub mod resume;
pub mod tls;
pub mod validate;

/// Generated protobuf messages, gRPC clients and servers.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("blixard.v1");
}

pub use validate::{limits, ValidationError};

/// The file in its data directory where the node that founded a cluster
/// left the first (management) token's secret.
pub const MANAGEMENT_TOKEN_FILE: &str = "management-token";

/// The compiled `blixard.proto` (a protobuf `FileDescriptorSet`), so tests
/// can walk every service and method it declares.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/blixard_descriptor.bin"));

/// A VM's phase: `Pending` until its node has reported on it.
pub fn vm_phase(vm: &pb::VmInfo) -> pb::VmPhase {
    vm.observed
        .as_ref()
        .map_or(pb::VmPhase::Pending, |o| o.phase())
}

/// A VM's phase as clients show it (`running`, `pending`, ...); a VM
/// whose node has reported nothing yet is `pending`.
pub fn phase_name(vm: &pb::VmInfo) -> &'static str {
    match vm_phase(vm) {
        pb::VmPhase::Pending => "pending",
        pb::VmPhase::Scheduled => "scheduled",
        pb::VmPhase::Starting => "starting",
        pb::VmPhase::Running => "running",
        pb::VmPhase::Stopping => "stopping",
        pb::VmPhase::Stopped => "stopped",
        pb::VmPhase::Failed => "failed",
        pb::VmPhase::Lost => "lost",
        pb::VmPhase::Unspecified => "unknown",
    }
}

/// Milliseconds since the Unix epoch by this host's clock (0 before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Default gRPC address of a local `blixard agent`.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7000";
