//! Placement: which node runs each VM that waits for one.
//!
//! Invariants: `schedule` is a pure function of the cluster state and the
//! node views (no I/O, no clock), so it can be tested and simulated. It
//! only places VMs that want to run and have no node, only on nodes that
//! are alive and eligible, never beyond a node's memory or its vCPUs times
//! the overcommit ratio, never against a constraint, and never two VMs of
//! one anti-affinity group on a node (the hard rules of
//! `blixard_consensus::fit`, which `apply` checks again). A VM it cannot
//! place gets the reason, naming what excluded each node.

use std::collections::{BTreeMap, HashMap};

use blixard_consensus::fit::{self, holds_resources, Load, Misfit, NodeFacts};
use blixard_consensus::{ClusterState, DesiredState, Strategy, VmRecord};

/// A node as the scheduler sees it: committed facts plus gossip liveness.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub facts: NodeFacts,
    pub alive: bool,
}

/// Cluster-wide tunables of placement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// vCPUs a node may hand out per host core.
    pub vcpu_overcommit: u32,
}

/// What the scheduler decided for one waiting VM.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Place {
        vm: String,
        node_id: u64,
        reason: String,
    },
    Unplaceable {
        vm: String,
        reason: String,
    },
}

/// The VMs waiting for a node, oldest first.
fn waiting(state: &ClusterState) -> Vec<&VmRecord> {
    let mut vms: Vec<&VmRecord> = state
        .vms
        .values()
        .filter(|vm| vm.desired_state == DesiredState::Running && vm.assigned_node.is_none())
        .collect();
    vms.sort_by_key(|vm| (vm.create_revision, vm.spec.name.clone()));
    vms
}

/// Why one node cannot take a VM: down (gossip), or a hard rule
/// (`blixard_consensus::fit`). Turned into text only when the VM turns out
/// unplaceable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Exclusion {
    Down,
    Misfit(Misfit),
}

impl Exclusion {
    fn describe(self, spec: &blixard_consensus::VmSpec) -> String {
        match self {
            Exclusion::Down => "down".into(),
            Exclusion::Misfit(misfit) => misfit.describe(spec),
        }
    }
}

/// Why nodes were excluded, counted per reason.
#[derive(Default)]
struct Exclusions(BTreeMap<Exclusion, u32>);

impl Exclusions {
    fn add(&mut self, exclusion: Exclusion) {
        *self.0.entry(exclusion).or_default() += 1;
    }

    fn describe(&self, spec: &blixard_consensus::VmSpec, nodes: usize) -> String {
        if nodes == 0 {
            return "no nodes have joined the cluster".into();
        }
        // Ordered by text so the reason reads the same on every leader.
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for (exclusion, count) in &self.0 {
            *counts.entry(exclusion.describe(spec)).or_default() += count;
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(reason, count)| {
                let noun = if *count == 1 { "node" } else { "nodes" };
                format!("{count} {noun} {reason}")
            })
            .collect();
        format!("no node fits: {}", parts.join("; "))
    }
}

/// Decides placements for every waiting VM (see the module invariants).
pub fn schedule(state: &ClusterState, nodes: &[NodeView], params: Params) -> Vec<Decision> {
    let index: HashMap<u64, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.facts.node_id, i))
        .collect();
    let mut loads = vec![Load::default(); nodes.len()];
    for vm in state.vms.values() {
        let Some(node) = vm.assigned_node else {
            continue;
        };
        if let Some(&i) = index.get(&node) {
            if holds_resources(vm) {
                loads[i].add(vm);
            }
        }
    }
    let mut decisions = Vec::new();
    for vm in waiting(state) {
        let decision = place_one(vm, nodes, &loads, params);
        if let Decision::Place { node_id, .. } = &decision {
            loads[index[node_id]].add(vm);
        }
        decisions.push(decision);
    }
    decisions
}

/// The hard filters: why `node` cannot take `vm`, or `None` if it can
/// (a node not pinned is named so before it is named down).
fn exclusion(vm: &VmRecord, node: &NodeView, load: &Load, params: Params) -> Option<Exclusion> {
    match fit::misfit(vm, &node.facts, load, params.vcpu_overcommit.max(1)) {
        Some(Misfit::NotPinned) => Some(Exclusion::Misfit(Misfit::NotPinned)),
        _ if !node.alive => Some(Exclusion::Down),
        misfit => misfit.map(Exclusion::Misfit),
    }
}

