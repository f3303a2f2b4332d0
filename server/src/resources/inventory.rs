//! What the machine has: CPUs, memory and GPUs.
//!
//! [`Inventory`] is a trait so that placement is tested on any machine: [`SystemInventory`]
//! reads the real machine (GPUs through NVML, loaded at run time), [`SimulatedInventory`]
//! stands in for cards that are not there (`prism-server --simulate-gpus 2x80GiB`). A
//! missing NVML library or driver means zero GPUs and one log line saying why, never a
//! panic.
//!
//! Reads the machine and nothing else: what is placed on it is [`super::plan`]'s.

use serde::Serialize;

/// One GPU as seen at start-up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    pub uuid: String,
    pub memory_total: u64,
    pub memory_free: u64,
    /// Percent busy over NVML's last sample period.
    pub utilization: Option<u32>,
    /// A simulated card places replicas but runs nothing.
    pub simulated: bool,
}

/// One card's figures at one moment, as `prism_gpu_*` export them. A figure the card
/// (or its driver) does not give is `None`, and its series is left out rather than zero.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuSample {
    pub index: usize,
    pub uuid: String,
    /// Share of the last sample period the card was busy, 0 to 1.
    pub utilization: Option<f64>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    pub power_watts: Option<f64>,
    pub temperature_celsius: Option<f64>,
}

/// A snapshot of the machine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// Physical memory, bytes.
    pub memory: u64,
    pub gpus: Vec<GpuInfo>,
}

/// A source of machine facts.
pub trait Inventory: Send + Sync {
    fn machine(&self) -> Machine;

    /// Why there are no GPUs, when there are none and a reason is known.
    fn no_gpu_reason(&self) -> Option<String> {
        None
    }

    /// Each card's figures now (none without GPUs). May block (NVML calls the driver).
    fn sample(&self) -> Vec<GpuSample> {
        Vec::new()
    }
}

fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `MemTotal` from /proc/meminfo (0 where there is none).
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// The real machine. NVML is probed once; without it (no driver, no library) there are
/// no GPUs, and why is kept for the status page.
pub struct SystemInventory {
    nvml: Result<nvml_wrapper::Nvml, String>,
}

impl SystemInventory {
    pub fn probe() -> Self {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| {
            let reason = format!("NVML is not available ({e}); serving on the CPU");
            tracing::info!("no GPU: {reason}");
            reason
        });
        SystemInventory { nvml }
    }

    fn gpus(&self) -> Vec<GpuInfo> {
        let Ok(nvml) = &self.nvml else { return Vec::new() };
        let count = match nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("NVML could not count the GPUs: {e}");
                return Vec::new();
            }
        };
        (0..count)
            .filter_map(|i| {
                let device = nvml
                    .device_by_index(i)
                    .map_err(|e| tracing::warn!(gpu = i, "NVML could not open the GPU: {e}"))
                    .ok()?;
                let memory = device
                    .memory_info()
                    .map_err(|e| tracing::warn!(gpu = i, "NVML could not read the GPU's memory: {e}"))
                    .ok()?;
                Some(GpuInfo {
                    index: i as usize,
                    name: device.name().unwrap_or_else(|_| "unknown".into()),
                    uuid: device.uuid().unwrap_or_default(),
                    memory_total: memory.total,
                    memory_free: memory.free,
                    utilization: device.utilization_rates().ok().map(|u| u.gpu),
                    simulated: false,
                })
            })
            .collect()
    }
}

impl Inventory for SystemInventory {
    fn machine(&self) -> Machine {
        Machine {
            cpus: host_cpus(),
            memory: host_memory(),
            gpus: self.gpus(),
        }
    }

    fn sample(&self) -> Vec<GpuSample> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let Ok(nvml) = &self.nvml else { return Vec::new() };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|i| {
                let device = nvml.device_by_index(i).ok()?;
                let memory = device.memory_info().ok();
                Some(GpuSample {
                    index: i as usize,
                    uuid: device.uuid().unwrap_or_default(),
                    utilization: device.utilization_rates().ok().map(|u| f64::from(u.gpu) / 100.0),
                    memory_used: memory.as_ref().map(|m| m.used),
                    memory_total: memory.as_ref().map(|m| m.total),
                    // NVML reads milliwatts.
                    power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
                    temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
                })
            })
            .collect()
    }

    fn no_gpu_reason(&self) -> Option<String> {
        self.nvml.as_ref().err().cloned()
    }
}

