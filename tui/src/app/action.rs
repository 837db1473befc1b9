//! What the operator can do to the cluster from the dashboard, the
//! questions asked first and what each answer means.

use ratatui::crossterm::event::{KeyCode, KeyEvent};

use super::*;

/// A change to the cluster the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(String),
    Stop(String),
    Restart(String),
    Delete(String),
    /// VMs still on the node after `deadline_ms` are taken off regardless.
    Drain {
        node: u64,
        deadline_ms: u64,
    },
    /// Gives replica group `group` exactly `replicas` members.
    Scale {
        group: String,
        replicas: u32,
    },
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Start(vm) => format!("start VM {vm}"),
            Action::Stop(vm) => format!("stop VM {vm}"),
            Action::Restart(vm) => format!("restart VM {vm}"),
            Action::Delete(vm) => format!("delete VM {vm}"),
            Action::Drain { node, deadline_ms } => format!(
                "drain node {node} (deadline {})",
                humantime::format_duration(std::time::Duration::from_millis(*deadline_ms))
            ),
            Action::Scale { group, replicas } => {
                format!("scale group {group} to {replicas}")
            }
        }
    }
}

/// An action that needs a value typed in before it can be confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// How many replicas; `current` is how many the group has now.
    Scale { group: String, current: u32 },
    /// How long before the drain takes VMs off regardless.
    Drain { node: u64 },
}

/// The drain deadline offered (the cluster's own default).
pub const DRAIN_DEADLINE_DEFAULT: &str = "5m";

impl Ask {
    pub fn question(&self) -> String {
        match self {
            Ask::Scale { group, current } => {
                format!("scale group {group} (now {current}) to how many replicas?")
            }
            Ask::Drain { node } => format!("drain node {node}: deadline (e.g. 90s, 5m)?"),
        }
    }

    /// The action `answer` asks for, or what is wrong with it.
    pub fn answer(&self, answer: &str) -> Result<Action, BadAnswer> {
        let answer = answer.trim();
        match self {
            Ask::Scale { group, .. } => match answer.parse::<u32>() {
                Ok(replicas) => Ok(Action::Scale {
                    group: group.clone(),
                    replicas,
                }),
                Err(_) => Err(BadAnswer::Replicas(answer.to_string())),
            },
            Ask::Drain { node } => match humantime::parse_duration(answer) {
                Ok(deadline) if !deadline.is_zero() => Ok(Action::Drain {
                    node: *node,
                    deadline_ms: deadline.as_millis().min(u128::from(u64::MAX)) as u64,
                }),
                Ok(_) => Err(BadAnswer::ZeroDeadline),
                Err(e) => Err(BadAnswer::Deadline {
                    answer: answer.to_string(),
                    detail: e.to_string(),
                }),
            },
        }
    }
}

/// What is wrong with an answer to an [`Ask`] (the answer is at most
/// [`ASK_TEXT_MAX`] bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    #[error("replicas {0:?} is not a whole number")]
    Replicas(String),
    #[error("a drain deadline must be above zero")]
    ZeroDeadline,
    #[error("deadline {answer:?}: {detail}")]
    Deadline { answer: String, detail: String },
}

impl App {
    /// The dialog spells out the action, so Enter on a valid answer is the
    /// confirmation; a bad answer keeps the dialog open and says why.
    pub(super) fn on_ask_key(
        &mut self,
        key: KeyEvent,
        ask: Ask,
        mut text: String,
    ) -> Option<Intent> {
        match key.code {
            KeyCode::Esc => self.mode = Mode::Normal,
            KeyCode::Backspace => {
                text.pop();
                self.mode = Mode::Ask { ask, text };
            }
            KeyCode::Enter => match ask.answer(&text) {
                Ok(action) => {
                    self.mode = Mode::Normal;
                    self.message = None;
                    return Some(Intent::Perform(action));
                }
                Err(error) => self.error(error.to_string()),
            },
            KeyCode::Char(c) if text.len() < ASK_TEXT_MAX => {
                text.push(c);
                self.mode = Mode::Ask { ask, text };
            }
            _ => {}
        }
        None
    }

    /// Opens the dialog for `ask`, offering `suggested`.
    pub(super) fn ask(&mut self, ask: Ask, suggested: String) {
        if self.readonly {
            let what = match &ask {
                Ask::Scale { group, .. } => format!("scale group {group}"),
                Ask::Drain { node } => format!("drain node {node}"),
            };
            self.error(format!("read-only: cannot {what}"));
            return;
        }
        self.mode = Mode::Ask {
            ask,
            text: suggested,
        };
    }

    /// Asks how many replicas `vm`'s group should have.
    pub(super) fn ask_scale(&mut self, vm: &str) {
        let group = match self.model.vms.get(vm).and_then(|vm| vm.spec.as_ref()) {
            Some(spec) if !spec.group.is_empty() => spec.group.clone(),
            Some(_) => {
                return self.error(format!(
                    "VM {vm} is in no replica group (create one with vm create --replicas N)"
                ))
            }
            None => return self.error(format!("no VM named {vm:?}")),
        };
        let current = self.group_size(&group);
        self.ask(Ask::Scale { group, current }, current.to_string());
    }

    pub(super) fn group_size(&self, group: &str) -> u32 {
        let members = self
            .model
            .vms
            .values()
            .filter(|vm| vm.spec.as_ref().is_some_and(|s| s.group == group))
            .count();
        u32::try_from(members).unwrap_or(u32::MAX)
    }

    pub(super) fn action_key(&mut self, key: char) -> Option<Intent> {
        let View::List(resource) = self.view else {
            return None;
        };
        let target = self.selected_key()?;
        let action = match (resource, key) {
            (Resource::Vms, 's') => Action::Start(target),
            (Resource::Vms, 'x') => Action::Stop(target),
            (Resource::Vms, 'r') => Action::Restart(target),
            (Resource::Vms, 'D') => Action::Delete(target),
            (Resource::Vms, 'S') => {
                self.ask_scale(&target);
                return None;
            }
            (Resource::Nodes, 'D') => {
                let node = target.parse().ok()?;
                self.ask(Ask::Drain { node }, DRAIN_DEADLINE_DEFAULT.into());
                return None;
            }
            _ => return None,
        };
        if self.readonly {
            self.error(format!("read-only: cannot {}", action.describe()));
            return None;
        }
        self.mode = Mode::Confirm(action);
        None
    }

    /// A command that gave the answer up front still asks y/n.
    pub(super) fn confirm_answer(&mut self, ask: Ask, answer: &str) -> Option<Intent> {
        match ask.answer(answer) {
            Ok(action) if self.readonly => {
                self.error(format!("read-only: cannot {}", action.describe()))
            }
            Ok(action) => self.mode = Mode::Confirm(action),
            Err(error) => self.error(error.to_string()),
        }
        None
    }
}
