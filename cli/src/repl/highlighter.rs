//! Syntax colours: known commands, flags, values, quoted strings; unknown
//! commands and flags, and VM names the cluster does not have, in red.

use clap::Command;
use nu_ansi_term::{Color, Style};
use reedline::StyledText;

use super::grammar::{self, Role, Values};
use super::live::{self, Shared};

pub struct Highlighter {
    root: Command,
    live: Shared,
}

impl Highlighter {
    pub fn new(root: Command, live: Shared) -> Self {
        Highlighter { root, live }
    }
}

impl reedline::Highlighter for Highlighter {
    fn highlight(&self, line: &str, _cursor: usize) -> StyledText {
        let words = grammar::words(line);
        let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
        let (roles, _) = grammar::read(&self.root, &texts);
        let snapshot = live::read(&self.live);
        let mut styled = StyledText::new();
        let mut at = 0;
        for (word, role) in words.iter().zip(roles) {
            if word.start > at {
                styled.push((Style::new(), line[at..word.start].to_string()));
            }
            let style = match role {
                Role::Builtin => Style::new().fg(Color::Magenta).bold(),
                Role::Command => Style::new().fg(Color::Green).bold(),
                Role::Flag => Style::new().fg(Color::Blue),
                Role::Unknown => Style::new().fg(Color::Red).underline(),
                _ if word.quoted => Style::new().fg(Color::Yellow),
                Role::Value(Values::VmName) if snapshot.vms.contains_key(&word.text) => {
                    Style::new().fg(Color::Cyan)
                }
                Role::Value(Values::VmName) => Style::new().fg(Color::Red),
                Role::Value(_) => Style::new().fg(Color::Cyan),
            };
            styled.push((style, line[word.start..word.end].to_string()));
            at = word.end;
        }
        if at < line.len() {
            styled.push((Style::new(), line[at..].to_string()));
        }
        styled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repl::live::{Snapshot, VmBrief};
    use clap::CommandFactory;
    use reedline::Highlighter as _;
    use std::sync::{Arc, RwLock};

    #[test]
    fn known_and_unknown_names_look_different_and_no_text_is_lost() {
        let mut root = crate::cli::Cli::command();
        root.build();
        let mut snapshot = Snapshot::default();
        snapshot.vms.insert("web".into(), VmBrief::default());
        let highlighter = Highlighter::new(root, Arc::new(RwLock::new(snapshot)));
        let line = "vm  status web --output 'json'";
        let styled = highlighter.highlight(line, 0);
        let text: String = styled.buffer.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(text, line);
        let style_of = |word: &str| {
            styled
                .buffer
                .iter()
                .find(|(_, t)| t == word)
                .map(|(s, _)| *s)
                .unwrap()
        };
        assert_eq!(style_of("vm"), Style::new().fg(Color::Green).bold());
        assert_eq!(style_of("web"), Style::new().fg(Color::Cyan));
        assert_eq!(style_of("--output"), Style::new().fg(Color::Blue));
        assert_eq!(style_of("'json'"), Style::new().fg(Color::Yellow));
        let unknown = highlighter.highlight("vm status nope", 0);
        assert_eq!(
            unknown.buffer.last().unwrap().0,
            Style::new().fg(Color::Red)
        );
        let bad = highlighter.highlight("vm frob", 0);
        assert_eq!(
            bad.buffer.last().unwrap().0,
            Style::new().fg(Color::Red).underline()
        );
    }
}
