//! What the GPU of a training attempt is doing, read through NVML, the NVIDIA driver's
//! management library. `nvml-wrapper` loads it at run time, so a machine without the driver
//! (every CPU worker) simply has no GPU readings.
//!
//! The worker reads the attempt's device as a whole: its utilisation over the driver's last
//! sample period and the memory in use on it. It does not read the process's own share, because
//! NVML names processes by their ids on the host, which inside a container are not the ids the
//! worker sees for its child. An attempt holds its device alone unless several slots share one.

use std::sync::OnceLock;

use nvml_wrapper::Nvml;

use crate::queue::record::GpuUse;

/// NVML, opened on first use; `None` on a machine without the NVIDIA driver.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::debug!(error = %e, "no NVML: GPU use is not sampled");
            None
        }
    })
    .as_ref()
}

/// Reads GPU `index` now; `None` without NVML or when the driver cannot say. It blocks: the
/// first call loads and initialises NVML, which can take a while on a driver without its
/// persistence daemon.
pub fn read(index: u32) -> Option<GpuUse> {
    let device = nvml()?.device_by_index(index).ok()?;
    let rates = device.utilization_rates().ok()?;
    let memory = device.memory_info().ok()?;
    Some(GpuUse {
        percent: f64::from(rates.gpu),
        memory_bytes: memory.used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the NVIDIA driver there is no reading, and asking is harmless; with it, the
    /// reading is a percentage and some memory is in use.
    #[test]
    fn a_reading_is_sane_or_absent() {
        if let Some(r) = read(0) {
            assert!((0.0..=100.0).contains(&r.percent), "{r:?}");
            assert!(r.memory_bytes > 0, "{r:?}");
        }
    }
}
