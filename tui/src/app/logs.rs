//! The console view's keys: search, wrap, times, following.

use ratatui::crossterm::event::{KeyCode, KeyEvent};

use super::*;

impl App {
    pub(super) fn open_logs(&mut self, vm: String) -> Intent {
        self.go(View::Logs);
        self.logs = Some(LogView::new(vm.clone()));
        Intent::FollowLogs(vm)
    }

    pub(super) fn search_logs(&mut self, text: &str) {
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
    pub(super) fn on_logs_key(&mut self, key: KeyEvent) -> Option<Option<Intent>> {
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
