//! Per-deployment batching, `ray.wait`-style.
//!
//! A batch leaves when
//! * it holds `max_batch_size` rows, or
//! * `batch_wait_timeout` has passed since its first request arrived, or
//! * a replica is idle: the window is a bound, not a tax. A lone request on an idle
//!   deployment goes at once; under load every replica is busy, requests pile up while
//!   they work, and batches fill up by themselves. While all replicas are busy the window
//!   still decides when a batch is handed over as the replica's next one (one batch is
//!   prefetched per replica).
//!
//! The queue and the replicas' slots are one [`Core`] behind a lock. The batcher task
//! receives requests ([`BatcherHandle`] is a cheap clone holding a sender), times the
//! window, and handles restarts and the stop. A replica that finishes a batch hands out
//! what may leave now itself, under the lock ([`Reporter::done`]; to itself when it is
//! the least loaded, as it usually is, having just freed a slot), so under load a busy
//! replica never waits for the batcher task to be scheduled; a replica that crashes
//! takes itself out and hands its batches back the same way ([`Reporter::crashed`]).
//! Batch formation is a plain method on [`State`] ([`super::queue`]), unit-tested
//! without channels or clocks.
//!
//! Owns the queue of one deployment; it runs no kernel, reads no request and counts no
//! request outcome (whoever waits for an answer does).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::BatchError;
use super::queue::{Batch, Entry, Input, Reply, State};

/// Why a request was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    Closed,
}

/// A cheap handle to a deployment's batcher.
#[derive(Clone)]
pub struct BatcherHandle {
    tx: mpsc::UnboundedSender<Entry>,
    /// Requests accepted and not yet handed to a replica; bounded by `max_queue_size`.
    queued: Arc<AtomicUsize>,
    max_queue_size: usize,
}

impl BatcherHandle {
    /// Queues `input`; the receiver yields its answer. Refuses at once when
    /// `max_queue_size` requests are already waiting, and gives the input back.
    pub fn submit(&self, input: impl Into<Input>) -> Result<oneshot::Receiver<Reply>, (SubmitError, Input)> {
        let input = input.into();
        if self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queue_size).then_some(q + 1)
            })
            .is_err()
        {
            return Err((SubmitError::QueueFull, input));
        }
        let (reply, rx) = oneshot::channel();
        let entry = Entry {
            input,
            reply,
            enqueued: Instant::now(),
            crashes: 0,
        };
        if let Err(mpsc::error::SendError(entry)) = self.tx.send(entry) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err((SubmitError::Closed, entry.input));
        }
        Ok(rx)
    }

    /// Requests waiting for a batch.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Batches a replica may hold: the one it runs and one prefetched.
pub(crate) const REPLICA_SLOTS: usize = 2;

/// A replica as the batcher sees it: where to send batches and how many it holds.
pub struct ReplicaSlot {
    /// `None` once it crashed, until it is started again.
    pub tx: Option<SyncSender<Batch>>,
    pub outstanding: usize,
    pub state: SlotState,
    /// Which start of the replica this is (reports of an earlier one are stale).
    pub generation: u64,
    /// When it was restarted, within the restart window.
    restarts: VecDeque<std::time::Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    Running,
    Restarting,
    /// Ended for good (its restarts spent, or the server stopping).
    Gone,
}

/// What replicas (and their restarts) tell the batcher task.
pub enum Report {
    /// A replica finished a batch or crashed, and changed what the task waits for (a
    /// window to time for a slot that freed, requests handed back, or a stop that may now
    /// end): look again.
    Recheck,
    /// A replica was started again.
    Restarted {
        index: usize,
        generation: u64,
        tx: SyncSender<Batch>,
    },
    /// Starting it again failed.
    RestartFailed { index: usize, reason: String },
}

/// The batcher's core, once the batcher is made; weak, so that the replicas, which hold
/// it, do not keep their own senders alive.
type CoreLink = Arc<OnceLock<Weak<Mutex<Core>>>>;

/// How a replica (and a restart under way) reaches its batcher. Cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    reports: mpsc::UnboundedSender<Report>,
    core: CoreLink,
    runtime: tokio::runtime::Handle,
}

/// The batcher's end of [`channel`].
pub struct Reports {
    rx: mpsc::UnboundedReceiver<Report>,
    core: CoreLink,
}

