//! One row per measurement, printed as one table (or JSON/YAML).

use serde::Serialize;

use super::load::Figures;
use blixard_cli::cli::OutputFormat;
use blixard_cli::output;

/// What a row's `value` counts.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    OpsPerS,
    PlacementsPerS,
    Ms,
    Mib,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::OpsPerS => "ops/s",
            Unit::PlacementsPerS => "placements/s",
            Unit::Ms => "ms",
            Unit::Mib => "MiB",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub benchmark: String,
    pub clients: Option<usize>,
    pub value: f64,
    pub unit: Unit,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    /// etcd under the same load, where there is an etcd counterpart.
    pub etcd: Option<Figures>,
    /// Blixard's ops/s divided by etcd's.
    pub vs_etcd: Option<f64>,
    pub note: String,
}

impl Row {
    /// A row whose value is a single figure (no latency distribution).
    pub fn figure(benchmark: impl Into<String>, value: f64, unit: Unit, note: String) -> Self {
        Row {
            benchmark: benchmark.into(),
            clients: None,
            value,
            unit,
            p50_ms: None,
            p99_ms: None,
            errors: 0,
            etcd: None,
            vs_etcd: None,
            note,
        }
    }

    /// A closed-loop row, beside etcd's figures for the same load if any.
    pub fn load(
        benchmark: impl Into<String>,
        clients: usize,
        blixard: Figures,
        etcd: Option<Figures>,
        note: String,
    ) -> Self {
        let vs_etcd = etcd
            .as_ref()
            .filter(|e| e.ops_per_s > 0.0)
            .map(|e| blixard.ops_per_s / e.ops_per_s);
        let mut note = note;
        if let Some(error) = &blixard.first_error {
            note.push_str(&format!("; first error: {error}"));
        }
        if let Some(error) = etcd.as_ref().and_then(|e| e.first_error.as_ref()) {
            note.push_str(&format!("; first etcd error: {error}"));
        }
        Row {
            benchmark: benchmark.into(),
            clients: Some(clients),
            value: blixard.ops_per_s,
            unit: Unit::OpsPerS,
            p50_ms: blixard.p50_ms,
            p99_ms: blixard.p99_ms,
            errors: blixard.errors,
            etcd,
            vs_etcd,
            note,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub cores: usize,
    /// "release" or "debug": figures from a debug build are much lower.
    pub build: &'static str,
    pub quick: bool,
    pub started_at: String,
    /// The etcd that ran beside Blixard, or why none did.
    pub etcd: String,
    /// Parts that could not run, with the reason.
    pub skipped: Vec<String>,
    pub rows: Vec<Row>,
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}"))
}

fn amount(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Ms if value < 10.0 => format!("{value:.2} {}", unit.as_str()),
        Unit::Ms => format!("{value:.0} {}", unit.as_str()),
        Unit::Mib => format!("{value:.1} {}", unit.as_str()),
        Unit::OpsPerS | Unit::PlacementsPerS => format!("{value:.0} {}", unit.as_str()),
    }
}

pub fn print(format: OutputFormat, report: &Report) -> anyhow::Result<()> {
    output::print(format, report, |report| {
        let mut table = output::table(&[
            "BENCHMARK",
            "CLIENTS",
            "RESULT",
            "P50 ms",
            "P99 ms",
            "ERR",
            "ETCD",
            "ETCD P50",
            "ETCD P99",
            "VS ETCD",
            "NOTE",
        ]);
        for row in &report.rows {
            let etcd = row.etcd.as_ref();
            table.add_row(vec![
                row.benchmark.clone(),
                row.clients.map_or("-".into(), |c| c.to_string()),
                amount(row.value, row.unit),
                ms(row.p50_ms),
                ms(row.p99_ms),
                row.errors.to_string(),
                etcd.map_or("-".into(), |e| format!("{:.0} ops/s", e.ops_per_s)),
                ms(etcd.and_then(|e| e.p50_ms)),
                ms(etcd.and_then(|e| e.p99_ms)),
                row.vs_etcd.map_or("-".into(), |r| format!("{r:.2}x")),
                row.note.clone(),
            ]);
        }
        table.add_row(vec![format!(
            "{} cores, {} build, started {}; etcd: {}",
            report.cores, report.build, report.started_at, report.etcd
        )]);
        for skipped in &report.skipped {
            table.add_row(vec![format!("skipped: {skipped}")]);
        }
        table
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(ops_per_s: f64) -> Figures {
        Figures {
            ops_per_s,
            p50_ms: Some(1.0),
            p99_ms: Some(2.0),
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn the_ratio_is_blixard_over_etcd_and_absent_without_etcd() {
        let row = Row::load("w", 1, figures(300.0), Some(figures(100.0)), String::new());
        assert_eq!(row.vs_etcd, Some(3.0));
        let row = Row::load("w", 1, figures(300.0), None, String::new());
        assert_eq!(row.vs_etcd, None);
        let row = Row::load("w", 1, figures(300.0), Some(figures(0.0)), String::new());
        assert_eq!(row.vs_etcd, None);
    }
}
