//! The plan: what `apply` must do to make the cluster match a document,
//! as `terraform plan` shows it (create, scale, replace, start/stop,
//! delete).
//!
//! Invariants: the plan only ever touches VMs carrying the document's
//! name as their platform; a VM the document names that belongs to
//! someone else (made by hand, or another document) is a conflict, never
//! a change; an unchanged cluster gives an empty plan.

use std::collections::{BTreeMap, BTreeSet};

use blixard_api::pb;
use serde::Serialize;

use super::{member_names, template, Document, RunState, VmEntry};

/// One field that differs between the cluster and the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FieldChange {
    pub field: &'static str,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Change {
    /// A new VM, or a new replica group.
    Create {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        replicas: Option<u32>,
        start: bool,
        #[serde(skip)]
        spec: pb::VmSpec,
    },
    /// Only the members change: how many, or which (a gap is filled).
    Scale {
        name: String,
        from: u32,
        to: u32,
        /// Whether members it adds run (the entry's state).
        #[serde(skip)]
        start: bool,
    },
    /// The spec changed: the VMs are deleted and made again (they restart).
    Replace {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        replicas: Option<u32>,
        start: bool,
        fields: Vec<FieldChange>,
        /// The VMs deleted first.
        vms: Vec<String>,
        #[serde(skip)]
        spec: pb::VmSpec,
    },
    Start {
        name: String,
        vms: Vec<String>,
    },
    Stop {
        name: String,
        vms: Vec<String>,
    },
    /// VMs of this platform the document no longer names.
    Delete {
        name: String,
        vms: Vec<String>,
    },
}

