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
