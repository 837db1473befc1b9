//! The prompt: which node commands go to, its role, and whether the
//! cluster has a leader; redrawn from the live snapshot each time the
//! line is drawn.

use std::borrow::Cow;

use reedline::{PromptEditMode, PromptHistorySearch, PromptHistorySearchStatus, PromptViMode};

use super::live::{self, Shared};

pub struct Prompt {
    live: Shared,
}

impl Prompt {
    pub fn new(live: Shared) -> Self {
        Prompt { live }
    }
}

/// `prod@127.0.0.1:7001 (n1 voter, leader 1)`: the cluster, the node
/// commands go to, its role and the leader; or why the node is lost.
pub fn describe(snapshot: &live::Snapshot) -> String {
    let cluster = match snapshot.cluster.as_str() {
        "" => "blixard",
        name => name,
    };
    if let Some(reason) = &snapshot.lost {
        // The first clause: the prompt is one line.
        let first = reason.split(';').next().unwrap_or_default();
        let reason: String = first.chars().take(60).collect();
        return format!("{cluster}@{} (lost: {reason})", snapshot.addr);
    }
    if snapshot.role.is_empty() {
        return format!("{cluster}@{} (connecting)", snapshot.addr);
    }
    let leader = match snapshot.leader_id {
        0 => "no leader".to_string(),
        id => format!("leader {id}"),
    };
    format!(
        "{cluster}@{} (n{} {}, {leader})",
        snapshot.addr, snapshot.node_id, snapshot.role
    )
}

impl reedline::Prompt for Prompt {
    fn render_prompt_left(&self) -> Cow<'_, str> {
        Cow::Owned(describe(&live::read(&self.live)))
    }

    fn render_prompt_right(&self) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn render_prompt_indicator(&self, mode: PromptEditMode) -> Cow<'_, str> {
        match mode {
            PromptEditMode::Vi(PromptViMode::Normal) => Cow::Borrowed(" : "),
            _ => Cow::Borrowed(" > "),
        }
    }

    fn render_prompt_multiline_indicator(&self) -> Cow<'_, str> {
        Cow::Borrowed("... ")
    }

    fn render_prompt_history_search_indicator(&self, search: PromptHistorySearch) -> Cow<'_, str> {
        let failing = match search.status {
            PromptHistorySearchStatus::Passing => "",
            PromptHistorySearchStatus::Failing => "failing ",
        };
        Cow::Owned(format!("({failing}search: {}) ", search.term))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_names_the_node_its_role_and_the_leader_or_the_loss() {
        let mut snapshot = live::Snapshot {
            addr: "127.0.0.1:7001".into(),
            ..Default::default()
        };
        assert_eq!(describe(&snapshot), "blixard@127.0.0.1:7001 (connecting)");
        snapshot.cluster = "prod".into();
        snapshot.node_id = 1;
        snapshot.role = "voter".into();
        snapshot.leader_id = 2;
        assert_eq!(
            describe(&snapshot),
            "prod@127.0.0.1:7001 (n1 voter, leader 2)"
        );
        snapshot.leader_id = 0;
        assert!(describe(&snapshot).ends_with("no leader)"));
        snapshot.lost = Some("connection refused".into());
        assert_eq!(
            describe(&snapshot),
            "prod@127.0.0.1:7001 (lost: connection refused)"
        );
    }
}
