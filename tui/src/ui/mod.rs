//! Drawing: one frame from the app state, nothing else.
//!
//! Invariants: a frame touches only the rows that fit on the screen;
//! everything fits down to 80x24 (columns shrink, text is cut, never
//! wrapped over other widgets); colours are the 16 basic ones.
//!
//! One module per view (`overview`, `list`, `logs`) and one for what is
//! drawn over them (`dialog`); this one lays out the frame and the header
//! and footer every view shares.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap};
use ratatui::Frame;

use crate::app::{App, Mode, View};
use crate::model::Connection;
use crate::skin::Skin;
use crate::table::{Resource, Row as TextRow};

mod dialog;
mod list;
mod logs;
mod overview;
#[cfg(test)]
mod tests;

use dialog::{centered, overlay};
use list::list;
use logs::logs;
use overview::overview;

/// Every key, as `?` lists it.
pub const HELP: &[(&str, &str)] = &[
    (
        ":",
        "command: overview nodes vms events; vm|logs NAME; scale GROUP N; drain NODE [5m]; q",
    ),
    ("/", "filter rows by regex; a leading ! inverts it"),
    ("?", "this help"),
    ("Esc", "clear the filter, then go back"),
    (
        "Tab S-Tab",
        "next / previous view: overview, nodes, vms, events",
    ),
    ("Enter", "drill down: a node's VMs, a VM's description"),
    (
        "d",
        "describe the selected VM or node (YAML; j/k g/G scroll it)",
    ),
    (
        "l",
        "the selected VM's console; in it: / search, w wrap, t times, f follow",
    ),
    (
        "j k Up Down",
        "move; g G Home End first/last; PgUp PgDn by 20",
    ),
    ("1-9", "sort by that column; again to reverse"),
    ("s x r", "start, stop, restart the selected VM (asks first)"),
    ("S", "scale the selected VM's replica group (asks how many)"),
    (
        "D",
        "delete the selected VM, or drain the selected node (asks the deadline)",
    ),
    (
        "q Ctrl-C",
        "quit (blixard tui --skin light for light terminals)",
    ),
];

fn phase_style(skin: &Skin, state: &str) -> Style {
    let color = match state {
        "Running" => skin.ok,
        "Pending" | "Scheduled" | "Starting" | "Stopping" => skin.busy,
        "Failed" | "Lost" => skin.bad,
        _ => skin.muted,
    };
    Style::default().fg(color)
}

fn header(frame: &mut Frame, app: &App, area: Rect) {
    let skin = &app.skin;
    let connection = match &app.model.connection {
        Connection::Connecting => Span::styled("connecting", Style::default().fg(skin.busy)),
        Connection::Connected(address) => Span::styled(
            format!("connected to {address}"),
            Style::default().fg(skin.ok),
        ),
        Connection::Lost { address, reason } => Span::styled(
            format!("lost {address}: {reason}; reconnecting"),
            Style::default().fg(skin.bad),
        ),
    };
    let status = match &app.model.status {
        Some(status) => format!(
            "leader {} | term {} | commit {} | applied {} | rev {}",
            match status.leader_id {
                0 => "none".to_string(),
                id => id.to_string(),
            },
            status.term,
            status.commit_index,
            status.applied_index,
            status.revision
        ),
        None => "no status yet".into(),
    };
    let mut lines = vec![Line::from(vec![
        Span::styled("blixard ", Style::default().add_modifier(Modifier::BOLD)),
        connection,
        Span::raw(if app.readonly { "  [read-only]" } else { "" }),
    ])];
    lines.push(Line::from(status));
    frame.render_widget(Paragraph::new(lines), area);
}

fn footer(frame: &mut Frame, app: &App, area: Rect) {
    let line = match (&app.mode, &app.message) {
        (Mode::Command(text), _) => Line::from(format!(":{text}")),
        (Mode::Filter(text), _) => Line::from(format!("/{text}")),
        (_, Some((text, true))) => Line::styled(text.clone(), Style::default().fg(app.skin.bad)),
        (_, Some((text, false))) => Line::from(text.clone()),
        _ => Line::styled(
            "? help  : command  / filter  d describe  Tab next view  q quit",
            Style::default().fg(app.skin.muted),
        ),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn bordered(title: String) -> Block<'static> {
    Block::default().borders(Borders::ALL).title(title)
}

pub fn render(frame: &mut Frame, app: &mut App) {
    frame.render_widget(Block::default().style(app.skin.base), frame.area());
    let [top, body, bottom] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header(frame, app, top);
    match app.view {
        View::Overview => overview(frame, app, body),
        View::List(resource) => list(frame, app, resource, body),
        View::Logs => logs(frame, app, body),
    }
    footer(frame, app, bottom);
    let scroll = app.overlay_scroll;
    let mut scrolled = None;
    match &app.mode {
        Mode::Help => {
            let lines = HELP
                .iter()
                .map(|(keys, what)| {
                    Line::from(vec![
                        Span::styled(format!("{keys:<12}"), Style::default().fg(app.skin.accent)),
                        Span::raw(*what),
                    ])
                })
                .collect();
            scrolled = Some(overlay(frame, "help (Esc closes)", lines, body, scroll));
        }
        Mode::Describe { title, text } => {
            let lines = text.lines().map(|l| Line::from(l.to_string())).collect();
            let title = format!("{title} (Esc closes)");
            scrolled = Some(overlay(frame, &title, lines, body, scroll));
        }
        Mode::Confirm(action) => {
            let lines = vec![Line::from(format!("{}? y / n", action.describe()))];
            let area = centered(body, 50, 3);
            frame.render_widget(Clear, area);
            frame.render_widget(
                Paragraph::new(lines)
                    .block(Block::default().borders(Borders::ALL).title(" confirm ")),
                area,
            );
        }
        Mode::Ask { ask, text } => {
            let lines = vec![
                Line::from(ask.question()),
                Line::from(vec![
                    Span::styled("> ", Style::default().fg(app.skin.accent)),
                    Span::raw(text.as_str()),
                    Span::styled("_", Style::default().add_modifier(Modifier::SLOW_BLINK)),
                ]),
                Line::styled(
                    "Enter does it, Esc cancels",
                    Style::default().fg(app.skin.muted),
                ),
            ];
            let area = centered(body, 64, 5);
            frame.render_widget(Clear, area);
            frame.render_widget(
                Paragraph::new(lines)
                    .block(Block::default().borders(Borders::ALL).title(" confirm ")),
                area,
            );
        }
        Mode::Normal | Mode::Command(_) | Mode::Filter(_) => {}
    }
    if let Some(scroll) = scrolled {
        app.overlay_scroll = scroll;
    }
}
