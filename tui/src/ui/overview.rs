//! The overview: the cluster line, node gauges, VM counts and recent events.

use super::*;

/// Health, consensus position and counts, the VMs by state, the nodes,
/// the latest events and the throughput, each in its own pane.
pub(super) fn overview(frame: &mut Frame, app: &App, area: Rect) {
    let model = &app.model;
    let skin = &app.skin;
    let [top, middle, spark] = Layout::vertical([
        Constraint::Length(8),
        Constraint::Min(4),
        Constraint::Length(5),
    ])
    .areas(area);
    let halves = [Constraint::Percentage(50), Constraint::Percentage(50)];
    let [facts, states] = Layout::horizontal(halves).areas(top);
    let [nodes, events] = Layout::horizontal(halves).areas(middle);

    let alive = model.nodes.iter().filter(|n| n.liveness == "alive").count();
    let voters: Vec<_> = model.nodes.iter().filter(|n| n.role == "voter").collect();
    let voters_alive = voters.iter().filter(|n| n.liveness == "alive").count();
    let quorum = voters.len() / 2 + 1;
    let leader = model.status.as_ref().map_or(0, |s| s.leader_id);
    let (health, health_colour) = match (leader, voters_alive >= quorum) {
        _ if voters.is_empty() => ("no voters known yet".to_string(), skin.muted),
        (0, _) => ("no leader".to_string(), skin.bad),
        (_, false) => (
            format!("no quorum: {voters_alive}/{} voters up", voters.len()),
            skin.bad,
        ),
        (_, true) if voters_alive < voters.len() || alive < model.nodes.len() => (
            format!("degraded: {} node(s) down", model.nodes.len() - alive),
            skin.busy,
        ),
        (_, true) => ("healthy".to_string(), skin.ok),
    };
    let mut lines = vec![Line::from(vec![
        Span::raw("health    "),
        Span::styled(health, Style::default().fg(health_colour)),
    ])];
    if let Some(status) = &model.status {
        lines.push(Line::from(format!(
            "leader    {}   term {}",
            match status.leader_id {
                0 => "none".into(),
                id => id.to_string(),
            },
            status.term
        )));
        lines.push(Line::from(format!(
            "commit    {}   applied {}",
            status.commit_index, status.applied_index
        )));
    }
    lines.push(Line::from(format!(
        "voters    {} (quorum {quorum})   workers {}",
        voters.len(),
        model.nodes.len() - voters.len()
    )));
    lines.push(Line::from(format!(
        "nodes {} ({alive} alive, {} not)",
        model.nodes.len(),
        model.nodes.len() - alive,
    )));
    let name = model
        .status
        .as_ref()
        .map_or(String::new(), |s| s.cluster_name.clone());
    frame.render_widget(
        Paragraph::new(lines).block(bordered(format!(" cluster {name} "))),
        facts,
    );

    let mut by_state = std::collections::BTreeMap::<&str, usize>::new();
    for vm in model.vms.values() {
        *by_state
            .entry(crate::table::phase_label(crate::table::vm_phase(vm)))
            .or_default() += 1;
    }
    let total = model.vms.len().max(1) as u64;
    let lines: Vec<Line> = by_state
        .iter()
        .map(|(state, count)| {
            Line::from(vec![
                Span::styled(format!("{state:<10}"), phase_style(skin, state)),
                Span::raw(format!("{count:>6} ")),
                Span::styled(
                    "#".repeat((*count as u64 * 12 / total) as usize),
                    phase_style(skin, state),
                ),
            ])
        })
        .collect();
    let states_title = format!(" VMs {} ", model.vms.len());
    frame.render_widget(Paragraph::new(lines).block(bordered(states_title)), states);

    let lines: Vec<Line> = model
        .nodes
        .iter()
        .take(nodes.height.saturating_sub(2) as usize)
        .map(|node| {
            let liveness = match node.liveness.as_str() {
                "alive" => skin.ok,
                "dead" => skin.bad,
                _ => skin.muted,
            };
            Line::from(vec![
                Span::raw(format!("{:<4} {:<7} ", node.node_id, node.role)),
                Span::styled(
                    format!("{:<6}", node.liveness),
                    Style::default().fg(liveness),
                ),
                Span::raw(format!(" {} VMs", node.vms_assigned)),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(bordered(format!(" nodes {} ", model.nodes.len()))),
        nodes,
    );

    let lines: Vec<Line> = model
        .events
        .iter()
        .rev()
        .take(events.height.saturating_sub(2) as usize)
        .map(|event| {
            let subject = if event.vm.is_empty() {
                String::new()
            } else {
                format!("{} ", event.vm)
            };
            Line::from(vec![
                Span::styled(format!("{} ", event.kind), Style::default().fg(skin.accent)),
                Span::raw(format!("{subject}{}", event.message)),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(bordered(" latest events ".into())),
        events,
    );

    let data: Vec<u64> = model.ops_per_s.iter().copied().collect();
    let latest = data.last().copied().unwrap_or(0);
    frame.render_widget(
        Sparkline::default()
            .block(bordered(format!(" operations/s (now {latest}) ")))
            .data(&data)
            .style(Style::default().fg(skin.accent)),
        spark,
    );
}