fn place_one(vm: &VmRecord, nodes: &[NodeView], loads: &[Load], params: Params) -> Decision {
    let spec = &vm.spec;
    let mut exclusions = Exclusions::default();
    let mut best: Option<(Score, usize)> = None;
    for (i, node) in nodes.iter().enumerate() {
        let load = &loads[i];
        if let Some(exclusion) = exclusion(vm, node, load, params) {
            exclusions.add(exclusion);
            continue;
        }
        let score = score(vm, node, load, params);
        let better = match &best {
            None => true,
            // Ties go to the lowest node id (nodes come sorted by id).
            Some((best, _)) => score.total > best.total + 1e-9,
        };
        if better {
            best = Some((score, i));
        }
    }
    match best {
        Some((score, i)) => Decision::Place {
            vm: spec.name.clone(),
            node_id: nodes[i].facts.node_id,
            reason: score.explain(vm),
        },
        None => Decision::Unplaceable {
            vm: spec.name.clone(),
            reason: exclusions.describe(spec, nodes.len()),
        },
    }
}

/// Weights of the score's parts: resources dominate, the rest break ties
/// between nodes with similar room.
const WEIGHT_RESOURCES: f64 = 1.0;
const WEIGHT_GROUP_SPREAD: f64 = 0.5;
const WEIGHT_AFFINITY: f64 = 0.4;
const WEIGHT_PREFERENCES: f64 = 0.3;
const WEIGHT_LOCALITY: f64 = 0.2;
const WEIGHT_HARDWARE: f64 = 0.1;

/// A feasible node's score (higher is better) and the parts that made it.
#[derive(Debug, Clone, Copy)]
struct Score {
    total: f64,
    used_after: f64,
    siblings: u32,
    preferred: usize,
    together: bool,
    local: bool,
}

impl Score {
    /// Says why the node was chosen; only built for the winner.
    fn explain(&self, vm: &VmRecord) -> String {
        let spec = &vm.spec;
        let mut why = format!(
            "{} score {:.2}: {:.0}% used after placement",
            spec.placement.strategy.as_str(),
            self.total,
            self.used_after * 100.0
        );
        if self.siblings > 0 {
            why.push_str(&format!(
                ", {} replica(s) of the group already here",
                self.siblings
            ));
        }
        let preferences = spec.placement.preferences.len();
        if preferences > 0 {
            why.push_str(&format!(
                ", {}/{preferences} preferences met",
                self.preferred
            ));
        }
        if self.together {
            why.push_str(", with its affinity group");
        }
        if self.local {
            why.push_str(", ran here before");
        }
        why
    }
}

fn score(vm: &VmRecord, node: &NodeView, load: &Load, params: Params) -> Score {
    let spec = &vm.spec;
    let capacity = node.facts.capacity.expect("feasible nodes have capacity");
    let memory_after =
        (load.memory_mib + spec.memory_mib) as f64 / capacity.memory_mib.max(1) as f64;
    let vcpus_max = (u64::from(capacity.vcpus) * u64::from(params.vcpu_overcommit.max(1))).max(1);
    let vcpus_after = (load.vcpus + u64::from(spec.vcpus)) as f64 / vcpus_max as f64;
    let used_after = memory_after.max(vcpus_after).min(1.0);
    let resources = match spec.placement.strategy {
        Strategy::Spread => 1.0 - used_after,
        Strategy::Binpack => used_after,
    };
    let siblings = spec
        .group
        .as_ref()
        .and_then(|group| load.groups.get(group))
        .copied()
        .unwrap_or(0);
    let preferences = &spec.placement.preferences;
    let preferred = preferences
        .iter()
        .filter(|rule| rule.matches(&node.facts.attributes))
        .count();
    let preference_share = match preferences.is_empty() {
        true => 0.0,
        false => preferred as f64 / preferences.len() as f64,
    };
    let together = spec
        .placement
        .affinity_group
        .as_ref()
        .is_some_and(|group| load.affinity.contains_key(group));
    let local = vm.observed.node == Some(node.facts.node_id);
    let total = WEIGHT_RESOURCES * resources - WEIGHT_GROUP_SPREAD * f64::from(siblings)
        + WEIGHT_PREFERENCES * preference_share
        + if together { WEIGHT_AFFINITY } else { 0.0 }
        + if local { WEIGHT_LOCALITY } else { 0.0 }
        + if capacity.kvm { WEIGHT_HARDWARE } else { 0.0 };
    Score {
        total,
        used_after,
        siblings,
        preferred,
        together,
        local,
    }
}

