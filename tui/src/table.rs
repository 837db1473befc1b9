//! The listable resources as rows of text: what the Nodes, VMs and Events
//! views show, filtered and sorted.
//!
//! Invariants: every row has exactly one cell per column of its resource;
//! filtering and sorting never change what a row says, only which rows
//! are shown and in what order.

use std::cmp::Ordering;

use blixard_api::pb;
use regex::Regex;

use crate::model::Model;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Nodes,
    Vms,
    Events,
}

impl Resource {
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Resource::Nodes => &[
                "ID", "ROLE", "LIVENESS", "CPU", "MEMORY", "VMS", "ACCEL", "LABELS",
            ],
            Resource::Vms => &[
                "NAME", "STATE", "NODE", "VCPUS", "MEMORY", "UPTIME", "RESTARTS",
            ],
            Resource::Events => &["REVISION", "KIND", "VM", "NODE", "MESSAGE"],
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Resource::Nodes => "nodes",
            Resource::Vms => "vms",
            Resource::Events => "events",
        }
    }
}

/// One shown line: its cells, and the key that names what it shows (a
/// VM's name, a node's id).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: String,
    pub cells: Vec<String>,
    /// What each cell sorts by: its value where the text would sort wrong
    /// (ages, gauges), else the number it starts with, else its text.
    pub order: Vec<Order>,
}

/// A cell's place in a sort: every number before every text, so the
/// order is total (a sort may panic on one that is not).
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    Number(f64),
    Text,
}

impl Row {
    /// A row whose cells sort by the numbers they start with.
    pub fn new(key: String, cells: Vec<String>) -> Row {
        let order = cells.iter().map(|cell| leading_number(cell)).collect();
        Row { key, cells, order }
    }

    /// Sorts `column` by `value` instead of by its text.
    fn order_by(mut self, column: usize, value: Option<f64>) -> Row {
        self.order[column] = value.map_or(Order::Text, Order::Number);
        self
    }
}

fn leading_number(cell: &str) -> Order {
    let digits: String = cell
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().map_or(Order::Text, Order::Number)
}

pub fn phase_label(phase: pb::VmPhase) -> &'static str {
    match phase {
        pb::VmPhase::Unspecified => "-",
        pb::VmPhase::Pending => "Pending",
        pb::VmPhase::Scheduled => "Scheduled",
        pb::VmPhase::Starting => "Starting",
        pb::VmPhase::Running => "Running",
        pb::VmPhase::Stopping => "Stopping",
        pb::VmPhase::Stopped => "Stopped",
        pb::VmPhase::Failed => "Failed",
        pb::VmPhase::Lost => "Lost",
    }
}

pub use blixard_api::vm_phase;

/// "3h12m", "45s": how long ago `since_ms` was, as of `now_ms`.
pub fn age(since_ms: u64, now_ms: u64) -> String {
    if since_ms == 0 || now_ms < since_ms {
        return "-".into();
    }
    let seconds = (now_ms - since_ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

/// A text gauge, e.g. `[####------] 40%`.
pub fn gauge(used: u64, total: u64, width: usize) -> String {
    if total == 0 {
        return "-".into();
    }
    let filled = ((used.min(total) * width as u64) / total) as usize;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(width - filled),
        used * 100 / total
    )
}

fn vm_row(vm: &pb::VmInfo, now_ms: u64) -> Row {
    let spec = vm.spec.clone().unwrap_or_default();
    let observed = vm.observed.clone().unwrap_or_default();
    let running = vm_phase(vm) == pb::VmPhase::Running;
    let up_ms = (running && observed.observed_at_unix_ms > 0)
        .then(|| now_ms.saturating_sub(observed.observed_at_unix_ms) as f64);
    Row::new(
        spec.name.clone(),
        vec![
            spec.name,
            phase_label(vm_phase(vm)).into(),
            match vm.assigned_node {
                0 => "-".into(),
                node => node.to_string(),
            },
            spec.vcpus.to_string(),
            format!("{} MiB", spec.memory_mib),
            match running {
                true => age(observed.observed_at_unix_ms, now_ms),
                false => "-".into(),
            },
            observed.restarts.to_string(),
        ],
    )
    .order_by(5, up_ms)
}

fn node_row(node: &pb::NodeInfo) -> Row {
    // Sorted: the wire map has no order, and a row must not change
    // between frames when nothing did.
    let mut labels: Vec<String> = node
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    labels.sort();
    let share = |used: u64, total: u64| (total > 0).then(|| used as f64 / total as f64);
    Row::new(
        node.node_id.to_string(),
        vec![
            node.node_id.to_string(),
            node.role.clone(),
            node.liveness.clone(),
            gauge(
                u64::from(node.vcpus_allocated),
                u64::from(node.vcpus_total),
                10,
            ),
            gauge(node.memory_mib_allocated, node.memory_mib_total, 10),
            node.vms_assigned.to_string(),
            match node.accel.as_str() {
                "" => "-".into(),
                accel => accel.into(),
            },
            labels.join(","),
        ],
    )
    .order_by(
        3,
        share(u64::from(node.vcpus_allocated), u64::from(node.vcpus_total)),
    )
    .order_by(4, share(node.memory_mib_allocated, node.memory_mib_total))
}

fn event_row(event: &pb::ClusterEvent) -> Row {
    Row::new(
        event.revision.to_string(),
        vec![
            event.revision.to_string(),
            event.kind.clone(),
            if event.vm.is_empty() {
                "-".into()
            } else {
                event.vm.clone()
            },
            match event.node_id {
                0 => "-".into(),
                node => node.to_string(),
            },
            event.message.clone(),
        ],
    )
}

/// Every row of `resource`, in the model's order.
pub fn rows(model: &Model, resource: Resource, now_ms: u64) -> Vec<Row> {
    match resource {
        Resource::Vms => model.vms.values().map(|vm| vm_row(vm, now_ms)).collect(),
        Resource::Nodes => model.nodes.iter().map(node_row).collect(),
        // Newest first, as a tail reads.
        Resource::Events => model.events.iter().rev().map(event_row).collect(),
    }
}

/// The `/` filter: a regex over a row's cells; a leading `!` inverts it.
#[derive(Debug, Clone)]
pub struct Filter {
    pub text: String,
    regex: Regex,
    invert: bool,
}

impl Filter {
    /// `None` for an empty filter; an error names what is wrong with the
    /// regex.
    pub fn parse(text: &str) -> Result<Option<Filter>, String> {
        let (invert, pattern) = match text.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if pattern.is_empty() {
            return Ok(None);
        }
        let regex = regex::RegexBuilder::new(pattern)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("bad filter {pattern:?}: {e}"))?;
        Ok(Some(Filter {
            text: text.into(),
            regex,
            invert,
        }))
    }

    pub fn matches(&self, row: &Row) -> bool {
        row.cells.iter().any(|c| self.regex.is_match(c)) != self.invert
    }
}