/// A reporter for the replicas, and its batcher's end (for [`Batcher::new`]). Call it
/// within the runtime the batcher runs on.
pub fn channel() -> (Reporter, Reports) {
    let (reports, rx) = mpsc::unbounded_channel();
    let core = CoreLink::default();
    (
        Reporter {
            reports,
            core: Arc::clone(&core),
            runtime: tokio::runtime::Handle::current(),
        },
        Reports { rx, core },
    )
}

impl Reporter {
    /// Start `generation` of replica `index` finished a batch: its slot frees and it is
    /// handed its next batch at once, on the caller's thread. The batcher task is woken
    /// only when it has something to do about it.
    pub fn done(&self, index: usize, generation: u64) {
        if self.with_core(|core| core.finished(index, generation)) == Some(true) {
            self.send(Report::Recheck);
        }
    }

    /// Start `generation` of replica `index` crashed (a system failure) and hands back
    /// `batch`: the one it crashed running (`ran`), then each prefetched one it still
    /// holds, after which it ends. At once, on the caller's thread, no more batches go to
    /// it (a replica finishing meanwhile would otherwise hand it one), the batch's
    /// requests go back to the front of the queue and run on the healthy replicas (a crash
    /// counts only against the requests that ran), and it is started again.
    pub fn crashed(&self, index: usize, generation: u64, batch: Batch, ran: bool, error: &BatchError) {
        let Some(core) = self.core.get().and_then(Weak::upgrade) else {
            // The batcher has ended (the server stopping): nobody will run them.
            for e in batch.entries {
                let _ = e.reply.send(Err(error.clone()));
            }
            return;
        };
        lock(&core).crashed(index, generation, batch, ran, error);
        self.send(Report::Recheck);
    }

    /// Runs `f` on the batcher's core; `None` once the batcher has ended.
    fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> Option<R> {
        let core = self.core.get().and_then(Weak::upgrade)?;
        Some(f(&mut lock(&core)))
    }

    /// Enters the batcher's runtime, for a replica's thread to hold for its whole life:
    /// the core it drives times the window on the runtime's clock (paused in tests) and
    /// spawns restarts there.
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.runtime.enter()
    }

    /// Tells the batcher task (nobody hears it once the batcher has ended).
    pub fn send(&self, report: Report) {
        let _ = self.reports.send(report);
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    // The core's methods leave it whole between statements that may panic.
    core.lock().unwrap_or_else(|p| p.into_inner())
}

/// A replica's health, as the status page shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Health {
    /// `running`, `restarting` or `failed`.
    pub state: &'static str,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Shared between the batcher, which writes it, and the status page.
#[derive(Clone, Debug)]
pub struct SharedHealth(pub Arc<std::sync::Mutex<Health>>);

impl SharedHealth {
    pub fn running() -> Self {
        SharedHealth(Arc::new(std::sync::Mutex::new(Health {
            state: "running",
            ..Default::default()
        })))
    }

