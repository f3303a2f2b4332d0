//! Where the replicas go: GPU slots, CPU fallback or pending, and what they take of the
//! machine's logical resources. Decided once, at start-up.

use std::collections::BTreeMap;

use prism_config::Config;

use crate::deployment::{Loaded, ReplicaPlacement};
use crate::inventory::Machine;
use crate::placement::{self, Ask};

/// The machine and what the replicas took of it.
pub struct Cluster {
    pub machine: Machine,
    pub no_gpu_reason: Option<String>,
    /// Share of each card taken by placed replicas.
    pub gpu_used: Vec<f64>,
    /// Logical CPUs asked for by running replicas.
    pub cpus_asked: f64,
    /// Custom resources declared in `[server.resources]`, and what replicas left of them.
    pub resources_total: BTreeMap<String, f64>,
    pub resources_left: BTreeMap<String, f64>,
}

/// Places every replica of `config` (one entry per replica, per deployment). `cuda` is
/// the CUDA probe: the device count, or why CUDA cannot be used.
pub fn plan(
    config: &Config,
    loaded: &[Loaded],
    machine: Machine,
    no_gpu_reason: Option<String>,
    cuda: &Result<usize, String>,
) -> (Vec<Vec<ReplicaPlacement>>, Cluster) {
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
                asks.push(Ask {
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
                    // NVML's index; CUDA_VISIBLE_DEVICES or a different device order
                    // could still make CUDA's numbering differ (matching by UUID is
                    // the sturdier way, not done yet).
                    let ordinal = machine.gpus[gpus[0]].index;
                    match &cuda {
                        Ok(count) if ordinal < *count => (Some(ordinal), format!("runs on cuda:{ordinal}")),
                        Ok(count) => (
                            None,
                            format!("CUDA sees {count} devices, not GPU {ordinal}: runs on the CPU"),
                        ),
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
                    _ => format!(
                        "no GPU has num_gpus = {} of a card and {:.1} MiB of memory free (the replica's weights and batch buffers)",
                        ask.num_gpus,
                        ask.memory as f64 / (1 << 20) as f64
                    ),
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

    let cluster = Cluster {
        machine,
        no_gpu_reason,
        gpu_used,
        cpus_asked: 0.0,
        resources_total: config.server.resources.clone(),
        resources_left,
    };
    (placements, cluster)
}