impl Change {
    /// The `terraform plan` style sign and a one-line summary.
    pub fn summary(&self) -> (&'static str, &'static str, String) {
        let replicas = |r: &Option<u32>| match r {
            Some(n) => format!(" ({n} replicas)"),
            None => String::new(),
        };
        match self {
            Change::Create {
                name,
                replicas: r,
                start,
                ..
            } => (
                "+",
                "create",
                format!(
                    "{name}{}{}",
                    replicas(r),
                    if *start { "" } else { ", stopped" }
                ),
            ),
            Change::Scale { name, from, to, .. } => {
                ("~", "scale", format!("{name}: replicas {from} -> {to}"))
            }
            Change::Replace { name, fields, .. } => {
                let fields: Vec<String> = fields
                    .iter()
                    .map(|f| format!("{} {} -> {}", f.field, f.from, f.to))
                    .collect();
                ("-/+", "replace", format!("{name}: {}", fields.join(", ")))
            }
            Change::Start { name, vms } => (">", "start", format!("{name} ({})", vms.join(", "))),
            Change::Stop { name, vms } => ("|", "stop", format!("{name} ({})", vms.join(", "))),
            Change::Delete { name, vms } => ("-", "delete", format!("{name} ({})", vms.join(", "))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Plan {
    pub platform: String,
    pub changes: Vec<Change>,
    /// Entries already as the document says.
    pub unchanged: usize,
}

/// Why the plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Conflict(pub String);

fn owner(spec: &pb::VmSpec) -> String {
    match spec.platform.as_str() {
        "" => "made by hand".into(),
        other => format!("managed by platform {other:?}"),
    }
}

fn runner_text(spec: &pb::VmSpec) -> String {
    match spec.runner.as_ref().and_then(|r| r.source.as_ref()) {
        Some(pb::runner_source::Source::Flake(f)) => format!("flake {}", f.flake_ref),
        Some(pb::runner_source::Source::Kernel(k)) => {
            let ports: Vec<String> = k
                .ports
                .iter()
                .map(|p| format!("{}:{}", p.host_port, p.guest_port))
                .collect();
            format!(
                "kernel {} initrd {} cmdline {:?} ports [{}]",
                k.kernel_path,
                k.initrd_path,
                k.cmdline,
                ports.join(",")
            )
        }
        None => "-".into(),
    }
}

/// The fields of two specs that differ (names, groups and platform aside).
fn spec_changes(current: &pb::VmSpec, desired: &pb::VmSpec) -> Vec<FieldChange> {
    let strategy = |s: &str| {
        if s.is_empty() {
            "spread".to_string()
        } else {
            s.to_string()
        }
    };
    let optional = |v: Option<bool>| v.map_or("default".to_string(), |v| v.to_string());
    let fields: [(&'static str, String, String); 11] = [
        (
            "vcpus",
            current.vcpus.to_string(),
            desired.vcpus.to_string(),
        ),
        (
            "memory",
            current.memory_mib.to_string(),
            desired.memory_mib.to_string(),
        ),
        ("runner", runner_text(current), runner_text(desired)),
        (
            "node",
            current.pinned_node.to_string(),
            desired.pinned_node.to_string(),
        ),
        (
            "constraints",
            current.constraints.join(","),
            desired.constraints.join(","),
        ),
        (
            "preferences",
            current.preferences.join(","),
            desired.preferences.join(","),
        ),
        (
            "antiAffinity",
            current.anti_affinity_group.clone(),
            desired.anti_affinity_group.clone(),
        ),
        (
            "affinity",
            current.affinity_group.clone(),
            desired.affinity_group.clone(),
        ),
        (
            "strategy",
            strategy(&current.strategy),
            strategy(&desired.strategy),
        ),
        (
            "lostAfter",
            current.lost_after_ms.to_string(),
            desired.lost_after_ms.to_string(),
        ),
        (
            "replaceLost",
            optional(current.replace_lost),
            optional(desired.replace_lost),
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, from, to)| from != to)
        .map(|(field, from, to)| FieldChange {
            field,
            from: if from.is_empty() { "-".into() } else { from },
            to: if to.is_empty() { "-".into() } else { to },
        })
        .collect()
}

/// The current VMs an entry stands for: its name, or its group's members.
fn current_of<'a>(entry: &VmEntry, current: &'a [pb::VmInfo]) -> Vec<&'a pb::VmInfo> {
    let members: BTreeSet<String> = member_names(entry).into_iter().collect();
    current
        .iter()
        .filter(|vm| {
            vm.spec.as_ref().is_some_and(|s| {
                s.name == entry.name
                    || (!s.group.is_empty() && s.group == entry.name)
                    || members.contains(&s.name)
            })
        })
        .collect()
}

fn names(vms: &[&pb::VmInfo]) -> Vec<String> {
    vms.iter()
        .filter_map(|vm| vm.spec.as_ref().map(|s| s.name.clone()))
        .collect()
}

fn desired_state(state: RunState) -> pb::DesiredState {
    match state {
        RunState::Running => pb::DesiredState::Running,
        RunState::Stopped => pb::DesiredState::Stopped,
    }
}

/// Refuses a document pinning a VM to a node that is not a member:
/// checked before anything changes, because a replacement deletes first.
pub fn check_nodes(document: &Document, members: &BTreeSet<u64>) -> Result<(), Conflict> {
    for entry in &document.spec.vms {
        if let Some(node) = entry.placement.node.filter(|node| !members.contains(node)) {
            return Err(Conflict(format!(
                "{}: placement.node {node} is not a member of the cluster",
                entry.name
            )));
        }
    }
    Ok(())
}

/// What `apply` must do to make `current` (every VM of the cluster) match
/// `document`. The document has been checked by `parse`.
pub fn plan(document: &Document, current: &[pb::VmInfo]) -> Result<Plan, Conflict> {
    let platform = document.metadata.name.as_str();
    let mut changes = Vec::new();
    let mut unchanged = 0;
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    for entry in &document.spec.vms {
        let desired = template(entry, platform).map_err(|e| Conflict(e.to_string()))?;
        let start = entry.state == RunState::Running;
        let existing = current_of(entry, current);
        for vm in &existing {
            let spec = vm.spec.as_ref().expect("current_of keeps VMs with a spec");
            if spec.platform != platform {
                return Err(Conflict(format!(
                    "VM {} exists and is {}; rename the entry {:?} or delete the VM",
                    spec.name,
                    owner(spec),
                    entry.name
                )));
            }
            claimed.insert(spec.name.clone());
        }
        let Some(first) = existing.first().and_then(|vm| vm.spec.as_ref()) else {
            changes.push(Change::Create {
                name: entry.name.clone(),
                replicas: entry.replicas,
                start,
                spec: desired,
            });
            continue;
        };
        let is_group = !first.group.is_empty();
        let mut fields = spec_changes(first, &desired);
        if is_group != entry.replicas.is_some() {
            fields.push(FieldChange {
                field: "replicas",
                from: if is_group {
                    existing.len().to_string()
                } else {
                    "-".into()
                },
                to: entry.replicas.map_or("-".into(), |n| n.to_string()),
            });
        }
        // Members made from different specs (a half-done earlier apply)
        // are replaced too.
        let uneven = existing
            .iter()
            .filter_map(|vm| vm.spec.as_ref())
            .any(|spec| !spec_changes(spec, first).is_empty());
        if !fields.is_empty() || uneven {
            if fields.is_empty() {
                fields.push(FieldChange {
                    field: "members",
                    from: "differing specs".into(),
                    to: "one spec".into(),
                });
            }
            changes.push(Change::Replace {
                name: entry.name.clone(),
                replicas: entry.replicas,
                start,
                fields,
                vms: names(&existing),
                spec: desired,
            });
            continue;
        }
        let mut same = true;
        let wanted: BTreeSet<String> = member_names(entry).into_iter().collect();
        if let Some(to) = entry.replicas {
            let have: BTreeSet<String> = names(&existing).into_iter().collect();
            if have != wanted {
                changes.push(Change::Scale {
                    name: entry.name.clone(),
                    from: existing.len() as u32,
                    to,
                    start,
                });
                same = false;
            }
        }
        // Members the scale removes are not started or stopped first; those
        // it adds get the entry's state from the scale itself.
        let want = desired_state(entry.state);
        let wrong: Vec<String> = existing
            .iter()
            .filter(|vm| vm.desired_state() != want)
            .filter_map(|vm| vm.spec.as_ref().map(|s| s.name.clone()))
            .filter(|name| wanted.contains(name))
            .collect();
        if !wrong.is_empty() {
            same = false;
            changes.push(match entry.state {
                RunState::Running => Change::Start {
                    name: entry.name.clone(),
                    vms: wrong,
                },
                RunState::Stopped => Change::Stop {
                    name: entry.name.clone(),
                    vms: wrong,
                },
            });
        }
        if same {
            unchanged += 1;
        }
    }
    let mut orphans: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for vm in current {
        let Some(spec) = vm.spec.as_ref() else {
            continue;
        };
        if spec.platform == platform && !claimed.contains(&spec.name) {
            let key = if spec.group.is_empty() {
                &spec.name
            } else {
                &spec.group
            };
            orphans
                .entry(key.clone())
                .or_default()
                .push(spec.name.clone());
        }
    }
    for (name, vms) in orphans {
        changes.push(Change::Delete { name, vms });
    }
    // Deletes first (they free room), then replacements, then the rest.
    changes.sort_by_key(|change| match change {
        Change::Delete { .. } => 0,
        Change::Replace { .. } => 1,
        Change::Scale { .. } => 2,
        Change::Create { .. } => 3,
        Change::Start { .. } | Change::Stop { .. } => 4,
    });
    Ok(Plan {
        platform: platform.to_string(),
        changes,
        unchanged,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{stored, SAMPLE};
    use super::super::{from_vms, parse};
    use super::*;

    fn shop() -> Document {
        parse(SAMPLE, "shop.yaml").unwrap()
    }

    #[test]
    fn an_empty_cluster_gets_everything_created() {
        let plan = plan(&shop(), &[]).unwrap();
        let summaries: Vec<_> = plan.changes.iter().map(|c| c.summary().2).collect();
        assert_eq!(summaries, ["web (3 replicas)", "db, stopped"]);
        assert_eq!(plan.unchanged, 0);
    }

    #[test]
    fn a_cluster_made_by_the_document_needs_nothing() {
        let document = shop();
        let plan = plan(&document, &stored(&document)).unwrap();
        assert_eq!(plan.changes, []);
        assert_eq!(plan.unchanged, 2);
    }

    #[test]
    fn changing_replicas_plans_exactly_a_scale() {
        let document = shop();
        let current = stored(&document);
        let mut wanted = document.clone();
        wanted.spec.vms[0].replicas = Some(5);
        let plan = plan(&wanted, &current).unwrap();
        assert_eq!(
            plan.changes,
            [Change::Scale {
                name: "web".into(),
                from: 3,
                to: 5,
                start: true
            }]
        );
        assert_eq!(plan.unchanged, 1);
    }

    #[test]
    fn changed_specs_are_replaced_naming_the_fields() {
        let document = shop();
        let current = stored(&document);
        let mut wanted = document.clone();
        wanted.spec.vms[1].vcpus = 8;
        wanted.spec.vms[1].memory = 8192;
        let plan = plan(&wanted, &current).unwrap();
        let [Change::Replace {
            name, fields, vms, ..
        }] = plan.changes.as_slice()
        else {
            panic!("{:?}", plan.changes);
        };
        assert_eq!(
            (name.as_str(), vms.as_slice()),
            ("db", ["db".to_string()].as_slice())
        );
        let changed: Vec<_> = fields
            .iter()
            .map(|f| (f.field, f.from.as_str(), f.to.as_str()))
            .collect();
        assert_eq!(changed, [("vcpus", "4", "8"), ("memory", "4096", "8192")]);
    }

    #[test]
    fn vms_the_document_dropped_are_deleted_and_states_follow() {
        let document = shop();
        let mut current = stored(&document);
        for vm in &mut current {
            vm.desired_state = pb::DesiredState::Stopped as i32;
        }
        let mut wanted = document.clone();
        wanted.spec.vms.remove(1);
        let plan = plan(&wanted, &current).unwrap();
        assert_eq!(
            plan.changes,
            [
                Change::Delete {
                    name: "db".into(),
                    vms: vec!["db".into()]
                },
                Change::Start {
                    name: "web".into(),
                    vms: vec!["web-1".into(), "web-2".into(), "web-3".into()]
                },
            ]
        );
    }

    #[test]
    fn vms_of_others_are_conflicts_and_never_touched() {
        let document = shop();
        let mut by_hand = stored(&document);
        for vm in &mut by_hand {
            vm.spec.as_mut().unwrap().platform.clear();
        }
        let conflict = plan(&document, &by_hand).unwrap_err();
        assert!(conflict.0.contains("made by hand"), "{conflict}");
        // A platform's plan never deletes VMs it does not manage.
        let other = Document {
            metadata: super::super::Metadata {
                name: "other".into(),
            },
            spec: Default::default(),
            ..document.clone()
        };
        let plan = plan(&other, &stored(&document)).unwrap();
        assert_eq!(plan.changes, []);
    }

    #[test]
    fn scaling_down_never_starts_or_stops_the_members_it_removes() {
        let document = shop();
        let mut current = stored(&document);
        // web-3 was stopped by hand; the document now wants two members.
        let web_3 = current
            .iter_mut()
            .find(|vm| vm.spec.as_ref().unwrap().name == "web-3")
            .unwrap();
        web_3.desired_state = pb::DesiredState::Stopped as i32;
        let mut wanted = document.clone();
        wanted.spec.vms[0].replicas = Some(2);
        let plan = plan(&wanted, &current).unwrap();
        assert_eq!(
            plan.changes,
            [Change::Scale {
                name: "web".into(),
                from: 3,
                to: 2,
                start: true
            }]
        );
    }

    #[test]
    fn a_stopped_group_scales_up_stopped_and_gaps_are_filled() {
        let mut document = shop();
        document.spec.vms[0].state = RunState::Stopped;
        let current = stored(&document);
        let mut wanted = document.clone();
        wanted.spec.vms[0].replicas = Some(4);
        let plan = plan(&wanted, &current).unwrap();
        assert_eq!(
            plan.changes,
            [Change::Scale {
                name: "web".into(),
                from: 3,
                to: 4,
                start: false
            }]
        );
        // web-1, web-3, web-4 is three members but not web-1..3.
        let mut gappy = stored(&document);
        gappy.retain(|vm| vm.spec.as_ref().unwrap().name != "web-2");
        let mut web_4 = gappy[1].clone();
        web_4.spec.as_mut().unwrap().name = "web-4".into();
        gappy.push(web_4);
        let filled = super::plan(&document, &gappy).unwrap();
        assert!(
            matches!(
                filled.changes.as_slice(),
                [Change::Scale { from: 3, to: 3, .. }]
            ),
            "{:?}",
            filled.changes
        );
    }

    #[test]
    fn pinning_to_a_node_that_is_not_a_member_is_refused_before_any_change() {
        let mut document = shop();
        document.spec.vms[1].placement.node = Some(9);
        let members: BTreeSet<u64> = [1, 2, 3].into();
        let refused = check_nodes(&document, &members).unwrap_err();
        assert!(refused.0.contains("placement.node 9"), "{refused}");
        document.spec.vms[1].placement.node = Some(2);
        assert!(check_nodes(&document, &members).is_ok());
    }

    #[test]
    fn an_export_of_the_cluster_plans_nothing() {
        let document = shop();
        let current = stored(&document);
        let exported = from_vms(&current, Some("shop"));
        let text = serde_yaml_ng::to_string(&exported).unwrap();
        let plan = plan(&parse(&text, "export").unwrap(), &current).unwrap();
        assert_eq!(plan.changes, [], "{text}");
    }
}
