//! The platform document (`apiVersion: blixard.dev/v1`, `kind: Platform`)
//! that `apply`, `diff` and `export` speak, and its VM entries as specs.
//!
//! Invariants: a document either parses whole or is refused with what is
//! wrong and where (serde_yaml_ng's line and column for unknown fields and
//! type errors; the entry's line for values the cluster would refuse);
//! `to_specs` gives one spec per VM the entry makes, with the document's
//! name as their platform; `from_vms` is its inverse for what the cluster
//! stores, so `export` then `diff` finds nothing to change.
//!
//! Pure: no I/O. `plan.rs` holds the comparison with the cluster.

pub mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use blixard_api::{pb, validate};
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "blixard.dev/v1";
pub const KIND: &str = "Platform";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: PlatformSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Names the VMs this document manages: apply changes and deletes
    /// only VMs carrying it.
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlatformSpec {
    #[serde(default)]
    pub vms: Vec<VmEntry>,
    /// Serverless functions: not built yet; a document with any is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<serde_json::Value>")]
    pub functions: Vec<serde_yaml_ng::Value>,
}

/// One long-lived VM, or a replica group of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VmEntry {
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "VmType::is_default")]
    pub kind: VmType,
    /// A microvm.nix flake reference, e.g. `/etc/vms#web`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// With `initrd`: boot this kernel with the built-in qemu runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// `HOST:GUEST` TCP forwards (with `kernel`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Members NAME-1..N of replica group NAME; absent: one VM NAME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    pub vcpus: u32,
    /// MiB.
    pub memory: u64,
    /// Volumes: not built yet; an entry with any is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<serde_json::Value>")]
    pub storage: Vec<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing_if = "PlacementEntry::is_empty")]
    pub placement: PlacementEntry,
    #[serde(default, skip_serializing_if = "FailoverEntry::is_empty")]
    pub failover: FailoverEntry,
    /// Whether the VM (every member) should run.
    #[serde(default, skip_serializing_if = "RunState::is_running")]
    pub state: RunState,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum VmType {
    #[default]
    LongLived,
}

