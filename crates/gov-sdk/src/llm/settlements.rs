//! The settlements a handle runs after its calls returned: each call's ending (the settlement
//! committed with `llm.response`, or a cancelled call's release with `llm.cancelled`, and their
//! fallbacks) as one task, counted here so that [`super::Llm::settled`] and
//! `Governance::close` can wait for them.
//!
//! This module only counts tasks; what a task does is in `flight`. It must never make a call
//! wait for an earlier call's settlement: the tasks are independent (their budget changes
//! commute, and each ending event names its own request).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The settlement tasks of one handle that have not finished.
#[derive(Debug, Default)]
pub(crate) struct Settlements {
    /// The ticket the next task gets.
    next: AtomicU64,
    /// Tickets of the tasks still running.
    running: Mutex<BTreeSet<u64>>,
    /// Woken whenever a task finishes.
    finished: Notify,
}

/// Removes its task's ticket when the task ends, completes, panics or is dropped unrun (a
/// runtime shutting down): a waiter never waits for a task that cannot finish.
struct Ticket {
    set: Arc<Settlements>,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
        self.set.finished.notify_waiters();
    }
}

impl Settlements {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `task` on `rt`, counted until it ends.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let id = self.next.fetch_add(1, Ordering::AcqRel);
        self.lock().insert(id);
        let ticket = Ticket {
            set: self.clone(),
            id,
        };
        rt.spawn(async move {
            let _ticket = ticket;
            task.await;
        });
    }

    /// How many tasks are running.
    pub(crate) fn running(&self) -> usize {
        self.lock().len()
    }

    /// Waits until every task spawned before this call has ended (tasks spawned meanwhile are
    /// not waited for, so a busy handle cannot keep a waiter forever).
    pub(crate) async fn wait(&self) {
        let upto = self.next.load(Ordering::Acquire);
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            // Registered before the check, so a task ending in between still wakes us.
            finished.as_mut().enable();
            if self.lock().range(..upto).next().is_none() {
                return;
            }
            finished.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_earlier_tasks_only() {
        let set = Arc::new(Settlements::default());
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        set.spawn(&rt, async move {
            let _ = rx.await;
        });
        assert_eq!(set.running(), 1);
        let waiter = {
            let set = set.clone();
            tokio::spawn(async move { set.wait().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the task is still running");
        // A task spawned after the wait began does not hold the waiter.
        set.spawn(&rt, std::future::pending());
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter returns")
            .expect("the waiter ran");
        assert_eq!(set.running(), 1);
    }

    #[tokio::test]
    async fn a_task_that_panics_is_not_waited_for_forever() {
        let set = Arc::new(Settlements::default());
        set.spawn(&tokio::runtime::Handle::current(), async {
            panic!("a settlement task failed");
        });
        tokio::time::timeout(Duration::from_secs(5), set.wait())
            .await
            .expect("the waiter returns");
        assert_eq!(set.running(), 0);
    }
}
