//! Stopping a node: one signal that every long-running task watches
//! ([`Shutdown`], as in mini-redis), and the group of those tasks, told to
//! stop and awaited together ([`TaskGroup`]).
//!
//! Invariants: once the group is told to stop, [`Shutdown::stopped`]
//! completes for every clone, however late it was made or first polled;
//! [`TaskGroup::stop`] returns only after every task of the group ended.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Whether the node is stopping; cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Whether the node is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the node is stopping (at once if it already is).
    /// Cancel safe, and holds no borrow across an await.
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// The node's long-running tasks and the signal that stops them.
#[derive(Debug)]
pub struct TaskGroup {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for TaskGroup {
    fn default() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }
}

impl TaskGroup {
    /// The signal for a task (of this group or not) to watch.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.stop.subscribe())
    }

    /// Runs `task` until it ends; [`TaskGroup::stop`] waits for it.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Tells every task to stop, then waits for each, in the order they
    /// were spawned. A task that panicked is logged, not propagated: the
    /// others still get to stop.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for (name, task) in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(task = name, %error, "task ended abnormally");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn stop_reaches_every_task_and_waits_for_each() {
        let mut group = TaskGroup::default();
        let ended = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let mut shutdown = group.shutdown();
            let ended = ended.clone();
            group.spawn("waiter", async move {
                shutdown.stopped().await;
                // Work after the signal still finishes before stop returns.
                tokio::time::sleep(Duration::from_millis(20)).await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        let late = group.shutdown();
        assert!(!late.is_stopping());
        group.spawn("panics", async { panic!("a task that panics") });
        group.stop().await;
        assert_eq!(ended.load(Ordering::SeqCst), 3);
        // A clone made before the stop but first polled after it sees it.
        let mut late = late;
        assert!(late.is_stopping());
        tokio::time::timeout(Duration::from_secs(5), late.stopped())
            .await
            .expect("a stopped signal completes at once");
    }
}
