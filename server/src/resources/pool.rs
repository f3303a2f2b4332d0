//! The run-time task pool: the logical resources (CPUs, card shares, custom resources)
//! the replicas left, which tasks take while they run and give back, in the order they
//! asked.
//!
//! Accounts only: it runs no task and reads no request.

use std::collections::BTreeMap;

/// What a task asks of the machine's logical resources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskAsk {
    pub num_cpus: f64,
    /// A fraction of one card (≤ 1) or a whole number of cards.
    pub num_gpus: f64,
    pub resources: BTreeMap<String, f64>,
}

/// Logical resources free for tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct Free {
    pub cpus: f64,
    /// Free share of each card.
    pub gpus: Vec<f64>,
    pub resources: BTreeMap<String, f64>,
}

/// Slack for sums of fractions (0.1 + 0.2 ≠ 0.3).
const EPS: f64 = 1e-9;

impl Free {
    /// The cards `ask` would take now, or `None` if it does not fit.
    fn fit(&self, ask: &TaskAsk) -> Option<Vec<usize>> {
        if self.cpus + EPS < ask.num_cpus {
            return None;
        }
        if ask
            .resources
            .iter()
            .any(|(k, v)| self.resources.get(k).copied().unwrap_or(0.0) + EPS < *v)
        {
            return None;
        }
        if ask.num_gpus <= 0.0 {
            return Some(Vec::new());
        }
        if ask.num_gpus <= 1.0 {
            // Best fit: the fullest card that still has room.
            return self
                .gpus
                .iter()
                .enumerate()
                .filter(|(_, f)| **f + EPS >= ask.num_gpus)
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| vec![i]);
        }
        let whole: Vec<usize> = (0..self.gpus.len()).filter(|&i| self.gpus[i] + EPS >= 1.0).collect();
        (whole.len() >= ask.num_gpus as usize).then(|| whole[..ask.num_gpus as usize].to_vec())
    }

    fn take(&mut self, ask: &TaskAsk, cards: &[usize], sign: f64) {
        self.cpus += sign * ask.num_cpus;
        let share = ask.num_gpus.min(1.0);
        for &c in cards {
            self.gpus[c] += sign * share;
        }
        for (k, v) in &ask.resources {
            *self.resources.get_mut(k).expect("checked by fit") += sign * v;
        }
    }
}

/// The logical resources replicas left, shared by tasks: a task waits until its ask
/// fits, holds it while it runs, and gives it back.
///
/// Waiting tasks are served in the order they asked: when resources come back, each
/// waiter in turn takes them if its ask fits (one that does not fit lets the ones behind
/// it go first, as Ray's scheduler does, so a large ask can wait behind a stream of small
/// ones).
pub struct Pool {
    /// What tasks may use at most (the machine minus the replicas).
    pub capacity: Free,
    inner: std::sync::Mutex<Inner>,
}

struct Inner {
    free: Free,
    /// Tasks waiting for their ask, oldest first; each is sent its grant.
    waiters: std::collections::VecDeque<(TaskAsk, tokio::sync::oneshot::Sender<Grant>)>,
}

/// Resources held by a running task; given back on drop.
pub struct Grant {
    /// `None` once given back by [`Inner::serve`] (its waiter had gone).
    pool: Option<std::sync::Arc<Pool>>,
    ask: TaskAsk,
    cards: Vec<usize>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let mut inner = pool.lock();
            inner.free.take(&self.ask, &self.cards, 1.0);
            inner.serve(&pool);
        }
    }
}

impl Inner {
    /// Hands what is free to the waiters whose ask fits, oldest first.
    fn serve(&mut self, pool: &std::sync::Arc<Pool>) {
        let mut i = 0;
        while i < self.waiters.len() {
            let Some(cards) = self.free.fit(&self.waiters[i].0) else {
                i += 1;
                continue;
            };
            let (ask, tx) = self.waiters.remove(i).expect("index checked");
            self.free.take(&ask, &cards, -1.0);
            let grant = Grant {
                pool: Some(std::sync::Arc::clone(pool)),
                ask,
                cards,
            };
            if let Err(mut unclaimed) = tx.send(grant) {
                // The task was dropped while it waited: give its share back here (the
                // lock is held, so not through `Drop`) and serve the next one.
                unclaimed.pool = None;
                self.free.take(&unclaimed.ask, &unclaimed.cards, 1.0);
            }
        }
    }
}

