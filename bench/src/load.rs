//! The closed-loop load generator shared by every system under test, so
//! Blixard and etcd see the same client count, request size and duration.
//!
//! Invariant: each client has at most one request in flight; a latency is
//! recorded only for a request that succeeded.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clients sharing one HTTP/2 connection (as a real client pool would).
pub const CLIENTS_PER_CONNECTION: usize = 32;

/// Connections to open on each endpoint for `clients` clients.
pub fn connections_per_endpoint(clients: usize, endpoints: usize) -> usize {
    clients
        .div_ceil(CLIENTS_PER_CONNECTION * endpoints.max(1))
        .max(1)
}

/// What one system did under one load.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub ops_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub errors: u64,
    /// The first error, if any, so a failing run says why.
    pub first_error: Option<String>,
}

/// Latencies of one closed-loop run.
pub struct Run {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Run {
    fn percentile_ms(&self, percent: usize) -> Option<f64> {
        percentile_ms(&self.latencies_us, percent)
    }

    pub fn figures(&self) -> Figures {
        Figures {
            ops_per_s: self.ops as f64 / self.elapsed.as_secs_f64(),
            p50_ms: self.percentile_ms(50),
            p99_ms: self.percentile_ms(99),
            errors: self.errors,
            first_error: self.first_error.clone(),
        }
    }
}

/// The `percent` percentile of sorted microsecond samples, in ms.
pub fn percentile_ms(sorted_us: &[u64], percent: usize) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let index = (sorted_us.len() * percent / 100).min(sorted_us.len() - 1);
    Some(sorted_us[index] as f64 / 1000.0)
}

#[derive(Default)]
struct Totals {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
}

/// `clients` tasks, client `t` on `connections[t % len]`, each calling
/// `operation(connection, t, i)` back to back until `duration` passes.
pub async fn closed_loop<C, F, Fut, E>(
    connections: &[C],
    clients: usize,
    duration: Duration,
    operation: F,
) -> anyhow::Result<Run>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    anyhow::ensure!(!connections.is_empty(), "no connections to load");
    let operation = Arc::new(operation);
    let totals = Arc::new(Mutex::new(Totals::default()));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(clients);
    for task in 0..clients {
        let connection = connections[task % connections.len()].clone();
        let operation = operation.clone();
        let totals = totals.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Totals::default();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let began = Instant::now();
                match operation(connection.clone(), task, i).await {
                    Ok(()) => {
                        mine.ops += 1;
                        mine.latencies_us.push(began.elapsed().as_micros() as u64);
                    }
                    Err(error) => {
                        mine.errors += 1;
                        mine.first_error.get_or_insert_with(|| error.to_string());
                    }
                }
                i += 1;
            }
            let mut all = totals.lock().expect("totals lock poisoned");
            all.ops += mine.ops;
            all.errors += mine.errors;
            if all.first_error.is_none() {
                all.first_error = mine.first_error;
            }
            all.latencies_us.extend(mine.latencies_us);
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let mut totals = std::mem::take(&mut *totals.lock().expect("totals lock poisoned"));
    totals.latencies_us.sort_unstable();
    Ok(Run {
        ops: totals.ops,
        errors: totals.errors,
        first_error: totals.first_error,
        elapsed,
        latencies_us: totals.latencies_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_sample_at_their_rank() {
        let samples: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&samples, 50), Some(51.0));
        assert_eq!(percentile_ms(&samples, 99), Some(100.0));
        assert_eq!(percentile_ms(&[], 50), None);
    }

    #[test]
    fn connections_grow_with_clients_and_never_reach_zero() {
        assert_eq!(connections_per_endpoint(1, 3), 1);
        assert_eq!(connections_per_endpoint(256, 3), 3);
        assert_eq!(connections_per_endpoint(256, 1), 8);
    }

    #[tokio::test]
    async fn errors_are_counted_and_the_first_is_kept() {
        let run = closed_loop(
            &[()],
            2,
            Duration::from_millis(20),
            |_, task, _| async move {
                tokio::task::yield_now().await;
                if task == 0 {
                    Ok(())
                } else {
                    Err("refused")
                }
            },
        )
        .await
        .unwrap();
        let figures = run.figures();
        assert!(figures.errors > 0);
        assert!(figures.ops_per_s > 0.0);
        assert_eq!(figures.first_error.as_deref(), Some("refused"));
    }
}
