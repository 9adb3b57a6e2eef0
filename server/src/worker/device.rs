//! What a worker trains on, as the queue sees it: its device class (which jobs it may claim)
//! and the name and memory recorded on each attempt, so a job page shows where it ran.

use candle_core::Device;
use ifp_trainer::config::DeviceClass;

use crate::queue::WorkerDevice;

/// The class, name and memory of `device`. Details that cannot be read are left out rather than
/// failing the worker: they are informative only.
pub fn describe(device: &Device) -> WorkerDevice {
    match device {
        Device::Cuda(_) => cuda(device),
        _ => WorkerDevice {
            class: DeviceClass::Cpu,
            name: cpu_name(),
            memory: ram_bytes(),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda(device: &Device) -> WorkerDevice {
    let ctx = device
        .as_cuda_device()
        .map(|d| d.cuda_stream().context().clone());
    let (name, memory) = match ctx {
        Ok(c) => (
            c.name().ok(),
            c.total_mem().ok().and_then(|m| i64::try_from(m).ok()),
        ),
        Err(_) => (None, None),
    };
    WorkerDevice {
        class: DeviceClass::Cuda,
        name,
        memory,
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_device: &Device) -> WorkerDevice {
    // Unreachable in practice: without the feature no CUDA device can be created.
    WorkerDevice {
        class: DeviceClass::Cuda,
        name: None,
        memory: None,
    }
}

/// `model name` of /proc/cpuinfo, with the number of logical CPUs.
fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string())?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(format!("{model} ({cpus} threads)"))
}

/// `MemTotal` of /proc/meminfo in bytes.
pub fn ram_bytes() -> Option<i64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: i64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}
