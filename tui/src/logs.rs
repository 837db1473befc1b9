//! A VM's serial console as the dashboard shows it: lines as they arrive,
//! with follow, wrap, arrival-time stamps and a highlighted search.
//!
//! Invariants: at most `LOG_LINES_MAX` lines are kept (the oldest go
//! first); a line is only split where the guest wrote a newline, so a
//! chunk boundary never breaks one in two.

use std::collections::VecDeque;

use regex::Regex;

pub const LOG_LINES_MAX: usize = 5_000;

#[derive(Debug, Clone)]
pub struct LogView {
    pub vm: String,
    /// (arrival time in ms since the epoch, text)
    pub lines: VecDeque<(u64, String)>,
    partial: String,
    pub follow: bool,
    pub wrap: bool,
    pub timestamps: bool,
    pub search: Option<Regex>,
    /// Lines scrolled up from the newest (0 while following).
    pub scroll: usize,
}

impl LogView {
    pub fn new(vm: String) -> Self {
        LogView {
            vm,
            lines: VecDeque::new(),
            partial: String::new(),
            follow: true,
            wrap: false,
            timestamps: false,
            search: None,
            scroll: 0,
        }
    }

    pub fn push(&mut self, data: &[u8], at_ms: u64) {
        self.partial.push_str(&String::from_utf8_lossy(data));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            if self.lines.len() == LOG_LINES_MAX {
                self.lines.pop_front();
            }
            self.lines.push_back((at_ms, line));
        }
    }

    pub fn scroll_up(&mut self, by: usize) {
        self.follow = false;
        self.scroll = (self.scroll + by).min(self.lines.len().saturating_sub(1));
    }

    pub fn scroll_down(&mut self, by: usize) {
        self.scroll = self.scroll.saturating_sub(by);
        if self.scroll == 0 {
            self.follow = true;
        }
    }

    /// The last `height` lines above the scroll position.
    pub fn visible(&self, height: usize) -> impl Iterator<Item = &(u64, String)> {
        let end = self.lines.len().saturating_sub(self.scroll);
        let start = end.saturating_sub(height);
        self.lines.range(start..end)
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
pub fn clock(at_ms: u64) -> String {
    let seconds = at_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_only_at_newlines_across_chunks() {
        let mut log = LogView::new("web".into());
        log.push(b"boot", 0);
        assert!(log.lines.is_empty());
        log.push(b"ing\r\nBLIXARD-GUEST-READY\npart", 1_000);
        let lines: Vec<&str> = log.lines.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines, ["booting", "BLIXARD-GUEST-READY"]);
    }

    #[test]
    fn the_buffer_is_bounded_and_scrolling_stops_following() {
        let mut log = LogView::new("web".into());
        for i in 0..LOG_LINES_MAX + 5 {
            log.push(format!("line {i}\n").as_bytes(), 0);
        }
        assert_eq!(log.lines.len(), LOG_LINES_MAX);
        assert_eq!(log.lines[0].1, "line 5");
        log.scroll_up(10);
        assert!(!log.follow);
        let last = log.visible(3).last().unwrap();
        assert_eq!(last.1, format!("line {}", LOG_LINES_MAX + 5 - 11));
        log.scroll_down(10);
        assert!(log.follow);
        assert_eq!(clock(3_723_000), "01:02:03");
    }
}
