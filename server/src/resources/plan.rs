//! The start-up plan: where each replica goes (GPU slots, CPU fallback or pending) and
//! what the replicas leave of the machine's logical resources for tasks. Decided once,
//! from the deployment file, the inventory and the CUDA probe; it starts nothing, and
//! knows a model only by the card memory one replica needs.

use std::collections::BTreeMap;

use prism_config::Config;

use super::inventory::Machine;
use super::placement;
use super::pool::{Free, Pool};

/// Where one replica was placed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "placement", rename_all = "snake_case")]
pub enum ReplicaPlacement {
    /// It asked for no GPU.
    Cpu,
    /// On these cards (NVML's indices), each at `share` of a card.
    Gpu {
        gpus: Vec<usize>,
        share: f64,
        /// The card it computes on, when CUDA works here; otherwise it computes on the
        /// CPU and `note` says why (a simulated card, no CUDA libraries).
        cuda: Option<usize>,
        note: String,
    },
    /// No card could take it; `fallback = "cpu"` put it on the CPU.
    CpuFallback { reason: String },
    /// No card could take it and `fallback = "none"`: it does not run.
    Pending { reason: String },
}

impl ReplicaPlacement {
    pub fn runs(&self) -> bool {
        !matches!(self, ReplicaPlacement::Pending { .. })
    }
}

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

/// Places every replica of `config` (one entry per replica, per deployment), each of
/// deployment `d`'s replicas needing `replica_memory[d]` bytes on a card. `cuda` is
/// the CUDA probe: the UUID of each device CUDA may use, by ordinal, or why CUDA cannot be
/// used. Cards that NVML lists and CUDA does not (`CUDA_VISIBLE_DEVICES`) are left out of
/// the machine: nothing is placed on them and tasks cannot reserve them.
pub fn plan(
    config: &Config,
    replica_memory: &[u64],
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
    for (d, (spec, &memory)) in config.deployments.iter().zip(replica_memory).enumerate() {
        if spec.actor.num_gpus > 0.0 {
            for r in 0..spec.num_replicas {
                asks.push(placement::Ask {
                    num_gpus: spec.actor.num_gpus,
                    memory,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::inventory::GpuInfo;

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
        // What one replica of the built-in MLP needs on a card, as the CUDA backend counts it.
        let mlp = prism_kernels::builtin::by_name("mlp").unwrap();
        let memory: Vec<u64> = config
            .deployments
            .iter()
            .map(|d| prism_kernels::cuda::GpuModel::memory_needed(&mlp, d.precision, d.batching.max_batch_size))
            .collect();
        let machine = Machine {
            cpus: 4,
            memory: 64 << 30,
            gpus: vec![card(0, "GPU-aaaa"), card(1, "GPU-bbbb")],
        };
        plan(&config, &memory, machine, None, &cuda)
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