    pub fn get(&self) -> Health {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Health)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

impl serde::Serialize for SharedHealth {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

/// How crashed replicas come back: started again by `start(index, generation)` (a new
/// thread, its device opened anew) after a backoff, at most `policy.max_restarts` times in
/// `policy.window`.
pub struct Supervisor {
    pub start: Arc<dyn Fn(usize, u64) -> Result<SyncSender<Batch>, String> + Send + Sync>,
    pub policy: prism_config::Restarts,
    /// A request whose replicas crashed more than this many times fails.
    pub max_retries: u32,
    /// By running replica, in the batcher's order.
    pub health: Vec<SharedHealth>,
    pub restarts: prometheus::IntCounter,
    /// The deployment's readiness: false once no replica can run again.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Holds a sender, so the reports never close while the batcher runs: the batcher
    /// ends by counting what its replicas hold instead.
    pub reports: Reporter,
    /// Set when the batcher has ended: a restart under way starts nothing.
    pub stopped: Arc<std::sync::atomic::AtomicBool>,
    /// Crashed requests run again, counted as retries for the reason `Panic`.
    pub crash_retries: prometheus::IntCounter,
}

/// What the batcher reports as it goes. Requests whose client went away are skipped, not
/// counted here: whoever waited for the answer counts its request once, whatever became of
/// it.
pub struct Hooks {
    pub queue_depth: IntGauge,
    pub model: String,
}

/// The batcher task: receives requests, times the window, handles what replicas report
/// and the stop; the queue and the replicas' slots are its [`Core`], which replicas
/// that finish a batch or crash lock too.
pub struct Batcher {
    core: Arc<Mutex<Core>>,
    rx: mpsc::UnboundedReceiver<Entry>,
    done: mpsc::UnboundedReceiver<Report>,
    /// Turns `true` when the server stops: take no more requests, run what is queued.
    closing: watch::Receiver<bool>,
}

/// The queue, and the replicas it hands batches to (the least-loaded first).
struct Core {
    state: State,
    supervisor: Option<Supervisor>,
    /// A replica failed for good (its restarts spent).
    failed: bool,
    /// The queue is closed: crashed replicas are not started again.
    closing_now: bool,
    replicas: Vec<ReplicaSlot>,
    queued: Arc<AtomicUsize>,
    hooks: Hooks,
}

impl Batcher {
    /// A batcher over `replicas`, each of which reports through the [`Reporter`] of
    /// `reports` when it finishes a batch (or crashes). Returns the handle and the task to
    /// spawn (on the runtime `reports` was made in). `limits`: the deployment's batching
    /// (sizes, window, queue bound). Without a `supervisor`, a crashed replica is gone.
    pub fn new(
        limits: &prism_config::Batching,
        replicas: Vec<SyncSender<Batch>>,
        reports: Reports,
        hooks: Hooks,
        closing: watch::Receiver<bool>,
        supervisor: Option<Supervisor>,
    ) -> (BatcherHandle, Batcher) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let handle = BatcherHandle {
            tx,
            queued: Arc::clone(&queued),
            max_queue_size: limits.max_queue_size,
        };
        let replicas = replicas
            .into_iter()
            .map(|tx| ReplicaSlot {
                tx: Some(tx),
                outstanding: 0,
                state: SlotState::Running,
                generation: 0,
                restarts: VecDeque::new(),
            })
            .collect();
        let core = Arc::new(Mutex::new(Core {
            state: State::new(
                limits.max_batch_size,
                limits.max_batch_tokens,
                limits.batch_wait_timeout,
            ),
            supervisor,
            failed: false,
            closing_now: false,
            replicas,
            queued,
            hooks,
        }));
        let linked = reports.core.set(Arc::downgrade(&core)).is_ok();
        assert!(linked, "one batcher per reports channel. This is a bug.");
        let batcher = Batcher {
            core,
            rx,
            done: reports.rx,
            closing,
        };
        (handle, batcher)
    }
}

impl Core {
    /// The least-loaded live replica with a free slot.
    fn pick_replica(&self) -> Option<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].state == SlotState::Running && self.replicas[i].outstanding < REPLICA_SLOTS)
            .min_by_key(|&i| self.replicas[i].outstanding)
    }

    fn dequeued(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Hands out every batch that may leave now. `flush`: ignore the window (closing).
    fn dispatch(&mut self, flush: bool) {
        let cancelled = self.state.drop_cancelled();
        if cancelled > 0 {
            self.dequeued(cancelled);
        }
        while let Some(i) = self.pick_replica() {
            let idle = flush || self.replicas[i].outstanding == 0;
            let Some(batch) = self.state.next_batch(Instant::now(), idle) else {
                break;
            };
            let n = batch.entries.len();
            self.dequeued(n);
            let tx = self.replicas[i].tx.as_ref().expect("a running replica has its sender");
            match tx.try_send(batch) {
                Ok(()) => self.replicas[i].outstanding += 1,
                Err(TrySendError::Full(_)) => {
                    unreachable!("a replica never holds more than {REPLICA_SLOTS} batches. This is a bug.")
                }
                Err(TrySendError::Disconnected(batch)) if self.supervisor.is_some() && !flush => {
                    // Its thread ended by itself: the batch goes back, the replica is
                    // started again.
                    let error = BatchError::Lost {
                        model: self.hooks.model.clone(),
                    };
                    self.replicas[i].tx = None;
                    self.replicas[i].outstanding = 0;
                    self.requeue(batch, false, &error);
                    self.restart(i, "the replica's thread ended".into());
                }
                Err(TrySendError::Disconnected(batch)) => {
                    // The replica's thread is gone at exit, with whatever it held.
                    self.replicas[i].state = SlotState::Gone;
                    self.replicas[i].outstanding = 0;
                    for e in batch.entries {
                        let _ = e.reply.send(Err(BatchError::ShuttingDown {
                            model: self.hooks.model.clone(),
                        }));
                    }
                }
            }
        }
        if self.pick_replica().is_none() && self.replicas.iter().all(|r| r.state == SlotState::Gone) {
            // No replica will ever run these: answer rather than leave them hanging.
            let n = self.state.len();
            let model = self.hooks.model.clone();
            while let Some(batch) = self.state.next_batch(Instant::now(), true) {
                for e in batch.entries {
                    let _ = e.reply.send(Err(match self.failed && !self.closing_now {
                        true => BatchError::NoReplica { model: model.clone() },
                        false => BatchError::ShuttingDown { model: model.clone() },
                    }));
                }
            }
            self.dequeued(n);
        }
        self.hooks.queue_depth.set(self.queued.load(Ordering::Acquire) as i64);
    }

    /// Replica `index` (start `generation`) finished a batch: its slot frees, and what
    /// may leave now is handed out. Answers whether the batcher task must look again: a
    /// request left queued with a slot free has a window to time that the task may not
    /// know of, and a stop ends once the replicas hold nothing.
    fn finished(&mut self, index: usize, generation: u64) -> bool {
        let slot = &mut self.replicas[index];
        if slot.generation != generation {
            return false;
        }
        slot.outstanding = slot.outstanding.saturating_sub(1);
        self.dispatch(self.closing_now);
        self.closing_now || (!self.state.is_empty() && self.pick_replica().is_some())
    }

    /// See [`Reporter::crashed`]. What it hands back is dispatched again here.
    fn crashed(&mut self, index: usize, generation: u64, batch: Batch, ran: bool, error: &BatchError) {
        self.requeue(batch, ran, error);
        let slot = &mut self.replicas[index];
        if slot.generation == generation {
            // It holds one batch fewer: the batcher does not end while a crashed replica
            // still has batches to hand back (see `Batcher::run`).
            slot.outstanding = slot.outstanding.saturating_sub(1);
            if slot.state == SlotState::Running {
                // Its first report of the crash: no more batches go to it, and the sender
                // it waits on goes, so its thread ends once it has handed back the rest.
                slot.tx = None;
                self.restart(index, error.to_string());
            }
        }
        self.dispatch(self.closing_now);
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Recheck => {}
            Report::Restarted { index, generation, tx } => {
                let slot = &mut self.replicas[index];
                if slot.state == SlotState::Restarting {
                    *slot = ReplicaSlot {
                        tx: Some(tx),
                        outstanding: 0,
                        state: SlotState::Running,
                        generation,
                        restarts: std::mem::take(&mut slot.restarts),
                    };
                    if let Some(s) = &self.supervisor {
                        s.health[index].update(|h| h.state = "running");
                    }
                    tracing::info!(model = %self.hooks.model, replica = index, "replica restarted");
                }
            }
            Report::RestartFailed { index, reason } => {
                tracing::error!(model = %self.hooks.model, replica = index, %reason, "restarting the replica failed");
                self.restart(index, reason);
            }
        }
    }

    /// The requests of a batch whose replica crashed go back to the front of the queue,
    /// in order, unless their replicas have crashed more than `max_retries` times. `ran`:
    /// the replica crashed running them (counted: they are retried), not holding them.
    fn requeue(&mut self, batch: Batch, ran: bool, error: &BatchError) {
        let max_retries = self.supervisor.as_ref().map_or(0, |s| s.max_retries);
        let mut back = 0;
        for mut e in batch.entries.into_iter().rev() {
            if e.reply.is_closed() {
                continue;
            }
            e.crashes += u32::from(ran);
            if e.crashes > max_retries {
                let _ = e.reply.send(Err(BatchError::Retried {
                    last: Box::new(error.clone()),
                    attempts: e.crashes,
                }));
                continue;
            }
            self.state.push_front(e);
            back += 1;
        }
        self.queued.fetch_add(back, Ordering::AcqRel);
        if let Some(s) = &self.supervisor
            && ran
        {
            s.crash_retries.inc_by(back as u64);
        }
    }

    /// Starts replica `index` again after a backoff, if its restarts in the window allow;
    /// otherwise it is failed for good.
    fn restart(&mut self, index: usize, reason: String) {
        let model = self.hooks.model.clone();
        let slot = &mut self.replicas[index];
        let Some(s) = &self.supervisor else {
            slot.state = SlotState::Gone;
            self.failed = true;
            return;
        };
        if self.closing_now {
            // Stopping: the other replicas run what is queued, or it is answered.
            slot.state = SlotState::Gone;
            return;
        }
        let now = std::time::Instant::now();
        while slot.restarts.front().is_some_and(|&t| now - t > s.policy.window) {
            slot.restarts.pop_front();
        }
        if slot.restarts.len() >= s.policy.max_restarts as usize {
            slot.state = SlotState::Gone;
            self.failed = true;
            let why = format!(
                "failed: {} restarts within {:?} (max_restarts) were spent; the last failure: {reason}",
                slot.restarts.len(),
                s.policy.window
            );
            tracing::error!(%model, replica = index, "{why}");
            s.health[index].update(|h| {
                h.state = "failed";
                h.last_error = Some(why);
            });
            if self.replicas.iter().all(|r| r.state == SlotState::Gone) {
                s.ready.store(false, Ordering::Release);
            }
            return;
        }
        slot.restarts.push_back(now);
        slot.state = SlotState::Restarting;
        let generation = slot.generation + 1;
        // 100 ms, doubling with each restart in the window, at most 5 s.
        let backoff = Duration::from_millis(100 << (slot.restarts.len() - 1).min(6)).min(Duration::from_secs(5));
        s.restarts.inc();
        s.health[index].update(|h| {
            h.state = "restarting";
            h.restarts += 1;
            h.last_error = Some(reason.clone());
        });
        tracing::warn!(%model, replica = index, %reason, backoff_ms = backoff.as_millis() as u64, "replica crashed; restarting it");
        let (start, reports, stopped) = (Arc::clone(&s.start), s.reports.clone(), Arc::clone(&s.stopped));
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            if stopped.load(Ordering::Acquire) {
                return;
            }
            let started = tokio::task::spawn_blocking(move || start(index, generation))
                .await
                .unwrap_or_else(|e| Err(format!("starting the replica stopped: {e}")));
            reports.send(match started {
                Ok(tx) => Report::Restarted { index, generation, tx },
                Err(reason) => Report::RestartFailed { index, reason },
            });
        });
    }
}

