//! The dashboard's state and what each key does to it (k9s conventions:
//! `:` commands, `/` filter, `?` help, `d` describe, `Esc` back).
//!
//! Invariants: keys never touch the network, they only change this state
//! or return an [`Intent`] for the caller to carry out; a mutating intent
//! is only returned after a confirmation, and never when read-only; the
//! selection always points at a shown row (or there are none).

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::logs::LogView;
use crate::model::{Model, Update};
use crate::table::{self, Filter, Resource, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    List(Resource),
    /// The console of `App::logs`'s VM.
    Logs,
}

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

/// What the caller must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    Quit,
    Perform(Action),
    /// Stream this VM's console into `Update::Log` (the view is open).
    FollowLogs(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Command(String),
    Filter(String),
    Help,
    Describe {
        title: String,
        text: String,
    },
    Confirm(Action),
    /// A value being typed for `Ask`; Enter performs the action.
    Ask {
        ask: Ask,
        text: String,
    },
}

/// The commands `:` takes (completion offers these).
pub const COMMANDS: &[&str] = &[
    "overview", "nodes", "vms", "events", "vm", "logs", "scale", "drain", "quit", "q",
];

/// A view left for another, as it was: `Esc` returns to it.
#[derive(Debug, Clone)]
pub struct Crumb {
    view: View,
    filter: Option<Filter>,
    sort: Option<(usize, bool)>,
    selected: usize,
}

/// Breadcrumbs kept; going deeper forgets the oldest.
const BREADCRUMBS_MAX: usize = 16;
/// The longest answer a dialog takes.
const ASK_TEXT_MAX: usize = 32;

/// What the cached rows were built from: the model's generation, the
/// view, the filter text and the sort.
type ShownFor = (u64, View, Option<String>, Option<(usize, bool)>);

pub struct App {
    pub model: Model,
    pub view: View,
    pub mode: Mode,
    pub readonly: bool,
    pub skin: crate::skin::Skin,
    /// Where `Esc` goes back to.
    pub breadcrumbs: Vec<Crumb>,
    pub filter: Option<Filter>,
    /// (column, descending) per list.
    pub sort: Option<(usize, bool)>,
    pub selected: usize,
    /// A dismissible line at the bottom: (text, is_error).
    pub message: Option<(String, bool)>,
    /// The open console, while the view is `Logs`.
    pub logs: Option<LogView>,
    /// The first line shown of the help or description overlay (the
    /// renderer keeps it within the text).
    pub overlay_scroll: usize,
    /// The shown rows, rebuilt only when the data or the view changes.
    shown: Vec<Row>,
    shown_for: Option<ShownFor>,
    now_ms: u64,
}

impl App {
    pub fn new(readonly: bool) -> Self {
        App {
            model: Model::default(),
            view: View::List(Resource::Vms),
            mode: Mode::Normal,
            readonly,
            skin: crate::skin::DARK,
            breadcrumbs: Vec::new(),
            filter: None,
            sort: None,
            selected: 0,
            message: None,
            logs: None,
            overlay_scroll: 0,
            shown: Vec::new(),
            shown_for: None,
            now_ms: 0,
        }
    }

    pub fn on_update(&mut self, update: Update) {
        match &update {
            Update::Notice { text, error } => self.message = Some((text.clone(), *error)),
            Update::Log { vm, data, at_ms } => {
                if let Some(logs) = self.logs.as_mut().filter(|l| &l.vm == vm) {
                    logs.push(data, *at_ms);
                }
            }
            _ => {}
        }
        self.model.apply(update);
    }

    /// The node the data comes from, which also takes the actions.
    pub fn connected_address(&self) -> Option<String> {
        match &self.model.connection {
            crate::model::Connection::Connected(address) => Some(address.clone()),
            _ => None,
        }
    }

    /// The clock the views show ages against.
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// The rows the current list shows, filtered and sorted.
    pub fn shown(&mut self) -> &[Row] {
        let View::List(resource) = self.view else {
            return &[];
        };
        let key = (
            self.model.generation,
            self.view,
            self.filter.as_ref().map(|f| f.text.clone()),
            self.sort,
        );
        if self.shown_for.as_ref() != Some(&key) {
            let mut rows = table::rows(&self.model, resource, self.now_ms);
            if let Some(filter) = &self.filter {
                rows.retain(|row| filter.matches(row));
            }
            if let Some((column, descending)) = self.sort {
                table::sort(&mut rows, column, descending);
            }
            self.shown = rows;
            self.shown_for = Some(key);
        }
        self.selected = self.selected.min(self.shown.len().saturating_sub(1));
        &self.shown
    }