impl Pool {
    pub fn new(capacity: Free) -> Self {
        Pool {
            inner: std::sync::Mutex::new(Inner {
                free: capacity.clone(),
                waiters: Default::default(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is free now.
    pub fn free(&self) -> Free {
        self.lock().free.clone()
    }

    /// Whether `ask` could ever run: it fits in what the replicas left. The reason names
    /// the resource when not.
    pub fn feasible(&self, ask: &TaskAsk) -> Result<(), String> {
        let c = &self.capacity;
        if ask.num_cpus > c.cpus + EPS {
            return Err(format!(
                "num_cpus = {} can never be met: tasks have {} logical CPUs (the machine's, less what the replicas hold); ask for less (fractions and 0 are allowed)",
                ask.num_cpus, c.cpus
            ));
        }
        for (k, v) in &ask.resources {
            let have = c.resources.get(k).copied();
            match have {
                None => return Err(format!("resource `{k}` is not declared in [server.resources]")),
                Some(h) if *v > h + EPS => {
                    return Err(format!("resource `{k}`: asks {v}, tasks have {h} of it at most"));
                }
                _ => {}
            }
        }
        if ask.num_gpus > 0.0
            && c.fit(&TaskAsk {
                num_gpus: ask.num_gpus,
                ..TaskAsk::default()
            })
            .is_none()
        {
            return Err(format!(
                "num_gpus = {} can never be met: the cards' shares left for tasks are {:?}",
                ask.num_gpus, c.gpus
            ));
        }
        Ok(())
    }

    /// Waits until `ask` fits, then takes it. `ask` must be [`Pool::feasible`]. Dropping
    /// the future while it waits leaks nothing: when its turn comes, what it would have
    /// been granted goes straight back to the pool and to the waiters behind it.
    pub async fn acquire(self: &std::sync::Arc<Self>, ask: TaskAsk) -> Grant {
        let rx = {
            let mut inner = self.lock();
            // Waiters that fit were served when resources came back, so an ask that fits
            // now passes nobody who could have run.
            if let Some(cards) = inner.free.fit(&ask) {
                inner.free.take(&ask, &cards, -1.0);
                return Grant {
                    pool: Some(std::sync::Arc::clone(self)),
                    ask,
                    cards,
                };
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            inner.waiters.push_back((ask, tx));
            rx
        };
        rx.await
            .expect("a waiter's sender is only dropped after sending. This is a bug.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::new(Free {
            cpus: 1.0,
            gpus: vec![0.5, 1.0],
            resources: BTreeMap::from([("licence".to_owned(), 1.0)]),
        }))
    }

    fn cpus(n: f64) -> TaskAsk {
        TaskAsk {
            num_cpus: n,
            ..TaskAsk::default()
        }
    }

    /// Starts a task asking for `ask` and returns once it waits in the pool's queue.
    async fn queued(p: &Arc<Pool>, ask: TaskAsk) -> tokio::task::JoinHandle<Grant> {
        let before = p.lock().waiters.len();
        let task = tokio::spawn({
            let p = Arc::clone(p);
            async move { p.acquire(ask).await }
        });
        while p.lock().waiters.len() <= before {
            tokio::task::yield_now().await;
        }
        task
    }

    /// What a queued task was granted, within 5 s.
    async fn granted(task: tokio::task::JoinHandle<Grant>) -> Grant {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
    }

    #[test]
    fn feasibility_names_the_resource() {
        let p = pool();
        assert!(p.feasible(&cpus(1.0)).is_ok());
        assert!(p.feasible(&cpus(1.5)).unwrap_err().contains("num_cpus = 1.5"));
        let gpus = |g| TaskAsk {
            num_gpus: g,
            ..TaskAsk::default()
        };
        assert!(p.feasible(&gpus(1.0)).is_ok());
        assert!(p.feasible(&gpus(2.0)).unwrap_err().contains("num_gpus = 2"));
        let lic = TaskAsk {
            resources: BTreeMap::from([("licence".to_owned(), 2.0)]),
            ..TaskAsk::default()
        };
        assert!(p.feasible(&lic).unwrap_err().contains("licence"));
    }

    #[tokio::test]
    async fn a_task_waits_for_resources_and_gets_them_back() {
        let p = pool();
        let a = p.acquire(cpus(0.5)).await;
        let b = p.acquire(cpus(0.5)).await;
        assert!(p.free().cpus.abs() < 1e-9);
        let waiting = tokio::spawn({
            let p = Arc::clone(&p);
            async move { p.acquire(cpus(1.0)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "half a CPU is not enough");
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        drop(c);
        assert_eq!(p.free(), p.capacity);
    }

    // Two worker threads: the order must come from the pool, not from how one thread
    // happens to poll the waiters.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_tasks_are_served_in_the_order_they_asked() {
        let p = pool();
        let first = p.acquire(cpus(1.0)).await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for i in 0..5 {
            let order_tx = order_tx.clone();
            let before = p.lock().waiters.len();
            let pool = Arc::clone(&p);
            waiting.push(tokio::spawn(async move {
                let grant = pool.acquire(cpus(1.0)).await;
                order_tx.send(i).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(grant);
            }));
            // Each one queued before the next asks.
            while p.lock().waiters.len() <= before {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w).await.unwrap().unwrap();
        }
        let mut got = Vec::new();
        while let Ok(i) = order.try_recv() {
            got.push(i);
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(p.free(), p.capacity);
    }

    #[tokio::test]
    async fn an_ask_that_does_not_fit_lets_later_ones_go_first() {
        let p = pool();
        let half = p.acquire(cpus(0.5)).await;
        let big = queued(&p, cpus(1.0)).await;
        // Half a CPU is still free: a later half-CPU ask does not wait behind the whole one.
        let small = tokio::time::timeout(Duration::from_secs(5), p.acquire(cpus(0.5)))
            .await
            .expect("the small ask fits now");
        drop((half, small));
        drop(granted(big).await);
        assert_eq!(p.free(), p.capacity);
    }

    #[tokio::test]
    async fn a_task_dropped_while_waiting_leaks_nothing() {
        let p = pool();
        let first = p.acquire(cpus(1.0)).await;
        let gone = queued(&p, cpus(1.0)).await;
        gone.abort();
        let _ = gone.await;
        let next = queued(&p, cpus(1.0)).await;
        assert_eq!(
            p.lock().waiters.len(),
            2,
            "the aborted waiter keeps its place until served"
        );
        // It is first in line: its grant is given back and the next is served.
        drop(first);
        drop(granted(next).await);
        assert_eq!(p.free(), p.capacity);
        assert!(p.lock().waiters.is_empty());
    }

    #[tokio::test]
    async fn fractional_gpu_asks_go_best_fit() {
        let p = pool();
        let g = p
            .acquire(TaskAsk {
                num_gpus: 0.5,
                ..TaskAsk::default()
            })
            .await;
        assert_eq!(g.cards, vec![0], "the fuller card that still fits");
        assert_eq!(p.free().gpus, vec![0.0, 1.0]);
    }
}