/// Cards that are not there, for placement only.
pub struct SimulatedInventory {
    pub machine: Machine,
    /// What the cards read, when a test scripts it; otherwise each card reads its
    /// memory alone (total, and used as total less free), the only figures it has.
    pub readings: Option<Vec<GpuSample>>,
}

impl SimulatedInventory {
    /// The host's CPUs and memory with the GPUs of `spec`: comma-separated `COUNTxSIZE`
    /// groups, like `2x80GiB` or `1x80GiB,2x24GB` (sizes in B, KB, MB, GB, TB or their
    /// KiB..TiB forms).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut gpus = Vec::new();
        for group in spec.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let (count, size) = group
                .split_once(['x', 'X'])
                .ok_or_else(|| format!("--simulate-gpus: `{group}` is not COUNTxSIZE, like 2x80GiB"))?;
            let count: usize = count
                .trim()
                .parse()
                .map_err(|_| format!("--simulate-gpus: `{count}` in `{group}` is not a count of GPUs"))?;
            let bytes = parse_size(size.trim())
                .ok_or_else(|| format!("--simulate-gpus: `{size}` in `{group}` is not a size like 80GiB or 24GB"))?;
            for _ in 0..count {
                let index = gpus.len();
                gpus.push(GpuInfo {
                    index,
                    name: "simulated GPU".into(),
                    uuid: format!("GPU-simulated-{index}"),
                    memory_total: bytes,
                    memory_free: bytes,
                    utilization: None,
                    simulated: true,
                });
            }
        }
        if gpus.is_empty() {
            return Err("--simulate-gpus: no GPUs given; use COUNTxSIZE, like 2x80GiB".into());
        }
        Ok(SimulatedInventory {
            machine: Machine {
                cpus: host_cpus(),
                memory: host_memory(),
                gpus,
            },
            readings: None,
        })
    }
}

impl Inventory for SimulatedInventory {
    fn machine(&self) -> Machine {
        self.machine.clone()
    }

    fn sample(&self) -> Vec<GpuSample> {
        if let Some(readings) = &self.readings {
            return readings.clone();
        }
        self.machine
            .gpus
            .iter()
            .map(|g| GpuSample {
                index: g.index,
                uuid: g.uuid.clone(),
                memory_used: Some(g.memory_total.saturating_sub(g.memory_free)),
                memory_total: Some(g.memory_total),
                ..GpuSample::default()
            })
            .collect()
    }
}

/// `80GiB`, `24GB`, `512MiB`, `1024` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => return None,
    };
    (number.is_finite() && number >= 0.0).then_some((number * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_gpus_parse_from_the_command_line_form() {
        let inv = SimulatedInventory::parse("2x80GiB, 1x24GB").unwrap();
        let gpus = inv.machine().gpus;
        assert_eq!(gpus.len(), 3);
        assert_eq!(gpus[1].memory_total, 80 << 30);
        assert_eq!(gpus[2].memory_total, 24_000_000_000);
        assert!(gpus.iter().all(|g| g.simulated));
        assert_eq!(gpus[2].index, 2);
        for bad in ["", "2", "twox80GiB", "2x80 parsecs"] {
            assert!(SimulatedInventory::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probing_never_panics_and_a_missing_nvml_is_explained() {
        // What matters here is that probing a machine without the NVIDIA library (CI)
        // returns instead of panicking; what it reports is checked through the server
        // in tests/tests/placement.rs with an inventory of its own.
        let inv = SystemInventory::probe();
        let machine = inv.machine();
        if let Some(why) = inv.no_gpu_reason() {
            assert!(machine.gpus.is_empty());
            assert!(why.starts_with("NVML is not available ("), "{why}");
        }
    }
}
