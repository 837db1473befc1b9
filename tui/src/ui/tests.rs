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
