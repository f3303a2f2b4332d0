//! Where the replicas go: GPU slots, CPU fallback or pending, and what they take of the
//! machine's logical resources. Decided once, at start-up.

use std::collections::BTreeMap;

use prism_config::Config;

use crate::deployment::{Loaded, ReplicaPlacement};
use crate::inventory::Machine;
use crate::placement;

/// The machine and what the replicas took of it.
pub struct Cluster {
    pub machine: Machine,
    pub no_gpu_reason: Option<String>,
    /// Share of each card taken by placed replicas.
    pub gpu_used: Vec<f64>,
    /// Custom resources declared in `[server.resources]`.
    pub resources_total: BTreeMap<String, f64>,
    /// What the replicas leave of the logical resources, for tasks.
    pub pool: std::sync::Arc<Pool>,
}

/// Places every replica of `config` (one entry per replica, per deployment). `cuda` is
/// the CUDA probe: the UUID of each device CUDA may use, by ordinal, or why CUDA cannot be
/// used. Cards that NVML lists and CUDA does not (`CUDA_VISIBLE_DEVICES`) are left out of
/// the machine: nothing is placed on them and tasks cannot reserve them.
pub fn plan(
    config: &Config,
    loaded: &[Loaded],
    mut machine: Machine,
    mut no_gpu_reason: Option<String>,
    cuda: &Result<Vec<String>, String>,
) -> (Vec<Vec<ReplicaPlacement>>, Cluster) {
    if let Ok(uuids) = cuda {
        let mut hidden = Vec::new();
        machine.gpus.retain(|g| {
            let visible = g.simulated || uuids.contains(&g.uuid);
            if !visible {
                tracing::warn!(gpu = g.index, uuid = %g.uuid,
                    "CUDA cannot see this GPU (CUDA_VISIBLE_DEVICES? MIG?): nothing is placed on it");
                hidden.push(format!("{} ({})", g.index, g.uuid));
            }
            visible
        });
        if machine.gpus.is_empty() && !hidden.is_empty() {
            no_gpu_reason = Some(format!(
                "CUDA cannot see GPU {} that NVML lists (CUDA_VISIBLE_DEVICES? MIG?)",
                hidden.join(", ")
            ));
        }
    }
    let mut placements: Vec<Vec<ReplicaPlacement>> = config
        .deployments
        .iter()
        .map(|s| vec![ReplicaPlacement::Cpu; s.num_replicas])
        .collect();
    // Every replica that asks for a GPU, placed together.
    let mut asks = Vec::new();
    let mut owners = Vec::new();
    for (d, (spec, l)) in config.deployments.iter().zip(loaded).enumerate() {
        if spec.actor.num_gpus > 0.0 {
            for r in 0..spec.num_replicas {
                asks.push(placement::Ask {
                    num_gpus: spec.actor.num_gpus,
                    memory: l.replica_memory(spec),
                });
                owners.push((d, r));
            }
        }
    }
    let free: Vec<u64> = machine.gpus.iter().map(|g| g.memory_free).collect();
    let placed = placement::place(&free, &asks);
    let mut gpu_used = vec![0.0; machine.gpus.len()];
    for ((&(d, r), ask), cards) in owners.iter().zip(&asks).zip(placed) {
        let spec = &config.deployments[d];
        placements[d][r] = match cards {
            Some(gpus) => {
                let share = ask.num_gpus.min(1.0);
                for &g in &gpus {
                    gpu_used[g] += share;
                }
                let (cuda, note) = if gpus.iter().all(|&g| machine.gpus[g].simulated) {
                    (None, "simulated GPU: placement only, runs on the CPU".to_owned())
                } else {
                    let card = &machine.gpus[gpus[0]];
                    match cuda {
                        Ok(uuids) => match uuids.iter().position(|u| *u == card.uuid) {
                            Some(ordinal) => (Some(ordinal), format!("runs on cuda:{ordinal}")),
                            // Cards CUDA cannot see were left out above; this is only a
                            // guard.
                            None => (None, format!("CUDA cannot see GPU {}: runs on the CPU", card.index)),
                        },
                        Err(why) => (None, format!("CUDA unavailable ({why}): runs on the CPU")),
                    }
                };
                ReplicaPlacement::Gpu {
                    gpus,
                    share,
                    cuda,
                    note,
                }
            }
            None => {
                let reason = match (&no_gpu_reason, machine.gpus.is_empty()) {
                    (Some(why), true) => format!("no GPU: {why}"),
                    (None, true) => "the machine has no GPU".into(),
                    _ => unplaced_reason(ask, machine.gpus.len()),
                };
                match spec.fallback {
                    prism_config::Fallback::Cpu => ReplicaPlacement::CpuFallback { reason },
                    prism_config::Fallback::None => ReplicaPlacement::Pending { reason },
                }
            }
        };
    }

    // Custom resources, in file order, for the replicas that will run: one whose ask the
    // server's pool cannot meet stays pending whatever its fallback (no device can stand
    // in for it), and gives its GPU share back.
    let mut resources_left = config.server.resources.clone();
    for (d, spec) in config.deployments.iter().enumerate() {
        for slot in placements[d].iter_mut().filter(|p| p.runs()) {
            let short = spec
                .actor
                .resources
                .iter()
                .find(|(name, need)| resources_left[*name] + 1e-9 < **need);
            if let Some((name, need)) = short {
                if let ReplicaPlacement::Gpu { gpus, share, .. } = &*slot {
                    for &g in gpus {
                        gpu_used[g] -= share;
                    }
                }
                *slot = ReplicaPlacement::Pending {
                    reason: format!(
                        "resource `{name}`: needs {need}, {} of {} left",
                        resources_left[name], config.server.resources[name]
                    ),
                };
            } else {
                for (name, need) in &spec.actor.resources {
                    *resources_left.get_mut(name).expect("declared (validated)") -= need;
                }
            }
        }
    }

    // Placement numbered the cards by their place in `machine.gpus`; users know them by
    // NVML's index, which differs once a card is left out.
    for slot in placements.iter_mut().flatten() {
        if let ReplicaPlacement::Gpu { gpus, .. } = slot {
            for g in gpus.iter_mut() {
                *g = machine.gpus[*g].index;
            }
        }
    }
    // Logical CPUs the replicas that will run ask for; tasks get the rest.
    let cpus_asked: f64 = config
        .deployments
        .iter()
        .zip(&placements)
        .map(|(spec, p)| spec.actor.num_cpus * p.iter().filter(|p| p.runs()).count() as f64)
        .sum();
    if cpus_asked > machine.cpus as f64 {
        tracing::warn!(
            asked = cpus_asked,
            cpus = machine.cpus,
            "the replicas ask for more logical CPUs than the machine has; they share them"
        );
    }
    let pool = std::sync::Arc::new(Pool::new(Free {
        cpus: (machine.cpus as f64 - cpus_asked).max(0.0),
        gpus: gpu_used.iter().map(|u| (1.0 - u).max(0.0)).collect(),
        resources: resources_left,
    }));
    let cluster = Cluster {
        machine,
        no_gpu_reason,
        gpu_used,
        resources_total: config.server.resources.clone(),
        pool,
    };
    (placements, cluster)
}

