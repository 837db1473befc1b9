//! `blixard tui`: the dashboard, in ratatui's split: `model` (the cluster
//! as last heard), `app` (view state and what each key does), `ui` (one
//! frame from the state), `table` (resources as rows), `describe` (YAML);
//! `svg` (a frame as an image, for `screenshots/`); `source` (gRPC) and
//! `terminal` (the event loop) do the I/O.
//!
//! Invariant: `model`, `app`, `ui`, `table`, `describe` and `svg` are pure: no
//! network, no terminal, no clock (the caller passes the time), so every
//! view and key is tested against ratatui's `TestBackend`.

pub mod app;
pub mod describe;
pub mod logs;
pub mod model;
pub mod skin;
pub mod source;
pub mod svg;
pub mod table;
pub mod terminal;
pub mod ui;

pub use app::{Action, App, Intent};
pub use model::Update;
