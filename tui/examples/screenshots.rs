//! Regenerates `screenshots/*.png`: every dashboard view, drawn by the
//! dashboard's own `ui::render` into ratatui's `TestBackend`, turned into
//! SVG by `svg::render` and into PNG by resvg with the DejaVu Sans Mono
//! bundled in `screenshots/fonts/`.
//!
//! `cargo run -p blixard-tui --example screenshots [OUT_DIR]`
//!
//! The cluster shown is a fixed one built here (five nodes, one dead,
//! VMs in every state), so the images change only when the rendering does.

use std::path::{Path, PathBuf};

use blixard_api::pb;
use blixard_tui::app::App;
use blixard_tui::skin;
use blixard_tui::svg::{self, DEJAVU_SANS_MONO, TANGO_DARK};
use blixard_tui::{ui, Update};
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use resvg::{tiny_skia, usvg};

const WIDTH: u16 = 120;
const HEIGHT: u16 = 32;
/// The fixture's "now": 2026-11-27 10:00 UTC.
const NOW_MS: u64 = 1_795_773_600_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| root.join("screenshots"), PathBuf::from);
    let fonts = root.join("screenshots/fonts");
    let mut options = usvg::Options::default();
    for font in ["DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"] {
        let data = std::fs::read(fonts.join(font)).map_err(|e| format!("font {font}: {e}"))?;
        options.fontdb_mut().load_font_data(data);
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;

    let shots: [Shot; 10] = [
        (
            "overview",
            "cluster health, nodes, VMs by state, events, ops/s",
            |app| keys(app, ":overview\n"),
        ),
        ("vms", "every VM, coloured by state", |_| {}),
        ("vms-filtered", "a regex filter, sorted by uptime", |app| {
            keys(app, "/web\n6")
        }),
        ("nodes", "nodes with allocation gauges", |app| {
            keys(app, ":nodes\n")
        }),
        ("events", "the event tail", |app| keys(app, ":events\n")),
        ("describe", "a VM described as YAML", |app| {
            keys(app, "jjjd")
        }),
        ("logs", "a VM's console, searching", |app| {
            keys(app, ":logs web-1\n");
            app.on_update(Update::Log {
                vm: "web-1".into(),
                data: CONSOLE.as_bytes().to_vec(),
                at_ms: NOW_MS - 4_000,
            });
            keys(app, "/virtio|ready\nt");
        }),
        ("help", "every key", |app| keys(app, "?")),
        ("scale", "scaling a replica group", |app| {
            keys(app, "/web\nS\x087")
        }),
        ("vms-light", "the light skin", |app| app.skin = skin::LIGHT),
    ];
    for (name, what, setup) in shots {
        let mut app = fixture();
        setup(&mut app);
        let mut terminal =
            Terminal::new(TestBackend::new(WIDTH, HEIGHT)).map_err(|e| format!("terminal: {e}"))?;
        terminal
            .draw(|frame| ui::render(frame, &mut app))
            .map_err(|e| format!("draw: {e}"))?;
        let palette = match app.skin.name {
            "light" => svg::Palette {
                foreground: "#2e3436",
                background: "#eeeeec",
                ..TANGO_DARK
            },
            _ => TANGO_DARK,
        };
        let document = svg::render(terminal.backend().buffer(), &palette, &DEJAVU_SANS_MONO);
        let tree = usvg::Tree::from_str(&document, &options).map_err(|e| format!("{name}: {e}"))?;
        let size = tree.size().to_int_size();
        let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
            .ok_or_else(|| format!("{name}: empty image"))?;
        resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
        let path = out.join(format!("{name}.png"));
        pixmap
            .save_png(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{:<40} {what}", path.display());
    }
    Ok(())
}

/// A file name, what it shows, and the keys (or changes) that get there
/// from the fixture.
type Shot = (&'static str, &'static str, fn(&mut App));

/// Types `text` as keys: `\n` is Enter, `\x08` Backspace.
fn keys(app: &mut App, text: &str) {
    for c in text.chars() {
        let code = match c {
            '\n' => KeyCode::Enter,
            '\x08' => KeyCode::Backspace,
            c => KeyCode::Char(c),
        };
        app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
    }
}

const CONSOLE: &str = "\
[    0.000000] Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)
[    0.000000] Command line: console=ttyS0 reboot=t panic=-1 quiet=0
[    0.012345] x86/fpu: Supporting XSAVE feature 0x001: 'x87 floating point registers'
[    0.104217] virtio-mmio: Registering device virtio-mmio.0 at 0xfeb00000-0xfeb001ff, IRQ 12.
[    0.104622] virtio-mmio: Registering device virtio-mmio.1 at 0xfeb00200-0xfeb003ff, IRQ 13.
[    0.231906] Serial: 8250/16550 driver, 4 ports, IRQ sharing disabled
[    0.289113] virtio_net virtio1 eth0: renamed from eth0
[    0.371448] Freeing unused kernel image (initmem) memory: 2764K
[    0.372001] Run /init as init process
blixard-guest: mounting /proc /sys /dev
blixard-guest: eth0 up, 10.0.2.15/24
blixard-guest: serving http on :8080
blixard-guest: ready
GET / 200 0.4ms
GET /healthz 200 0.1ms
";

fn vm(
    name: &str,
    group: &str,
    phase: pb::VmPhase,
    node: u64,
    vcpus: u32,
    memory_mib: u64,
    up_s: u64,
) -> Update {
    Update::Vm(Box::new(pb::VmEvent {
        kind: pb::VmEventKind::Added as i32,
        vm: Some(pb::VmInfo {
            spec: Some(pb::VmSpec {
                name: name.into(),
                group: group.into(),
                vcpus,
                memory_mib,
                anti_affinity_group: group.into(),
                ..Default::default()
            }),
            desired_state: pb::DesiredState::Running as i32,
            assigned_node: node,
            created_at_unix_ms: NOW_MS - up_s * 1000 - 60_000,
            observed: Some(pb::VmObserved {
                phase: phase as i32,
                node,
                pid: 4100 + (name.len() as u32) * 37,
                boot_ms: 1_640,
                restarts: u32::from(phase == pb::VmPhase::Failed) * 3,
                observed_at_unix_ms: NOW_MS - up_s * 1000,
                reason: match phase {
                    pb::VmPhase::Failed => "exited with status 1".into(),
                    pb::VmPhase::Lost => "node 5 is dead".into(),
                    pb::VmPhase::Pending => "no node has 32 vCPUs free".into(),
                    _ => String::new(),
                },
                ..Default::default()
            }),
            ..Default::default()
        }),
        revision: 9_000,
    }))
}

fn node(
    id: u64,
    role: &str,
    liveness: &str,
    vcpus: (u32, u32),
    memory_mib: (u64, u64),
) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: id,
        address: format!("10.0.0.{id}:7001"),
        gossip_address: format!("10.0.0.{id}:7101"),
        role: role.into(),
        liveness: liveness.into(),
        eligible: true,
        vcpus_allocated: vcpus.0,
        vcpus_total: vcpus.1,
        memory_mib_allocated: memory_mib.0,
        memory_mib_total: memory_mib.1,
        accel: "kvm".into(),
        labels: [
            (
                "zone".to_string(),
                ["a", "b", "c"][(id % 3) as usize].to_string(),
            ),
            ("storage".to_string(), "nvme".to_string()),
        ]
        .into(),
        vms_assigned: vcpus.0 / 2,
        vms_running: vcpus.0 / 2,
        member: true,
        reported: true,
        ..Default::default()
    }
}