    fn selected_key(&mut self) -> Option<String> {
        let selected = self.selected;
        self.shown().get(selected).map(|row| row.key.clone())
    }

    fn go(&mut self, view: View) {
        if self.view != view {
            if self.breadcrumbs.len() == BREADCRUMBS_MAX {
                self.breadcrumbs.remove(0);
            }
            self.breadcrumbs.push(Crumb {
                view: self.view,
                filter: self.filter.clone(),
                sort: self.sort,
                selected: self.selected,
            });
            self.view = view;
            self.selected = 0;
            self.sort = None;
            self.filter = None;
        }
    }

    /// Leaves the logs, then clears the filter, then goes back a view
    /// (restoring its filter, sort and selection).
    fn back(&mut self) {
        if self.view != View::Logs && self.filter.take().is_some() {
            return;
        }
        if let Some(crumb) = self.breadcrumbs.pop() {
            if self.view == View::Logs {
                self.logs = None;
            }
            self.view = crumb.view;
            self.filter = crumb.filter;
            self.sort = crumb.sort;
            self.selected = crumb.selected;
        }
    }

    fn error(&mut self, text: impl Into<String>) {
        self.message = Some((text.into(), true));
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Option<Intent> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Intent::Quit);
        }
        match self.mode.clone() {
            Mode::Normal => self.on_normal_key(key),
            Mode::Command(text) => self.on_command_key(key, text),
            Mode::Filter(text) => {
                self.on_filter_key(key, text);
                None
            }
            Mode::Help | Mode::Describe { .. } => {
                let scroll = self.overlay_scroll;
                match key.code {
                    KeyCode::Esc | KeyCode::Char('q') | KeyCode::Enter => self.mode = Mode::Normal,
                    KeyCode::Down | KeyCode::Char('j') => self.overlay_scroll = scroll + 1,
                    KeyCode::Up | KeyCode::Char('k') => {
                        self.overlay_scroll = scroll.saturating_sub(1)
                    }
                    KeyCode::PageDown => self.overlay_scroll = scroll + 10,
                    KeyCode::PageUp => self.overlay_scroll = scroll.saturating_sub(10),
                    KeyCode::Char('g') | KeyCode::Home => self.overlay_scroll = 0,
                    KeyCode::Char('G') | KeyCode::End => self.overlay_scroll = usize::MAX,
                    _ => {}
                }
                None
            }
            Mode::Confirm(action) => {
                self.mode = Mode::Normal;
                match key.code {
                    KeyCode::Char('y') | KeyCode::Enter => Some(Intent::Perform(action)),
                    _ => None,
                }
            }
            Mode::Ask { ask, text } => self.on_ask_key(key, ask, text),
        }
    }

    /// The dialog spells out the action, so Enter on a valid answer is the
    /// confirmation; a bad answer keeps the dialog open and says why.
    fn on_ask_key(&mut self, key: KeyEvent, ask: Ask, mut text: String) -> Option<Intent> {
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
    fn ask(&mut self, ask: Ask, suggested: String) {
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
    fn ask_scale(&mut self, vm: &str) {
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

    fn group_size(&self, group: &str) -> u32 {
        let members = self
            .model
            .vms
            .values()
            .filter(|vm| vm.spec.as_ref().is_some_and(|s| s.group == group))
            .count();
        u32::try_from(members).unwrap_or(u32::MAX)
    }

    fn on_normal_key(&mut self, key: KeyEvent) -> Option<Intent> {
        self.message = None;
        if self.view == View::Logs {
            if let Some(intent) = self.on_logs_key(key) {
                return intent;
            }
        }
        let count = self.shown().len();
        match key.code {
            KeyCode::Char('q') => return Some(Intent::Quit),
            KeyCode::Char(':') => self.mode = Mode::Command(String::new()),
            KeyCode::Char('/') => self.mode = Mode::Filter(String::new()),
            KeyCode::Char('?') => {
                self.overlay_scroll = 0;
                self.mode = Mode::Help;
            }
            KeyCode::Esc => self.back(),
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(count.saturating_sub(1))
            }
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::PageDown => self.selected = (self.selected + 20).min(count.saturating_sub(1)),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(20),
            KeyCode::Char('g') | KeyCode::Home => self.selected = 0,
            KeyCode::Char('G') | KeyCode::End => self.selected = count.saturating_sub(1),
            KeyCode::Tab => self.go(next_view(self.view)),
            KeyCode::BackTab => self.go(previous_view(self.view)),
            KeyCode::Char(digit @ '1'..='9') => self.sort_by(digit as usize - '1' as usize),
            KeyCode::Enter => self.drill_down(),
            KeyCode::Char('d') => self.describe_selected(),
            KeyCode::Char('l') if self.view == View::List(Resource::Vms) => {
                let vm = self.selected_key()?;
                return Some(self.open_logs(vm));
            }
            KeyCode::Char(c) => return self.action_key(c),
            _ => {}
        }
        None
    }

    fn sort_by(&mut self, column: usize) {
        let View::List(resource) = self.view else {
            return;
        };
        if column >= resource.columns().len() {
            return;
        }
        self.sort = match self.sort {
            Some((current, descending)) if current == column => Some((column, !descending)),
            _ => Some((column, false)),
        };
    }

    fn drill_down(&mut self) {
        match self.view {
            View::Overview => self.go(View::List(Resource::Vms)),
            View::List(Resource::Nodes) => {
                if let Some(node) = self.selected_key() {
                    self.go(View::List(Resource::Vms));
                    // The VMs of that node: its id in the NODE column.
                    self.filter = Filter::parse(&format!("^{node}$")).ok().flatten();
                }
            }
            View::List(Resource::Vms) => self.describe_selected(),
            View::List(Resource::Events) | View::Logs => {}
        }
    }

    fn describe_selected(&mut self) {
        let Some(key) = self.selected_key() else {
            return;
        };
        match self.view {
            View::List(Resource::Vms) => self.describe_vm(&key),
            View::List(Resource::Nodes) => {
                let node = self
                    .model
                    .nodes
                    .iter()
                    .find(|n| n.node_id.to_string() == key);
                if let Some(node) = node {
                    self.overlay_scroll = 0;
                    self.mode = Mode::Describe {
                        title: format!("node {key}"),
                        text: crate::describe::node(node),
                    };
                }
            }
            _ => {}
        }
    }

    fn describe_vm(&mut self, name: &str) {
        match self.model.vms.get(name) {
            Some(vm) => {
                self.overlay_scroll = 0;
                self.mode = Mode::Describe {
                    title: format!("vm {name}"),
                    text: crate::describe::vm(vm),
                }
            }
            None => self.error(format!("no VM named {name:?}")),
        }
    }

    fn action_key(&mut self, key: char) -> Option<Intent> {
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

    fn on_command_key(&mut self, key: KeyEvent, mut text: String) -> Option<Intent> {
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

    fn run_command(&mut self, command: &str) -> Option<Intent> {
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

    /// A command that gave the answer up front still asks y/n.
    fn confirm_answer(&mut self, ask: Ask, answer: &str) -> Option<Intent> {
        match ask.answer(answer) {
            Ok(action) if self.readonly => {
                self.error(format!("read-only: cannot {}", action.describe()))
            }
            Ok(action) => self.mode = Mode::Confirm(action),
            Err(error) => self.error(error.to_string()),
        }
        None
    }

    fn on_filter_key(&mut self, key: KeyEvent, mut text: String) {
        match key.code {
            KeyCode::Esc => self.mode = Mode::Normal,
            KeyCode::Backspace => {
                text.pop();
                self.mode = Mode::Filter(text);
            }
            KeyCode::Enter if self.view == View::Logs => {
                self.mode = Mode::Normal;
                self.search_logs(&text);
            }
            KeyCode::Enter => {
                self.mode = Mode::Normal;
                match Filter::parse(&text) {
                    Ok(filter) => {
                        self.filter = filter;
                        self.selected = 0;
                    }
                    Err(error) => self.error(error),
                }
            }
            KeyCode::Char(c) => {
                text.push(c);
                self.mode = Mode::Filter(text);
            }
            _ => {}
        }
    }
}

impl App {
    fn open_logs(&mut self, vm: String) -> Intent {
        self.go(View::Logs);
        self.logs = Some(LogView::new(vm.clone()));
        Intent::FollowLogs(vm)
    }

    fn search_logs(&mut self, text: &str) {
        let search = match text {
            "" => Ok(None),
            text => regex::RegexBuilder::new(text)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map(Some)
                .map_err(|e| format!("bad search {text:?}: {e}")),
        };
        match search {
            Ok(search) => {
                if let Some(logs) = self.logs.as_mut() {
                    logs.search = search;
                }
            }
            Err(error) => self.error(error),
        }
    }

    /// Keys of the logs view; `None` lets the common keys handle it.
    fn on_logs_key(&mut self, key: KeyEvent) -> Option<Option<Intent>> {
        let logs = self.logs.as_mut()?;
        match key.code {
            KeyCode::Char('w') => logs.wrap = !logs.wrap,
            KeyCode::Char('t') => logs.timestamps = !logs.timestamps,
            KeyCode::Char('f') | KeyCode::Char('G') | KeyCode::End => {
                logs.follow = true;
                logs.scroll = 0;
            }
            KeyCode::Up | KeyCode::Char('k') => logs.scroll_up(1),
            KeyCode::Down | KeyCode::Char('j') => logs.scroll_down(1),
            KeyCode::PageUp => logs.scroll_up(20),
            KeyCode::PageDown => logs.scroll_down(20),
            _ => return None,
        }
        Some(None)
    }
}

fn previous_view(view: View) -> View {
    match view {
        View::Overview | View::Logs => View::List(Resource::Events),
        View::List(Resource::Events) => View::List(Resource::Vms),
        View::List(Resource::Vms) => View::List(Resource::Nodes),
        View::List(Resource::Nodes) => View::Overview,
    }
}

fn next_view(view: View) -> View {
    match view {
        View::Overview => View::List(Resource::Nodes),
        View::List(Resource::Nodes) => View::List(Resource::Vms),
        View::List(Resource::Vms) => View::List(Resource::Events),
        View::List(Resource::Events) | View::Logs => View::Overview,
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

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_api::pb;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn type_text(app: &mut App, text: &str) {
        for c in text.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    fn app_with_vms(names: &[&str]) -> App {
        let mut app = App::new(false);
        for name in names {
            app.on_update(Update::Vm(Box::new(pb::VmEvent {
                kind: pb::VmEventKind::Added as i32,
                vm: Some(pb::VmInfo {
                    spec: Some(pb::VmSpec {
                        name: name.to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                revision: 1,
            })));
        }
        app
    }

    /// `web-1`, `web-2` in group `web`, and `db` in none.
    fn app_with_group() -> App {
        let mut app = App::new(false);
        for (name, group) in [("web-1", "web"), ("web-2", "web"), ("db", "")] {
            app.on_update(Update::Vm(Box::new(pb::VmEvent {
                kind: pb::VmEventKind::Added as i32,
                vm: Some(pb::VmInfo {
                    spec: Some(pb::VmSpec {
                        name: name.into(),
                        group: group.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                revision: 1,
            })));
        }
        app.on_update(Update::Nodes(vec![pb::NodeInfo {
            node_id: 3,
            ..Default::default()
        }]));
        app
    }

    fn shown_names(app: &mut App) -> Vec<String> {
        app.shown().iter().map(|r| r.key.clone()).collect()
    }

    #[test]
    fn filter_narrows_and_esc_clears_it() {
        let mut app = app_with_vms(&["web-1", "web-2", "db"]);
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "web");
        app.on_key(key(KeyCode::Enter));
        assert_eq!(shown_names(&mut app), ["web-1", "web-2"]);
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "!web");
        app.on_key(key(KeyCode::Enter));
        assert_eq!(shown_names(&mut app), ["db"]);
        app.on_key(key(KeyCode::Esc));
        assert_eq!(shown_names(&mut app).len(), 3);
    }

    #[test]
    fn a_bad_filter_says_why_and_keeps_the_list() {
        let mut app = app_with_vms(&["a"]);
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "(");
        app.on_key(key(KeyCode::Enter));
        assert!(matches!(&app.message, Some((text, true)) if text.contains("bad filter")));
        assert_eq!(shown_names(&mut app), ["a"]);
    }

    #[test]
    fn sorting_a_column_twice_reverses_it() {
        let mut app = app_with_vms(&["b", "a", "c"]);
        app.on_key(key(KeyCode::Char('1')));
        assert_eq!(shown_names(&mut app), ["a", "b", "c"]);
        app.on_key(key(KeyCode::Char('1')));
        assert_eq!(shown_names(&mut app), ["c", "b", "a"]);
    }

    #[test]
    fn commands_switch_views_complete_and_quit() {
        let mut app = app_with_vms(&["web-1"]);
        app.on_key(key(KeyCode::Char(':')));
        type_text(&mut app, "no");
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.mode, Mode::Command("nodes".into()));
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.view, View::List(Resource::Nodes));
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.view, View::List(Resource::Vms));

        app.on_key(key(KeyCode::Char(':')));
        type_text(&mut app, "vm w");
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.mode, Mode::Command("vm web-1".into()));
        app.on_key(key(KeyCode::Enter));
        assert!(matches!(&app.mode, Mode::Describe { title, .. } if title == "vm web-1"));
        app.on_key(key(KeyCode::Esc));

        app.on_key(key(KeyCode::Char(':')));
        type_text(&mut app, "bogus");
        app.on_key(key(KeyCode::Enter));
        assert!(matches!(&app.message, Some((text, true)) if text.contains("unknown command")));
        app.on_key(key(KeyCode::Char(':')));
        type_text(&mut app, "q");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Some(Intent::Quit));
    }

    #[test]
    fn actions_need_confirmation() {
        let mut app = app_with_vms(&["web-1"]);
        assert_eq!(app.on_key(key(KeyCode::Char('x'))), None);
        assert_eq!(app.mode, Mode::Confirm(Action::Stop("web-1".into())));
        assert_eq!(app.on_key(key(KeyCode::Char('n'))), None);
        assert_eq!(app.mode, Mode::Normal);
        app.on_key(key(KeyCode::Char('x')));
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            Some(Intent::Perform(Action::Stop("web-1".into())))
        );
    }

    #[test]
    fn read_only_refuses_every_action() {
        let mut app = app_with_group();
        app.readonly = true;
        app.on_key(key(KeyCode::Down));
        let refused = |app: &mut App| {
            assert_eq!(app.mode, Mode::Normal);
            assert!(matches!(&app.message, Some((text, true)) if text.starts_with("read-only")));
            app.message = None;
        };
        for c in ['s', 'x', 'r', 'D', 'S'] {
            assert_eq!(app.on_key(key(KeyCode::Char(c))), None);
            refused(&mut app);
        }
        for command in ["scale web 3", "scale web", "drain 3", "drain 3 1m"] {
            app.on_key(key(KeyCode::Char(':')));
            type_text(&mut app, command);
            assert_eq!(app.on_key(key(KeyCode::Enter)), None);
            refused(&mut app);
        }
        app.on_key(key(KeyCode::BackTab));
        assert_eq!(app.view, View::List(Resource::Nodes));
        app.on_key(key(KeyCode::Char('D')));
        refused(&mut app);
    }

    #[test]
    fn scale_asks_how_many_and_enter_does_it() {
        let mut app = app_with_group();
        // db, web-1, web-2: the first is in no group.
        app.on_key(key(KeyCode::Char('S')));
        assert!(matches!(&app.message, Some((text, true)) if text.contains("no replica group")));
        assert_eq!(app.mode, Mode::Normal);

        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Char('S')));
        let asked = Ask::Scale {
            group: "web".into(),
            current: 2,
        };
        assert_eq!(
            app.mode,
            Mode::Ask {
                ask: asked.clone(),
                text: "2".into()
            }
        );
        app.on_key(key(KeyCode::Backspace));
        type_text(&mut app, "many");
        assert_eq!(app.on_key(key(KeyCode::Enter)), None);
        assert!(matches!(&app.message, Some((text, true)) if text.contains("not a whole number")));
        assert!(matches!(&app.mode, Mode::Ask { ask, .. } if *ask == asked));
        for _ in 0..4 {
            app.on_key(key(KeyCode::Backspace));
        }
        type_text(&mut app, "5");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Intent::Perform(Action::Scale {
                group: "web".into(),
                replicas: 5
            }))
        );
        assert_eq!(app.mode, Mode::Normal);

        app.on_key(key(KeyCode::Char('S')));
        assert_eq!(app.on_key(key(KeyCode::Esc)), None);
        assert_eq!(app.mode, Mode::Normal);

        app.on_key(key(KeyCode::Char(':')));
        type_text(&mut app, "scale web 1");
        app.on_key(key(KeyCode::Enter));
        let action = Action::Scale {
            group: "web".into(),
            replicas: 1,
        };
        assert_eq!(app.mode, Mode::Confirm(action.clone()));
        assert_eq!(
            app.on_key(key(KeyCode::Char('y'))),
            Some(Intent::Perform(action))
        );
        app.on_key(key(KeyCode::Char(':')));
        type_text(&mut app, "scale nothing");
        app.on_key(key(KeyCode::Enter));
        assert!(matches!(&app.message, Some((text, true)) if text.contains("no replica group")));
    }

    #[test]
    fn drain_asks_for_a_deadline() {
        let mut app = app_with_group();
        app.on_key(key(KeyCode::Char(':')));
        type_text(&mut app, "nodes");
        app.on_key(key(KeyCode::Enter));
        app.on_key(key(KeyCode::Char('D')));
        assert_eq!(
            app.mode,
            Mode::Ask {
                ask: Ask::Drain { node: 3 },
                text: DRAIN_DEADLINE_DEFAULT.into()
            }
        );
        for (typed, complaint) in [("soon", "deadline \"soon\""), ("0s", "above zero")] {
            app.on_key(key(KeyCode::Backspace));
            app.on_key(key(KeyCode::Backspace));
            app.on_key(key(KeyCode::Backspace));
            app.on_key(key(KeyCode::Backspace));
            type_text(&mut app, typed);
            assert_eq!(app.on_key(key(KeyCode::Enter)), None);
            assert!(
                matches!(&app.message, Some((text, true)) if text.contains(complaint)),
                "{:?}",
                app.message
            );
        }
        app.on_key(key(KeyCode::Backspace));
        app.on_key(key(KeyCode::Backspace));
        type_text(&mut app, "90s");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Some(Intent::Perform(Action::Drain {
                node: 3,
                deadline_ms: 90_000
            }))
        );

        app.on_key(key(KeyCode::Char(':')));
        type_text(&mut app, "drain 3 1m");
        app.on_key(key(KeyCode::Enter));
        assert_eq!(
            app.mode,
            Mode::Confirm(Action::Drain {
                node: 3,
                deadline_ms: 60_000
            })
        );
    }

    #[test]
    fn logs_open_on_l_follow_the_stream_and_esc_closes_them() {
        let mut app = app_with_vms(&["web", "db"]);
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "web");
        app.on_key(key(KeyCode::Enter));
        assert_eq!(
            app.on_key(key(KeyCode::Char('l'))),
            Some(Intent::FollowLogs("web".into()))
        );
        assert_eq!(app.view, View::Logs);
        app.on_update(Update::Log {
            vm: "web".into(),
            data: b"hello\nworld\n".to_vec(),
            at_ms: 0,
        });
        app.on_update(Update::Log {
            vm: "other".into(),
            data: b"not ours\n".to_vec(),
            at_ms: 0,
        });
        assert_eq!(app.logs.as_ref().map(|l| l.lines.len()), Some(2));
        app.on_key(key(KeyCode::Char('w')));
        assert!(app.logs.as_ref().is_some_and(|l| l.wrap));
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "wor");
        app.on_key(key(KeyCode::Enter));
        assert!(app.logs.as_ref().is_some_and(|l| l.search.is_some()));
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.view, View::List(Resource::Vms));
        assert!(app.logs.is_none());
        // Back where it was: still filtered.
        assert_eq!(shown_names(&mut app), ["web"]);
    }

    #[test]
    fn the_selection_stays_on_a_shown_row() {
        let mut app = app_with_vms(&["a", "b", "c"]);
        app.on_key(key(KeyCode::Char('G')));
        assert_eq!(app.selected, 2);
        app.on_key(key(KeyCode::Char('/')));
        type_text(&mut app, "a");
        app.on_key(key(KeyCode::Enter));
        assert_eq!(shown_names(&mut app), ["a"]);
        assert_eq!(app.selected, 0);
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.selected, 0);
    }
}
