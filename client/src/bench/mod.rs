//! `prism bench`: a load generator for any V2 server (Prism, Triton, MLServer, KServe),
//! in the spirit of Triton's `perf_analyzer`.
//!
//! * closed loop: `c` workers, each sending its next request when the last one answered;
//!   a list of concurrencies is a sweep;
//! * open loop: requests start at Poisson arrival times at a fixed rate, whatever the
//!   server does; latency counts from the scheduled start, so a server that falls behind
//!   is charged for the wait (no coordinated omission);
//! * a warm-up, then a measured window; a request counts when it starts and ends inside
//!   the window;
//! * errors are counted by kind and never enter the latency figures.
//!
//! Nothing Prism-specific is asked of the server: model metadata to shape the inputs
//! (V2 modes), then `POST .../infer`. The `plain` mode sends a fixed JSON body to any
//! path and asks nothing else, for servers that do not speak V2.

mod load;
mod outbox;
mod plot;
mod report;
mod shm;
mod workload;

use std::time::Duration;

pub use load::{Transport, run_point, run_point_over};
pub use plot::write_svg;
pub use report::{Errors, Point, Report};
pub use workload::{Format, Protocol, Request, SharedMemory, Workload, WorkloadSpec, grpc_request};

/// How load is offered at one point of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// `concurrency` requests in flight at all times.
    Closed { concurrency: usize },
    /// Poisson arrivals at `rate` requests per second; at most `max_in_flight` at once
    /// (beyond that an arrival is counted as the error `client_overload`).
    Open { rate: f64, max_in_flight: usize },
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Closed { concurrency } => write!(f, "concurrency {concurrency}"),
            Load::Open { rate, .. } => write!(f, "rate {rate}/s"),
        }
    }
}

/// The timing of each point.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
    /// A request still unanswered after this is an error of kind `timeout`.
    pub timeout: Duration,
}
