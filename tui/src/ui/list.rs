//! A resource list (nodes, VMs, events): only the rows that fit are drawn.

use super::*;

pub(super) fn list(frame: &mut Frame, app: &mut App, resource: Resource, area: Rect) {
    let selected = app.selected;
    let skin = app.skin;
    let filter = app.filter.as_ref().map(|f| f.text.clone());
    let sort = app.sort;
    let rows: &[TextRow] = app.shown();
    let total = rows.len();
    // Borders and the header take three lines.
    let visible = (area.height as usize).saturating_sub(3).max(1);
    let offset = selected.saturating_sub(visible - 1);
    let state_column = resource.columns().iter().position(|c| *c == "STATE");
    let shown: Vec<Row> = rows
        .iter()
        .skip(offset)
        .take(visible)
        .map(|row| {
            let style =
                state_column.map_or(Style::default(), |i| phase_style(&skin, &row.cells[i]));
            Row::new(row.cells.clone()).style(style)
        })
        .collect();
    let header: Vec<String> = resource
        .columns()
        .iter()
        .enumerate()
        .map(|(i, name)| match sort {
            Some((column, descending)) if column == i => {
                format!("{name}{}", if descending { "v" } else { "^" })
            }
            _ => name.to_string(),
        })
        .collect();
    let widths: Vec<Constraint> = resource
        .columns()
        .iter()
        .map(|name| match *name {
            "NAME" | "MESSAGE" | "LABELS" => Constraint::Fill(2),
            "CPU" | "MEMORY" if resource == Resource::Nodes => Constraint::Length(17),
            _ => Constraint::Fill(1),
        })
        .collect();
    let title = match filter {
        Some(filter) => format!(" {}({total}) /{filter} ", resource.title()),
        None => format!(" {}({total}) ", resource.title()),
    };
    let table = Table::new(shown, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected((total > 0).then_some(selected - offset));
    frame.render_stateful_widget(table, area, &mut state);
}
