//! Drawing: one frame from the app state, nothing else.
//!
//! Invariants: a frame touches only the rows that fit on the screen;
//! everything fits down to 80x24 (columns shrink, text is cut, never
//! wrapped over other widgets); colours are the 16 basic ones.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap};
use ratatui::Frame;

use crate::app::{App, Mode, View};
use crate::model::Connection;
use crate::skin::Skin;
use crate::table::{Resource, Row as TextRow};

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

/// Health, consensus position and counts, the VMs by state, the nodes,
/// the latest events and the throughput, each in its own pane.
fn overview(frame: &mut Frame, app: &App, area: Rect) {
    let model = &app.model;
    let skin = &app.skin;
    let [top, middle, spark] = Layout::vertical([
        Constraint::Length(8),
        Constraint::Min(4),
        Constraint::Length(5),
    ])
    .areas(area);
    let halves = [Constraint::Percentage(50), Constraint::Percentage(50)];
    let [facts, states] = Layout::horizontal(halves).areas(top);
    let [nodes, events] = Layout::horizontal(halves).areas(middle);

    let alive = model.nodes.iter().filter(|n| n.liveness == "alive").count();
    let voters: Vec<_> = model.nodes.iter().filter(|n| n.role == "voter").collect();
    let voters_alive = voters.iter().filter(|n| n.liveness == "alive").count();
    let quorum = voters.len() / 2 + 1;
    let leader = model.status.as_ref().map_or(0, |s| s.leader_id);
    let (health, health_colour) = match (leader, voters_alive >= quorum) {
        _ if voters.is_empty() => ("no voters known yet".to_string(), skin.muted),
        (0, _) => ("no leader".to_string(), skin.bad),
        (_, false) => (
            format!("no quorum: {voters_alive}/{} voters up", voters.len()),
            skin.bad,
        ),
        (_, true) if voters_alive < voters.len() || alive < model.nodes.len() => (
            format!("degraded: {} node(s) down", model.nodes.len() - alive),
            skin.busy,
        ),
        (_, true) => ("healthy".to_string(), skin.ok),
    };
    let mut lines = vec![Line::from(vec![
        Span::raw("health    "),
        Span::styled(health, Style::default().fg(health_colour)),
    ])];
    if let Some(status) = &model.status {
        lines.push(Line::from(format!(
            "leader    {}   term {}",
            match status.leader_id {
                0 => "none".into(),
                id => id.to_string(),
            },
            status.term
        )));
        lines.push(Line::from(format!(
            "commit    {}   applied {}",
            status.commit_index, status.applied_index
        )));
    }
    lines.push(Line::from(format!(
        "voters    {} (quorum {quorum})   workers {}",
        voters.len(),
        model.nodes.len() - voters.len()
    )));
    lines.push(Line::from(format!(
        "nodes {} ({alive} alive, {} not)",
        model.nodes.len(),
        model.nodes.len() - alive,
    )));
    let name = model
        .status
        .as_ref()
        .map_or(String::new(), |s| s.cluster_name.clone());
    frame.render_widget(
        Paragraph::new(lines).block(bordered(format!(" cluster {name} "))),
        facts,
    );

    let mut by_state = std::collections::BTreeMap::<&str, usize>::new();
    for vm in model.vms.values() {
        *by_state
            .entry(crate::table::phase_label(crate::table::vm_phase(vm)))
            .or_default() += 1;
    }
    let total = model.vms.len().max(1) as u64;
    let lines: Vec<Line> = by_state
        .iter()
        .map(|(state, count)| {
            Line::from(vec![
                Span::styled(format!("{state:<10}"), phase_style(skin, state)),
                Span::raw(format!("{count:>6} ")),
                Span::styled(
                    "#".repeat((*count as u64 * 12 / total) as usize),
                    phase_style(skin, state),
                ),
            ])
        })
        .collect();
    let states_title = format!(" VMs {} ", model.vms.len());
    frame.render_widget(Paragraph::new(lines).block(bordered(states_title)), states);

    let lines: Vec<Line> = model
        .nodes
        .iter()
        .take(nodes.height.saturating_sub(2) as usize)
        .map(|node| {
            let liveness = match node.liveness.as_str() {
                "alive" => skin.ok,
                "dead" => skin.bad,
                _ => skin.muted,
            };
            Line::from(vec![
                Span::raw(format!("{:<4} {:<7} ", node.node_id, node.role)),
                Span::styled(
                    format!("{:<6}", node.liveness),
                    Style::default().fg(liveness),
                ),
                Span::raw(format!(" {} VMs", node.vms_assigned)),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(bordered(format!(" nodes {} ", model.nodes.len()))),
        nodes,
    );

    let lines: Vec<Line> = model
        .events
        .iter()
        .rev()
        .take(events.height.saturating_sub(2) as usize)
        .map(|event| {
            let subject = if event.vm.is_empty() {
                String::new()
            } else {
                format!("{} ", event.vm)
            };
            Line::from(vec![
                Span::styled(format!("{} ", event.kind), Style::default().fg(skin.accent)),
                Span::raw(format!("{subject}{}", event.message)),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(bordered(" latest events ".into())),
        events,
    );

    let data: Vec<u64> = model.ops_per_s.iter().copied().collect();
    let latest = data.last().copied().unwrap_or(0);
    frame.render_widget(
        Sparkline::default()
            .block(bordered(format!(" operations/s (now {latest}) ")))
            .data(&data)
            .style(Style::default().fg(skin.accent)),
        spark,
    );
}

fn list(frame: &mut Frame, app: &mut App, resource: Resource, area: Rect) {
    let selected = app.selected;
    let skin = app.skin;
    let filter = app.filter.as_ref().map(|f| f.text.clone());
    let sort = app.sort;
    let rows: &[TextRow] = app.shown();
    let total = rows.len();
    // Borders and the header take three lines.
    let visible = (area.height as usize).saturating_sub(3).max(1);
    let offset = selected.saturating_sub(visible - 1);
    let state_column = resource.columns().iter().position(|c| *c == "STATE");
    let shown: Vec<Row> = rows
        .iter()
        .skip(offset)
        .take(visible)
        .map(|row| {
            let style =
                state_column.map_or(Style::default(), |i| phase_style(&skin, &row.cells[i]));
            Row::new(row.cells.clone()).style(style)
        })
        .collect();
    let header: Vec<String> = resource
        .columns()
        .iter()
        .enumerate()
        .map(|(i, name)| match sort {
            Some((column, descending)) if column == i => {
                format!("{name}{}", if descending { "v" } else { "^" })
            }
            _ => name.to_string(),
        })
        .collect();
    let widths: Vec<Constraint> = resource
        .columns()
        .iter()
        .map(|name| match *name {
            "NAME" | "MESSAGE" | "LABELS" => Constraint::Fill(2),
            "CPU" | "MEMORY" if resource == Resource::Nodes => Constraint::Length(17),
            _ => Constraint::Fill(1),
        })
        .collect();
    let title = match filter {
        Some(filter) => format!(" {}({total}) /{filter} ", resource.title()),
        None => format!(" {}({total}) ", resource.title()),
    };
    let table = Table::new(shown, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected((total > 0).then_some(selected - offset));
    frame.render_stateful_widget(table, area, &mut state);
}

/// One console line, search matches highlighted.
fn log_line<'a>(text: &'a str, search: Option<&regex::Regex>, mark: Style) -> Vec<Span<'a>> {
    let Some(search) = search else {
        return vec![Span::raw(text)];
    };
    let mut spans = Vec::new();
    let mut at = 0;
    for found in search.find_iter(text).filter(|m| !m.is_empty()) {
        spans.push(Span::raw(&text[at..found.start()]));
        spans.push(Span::styled(found.as_str(), mark));
        at = found.end();
    }
    spans.push(Span::raw(&text[at..]));
    spans
}

fn logs(frame: &mut Frame, app: &App, area: Rect) {
    let Some(logs) = &app.logs else {
        return;
    };
    let height = (area.height as usize).saturating_sub(2);
    let lines: Vec<Line> = logs
        .visible(height)
        .map(|(at_ms, text)| {
            let mut spans = Vec::new();
            if logs.timestamps {
                spans.push(Span::styled(
                    format!("{} ", crate::logs::clock(*at_ms)),
                    Style::default().fg(app.skin.muted),
                ));
            }
            spans.extend(log_line(text, logs.search.as_ref(), app.skin.mark));
            Line::from(spans)
        })
        .collect();
    let mut flags = Vec::new();
    if logs.follow {
        flags.push("follow".to_string());
    }
    if logs.wrap {
        flags.push("wrap".to_string());
    }
    if let Some(search) = &logs.search {
        flags.push(format!("/{}", search.as_str()));
    }
    let title = format!(
        " logs {} ({} lines) [{}] ",
        logs.vm,
        logs.lines.len(),
        flags.join(" ")
    );
    let mut paragraph =
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title));
    if logs.wrap {
        paragraph = paragraph.wrap(Wrap { trim: false });
    }
    frame.render_widget(paragraph, area);
}

const OVERLAY_WIDTH: u16 = 96;

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

/// A box over the view, as tall as its wrapped lines (up to the view's
/// height), showing them from `scroll`; returns `scroll` kept within the
/// text, and the title says which lines show when not all fit.
fn overlay(frame: &mut Frame, title: &str, lines: Vec<Line>, area: Rect, scroll: usize) -> usize {
    let inner = usize::from(area.width.min(OVERLAY_WIDTH).saturating_sub(2)).max(1);
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
    let height = u16::try_from(rows + 2).unwrap_or(u16::MAX);
    let area = centered(area, OVERLAY_WIDTH, height);
    let visible = usize::from(area.height.saturating_sub(2)).max(1);
    let scroll = scroll.min(rows.saturating_sub(visible));
    let title = match rows > visible {
        true => format!(
            " {title} [{}-{} of {rows}, j/k scroll] ",
            scroll + 1,
            (scroll + visible).min(rows)
        ),
        false => format!(" {title} "),
    };
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((u16::try_from(scroll).unwrap_or(u16::MAX), 0))
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
    scroll
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Update;
    use blixard_api::pb;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::style::Color;
    use ratatui::Terminal;

    fn screen(app: &mut App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| render(frame, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn key(app: &mut App, code: KeyCode) {
        app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
    }

    fn vm(name: &str, phase: pb::VmPhase, node: u64) -> Update {
        Update::Vm(Box::new(pb::VmEvent {
            kind: pb::VmEventKind::Added as i32,
            vm: Some(pb::VmInfo {
                spec: Some(pb::VmSpec {
                    name: name.into(),
                    vcpus: 1,
                    memory_mib: 128,
                    ..Default::default()
                }),
                assigned_node: node,
                observed: Some(pb::VmObserved {
                    phase: phase as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            revision: 1,
        }))
    }

    fn sample() -> App {
        let mut app = App::new(false);
        app.on_update(Update::Connected("127.0.0.1:7001".into()));
        app.on_update(Update::Status {
            status: Box::new(pb::StatusResponse {
                leader_id: 1,
                term: 3,
                commit_index: 42,
                applied_index: 42,
                revision: 17,
                ..Default::default()
            }),
            at_ms: 1_000,
        });
        app.on_update(vm("web-1", pb::VmPhase::Running, 2));
        app.on_update(vm("db", pb::VmPhase::Failed, 1));
        app.on_update(Update::Nodes(vec![pb::NodeInfo {
            node_id: 2,
            role: "worker".into(),
            liveness: "alive".into(),
            vcpus_total: 4,
            vcpus_allocated: 1,
            memory_mib_total: 1024,
            memory_mib_allocated: 128,
            vms_assigned: 1,
            accel: "tcg".into(),
            ..Default::default()
        }]));
        app
    }

    #[test]
    fn the_vm_list_shows_every_vm_and_the_cluster_line() {
        let mut app = sample();
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("connected to 127.0.0.1:7001"), "{text}");
        assert!(text.contains("leader 1 | term 3 | commit 42"), "{text}");
        assert!(text.contains("vms(2)"), "{text}");
        assert!(text.contains("web-1") && text.contains("Running"), "{text}");
        assert!(text.contains("db") && text.contains("Failed"), "{text}");
    }

    #[test]
    fn the_node_list_shows_gauges() {
        let mut app = sample();
        key(&mut app, KeyCode::Char(':'));
        for c in "nodes".chars() {
            key(&mut app, KeyCode::Char(c));
        }
        key(&mut app, KeyCode::Enter);
        let text = screen(&mut app, 100, 24);
        assert!(text.contains("nodes(1)"), "{text}");
        assert!(text.contains("[##--------]  25%"), "{text}");
        assert!(text.contains("worker") && text.contains("alive"), "{text}");
    }

    #[test]
    fn help_lists_every_key_and_esc_closes_it() {
        let mut app = sample();
        key(&mut app, KeyCode::Char('?'));
        let text = screen(&mut app, 100, 30);
        for (keys, _) in HELP {
            assert!(text.contains(keys), "{keys} missing from help:\n{text}");
        }
        key(&mut app, KeyCode::Esc);
        assert!(!screen(&mut app, 100, 30).contains("help (Esc closes)"));
    }

    #[test]
    fn a_filter_shows_in_the_title_and_the_footer_while_typing() {
        let mut app = sample();
        key(&mut app, KeyCode::Char('/'));
        key(&mut app, KeyCode::Char('w'));
        assert!(screen(&mut app, 80, 24).contains("/w"));
        key(&mut app, KeyCode::Enter);
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("vms(1) /w"), "{text}");
        assert!(!text.contains("Failed"), "{text}");
    }

    #[test]
    fn the_confirmation_dialog_names_the_action() {
        let mut app = sample();
        key(&mut app, KeyCode::Char('x'));
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("stop VM db? y / n"), "{text}");
    }

    #[test]
    fn a_description_taller_than_80x24_scrolls_and_says_which_lines_show() {
        let mut app = sample();
        key(&mut app, KeyCode::Char('d'));
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("name: db"), "{text}");
        let total = match &app.mode {
            Mode::Describe { text, .. } => text.lines().count(),
            other => panic!("{other:?}"),
        };
        assert!(text.contains(&format!("of {total}, j/k scroll]")), "{text}");
        key(&mut app, KeyCode::Char('G'));
        let text = screen(&mut app, 80, 24);
        assert!(
            !text.contains("name: db"),
            "the end shows, not the start:\n{text}"
        );
        assert!(text.contains(&format!("-{total} of {total}")), "{text}");
        // Kept within the text: one step up leaves the last page.
        key(&mut app, KeyCode::Char('k'));
        let text = screen(&mut app, 80, 24);
        assert!(!text.contains(&format!("-{total} of {total}")), "{text}");
        key(&mut app, KeyCode::Char('g'));
        assert!(screen(&mut app, 80, 24).contains("name: db"));
    }

    #[test]
    fn the_drain_dialog_asks_for_the_deadline_and_shows_what_is_typed() {
        let mut app = sample();
        key(&mut app, KeyCode::BackTab);
        key(&mut app, KeyCode::Char('D'));
        key(&mut app, KeyCode::Backspace);
        key(&mut app, KeyCode::Char('2'));
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("drain node 2: deadline"), "{text}");
        assert!(text.contains("> 52_"), "{text}");
        key(&mut app, KeyCode::Char('x'));
        key(&mut app, KeyCode::Enter);
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("deadline \"52x\""), "{text}");
    }

    #[test]
    fn only_the_rows_that_fit_are_drawn_and_the_selection_stays_visible() {
        let mut app = App::new(false);
        for i in 0..10_000 {
            app.on_update(vm(&format!("vm-{i:05}"), pb::VmPhase::Running, 1));
        }
        key(&mut app, KeyCode::Char('G'));
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("vms(10000)"), "{text}");
        assert!(text.contains("vm-09999"), "{text}");
        assert!(!text.contains("vm-00000"), "{text}");
    }

    #[test]
    fn logs_show_the_console_with_search_and_times() {
        let mut app = sample();
        key(&mut app, KeyCode::Char('l'));
        app.on_update(Update::Log {
            vm: "db".into(),
            data: b"booting\nBLIXARD-GUEST-READY\n".to_vec(),
            at_ms: 3_723_000,
        });
        key(&mut app, KeyCode::Char('t'));
        key(&mut app, KeyCode::Char('/'));
        for c in "ready".chars() {
            key(&mut app, KeyCode::Char(c));
        }
        key(&mut app, KeyCode::Enter);
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("logs db (2 lines) [follow /ready]"), "{text}");
        assert!(text.contains("01:02:03 BLIXARD-GUEST-READY"), "{text}");
    }

    #[test]
    fn the_light_skin_paints_the_screen_and_keeps_state_colours() {
        let mut app = sample();
        app.skin = crate::skin::LIGHT;
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|frame| render(frame, &mut app)).unwrap();
        let buffer = terminal.backend().buffer();
        assert_eq!(buffer[(79, 23)].bg, Color::White);
        let failed = (0..79u16)
            .flat_map(|x| (0..24u16).map(move |y| (x, y)))
            .find(|&(x, y)| buffer[(x, y)].symbol() == "F" && buffer[(x + 1, y)].symbol() == "a")
            .expect("the Failed VM is on screen");
        assert_eq!(buffer[failed].fg, Color::Red);
    }

    #[test]
    fn the_overview_counts_nodes_and_vms() {
        let mut app = sample();
        key(&mut app, KeyCode::Char(':'));
        for c in "overview".chars() {
            key(&mut app, KeyCode::Char(c));
        }
        key(&mut app, KeyCode::Enter);
        let text = screen(&mut app, 80, 24);
        assert!(text.contains("nodes 1 (1 alive, 0 not)"), "{text}");
        assert!(text.contains("VMs 2"), "{text}");
        assert!(text.contains("Failed         1"), "{text}");
        assert!(text.contains("Running        1"), "{text}");
        assert!(text.contains("leader    1   term 3"), "{text}");
        assert!(text.contains("2    worker  alive  1 VMs"), "{text}");
        assert!(text.contains("operations/s"), "{text}");
        assert!(text.contains("no voters known yet"), "{text}");

        let node = |id, role: &str, liveness: &str| pb::NodeInfo {
            node_id: id,
            role: role.into(),
            liveness: liveness.into(),
            ..Default::default()
        };
        let health = |app: &mut App, nodes| {
            app.on_update(Update::Nodes(nodes));
            let text = screen(app, 80, 24);
            let line = text.lines().find(|l| l.contains("health")).unwrap_or("");
            let after = line.split_once("health ").map_or("", |(_, rest)| rest);
            after.trim_end_matches(['│', ' ']).trim().to_string()
        };
        let healthy = vec![node(1, "voter", "alive"), node(2, "worker", "alive")];
        let said = health(&mut app, healthy);
        assert!(said.starts_with("healthy"), "{said:?}");
        let worker_down = vec![node(1, "voter", "alive"), node(2, "worker", "dead")];
        assert!(health(&mut app, worker_down).starts_with("degraded: 1 node(s) down"));
        let voters_down = vec![
            node(1, "voter", "alive"),
            node(2, "voter", "dead"),
            node(3, "voter", "dead"),
        ];
        assert!(health(&mut app, voters_down).starts_with("no quorum: 1/3 voters up"));
    }
}
