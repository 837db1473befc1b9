//! What is drawn over a view: a scrolling overlay and centred boxes.

use super::*;

/// The widest a help or description overlay gets.
const OVERLAY_WIDTH: u16 = 96;

pub(super) fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

/// A box over the view, as tall as its wrapped lines (up to the view's
/// height), showing them from `scroll`; returns `scroll` kept within the
/// text, and the title says which lines show when not all fit.
pub(super) fn overlay(
    frame: &mut Frame,
    title: &str,
    lines: Vec<Line>,
    area: Rect,
    scroll: usize,
) -> usize {
    let inner = usize::from(area.width.min(OVERLAY_WIDTH).saturating_sub(2)).max(1);
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
    let height = u16::try_from(rows + 2).unwrap_or(u16::MAX);
    let area = centered(area, OVERLAY_WIDTH, height);
    let visible = usize::from(area.height.saturating_sub(2)).max(1);
    let scroll = scroll.min(rows.saturating_sub(visible));
    let title = match rows > visible {
        true => format!(
            " {title} [{}-{} of {rows}, j/k scroll] ",
            scroll + 1,
            (scroll + visible).min(rows)
        ),
        false => format!(" {title} "),
    };
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((u16::try_from(scroll).unwrap_or(u16::MAX), 0))
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
    scroll
}
