//! The dashboard's state and what each key does to it (k9s conventions:
//! `:` commands, `/` filter, `?` help, `d` describe, `Esc` back).
//!
//! Invariants: keys never touch the network, they only change this state
//! or return an [`Intent`] for the caller to carry out; a mutating intent
//! is only returned after a confirmation, and never when read-only; the
//! selection always points at a shown row (or there are none).
//!
//! This module holds the state, the views and navigation; `action` what
//! an operator may do (and the questions first), `command` the `:` line,
//! `logs` the console view's keys.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::logs::LogView;
use crate::model::{Model, Update};
use crate::table::{self, Filter, Resource, Row};

mod action;
mod command;
mod logs;
#[cfg(test)]
mod tests;

pub use action::{Action, Ask, BadAnswer, DRAIN_DEADLINE_DEFAULT};
pub use command::{complete, COMMANDS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    List(Resource),
    /// The console of `App::logs`'s VM.
    Logs,
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
