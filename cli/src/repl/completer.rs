//! Tab completion: command and flag names from the grammar, VM, group,
//! node, label and member names from the live cluster, each with a
//! description for the menu.
//!
//! Invariant: completing never touches the network; it reads the
//! snapshot `live.rs` keeps.

use clap::Command;
use reedline::{CompletionResult, Span, Suggestion};

use super::grammar::{self, Expect, Values, BUILTINS};
use super::live::{self, Shared};

pub struct Completer {
    root: Command,
    live: Shared,
}

impl Completer {
    pub fn new(root: Command, live: Shared) -> Self {
        Completer { root, live }
    }
}

fn suggestion(value: String, description: Option<String>, span: Span) -> Suggestion {
    Suggestion {
        value,
        description,
        span,
        append_whitespace: true,
        ..Default::default()
    }
}

/// Subcommands and flags of `command`.
fn words_of(command: &Command, top: bool) -> Vec<(String, Option<String>)> {
    let mut words: Vec<(String, Option<String>)> = command
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| {
            (
                c.get_name().to_string(),
                c.get_about().map(|a| a.to_string()),
            )
        })
        .collect();
    if top {
        words.extend(
            BUILTINS
                .iter()
                .map(|(name, about)| (name.to_string(), Some(about.to_string()))),
        );
    }
    words
}

fn flags_of(command: &Command) -> Vec<(String, Option<String>)> {
    command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| {
            a.get_long()
                .map(|long| (format!("--{long}"), a.get_help().map(|h| h.to_string())))
        })
        .collect()
}

fn values(kind: &Values, live: &Shared) -> Vec<(String, Option<String>)> {
    let snapshot = live::read(live);
    match kind {
        Values::VmName => snapshot
            .vms
            .iter()
            .map(|(name, vm)| {
                let node = match vm.node {
                    0 => String::new(),
                    node => format!(" on node {node}"),
                };
                (name.clone(), Some(format!("{}{node}", vm.phase)))
            })
            .collect(),
        Values::GroupName => snapshot
            .groups()
            .into_iter()
            .map(|group| {
                let members = snapshot.vms.values().filter(|vm| vm.group == group).count();
                (group, Some(format!("replica group of {members}")))
            })
            .collect(),
        Values::NodeId => snapshot
            .nodes
            .iter()
            .map(|(id, node)| {
                (
                    id.to_string(),
                    Some(format!("{} {}", node.role, node.liveness)),
                )
            })
            .collect(),
        Values::Label => snapshot
            .labels
            .iter()
            .map(|l| (l.clone(), Some("node label".into())))
            .collect(),
        Values::Address => snapshot
            .nodes
            .iter()
            .filter(|(_, node)| !node.address.is_empty())
            .map(|(id, node)| {
                (
                    node.address.clone(),
                    Some(format!("node {id} ({})", node.role)),
                )
            })
            .collect(),
        Values::Choices(choices) => choices.clone(),
        Values::Free => Vec::new(),
    }
}

impl reedline::Completer for Completer {
    fn complete(&mut self, line: &str, pos: usize) -> CompletionResult {
        CompletionResult::fresh(self.suggestions(line, pos))
    }
}

impl Completer {
    /// Every candidate for the word ending at `pos`.
    pub fn suggestions(&self, line: &str, pos: usize) -> Vec<Suggestion> {
        let before = &line[..pos];
        let words = grammar::words(before);
        // The word under the cursor, unless the cursor follows a space.
        let ends_in_space = before.ends_with(char::is_whitespace) || before.is_empty();
        let (done, partial) = match words.split_last() {
            Some((last, done)) if !ends_in_space => (done, Some(last)),
            _ => (words.as_slice(), None),
        };
        let done: Vec<&str> = done.iter().map(|w| w.text.as_str()).collect();
        let (prefix, span) = match partial {
            Some(word) => (word.text.as_str(), Span::new(word.start, pos)),
            None => ("", Span::new(pos, pos)),
        };
        let (_, expect) = grammar::read(&self.root, &done);
        let candidates = match expect {
            Expect::Word(command) if prefix.starts_with('-') => flags_of(command),
            Expect::Word(command) => {
                let mut words = words_of(command, done.is_empty());
                if !command.has_subcommands() && !prefix.is_empty() {
                    words.clear();
                }
                words
            }
            Expect::Help(command) => words_of(command, false),
            Expect::Watch { watch, .. } if prefix.starts_with('-') => flags_of(watch),
            Expect::Watch { root, .. } => words_of(root, false),
            Expect::Value(kind) => values(&kind, &self.live),
            Expect::Nothing => Vec::new(),
        };
        candidates
            .into_iter()
            .filter(|(value, _)| value.starts_with(prefix))
            .map(|(value, description)| suggestion(value, description, span))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repl::live::{NodeBrief, Snapshot, VmBrief};
    use clap::CommandFactory;
    use std::sync::{Arc, RwLock};

    fn completer() -> Completer {
        let mut root = crate::cli::Cli::command();
        root.build();
        let mut snapshot = Snapshot::default();
        for (name, group) in [("web-1", "web"), ("web-2", "web"), ("db", "")] {
            snapshot.vms.insert(
                name.into(),
                VmBrief {
                    phase: "running".into(),
                    node: 2,
                    group: group.into(),
                },
            );
        }
        snapshot.nodes.insert(
            2,
            NodeBrief {
                role: "voter".into(),
                liveness: "alive".into(),
                address: "127.0.0.1:7002".into(),
            },
        );
        Completer::new(root, Arc::new(RwLock::new(snapshot)))
    }

    fn values(line: &str) -> Vec<String> {
        completer()
            .suggestions(line, line.len())
            .into_iter()
            .map(|s| s.value)
            .collect()
    }

    #[test]
    fn commands_flags_and_live_names_complete() {
        // In the grammar's order.
        assert_eq!(values("vm st"), ["status", "start", "stop"]);
        assert_eq!(values("vm status w"), ["web-1", "web-2"]);
        assert_eq!(values("vm status "), ["db", "web-1", "web-2"]);
        assert_eq!(values("vm scale "), ["web"]);
        assert_eq!(values("node drain "), ["2"]);
        assert_eq!(values("vm list -o j"), ["json"]);
        assert!(values("vm list --").contains(&"--output".to_string()));
        assert_eq!(values("conn"), ["connect"]);
        assert_eq!(values("connect "), ["127.0.0.1:7002"]);
        assert_eq!(values("help v"), ["vm"]);
        assert_eq!(values("watch v"), ["vm"]);
        assert_eq!(values("watch vm status w"), ["web-1", "web-2"]);
        assert!(values("watch --").contains(&"--interval".to_string()));
        assert!(values("vm bogus ").is_empty());
    }

    #[test]
    fn suggestions_carry_descriptions_and_replace_the_word() {
        let line = "vm status we";
        let found = completer().suggestions(line, line.len());
        assert_eq!(found[0].span, Span::new(10, 12));
        assert_eq!(found[0].description.as_deref(), Some("running on node 2"));
        let top = completer().suggestions("", 0);
        let vm = top
            .iter()
            .find(|s| s.value == "vm")
            .expect("vm is a command");
        assert_eq!(vm.description.as_deref(), Some("Define and control VMs"));
    }
}