fn fixture() -> App {
    use pb::VmPhase::*;
    let mut app = App::new(false);
    app.set_now(NOW_MS);
    app.on_update(Update::Connected("10.0.0.1:7001".into()));
    // Throughput samples: a burst of creates, then a rolling restart.
    let rates = [
        40u64, 42, 38, 45, 120, 380, 410, 395, 160, 60, 55, 48, 52, 47, 90, 240, 260, 230, 110, 64,
        58, 61, 57, 49, 44, 46, 180, 320, 300, 140, 70, 52, 49, 51, 48, 46, 50, 47, 45, 44,
    ];
    let mut revision = 5_000;
    for (i, rate) in rates.iter().enumerate() {
        revision += rate;
        app.on_update(Update::Status {
            status: Box::new(pb::StatusResponse {
                node_id: 1,
                leader_id: 1,
                term: 7,
                commit_index: 18_233 + revision,
                applied_index: 18_233 + revision,
                raft_role: "leader".into(),
                revision,
                node_role: "voter".into(),
                cluster_name: "prod".into(),
                ..Default::default()
            }),
            at_ms: NOW_MS - 40_000 + i as u64 * 1_000,
        });
    }
    app.on_update(Update::Nodes(vec![
        node(1, "voter", "alive", (10, 16), (20_480, 65_536)),
        node(2, "voter", "alive", (12, 16), (24_576, 65_536)),
        node(3, "voter", "alive", (8, 16), (16_384, 65_536)),
        node(4, "worker", "alive", (28, 32), (98_304, 131_072)),
        node(5, "worker", "dead", (6, 32), (12_288, 131_072)),
    ]));
    let vms = [
        ("web-1", "web", Running, 1, 2, 2_048, 3_600 * 26 + 120),
        ("web-2", "web", Running, 2, 2, 2_048, 3_600 * 26 + 95),
        ("web-3", "web", Running, 3, 2, 2_048, 3_600 * 5 + 1_400),
        ("web-4", "web", Running, 4, 2, 2_048, 754),
        ("web-5", "web", Starting, 4, 2, 2_048, 3),
        ("api-1", "api", Running, 1, 4, 4_096, 86_400 * 3),
        ("api-2", "api", Running, 2, 4, 4_096, 86_400 * 3),
        ("api-3", "api", Lost, 5, 4, 4_096, 0),
        ("db-primary", "", Running, 4, 8, 32_768, 86_400 * 12),
        ("db-replica", "", Running, 3, 8, 32_768, 86_400 * 12),
        ("cache", "", Stopped, 2, 2, 8_192, 0),
        ("batch-nightly", "", Failed, 4, 4, 8_192, 0),
        ("ml-train", "", Pending, 0, 32, 65_536, 0),
        ("queue-1", "queue", Running, 1, 1, 1_024, 7_200),
        ("queue-2", "queue", Running, 2, 1, 1_024, 7_100),
        ("queue-3", "queue", Lost, 5, 1, 1_024, 0),
    ];
    for (name, group, phase, node, vcpus, memory, up_s) in vms {
        app.on_update(vm(name, group, phase, node, vcpus, memory, up_s));
    }
    let events = [
        ("node_joined", "", 4, "node 4 joined as worker"),
        (
            "vm_placed",
            "db-primary",
            4,
            "placed on node 4 (spread, 3 candidates)",
        ),
        (
            "vm_placed",
            "web-4",
            4,
            "placed on node 4 (anti-affinity web)",
        ),
        ("vm_running", "web-4", 4, "running, booted in 1640 ms"),
        ("node_dead", "", 5, "node 5 dead by gossip"),
        ("vm_lost", "api-3", 5, "node 5 is dead; replacing"),
        ("vm_lost", "queue-3", 5, "node 5 is dead; replacing"),
        (
            "vm_failed",
            "batch-nightly",
            4,
            "exited with status 1 (3 restarts)",
        ),
        ("vm_unplaceable", "ml-train", 0, "no node has 32 vCPUs free"),
        (
            "vm_placed",
            "web-5",
            4,
            "placed on node 4 (anti-affinity web)",
        ),
    ];
    for (i, (kind, vm, node, message)) in events.into_iter().enumerate() {
        let revision = 9_100 + i as u64 * 7;
        app.on_update(Update::Event(pb::ClusterEvent {
            seq: revision << 20,
            revision,
            at_unix_ms: NOW_MS - 60_000 + i as u64 * 5_000,
            kind: kind.into(),
            vm: vm.into(),
            node_id: node,
            message: message.into(),
        }));
    }
    app
}
