//! The event loop: draw, then wait for whichever comes first of a key, a
//! data update or the tick; repeat until quit.
//!
//! Invariants: the terminal is restored on every exit, panics included
//! (`ratatui::init` installs the hook); keys are read on their own thread
//! so a slow network never delays typing; every channel is bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyEvent, KeyEventKind};
use tokio::sync::mpsc;

use crate::app::{App, Intent, View};
use crate::model::Update;
use crate::{source, ui};

const UPDATES_QUEUED_MAX: usize = 1_024;
const KEYS_QUEUED_MAX: usize = 64;
/// Console output and action outcomes, beside the main feed.
const SIDE_UPDATES_QUEUED_MAX: usize = 256;
/// Updates applied between two frames, so a burst cannot starve drawing.
const UPDATES_PER_FRAME_MAX: usize = 512;
const TICK_MS: u64 = 250;
const KEY_POLL_MS: u64 = 100;

fn read_keys(keys: mpsc::Sender<KeyEvent>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match event::poll(Duration::from_millis(KEY_POLL_MS)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        if let Ok(Event::Key(key)) = event::read() {
            if key.kind == KeyEventKind::Press && keys.blocking_send(key).is_err() {
                return;
            }
        }
    }
}

/// Runs the dashboard against `addresses` until the operator quits.
pub async fn run(
    addresses: Vec<String>,
    readonly: bool,
    skin: crate::skin::Skin,
) -> std::io::Result<()> {
    let (updates_tx, mut updates) = mpsc::channel(UPDATES_QUEUED_MAX);
    let (notices_tx, mut notices) = mpsc::channel::<Update>(SIDE_UPDATES_QUEUED_MAX);
    let (keys_tx, mut keys) = mpsc::channel(KEYS_QUEUED_MAX);
    let feed = tokio::spawn(source::run(addresses.clone(), updates_tx));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || read_keys(keys_tx, stop))
    };

    let mut terminal = ratatui::init();
    let mut app = App::new(readonly);
    app.skin = skin;
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    let mut console: Option<tokio::task::JoinHandle<()>> = None;
    let outcome = loop {
        app.set_now(blixard_api::unix_ms_now());
        if let Err(error) = terminal.draw(|frame| ui::render(frame, &mut app)) {
            break Err(error);
        }
        tokio::select! {
            Some(update) = updates.recv() => {
                app.on_update(update);
                for _ in 1..UPDATES_PER_FRAME_MAX {
                    match updates.try_recv() {
                        Ok(update) => app.on_update(update),
                        Err(_) => break,
                    }
                }
            }
            Some(notice) = notices.recv() => app.on_update(notice),
            Some(key) = keys.recv() => match app.on_key(key) {
                Some(Intent::Quit) => break Ok(()),
                Some(Intent::Perform(action)) => {
                    let address = app.connected_address().unwrap_or_else(|| addresses[0].clone());
                    let notices = notices_tx.clone();
                    tokio::spawn(async move {
                        let notice = match source::perform(&address, &action).await {
                            Ok(text) => Update::Notice { text, error: false },
                            Err(error) => Update::Notice { text: error.to_string(), error: true },
                        };
                        let _ = notices.send(notice).await;
                    });
                }
                Some(Intent::FollowLogs(vm)) => {
                    let address = app.connected_address().unwrap_or_else(|| addresses[0].clone());
                    if let Some(previous) = console.take() {
                        previous.abort();
                    }
                    console = Some(tokio::spawn(source::follow_logs(address, vm, notices_tx.clone())));
                }
                None => {}
            },
            _ = tick.tick() => {}
        }
        if app.view != View::Logs {
            if let Some(stream) = console.take() {
                stream.abort();
            }
        }
    };
    ratatui::restore();
    stop.store(true, Ordering::Relaxed);
    feed.abort();
    let _ = reader.join();
    outcome
}