impl VmType {
    fn is_default(&self) -> bool {
        *self == VmType::LongLived
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    #[default]
    Running,
    Stopped,
}

impl RunState {
    fn is_running(&self) -> bool {
        *self == RunState::Running
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlacementEntry {
    /// Labels a node must have: each becomes the constraint `KEY=VALUE`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// `node`: no two members on one node (anti-affinity on the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_across: Option<String>,
    /// Never two VMs of this anti-affinity group on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<String>,
    /// Prefer nodes running VMs of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Hard rules, e.g. `memory>=4096`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Soft rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<String>,
    /// `spread` (default) or `binpack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Run only on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

impl PlacementEntry {
    fn is_empty(&self) -> bool {
        *self == PlacementEntry::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverEntry {
    /// How long the VM's node must be dead before it counts as lost, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after: Option<String>,
    /// Whether a lost VM starts on another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_lost: Option<bool>,
}

impl FailoverEntry {
    fn is_empty(&self) -> bool {
        *self == FailoverEntry::default()
    }
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct DocumentError {
    /// The file (or `-`).
    pub source_name: String,
    pub message: String,
}

/// The line of `- name: NAME` in `text` (1-based), to point at an entry.
fn entry_line(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches('-').trim_start();
            line.strip_prefix("name:")
                .map(|rest| rest.trim().trim_matches(['"', '\'']))
                == Some(name)
        })
        .map(|i| i + 1)
}

/// Parses and checks a document; `source_name` names it in errors.
pub fn parse(text: &str, source_name: &str) -> Result<Document, DocumentError> {
    let refuse = |message: String| DocumentError {
        source_name: source_name.to_string(),
        message,
    };
    let document: Document = serde_yaml_ng::from_str(text).map_err(|e| refuse(e.to_string()))?;
    if document.api_version != API_VERSION {
        return Err(refuse(format!(
            "apiVersion {:?} is not {API_VERSION:?}",
            document.api_version
        )));
    }
    if document.kind != KIND {
        return Err(refuse(format!("kind {:?} is not {KIND:?}", document.kind)));
    }
    validate::platform_name(&document.metadata.name)
        .map_err(|e| refuse(format!("metadata.name: {e}")))?;
    if !document.spec.functions.is_empty() {
        return Err(refuse(
            "spec.functions: serverless functions are not built yet".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, entry) in document.spec.vms.iter().enumerate() {
        let at = match entry_line(text, &entry.name) {
            Some(line) => format!("spec.vms[{i}] ({}) at line {line}", entry.name),
            None => format!("spec.vms[{i}] ({})", entry.name),
        };
        if !seen.insert(entry.name.clone()) {
            return Err(refuse(format!(
                "{at}: a second entry named {:?}",
                entry.name
            )));
        }
        to_specs(entry, &document.metadata.name).map_err(|e| refuse(format!("{at}: {e}")))?;
    }
    // Member names of one entry must not be another entry's name.
    for entry in &document.spec.vms {
        for member in member_names(entry) {
            if member != entry.name && seen.contains(&member) {
                return Err(refuse(format!(
                    "replica {member:?} of {:?} has the name of another entry",
                    entry.name
                )));
            }
        }
    }
    Ok(document)
}

/// The VMs an entry makes: NAME, or NAME-1..N.
pub fn member_names(entry: &VmEntry) -> Vec<String> {
    match entry.replicas {
        None => vec![entry.name.clone()],
        Some(n) => (1..=n).map(|i| format!("{}-{i}", entry.name)).collect(),
    }
}

/// Why an entry cannot become VM specs. Values are echoed as at most a
/// short prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("storage: volumes are not built yet")]
    StorageNotBuilt,
    #[error(
        "config {0:?}: a plain .nix file is not supported; give a flake reference (PATH#NAME)"
    )]
    PlainNixFile(String),
    #[error("cmdline and ports go with kernel, not config")]
    KernelOptionsWithConfig,
    #[error("give either config (a flake reference) or both kernel and initrd")]
    NoRunner,
    #[error("port {0:?} is not HOST:GUEST with ports 1-65535")]
    Port(String),
    #[error(
        "placement.spreadAcross {0:?}: only \"node\" is supported (spreading across label \
         values is not built)"
    )]
    SpreadAcross(String),
    #[error("placement.strategy: {0}")]
    Strategy(#[from] blixard_api::placement::StrategyError),
    #[error(transparent)]
    Rule(#[from] blixard_api::placement::RuleError),
    #[error("failover.lostAfter {text:?}: {detail}")]
    LostAfter { text: String, detail: String },
    #[error(transparent)]
    Invalid(#[from] blixard_api::ValidationError),
}

fn duration_ms(text: &str) -> Result<u64, EntryError> {
    humantime::parse_duration(text)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .map_err(|e| EntryError::LostAfter {
            text: validate::echo(text),
            detail: e.to_string(),
        })
}

fn port(text: &str) -> Result<pb::PortForward, EntryError> {
    let parse = |value: &str| value.parse::<u16>().ok().filter(|p| *p != 0);
    match text.split_once(':').map(|(h, g)| (parse(h), parse(g))) {
        Some((Some(host), Some(guest))) => Ok(pb::PortForward {
            host_port: host.into(),
            guest_port: guest.into(),
        }),
        _ => Err(EntryError::Port(validate::echo(text))),
    }
}

/// Rules in the cluster's own spelling, so a document and an export of
/// what it made compare equal.
fn normalized_rules(texts: impl IntoIterator<Item = String>) -> Result<Vec<String>, EntryError> {
    texts
        .into_iter()
        .flat_map(|text| {
            text.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .map(|rule| {
            rule.parse::<blixard_api::placement::Rule>()
                .map(|r| r.to_string())
                .map_err(EntryError::from)
        })
        .collect()
}

/// The spec every VM of `entry` gets (named as the entry; the cluster
/// names members), with `platform` as its manager.
pub fn template(entry: &VmEntry, platform: &str) -> Result<pb::VmSpec, EntryError> {
    if !entry.storage.is_empty() {
        return Err(EntryError::StorageNotBuilt);
    }
    let source = match (&entry.config, &entry.kernel, &entry.initrd) {
        (Some(config), None, None) => {
            if config.ends_with(".nix") && !config.contains('#') {
                return Err(EntryError::PlainNixFile(validate::echo(config)));
            }
            if entry.cmdline.is_some() || !entry.ports.is_empty() {
                return Err(EntryError::KernelOptionsWithConfig);
            }
            pb::runner_source::Source::Flake(pb::FlakeRunner {
                flake_ref: config.clone(),
            })
        }
        (None, Some(kernel), Some(initrd)) => pb::runner_source::Source::Kernel(pb::KernelRunner {
            kernel_path: kernel.clone(),
            initrd_path: initrd.clone(),
            cmdline: entry.cmdline.clone().unwrap_or_default(),
            ports: entry
                .ports
                .iter()
                .map(|p| port(p))
                .collect::<Result<_, _>>()?,
        }),
        _ => return Err(EntryError::NoRunner),
    };
    let placement = &entry.placement;
    let anti_affinity = match (placement.spread_across.as_deref(), &placement.anti_affinity) {
        (None, group) => group.clone(),
        (Some("node"), None) => Some(entry.name.clone()),
        (Some("node"), Some(group)) => Some(group.clone()),
        (Some(other), _) => return Err(EntryError::SpreadAcross(validate::echo(other))),
    };
    let selector = placement
        .node_selector
        .iter()
        .map(|(key, value)| format!("{key}={value}"));
    let strategy = match placement.strategy.as_deref() {
        None => String::new(),
        Some(text) => text
            .parse::<blixard_api::placement::Strategy>()
            .map(|s| s.as_str().to_string())?,
    };
    let spec = pb::VmSpec {
        name: entry.name.clone(),
        vcpus: entry.vcpus,
        memory_mib: entry.memory,
        runner: Some(pb::RunnerSource {
            source: Some(source),
        }),
        pinned_node: placement.node.unwrap_or(0),
        constraints: normalized_rules(selector.chain(placement.constraints.iter().cloned()))?,
        preferences: normalized_rules(placement.preferences.iter().cloned())?,
        anti_affinity_group: anti_affinity.unwrap_or_default(),
        strategy,
        lost_after_ms: match &entry.failover.lost_after {
            Some(text) => duration_ms(text)?,
            None => 0,
        },
        replace_lost: entry.failover.replace_lost,
        group: String::new(),
        affinity_group: placement.affinity.clone().unwrap_or_default(),
        platform: platform.to_string(),
    };
    Ok(spec)
}

/// `template`, checked as the cluster would check each member.
pub fn to_specs(entry: &VmEntry, platform: &str) -> Result<Vec<pb::VmSpec>, EntryError> {
    let template = template(entry, platform)?;
    if let Some(replicas) = entry.replicas {
        validate::replicas(&entry.name, replicas)?;
    }
    member_names(entry)
        .into_iter()
        .map(|name| {
            let spec = pb::VmSpec {
                name,
                group: match entry.replicas {
                    Some(_) => entry.name.clone(),
                    None => String::new(),
                },
                ..template.clone()
            };
            let mut checked = spec.clone();
            checked.group.clear();
            validate::vm_spec(&checked)?;
            Ok(spec)
        })
        .collect()
}

/// The entry that would make `vms` (one VM, or the members of a group,
/// all of one spec), as the cluster stores them.
pub fn entry_from_vms(name: &str, vms: &[&pb::VmInfo]) -> VmEntry {
    assert!(!vms.is_empty(), "an entry needs at least one VM");
    let spec = vms[0].spec.clone().unwrap_or_default();
    let (mut config, mut kernel, mut initrd, mut cmdline, mut ports) =
        (None, None, None, None, Vec::new());
    match spec.runner.and_then(|r| r.source) {
        Some(pb::runner_source::Source::Flake(flake)) => config = Some(flake.flake_ref),
        Some(pb::runner_source::Source::Kernel(k)) => {
            kernel = Some(k.kernel_path);
            initrd = Some(k.initrd_path);
            cmdline = (!k.cmdline.is_empty()).then_some(k.cmdline);
            ports = k
                .ports
                .iter()
                .map(|p| format!("{}:{}", p.host_port, p.guest_port))
                .collect();
        }
        None => {}
    }
    let running = vms
        .iter()
        .any(|vm| vm.desired_state() == pb::DesiredState::Running);
    VmEntry {
        name: name.to_string(),
        kind: VmType::LongLived,
        config,
        kernel,
        initrd,
        cmdline,
        ports,
        replicas: (!spec.group.is_empty()).then_some(vms.len() as u32),
        vcpus: spec.vcpus,
        memory: spec.memory_mib,
        storage: Vec::new(),
        placement: PlacementEntry {
            node_selector: BTreeMap::new(),
            spread_across: None,
            anti_affinity: (!spec.anti_affinity_group.is_empty())
                .then_some(spec.anti_affinity_group),
            affinity: (!spec.affinity_group.is_empty()).then_some(spec.affinity_group),
            constraints: spec.constraints,
            preferences: spec.preferences,
            strategy: match spec.strategy.as_str() {
                "" | "spread" => None,
                other => Some(other.to_string()),
            },
            node: (spec.pinned_node != 0).then_some(spec.pinned_node),
        },
        failover: FailoverEntry {
            lost_after: (spec.lost_after_ms != 0).then(|| {
                humantime::format_duration(Duration::from_millis(spec.lost_after_ms)).to_string()
            }),
            replace_lost: spec.replace_lost,
        },
        state: if running {
            RunState::Running
        } else {
            RunState::Stopped
        },
    }
}

/// The document that would make `vms`: those managed by `name`, or every
/// VM when `name` is `None` (then named `cluster`).
pub fn from_vms(vms: &[pb::VmInfo], name: Option<&str>) -> Document {
    let mut entries: BTreeMap<String, Vec<&pb::VmInfo>> = BTreeMap::new();
    for vm in vms {
        let Some(spec) = vm.spec.as_ref() else {
            continue;
        };
        if name.is_some_and(|name| spec.platform != name) {
            continue;
        }
        let key = match spec.group.as_str() {
            "" => spec.name.clone(),
            group => group.to_string(),
        };
        entries.entry(key).or_default().push(vm);
    }
    Document {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: Metadata {
            name: name.unwrap_or("cluster").to_string(),
        },
        spec: PlatformSpec {
            vms: entries
                .iter()
                .map(|(name, vms)| entry_from_vms(name, vms))
                .collect(),
            functions: Vec::new(),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const SAMPLE: &str = "\
apiVersion: blixard.dev/v1
kind: Platform
metadata:
  name: shop
spec:
  vms:
    - name: web
      config: /etc/vms#web
      replicas: 3
      vcpus: 2
      memory: 512
      placement:
        nodeSelector: {zone: a}
        spreadAcross: node
    - name: db
      kernel: /boot/vmlinuz
      initrd: /boot/initrd.gz
      cmdline: console=ttyS0
      ports: [\"5432:5432\"]
      vcpus: 4
      memory: 4096
      state: stopped
      failover: {lostAfter: 30s, replaceLost: false}
";

    #[test]
    fn a_document_becomes_one_spec_per_vm_owned_by_the_platform() {
        let document = parse(SAMPLE, "shop.yaml").unwrap();
        let web = to_specs(&document.spec.vms[0], "shop").unwrap();
        let names: Vec<_> = web.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web-1", "web-2", "web-3"]);
        assert!(web.iter().all(|s| s.group == "web" && s.platform == "shop"));
        assert_eq!(web[0].constraints, ["zone=a"]);
        assert_eq!(web[0].anti_affinity_group, "web");
        let db = to_specs(&document.spec.vms[1], "shop").unwrap();
        assert_eq!(db[0].name, "db");
        assert_eq!(db[0].lost_after_ms, 30_000);
        assert_eq!(db[0].replace_lost, Some(false));
    }

    fn refusal(text: &str) -> String {
        parse(text, "doc.yaml").unwrap_err().to_string()
    }

    #[test]
    fn unknown_fields_and_type_errors_say_where() {
        let unknown = refusal(&SAMPLE.replace("vcpus: 2", "vcpus: 2\n      cpus: 2"));
        assert!(unknown.contains("unknown field `cpus`"), "{unknown}");
        assert!(unknown.contains("line 11 column 7"), "{unknown}");
        let typed = refusal(&SAMPLE.replace("memory: 512", "memory: lots"));
        assert!(
            typed.contains("invalid type") && typed.contains("line 11"),
            "{typed}"
        );
        assert!(typed.starts_with("doc.yaml: "), "{typed}");
    }

    #[test]
    fn values_the_cluster_would_refuse_name_the_entry_and_its_line() {
        let zero = refusal(&SAMPLE.replace("vcpus: 4", "vcpus: 0"));
        assert!(
            zero.contains("spec.vms[1] (db) at line 15") && zero.contains("vcpus"),
            "{zero}"
        );
        let both = refusal(&SAMPLE.replace(
            "      config: /etc/vms#web\n",
            "      config: /etc/vms#web\n      kernel: /k\n",
        ));
        assert!(both.contains("either config"), "{both}");
        let spread = refusal(&SAMPLE.replace("spreadAcross: node", "spreadAcross: zone"));
        assert!(spread.contains("only \"node\""), "{spread}");
        let twice = refusal(&SAMPLE.replace("- name: db", "- name: web"));
        assert!(twice.contains("a second entry named \"web\""), "{twice}");
        let version = refusal(&SAMPLE.replace("blixard.dev/v1", "blixard.dev/v2"));
        assert!(version.contains("apiVersion"), "{version}");
        let functions = refusal(&format!("{SAMPLE}  functions: [{{name: f}}]\n"));
        assert!(functions.contains("not built yet"), "{functions}");
        let storage =
            refusal(&SAMPLE.replace("memory: 4096", "memory: 4096\n      storage: [{size: 10}]"));
        assert!(storage.contains("volumes are not built yet"), "{storage}");
    }

    /// What the cluster would store for `document`: the specs, with the
    /// desired state.
    pub fn stored(document: &Document) -> Vec<pb::VmInfo> {
        document
            .spec
            .vms
            .iter()
            .flat_map(|entry| {
                let state = match entry.state {
                    RunState::Running => pb::DesiredState::Running,
                    RunState::Stopped => pb::DesiredState::Stopped,
                };
                to_specs(entry, &document.metadata.name)
                    .unwrap()
                    .into_iter()
                    .map(move |spec| pb::VmInfo {
                        spec: Some(spec),
                        desired_state: state as i32,
                        ..Default::default()
                    })
            })
            .collect()
    }

    #[test]
    fn exporting_what_a_document_made_gives_the_same_specs() {
        let document = parse(SAMPLE, "shop.yaml").unwrap();
        let vms = stored(&document);
        let exported = from_vms(&vms, Some("shop"));
        let text = serde_yaml_ng::to_string(&exported).unwrap();
        let reparsed = parse(&text, "export").unwrap();
        let by_name = |mut vms: Vec<pb::VmInfo>| {
            vms.sort_by_key(|vm| vm.spec.as_ref().map(|s| s.name.clone()));
            vms
        };
        assert_eq!(by_name(stored(&reparsed)), by_name(vms.clone()), "{text}");
        // Another platform's VMs are not exported under this name.
        assert!(from_vms(&vms, Some("other")).spec.vms.is_empty());
        assert_eq!(from_vms(&vms, None).metadata.name, "cluster");
    }
}