/// Sorts by one column's [`Order`]: numbers first and by value, then
/// text by text; ties keep their order.
pub fn sort(rows: &mut [Row], column: usize, descending: bool) {
    rows.sort_by(|a, b| {
        let order = match (&a.order[column], &b.order[column]) {
            (Order::Number(x), Order::Number(y)) => x.total_cmp(y),
            (Order::Number(_), Order::Text) => Ordering::Less,
            (Order::Text, Order::Number(_)) => Ordering::Greater,
            (Order::Text, Order::Text) => a.cells[column].cmp(&b.cells[column]),
        };
        if descending {
            order.reverse()
        } else {
            order
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Row {
        Row::new(
            cells[0].into(),
            cells.iter().map(|c| c.to_string()).collect(),
        )
    }

    #[test]
    fn filters_match_any_cell_ignoring_case_and_invert_with_a_bang() {
        let web = row(&["web-1", "Running"]);
        let db = row(&["db", "Failed"]);
        let filter = Filter::parse("run").unwrap().unwrap();
        assert!(filter.matches(&web) && !filter.matches(&db));
        let inverted = Filter::parse("!^web").unwrap().unwrap();
        assert!(!inverted.matches(&web) && inverted.matches(&db));
        assert!(Filter::parse("").unwrap().is_none());
        assert!(Filter::parse("(").unwrap_err().contains("bad filter"));
    }

    #[test]
    fn numbers_sort_as_numbers() {
        let mut rows = vec![row(&["10"]), row(&["9"]), row(&["a"]), row(&["100"])];
        sort(&mut rows, 0, false);
        let order: Vec<_> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(order, ["9", "10", "100", "a"]);
        sort(&mut rows, 0, true);
        assert_eq!(rows[0].key, "a");
    }

    #[test]
    fn ages_and_gauges_sort_by_their_values_not_their_text() {
        let mut model = Model::default();
        let now_ms = 10_000_000;
        for (name, up_ms) in [("short", 9_000u64), ("long", 3_700_000), ("mid", 90_000)] {
            let vm = pb::VmInfo {
                spec: Some(pb::VmSpec {
                    name: name.into(),
                    ..Default::default()
                }),
                observed: Some(pb::VmObserved {
                    phase: pb::VmPhase::Running as i32,
                    observed_at_unix_ms: now_ms - up_ms,
                    ..Default::default()
                }),
                ..Default::default()
            };
            model.vms.insert(name.into(), vm);
        }
        let off = pb::VmInfo {
            spec: Some(pb::VmSpec {
                name: "off".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        model.vms.insert("off".into(), off);
        let mut vms = rows(&model, Resource::Vms, now_ms);
        // As text "1h1m" < "1m30s" < "9s"; by value it is the reverse.
        sort(&mut vms, 5, false);
        let order: Vec<_> = vms.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(order, ["short", "mid", "long", "off"]);

        for (id, used, total) in [(1, 2u32, 4u32), (2, 9, 10), (3, 1, 10)] {
            model.nodes.push(pb::NodeInfo {
                node_id: id,
                vcpus_allocated: used,
                vcpus_total: total,
                ..Default::default()
            });
        }
        let mut nodes = rows(&model, Resource::Nodes, now_ms);
        sort(&mut nodes, 3, true);
        let order: Vec<_> = nodes.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(order, ["2", "1", "3"]);
    }

    #[test]
    fn gauges_and_ages_read_plainly() {
        assert_eq!(gauge(4, 10, 10), "[####------]  40%");
        assert_eq!(gauge(1, 0, 10), "-");
        assert_eq!(age(1_000, 62_000), "1m1s");
        assert_eq!(age(0, 5_000), "-");
    }

    #[test]
    fn every_row_has_one_cell_per_column() {
        let mut model = Model::default();
        model.nodes.push(pb::NodeInfo::default());
        model.vms.insert("a".into(), pb::VmInfo::default());
        model.events.push_back(pb::ClusterEvent::default());
        for resource in [Resource::Nodes, Resource::Vms, Resource::Events] {
            for row in rows(&model, resource, 0) {
                assert_eq!(row.cells.len(), resource.columns().len());
            }
        }
    }
}