/// Builds the scheduler's node views from the committed node records and
/// the set of nodes gossip currently sees alive.
pub fn node_views(state: &ClusterState, alive: &dyn Fn(u64) -> bool) -> Vec<NodeView> {
    state
        .nodes
        .values()
        .map(|node| NodeView {
            facts: NodeFacts::of(node),
            alive: alive(node.node_id),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_consensus::{Command, HostFacts, Placement, Rule, RunnerSource, VmSpec};
    use proptest::prelude::{any, prop, prop_assert, proptest};
    use proptest::strategy::Strategy as _;

    const PARAMS: Params = Params { vcpu_overcommit: 2 };

    fn host(memory_mib_total: u64, labels: &[(&str, &str)]) -> HostFacts {
        HostFacts {
            memory_mib_total,
            vcpus_total: 2,
            accel: "tcg".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            gossip_address: String::new(),
            fence_after_ms: 0,
        }
    }

    fn spec(name: &str, memory_mib: u64) -> VmSpec {
        VmSpec {
            name: name.into(),
            vcpus: 1,
            memory_mib,
            runner: RunnerSource::Flake {
                flake_ref: "x".into(),
            },
            pinned_node: None,
            placement: Placement::default(),
            failover: Default::default(),
            group: None,
            platform: None,
        }
    }

    fn cluster(hosts: &[HostFacts]) -> ClusterState {
        let mut state = ClusterState::default();
        for (i, facts) in hosts.iter().enumerate() {
            let node_id = i as u64 + 1;
            state.add_member(node_id, format!("n{node_id}:1"));
            state.apply(Command::SetHostFacts {
                node_id,
                facts: facts.clone(),
            });
        }
        state
    }

    fn run(state: &mut ClusterState, spec: VmSpec) {
        let name = spec.name.clone();
        assert!(state
            .apply(Command::CreateVm {
                spec,
                created_at_unix_ms: 0
            })
            .result
            .is_ok());
        state.apply(Command::SetVmDesiredState {
            name,
            desired_state: DesiredState::Running,
        });
    }

    fn all_alive(state: &ClusterState) -> Vec<NodeView> {
        node_views(state, &|_| true)
    }

    fn placed(decisions: &[Decision]) -> Vec<(String, u64)> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Place { vm, node_id, .. } => Some((vm.clone(), *node_id)),
                Decision::Unplaceable { .. } => None,
            })
            .collect()
    }

    #[test]
    fn spread_fills_the_emptiest_node_and_binpack_the_fullest() {
        let mut state = cluster(&[host(1024, &[]), host(4096, &[]), host(2048, &[])]);
        for name in ["a", "b", "c"] {
            run(&mut state, spec(name, 1024));
        }
        let decisions = schedule(&state, &all_alive(&state), PARAMS);
        assert_eq!(
            placed(&decisions),
            [("a".into(), 2), ("b".into(), 2), ("c".into(), 3)]
        );

        let mut state = cluster(&[host(4096, &[]), host(4096, &[])]);
        for name in ["a", "b"] {
            let mut spec = spec(name, 512);
            spec.placement.strategy = Strategy::Binpack;
            run(&mut state, spec);
        }
        let decisions = schedule(&state, &all_alive(&state), PARAMS);
        assert_eq!(placed(&decisions), [("a".into(), 1), ("b".into(), 1)]);
    }

    #[test]
    fn unplaceable_vms_get_a_reason_naming_each_exclusion() {
        let mut state = cluster(&[
            host(8192, &[("storage", "hdd")]),
            host(8192, &[("storage", "hdd")]),
            host(2048, &[("storage", "nvme")]),
        ]);
        let mut big = spec("big", 4096);
        big.placement.constraints = Rule::parse_list("storage=nvme").unwrap();
        run(&mut state, big);
        let decisions = schedule(&state, &all_alive(&state), PARAMS);
        assert_eq!(
            decisions,
            [Decision::Unplaceable {
                vm: "big".into(),
                reason: "no node fits: 2 nodes excluded by constraint storage=nvme; \
                         1 node without 4096 MiB of memory free"
                    .into()
            }]
        );
        let views = node_views(&state, &|id| id != 3);
        let Decision::Unplaceable { reason, .. } = &schedule(&state, &views, PARAMS)[0] else {
            panic!("placed on a dead node");
        };
        assert!(reason.contains("1 node down"), "{reason}");
    }

    /// A node that runs no agent (`[agent] enabled = false`) reports no
    /// acceleration: a VM placed there would never start.
    #[test]
    fn nodes_without_an_agent_take_no_vms() {
        let mut no_agent = host(8192, &[]);
        no_agent.accel = String::new();
        let mut state = cluster(&[no_agent.clone(), host(2048, &[])]);
        run(&mut state, spec("a", 1024));
        run(&mut state, spec("b", 1024));
        let mut pinned = spec("pinned", 64);
        pinned.pinned_node = Some(1);
        run(&mut state, pinned);
        let decisions = schedule(&state, &all_alive(&state), PARAMS);
        assert_eq!(placed(&decisions), [("a".into(), 2), ("b".into(), 2)]);
        assert_eq!(
            decisions[2],
            Decision::Unplaceable {
                vm: "pinned".into(),
                reason: "no node fits: 1 node not the pinned node; 1 node running no node agent"
                    .into()
            }
        );

        // Nor does apply take such a placement (a deposed leader's).
        let mut state = cluster(&[no_agent]);
        run(&mut state, spec("c", 64));
        let assigned = state.apply(Command::AssignVm {
            name: "c".into(),
            node_id: Some(1),
            reason: String::new(),
            vcpu_overcommit: Some(PARAMS.vcpu_overcommit),
            needs_agent: true,
        });
        assert!(assigned.result.is_err(), "{:?}", assigned.result);
        assert_eq!(state.vms["c"].assigned_node, None);
        // An entry from before the check (no `needs_agent`) replays as it
        // applied then, so every node's state stays the same.
        let old = state.apply(Command::AssignVm {
            name: "c".into(),
            node_id: Some(1),
            reason: String::new(),
            vcpu_overcommit: Some(PARAMS.vcpu_overcommit),
            needs_agent: false,
        });
        assert!(old.result.is_ok(), "{:?}", old.result);
        assert_eq!(state.vms["c"].assigned_node, Some(1));
    }

    #[test]
    fn anti_affinity_is_hard_and_replica_spread_soft() {
        let mut state = cluster(&[host(8192, &[]), host(8192, &[])]);
        for i in 1..=3 {
            let mut spec = spec(&format!("web-{i}"), 256);
            spec.placement.anti_affinity_group = Some("web".into());
            run(&mut state, spec);
        }
        let decisions = schedule(&state, &all_alive(&state), PARAMS);
        assert_eq!(
            placed(&decisions),
            [("web-1".into(), 1), ("web-2".into(), 2)]
        );
        assert!(matches!(&decisions[2], Decision::Unplaceable { reason, .. }
            if reason.contains("2 nodes already run anti-affinity group web")));

        let mut state = cluster(&[host(8192, &[]), host(8192, &[])]);
        for i in 1..=2 {
            let mut spec = spec(&format!("db-{i}"), 256);
            spec.group = Some("db".into());
            run(&mut state, spec);
        }
        assert_eq!(
            placed(&schedule(&state, &all_alive(&state), PARAMS)),
            [("db-1".into(), 1), ("db-2".into(), 2)]
        );
    }

    #[test]
    fn affinity_groups_gather_on_one_node() {
        let mut state = cluster(&[host(8192, &[]), host(8192, &[])]);
        for name in ["app", "cache"] {
            let mut spec = spec(name, 256);
            spec.placement.affinity_group = Some("shop".into());
            run(&mut state, spec);
        }
        run(&mut state, spec("other", 256));
        // Spread would put "cache" on the empty node 2; affinity keeps it
        // with "app", and the unrelated VM goes to the emptier node.
        assert_eq!(
            placed(&schedule(&state, &all_alive(&state), PARAMS)),
            [("app".into(), 1), ("cache".into(), 1), ("other".into(), 2)]
        );
    }

    #[test]
    fn preferences_and_pins_steer_placement() {
        let mut state = cluster(&[host(8192, &[]), host(4096, &[("gpu", "available")])]);
        let mut gpu = spec("gpu", 256);
        gpu.placement.preferences = Rule::parse_list("gpu=available").unwrap();
        run(&mut state, gpu);
        let mut pinned = spec("pinned", 256);
        pinned.pinned_node = Some(2);
        run(&mut state, pinned);
        assert_eq!(
            placed(&schedule(&state, &all_alive(&state), PARAMS)),
            [("gpu".into(), 2), ("pinned".into(), 2)]
        );
    }

    #[test]
    fn ineligible_and_silent_nodes_get_nothing() {
        let mut state = cluster(&[host(8192, &[]), host(8192, &[])]);
        state.add_member(3, "n3:1".into());
        state.apply(Command::SetNodeEligibility {
            node_id: 1,
            eligible: false,
        });
        run(&mut state, spec("a", 256));
        run(&mut state, spec("b", 256));
        let views = node_views(&state, &|id| id != 2);
        let decisions = schedule(&state, &views, PARAMS);
        let Decision::Unplaceable { reason, .. } = &decisions[0] else {
            panic!("{decisions:?}");
        };
        assert_eq!(
            reason,
            "no node fits: 1 node down; 1 node ineligible; 1 node not yet reporting resources"
        );
    }

    fn arbitrary_vm() -> impl proptest::strategy::Strategy<Value = VmSpec> {
        (
            1u32..4,
            prop::sample::select(vec![128u64, 512, 1024, 4096]),
            prop::option::of(prop::sample::select(vec![
                "zone=a",
                "zone!=b",
                "memory>=4096",
            ])),
            prop::option::of(prop::sample::select(vec!["web", "db"])),
            any::<bool>(),
        )
            .prop_map(|(vcpus, memory_mib, constraint, anti, binpack)| {
                let mut spec = spec("x", memory_mib);
                spec.vcpus = vcpus;
                spec.placement.constraints = constraint
                    .map(|c| Rule::parse_list(c).unwrap())
                    .unwrap_or_default();
                spec.placement.anti_affinity_group = anti.map(str::to_string);
                spec.placement.strategy = match binpack {
                    true => Strategy::Binpack,
                    false => Strategy::Spread,
                };
                spec
            })
    }

    proptest! {
        /// Whatever the input, no placement exceeds a node's resources,
        /// breaks a constraint or anti-affinity, or uses a dead or
        /// ineligible node.
        #[test]
        fn placements_respect_every_rule(
            nodes in prop::collection::vec(
                (prop::sample::select(vec![1024u64, 4096, 8192]),
                 prop::sample::select(vec!["a", "b", "c"]),
                 any::<bool>(), any::<bool>()),
                1..6),
            vms in prop::collection::vec(arbitrary_vm(), 0..30),
        ) {
            let hosts: Vec<HostFacts> = nodes.iter()
                .map(|(memory, zone, _, _)| host(*memory, &[("zone", zone)]))
                .collect();
            let mut state = cluster(&hosts);
            for (i, (_, _, _, eligible)) in nodes.iter().enumerate() {
                state.apply(Command::SetNodeEligibility { node_id: i as u64 + 1, eligible: *eligible });
            }
            for (i, mut vm) in vms.into_iter().enumerate() {
                vm.name = format!("vm-{i}");
                run(&mut state, vm);
            }
            let alive: Vec<bool> = nodes.iter().map(|(_, _, alive, _)| *alive).collect();
            let views = node_views(&state, &|id| alive[id as usize - 1]);
            // Applied last first: apply judges each again, and every
            // decision of one pass fits in any order.
            let mut decisions = schedule(&state, &views, PARAMS);
            decisions.reverse();
            for decision in decisions {
                if let Decision::Place { vm, node_id, .. } = decision {
                    let applied = state.apply(Command::AssignVm { name: vm, node_id: Some(node_id), reason: String::new(), vcpu_overcommit: Some(PARAMS.vcpu_overcommit), needs_agent: true });
                    prop_assert!(applied.result.is_ok(), "{:?}", applied.result);
                }
            }
            for view in &views {
                let here: Vec<&VmRecord> = state.vms.values()
                    .filter(|vm| vm.assigned_node == Some(view.facts.node_id))
                    .collect();
                if here.is_empty() { continue; }
                prop_assert!(view.alive && view.facts.eligible);
                let capacity = view.facts.capacity.unwrap();
                prop_assert!(here.iter().map(|vm| vm.spec.memory_mib).sum::<u64>() <= capacity.memory_mib);
                prop_assert!(here.iter().map(|vm| u64::from(vm.spec.vcpus)).sum::<u64>()
                    <= u64::from(capacity.vcpus) * u64::from(PARAMS.vcpu_overcommit));
                let mut groups = std::collections::BTreeSet::new();
                for vm in &here {
                    for rule in &vm.spec.placement.constraints {
                        prop_assert!(rule.matches(&view.facts.attributes), "{} broken on node {}", rule, view.facts.node_id);
                    }
                    if let Some(group) = &vm.spec.placement.anti_affinity_group {
                        prop_assert!(groups.insert(group.clone()), "group {} twice on node {}", group, view.facts.node_id);
                    }
                }
            }
        }
    }
}
