//! The `:` command line: its words, what each runs, and completion.

use ratatui::crossterm::event::{KeyCode, KeyEvent};

use super::*;

/// The commands `:` takes (completion offers these).
pub const COMMANDS: &[&str] = &[
    "overview", "nodes", "vms", "events", "vm", "logs", "scale", "drain", "quit", "q",
];

impl App {
    pub(super) fn on_command_key(&mut self, key: KeyEvent, mut text: String) -> Option<Intent> {
        match key.code {
            KeyCode::Esc => self.mode = Mode::Normal,
            KeyCode::Backspace => {
                text.pop();
                self.mode = Mode::Command(text);
            }
            KeyCode::Tab => self.mode = Mode::Command(complete(&text, &self.model)),
            KeyCode::Enter => {
                self.mode = Mode::Normal;
                return self.run_command(text.trim());
            }
            KeyCode::Char(c) => {
                text.push(c);
                self.mode = Mode::Command(text);
            }
            _ => {}
        }
        None
    }

    pub(super) fn run_command(&mut self, command: &str) -> Option<Intent> {
        let mut words = command.split_whitespace();
        match (words.next(), words.next()) {
            (Some("q" | "quit"), _) => return Some(Intent::Quit),
            (Some("overview"), _) => self.go(View::Overview),
            (Some("nodes" | "node" | "no"), _) => self.go(View::List(Resource::Nodes)),
            (Some("vms"), _) | (Some("vm"), None) => self.go(View::List(Resource::Vms)),
            (Some("vm"), Some(name)) => {
                self.go(View::List(Resource::Vms));
                self.describe_vm(name);
            }
            (Some("events" | "ev"), _) => self.go(View::List(Resource::Events)),
            (Some("scale"), Some(group)) => {
                let current = self.group_size(group);
                let ask = Ask::Scale {
                    group: group.to_string(),
                    current,
                };
                match words.next() {
                    Some(replicas) => return self.confirm_answer(ask, replicas),
                    None if current == 0 => self.error(format!("no replica group named {group:?}")),
                    None => self.ask(ask, current.to_string()),
                }
            }
            (Some("drain"), Some(node)) => match node.parse() {
                Ok(node) => match words.next() {
                    Some(deadline) => return self.confirm_answer(Ask::Drain { node }, deadline),
                    None => self.ask(Ask::Drain { node }, DRAIN_DEADLINE_DEFAULT.into()),
                },
                Err(_) => self.error(format!("node {node:?} is not a node id")),
            },
            (Some("logs"), Some(name)) => {
                if self.model.vms.contains_key(name) {
                    return Some(self.open_logs(name.to_string()));
                }
                self.error(format!("no VM named {name:?}"));
            }
            (None, _) => {}
            (Some(other), _) => self.error(format!(
                "unknown command {other:?}; try {}",
                COMMANDS.join(", ")
            )),
        }
        None
    }
}

/// Completes the command word, or a VM name after `vm `, when exactly one
/// candidate (or a longer common prefix) fits.
pub fn complete(text: &str, model: &Model) -> String {
    let (head, word, candidates): (&str, &str, Vec<&str>) = match text.split_once(' ') {
        Some(("vm", partial)) => (
            "vm ",
            partial,
            model.vms.keys().map(String::as_str).collect(),
        ),
        Some(_) => return text.into(),
        None => ("", text, COMMANDS.to_vec()),
    };
    let fitting: Vec<&str> = candidates
        .into_iter()
        .filter(|c| c.starts_with(word))
        .collect();
    let Some(first) = fitting.first() else {
        return text.into();
    };
    let common = fitting.iter().fold(first.to_string(), |prefix, c| {
        prefix
            .chars()
            .zip(c.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect()
    });
    format!("{head}{common}")
}