impl Batcher {
    /// Runs until the server closes it (or every handle is dropped) and every request it
    /// accepted has been handed to a replica.
    pub async fn run(mut self) {
        let mut open = true;
        loop {
            let deadline = {
                let mut core = lock(&self.core);
                core.closing_now = !open;
                core.dispatch(!open);
                // Done once nothing is queued and no replica holds a batch: a running one
                // may still crash and hand its batch back, and a crashed one hands back
                // what it held prefetched.
                let holding = core.supervisor.is_some() && core.replicas.iter().any(|r| r.outstanding > 0);
                if !open && core.state.is_empty() && !holding {
                    if let Some(s) = &core.supervisor {
                        s.stopped.store(true, Ordering::Release);
                    }
                    break;
                }
                // Sleep to the window's end only if a replica could take the batch then.
                core.pick_replica().and(core.state.deadline())
            };
            tokio::select! {
                biased;
                Some(report) = self.done.recv() => {
                    let mut core = lock(&self.core);
                    core.report(report);
                    while let Ok(report) = self.done.try_recv() {
                        core.report(report);
                    }
                }
                msg = self.rx.recv(), if open => match msg {
                    Some(entry) => {
                        let mut core = lock(&self.core);
                        core.state.push(entry);
                        // Take the whole burst before deciding, so it can share a batch.
                        while let Ok(entry) = self.rx.try_recv() {
                            core.state.push(entry);
                        }
                    }
                    None => open = false,
                },
                _ = self.closing.changed(), if open => {
                    // Refuse new requests; those already sent are still received.
                    self.rx.close();
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                else => {
                    // Closed, and no replica will ever report back: answer what is left.
                    let mut core = lock(&self.core);
                    for r in &mut core.replicas {
                        r.state = SlotState::Gone;
                    }
                    core.dispatch(true);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use std::sync::mpsc::{Receiver, sync_channel};

    struct Harness {
        handle: BatcherHandle,
        replicas: Vec<Receiver<Batch>>,
        done: Reporter,
        _close: watch::Sender<bool>,
    }

    fn harness(replicas: usize, max_batch: usize, window: Duration, max_queue: usize) -> Harness {
        harness_with(replicas, max_batch, window, max_queue, None)
    }

    /// With `max_retries`, supervised: a crashed replica's requests run again, up to that
    /// many crashes, and it is not started again (no restarts allowed).
    fn harness_with(
        replicas: usize,
        max_batch: usize,
        window: Duration,
        max_queue: usize,
        max_retries: Option<u32>,
    ) -> Harness {
        let (done_tx, done_rx) = channel();
        let supervisor = max_retries.map(|max_retries| Supervisor {
            start: Arc::new(|_, _| Err("not in this test".into())),
            policy: prism_config::Restarts {
                max_restarts: 0,
                window: Duration::from_secs(60),
            },
            max_retries,
            health: (0..replicas).map(|_| SharedHealth::running()).collect(),
            restarts: prometheus::IntCounter::new("r", "r").unwrap(),
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            reports: done_tx.clone(),
            stopped: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            crash_retries: prometheus::IntCounter::new("c", "c").unwrap(),
        });
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..replicas).map(|_| sync_channel(REPLICA_SLOTS)).unzip();
        let hooks = Hooks {
            queue_depth: IntGauge::new("q", "q").unwrap(),
            model: "m".into(),
        };
        let (close, closing) = watch::channel(false);
        let limits = prism_config::Batching {
            max_batch_size: max_batch,
            max_batch_tokens: usize::MAX,
            batch_wait_timeout: window,
            max_queue_size: max_queue,
        };
        let (handle, batcher) = Batcher::new(&limits, txs, done_rx, hooks, closing, supervisor);
        tokio::spawn(batcher.run());
        Harness {
            handle,
            replicas: rxs,
            done: done_tx,
            _close: close,
        }
    }

    /// Lets the batcher task run without moving the clock.
    /// The error of a replica's panic, as a replica reports it.
    fn crash() -> BatchError {
        BatchError::Panicked {
            model: "m".into(),
            replica: 0,
            reason: "boom".into(),
        }
    }

    /// Answers every request of `batch` with a 1 × 1 zero.
    fn answer(batch: Batch) {
        for e in batch.entries {
            e.reply.send(Ok(Array2::zeros((1, 1)))).unwrap();
        }
    }

    /// Submits `n` one-row requests and lets the batcher hand them out.
    async fn submit_rows(h: &Harness, n: usize) -> Vec<oneshot::Receiver<Reply>> {
        let answers = (0..n)
            .map(|_| h.handle.submit(Array2::zeros((1, 1))).unwrap())
            .collect();
        settle().await;
        answers
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_actor_batches_by_size_and_by_timeout() {
        let h = harness(1, 4, Duration::from_millis(5), 100);
        let _r1 = h.handle.submit(Array2::zeros((1, 1))).unwrap();
        settle().await;
        let first = h.replicas[0]
            .try_recv()
            .expect("the idle replica takes the lone request at once");
        assert_eq!(first.rows, 1);

        // The replica is busy: the next requests wait for size or for the window.
        let _rs: Vec<_> = (0..3)
            .map(|_| h.handle.submit(Array2::zeros((1, 1))).unwrap())
            .collect();
        settle().await;
        assert!(
            h.replicas[0].try_recv().is_err(),
            "3 of 4 rows and the window open: it waits"
        );
        tokio::time::advance(Duration::from_millis(4)).await;
        settle().await;
        assert!(h.replicas[0].try_recv().is_err(), "4 ms < 5 ms window");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        let second = h.replicas[0]
            .try_recv()
            .expect("the window closed: prefetched into the busy replica");
        assert_eq!(second.rows, 3);

        // Both slots taken: a full batch waits for the replica, then leaves.
        let _rs: Vec<_> = (0..4)
            .map(|_| h.handle.submit(Array2::zeros((1, 1))).unwrap())
            .collect();
        settle().await;
        assert!(
            h.replicas[0].try_recv().is_err(),
            "the replica holds two batches already"
        );
        h.done.done(0, 0);
        settle().await;
        assert_eq!(h.replicas[0].try_recv().expect("a slot freed").rows, 4);
        drop(first);
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_finishes_takes_its_next_batch_and_the_window_still_runs() {
        let h = harness(1, 2, Duration::from_millis(5), 100);
        let _rs: Vec<_> = (0..6)
            .map(|_| h.handle.submit(Array2::zeros((1, 1))).unwrap())
            .collect();
        settle().await;
        // Running and prefetched: two full batches; two rows wait.
        assert_eq!(h.replicas[0].try_recv().unwrap().rows, 2);
        assert_eq!(h.replicas[0].try_recv().unwrap().rows, 2);
        assert_eq!(h.handle.queued(), 2);
        // Finishing one hands over the next full batch on the spot, without the batcher
        // task running.
        h.done.done(0, 0);
        assert_eq!(
            h.replicas[0].try_recv().expect("taken by the finishing replica").rows,
            2
        );
        assert_eq!(h.handle.queued(), 0);

        // A lone row behind a busy replica leaves when its window closes, though the
        // batcher task last looked while no slot was free.
        let _late = h.handle.submit(Array2::zeros((1, 1))).unwrap();
        settle().await;
        h.done.done(0, 0);
        settle().await;
        assert!(h.replicas[0].try_recv().is_err(), "the window is open");
        tokio::time::advance(Duration::from_millis(5)).await;
        settle().await;
        assert_eq!(h.replicas[0].try_recv().expect("the window closed").rows, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_replica_is_out_at_once_and_its_batch_runs_on_another() {
        let h = harness_with(2, 1, Duration::from_millis(5), 100, Some(1));
        let mut answers = submit_rows(&h, 4).await;
        // One row a batch: each replica runs one and holds one prefetched.
        let (first, crashed) = (h.replicas[0].try_recv().unwrap(), h.replicas[0].try_recv().unwrap());
        let (running, _next) = (h.replicas[1].try_recv().unwrap(), h.replicas[1].try_recv().unwrap());
        drop(first);
        h.done.done(0, 0);
        // Replica 0 crashes on its second batch; replica 1 finishes before the batcher
        // task has run.
        let error = crash();
        h.done.crashed(0, 0, crashed, true, &error);
        // No yield: the batcher task has not run since.
        drop(running);
        h.done.done(1, 0);
        assert!(
            matches!(
                h.replicas[0].try_recv(),
                Err(std::sync::mpsc::TryRecvError::Disconnected)
            ),
            "the crashed replica is let go, with nothing more"
        );
        let rerun = h.replicas[1].try_recv().expect("the crashed batch, first");
        assert_eq!(rerun.entries[0].crashes, 1);
        answer(rerun);
        // Requests 0 and 2 went to replica 0, 1 and 3 to replica 1.
        assert!(answers[2].try_recv().unwrap().is_ok(), "its request ran again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_crashing_while_the_server_stops_hands_its_prefetched_batch_to_another() {
        let h = harness_with(2, 1, Duration::from_millis(5), 100, Some(1));
        let mut answers = submit_rows(&h, 4).await;
        // Requests 0 and 2 go to replica 0 (one running, one prefetched), 1 and 3 to 1.
        let (crashing, prefetched) = (h.replicas[0].try_recv().unwrap(), h.replicas[0].try_recv().unwrap());
        h._close.send(true).unwrap();
        settle().await;
        for _ in 0..2 {
            answer(h.replicas[1].try_recv().unwrap());
            h.done.done(1, 0);
        }
        let error = crash();
        h.done.crashed(0, 0, crashing, true, &error);
        let rerun = h.replicas[1].try_recv().expect("the crashed batch runs on replica 1");
        answer(rerun);
        h.done.done(1, 0);
        // The batcher task runs with nothing queued and no batch out on a running
        // replica; replica 0 has yet to hand back its prefetched batch.
        settle().await;
        h.done.crashed(0, 0, prefetched, false, &error);
        let handed_back = h.replicas[1]
            .try_recv()
            .expect("the prefetched batch runs on replica 1, the stop waiting for it");
        answer(handed_back);
        for (i, a) in answers.iter_mut().enumerate() {
            assert!(a.try_recv().unwrap().is_ok(), "request {i} answered by a run");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once_and_frees_as_batches_leave() {
        let h = harness(1, 1, Duration::from_millis(5), 2);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(h.handle.submit(Array2::zeros((1, 1))).unwrap());
            settle().await;
        }
        // Two batches went to the replica (running + prefetched), two wait in the queue.
        assert_eq!(h.handle.queued(), 2);
        assert_eq!(
            h.handle.submit(Array2::zeros((1, 1))).unwrap_err().0,
            SubmitError::QueueFull
        );
        let _ = h.replicas[0].try_recv().unwrap();
        h.done.done(0, 0);
        settle().await;
        assert_eq!(h.handle.queued(), 1);
        held.push(h.handle.submit(Array2::zeros((1, 1))).expect("a queue slot freed"));
    }
}
