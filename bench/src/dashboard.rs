//! The dashboard at scale: frame and filter times with 10,000 VMs and 100
//! nodes, drawn into ratatui's TestBackend (the terminal's own output
//! time is not included).

use std::time::Instant;

use blixard_api::pb;
use blixard_tui::{App, Update};
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;

use super::load::percentile_ms;
use super::report::{Row, Unit};

const FRAMES: usize = 200;

fn vm(i: usize) -> Update {
    Update::Vm(Box::new(pb::VmEvent {
        kind: pb::VmEventKind::Added as i32,
        vm: Some(pb::VmInfo {
            spec: Some(pb::VmSpec {
                name: format!("vm-{i:05}"),
                vcpus: 1,
                memory_mib: 128,
                ..Default::default()
            }),
            assigned_node: (i % 100) as u64 + 1,
            observed: Some(pb::VmObserved {
                phase: pb::VmPhase::Running as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        revision: i as u64,
    }))
}

fn key(app: &mut App, code: KeyCode) {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
}

pub fn rows(vms: usize) -> anyhow::Result<Vec<Row>> {
    let mut app = App::new(true);
    for i in 0..vms {
        app.on_update(vm(i));
    }
    app.on_update(Update::Nodes(
        (1..=100)
            .map(|node_id| pb::NodeInfo {
                node_id,
                ..Default::default()
            })
            .collect(),
    ));
    let mut terminal = Terminal::new(TestBackend::new(160, 48))?;
    let mut frame_us = Vec::with_capacity(FRAMES);
    for i in 0..FRAMES {
        // Move the selection so each frame draws other rows.
        key(
            &mut app,
            if i % 2 == 0 {
                KeyCode::PageDown
            } else {
                KeyCode::Down
            },
        );
        let started = Instant::now();
        terminal.draw(|frame| blixard_tui::ui::render(frame, &mut app))?;
        frame_us.push(started.elapsed().as_micros() as u64);
    }
    frame_us.sort_unstable();

    let mut filter_us = Vec::new();
    for pattern in ["vm-0", "vm-1234", "!vm-09", "Running", "^vm-.*7$"] {
        key(&mut app, KeyCode::Char('/'));
        for c in pattern.chars() {
            key(&mut app, KeyCode::Char(c));
        }
        let started = Instant::now();
        key(&mut app, KeyCode::Enter);
        terminal.draw(|frame| blixard_tui::ui::render(frame, &mut app))?;
        filter_us.push(started.elapsed().as_micros() as u64);
        key(&mut app, KeyCode::Esc);
    }
    filter_us.sort_unstable();

    let note = format!("{vms} VMs, 100 nodes, 160x48 TestBackend");
    let timing = |benchmark: &str, samples: &[u64], note: String| Row {
        p50_ms: percentile_ms(samples, 50),
        p99_ms: percentile_ms(samples, 99),
        ..Row::figure(
            benchmark,
            percentile_ms(samples, 50).unwrap_or_default(),
            Unit::Ms,
            note,
        )
    };
    Ok(vec![
        timing(
            "dashboard: frame (VM list, selection moving)",
            &frame_us,
            format!("{FRAMES} frames; {note}"),
        ),
        timing(
            "dashboard: filter applied and drawn",
            &filter_us,
            format!("5 regex filters; {note}"),
        ),
    ])
}
