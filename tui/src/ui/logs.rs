//! A VM's console: search marks, times, wrapping and following.

use super::*;

/// One console line, search matches highlighted.
pub(super) fn log_line<'a>(
    text: &'a str,
    search: Option<&regex::Regex>,
    mark: Style,
) -> Vec<Span<'a>> {
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

pub(super) fn logs(frame: &mut Frame, app: &App, area: Rect) {
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