/// Why a replica asking for `ask` found no place on a machine with `cards` GPUs.
fn unplaced_reason(ask: &placement::Ask, cards: usize) -> String {
    let n = ask.num_gpus;
    let memory = if ask.memory < 1 << 20 {
        format!("{:.1} KiB", ask.memory as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", ask.memory as f64 / (1 << 20) as f64)
    };
    let what = "the replica's weights, batch buffers and cuBLAS workspace";
    if n > cards as f64 {
        format!("num_gpus = {n}: more GPUs than the machine has ({cards})")
    } else if n > 1.0 {
        format!("num_gpus = {n}: no {n} GPUs are wholly free with {memory} of memory each ({what})")
    } else if n == 1.0 {
        format!("num_gpus = 1: no GPU is wholly free with {memory} of memory ({what})")
    } else {
        format!("num_gpus = {n}: no GPU has {n} of a card and {memory} of memory free ({what})")
    }
}

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
mod plan_tests {
    use super::*;
    use crate::inventory::GpuInfo;

    fn card(index: usize, uuid: &str) -> GpuInfo {
        GpuInfo {
            index,
            name: "test card".into(),
            uuid: uuid.into(),
            memory_total: 80 << 30,
            memory_free: 80 << 30,
            utilization: None,
            simulated: false,
        }
    }

    fn plan_for(cuda: Result<Vec<String>, String>) -> (Vec<Vec<ReplicaPlacement>>, Cluster) {
        plan_asking(0.5, cuda)
    }

    /// Two replicas of the MLP asking for `num_gpus` each, on two 80 GiB cards.
    fn plan_asking(num_gpus: f64, cuda: Result<Vec<String>, String>) -> (Vec<Vec<ReplicaPlacement>>, Cluster) {
        let config = Config::parse(
            &format!(
                "[[deployments]]\nname = \"mlp\"\nnum_replicas = 2\nfallback = \"none\"\n\
                 [deployments.model]\nbuiltin = \"mlp\"\n[deployments.actor]\nnum_gpus = {num_gpus:?}\n"
            ),
            "test.toml",
            None,
        )
        .unwrap();
        let loaded: Vec<Loaded> = config
            .deployments
            .iter()
            .map(|d| crate::deployment::load(d).unwrap())
            .collect();
        let machine = Machine {
            cpus: 4,
            memory: 64 << 30,
            gpus: vec![card(0, "GPU-aaaa"), card(1, "GPU-bbbb")],
        };
        plan(&config, &loaded, machine, None, &cuda)
    }

    #[test]
    fn cards_are_matched_to_cuda_by_uuid_not_by_index() {
        // As with CUDA_VISIBLE_DEVICES=1: CUDA sees only NVML's card 1, as its ordinal 0.
        let (placements, cluster) = plan_for(Ok(vec!["GPU-bbbb".into()]));
        assert_eq!(cluster.machine.gpus.len(), 1, "the card CUDA cannot use is left out");
        assert_eq!(cluster.machine.gpus[0].index, 1);
        assert_eq!(cluster.gpu_used, vec![1.0]);
        for p in &placements[0] {
            match p {
                ReplicaPlacement::Gpu { gpus, cuda, .. } => {
                    assert_eq!(gpus, &vec![1], "NVML's index, as the status page shows it");
                    assert_eq!(*cuda, Some(0), "CUDA's ordinal for that card");
                }
                other => panic!("expected a GPU placement, got {other:?}"),
            }
        }
    }

    #[test]
    fn cuda_ordinals_follow_cuda_order() {
        // CUDA may order cards differently from NVML (fastest first).
        let (placements, cluster) = plan_for(Ok(vec!["GPU-bbbb".into(), "GPU-aaaa".into()]));
        assert_eq!(cluster.machine.gpus.len(), 2);
        let pairs: Vec<(usize, Option<usize>)> = placements[0]
            .iter()
            .map(|p| match p {
                ReplicaPlacement::Gpu { gpus, cuda, .. } => (gpus[0], *cuda),
                other => panic!("expected a GPU placement, got {other:?}"),
            })
            .collect();
        for (nvml, cuda) in pairs {
            assert_eq!(cuda, Some(1 - nvml), "NVML card {nvml} is CUDA device {}", 1 - nvml);
        }
    }

    #[test]
    fn a_pending_replica_says_what_it_could_not_get() {
        let reasons = |num_gpus| {
            let (placements, _) = plan_asking(num_gpus, Err("no libcuda".into()));
            placements[0]
                .iter()
                .filter_map(|p| match p {
                    ReplicaPlacement::Pending { reason } => Some(reason.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            reasons(3.0),
            vec!["num_gpus = 3: more GPUs than the machine has (2)"; 2]
        );
        let two = reasons(2.0);
        assert_eq!(two.len(), 1, "the first takes both cards: {two:?}");
        assert!(
            two[0].starts_with("num_gpus = 2: no 2 GPUs are wholly free with "),
            "{}",
            two[0]
        );
        assert!(reasons(1.0).is_empty(), "one card each");
        assert!(reasons(0.5).is_empty(), "half a card each");
    }

    #[test]
    fn when_cuda_sees_none_of_the_cards_the_replicas_say_so() {
        let (placements, cluster) = plan_for(Ok(Vec::new()));
        assert!(cluster.machine.gpus.is_empty());
        for p in &placements[0] {
            match p {
                ReplicaPlacement::Pending { reason } => assert_eq!(
                    reason,
                    "no GPU: CUDA cannot see GPU 0 (GPU-aaaa), 1 (GPU-bbbb) that NVML lists (CUDA_VISIBLE_DEVICES? MIG?)"
                ),
                other => panic!("expected a pending replica, got {other:?}"),
            }
        }
    }

    #[test]
    fn without_cuda_every_card_is_kept_and_the_replicas_say_why_they_use_the_cpu() {
        let (placements, cluster) = plan_for(Err("no libcuda".into()));
        assert_eq!(cluster.machine.gpus.len(), 2);
        for p in &placements[0] {
            match p {
                ReplicaPlacement::Gpu { cuda: None, note, .. } => assert!(note.contains("no libcuda"), "{note}"),
                other => panic!("expected a GPU placement without CUDA, got {other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod pool_tests {
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
