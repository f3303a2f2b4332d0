//! What the machine has and who holds it: the inventory (CPUs, memory, GPUs through
//! NVML or simulated), fractional best-fit placement of replicas onto cards, the
//! start-up plan that decides where every replica runs, and the run-time pool of
//! logical resources that tasks take and give back.
//!
//! Nothing here starts a replica or knows about requests: the plan is data that
//! `serving` acts on, and the pool is what `tasks` waits on.

pub mod inventory;
pub mod placement;
mod plan;
mod pool;

pub use plan::{Cluster, ReplicaPlacement, plan};
pub use pool::{Free, Grant, Pool, TaskAsk};
