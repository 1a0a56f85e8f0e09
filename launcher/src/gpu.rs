//! GPU health through NVML, for the preflight and for readings during the run: temperature,
//! uncorrected ECC errors, pages waiting for retirement, hardware clock throttling, and
//! critical Xid errors (an event set a background thread waits on).
//!
//! NVML is loaded at run time: on a node without an NVIDIA driver every reading is empty and
//! nothing is judged (the CPU checks still run).

use crate::store::GpuHealth;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::Nvml;
use std::sync::{Mutex, OnceLock};

/// The process's NVML handle, or `None` where the library or a GPU is absent.
fn nvml() -> Option<&'static Nvml> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    NVML.get_or_init(|| match Nvml::init() {
        Ok(n) if n.device_count().unwrap_or(0) > 0 => Some(n),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("NVML unavailable ({e}); no GPU health checks on this node");
            None
        }
    })
    .as_ref()
}

/// Critical Xid errors per device index, filled by [`watch_xid`].
static XIDS: Mutex<Vec<(u32, u64)>> = Mutex::new(Vec::new());

/// Every GPU of this node now (empty without NVML).
pub fn snapshot() -> Vec<GpuHealth> {
    let Some(nvml) = nvml() else { return vec![] };
    let xids = XIDS.lock().map(|v| v.clone()).unwrap_or_default();
    let hw = [
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (
            ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            "hw_power_brake_slowdown",
        ),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    ];
    (0..nvml.device_count().unwrap_or(0))
        .filter_map(|i| {
            let d = nvml.device_by_index(i).ok()?;
            let reasons = d.current_throttle_reasons().unwrap_or(ThrottleReasons::empty());
            Some(GpuHealth {
                index: i,
                name: d.name().unwrap_or_default(),
                temp_c: d.temperature(TemperatureSensor::Gpu).ok(),
                // Not supported (ECC off, consumer parts) reads as none.
                ecc_uncorrected: d
                    .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
                    .ok(),
                retirement_pending: d.are_pages_pending_retired().ok(),
                throttle: hw
                    .iter()
                    .filter(|(r, _)| reasons.contains(*r))
                    .map(|(_, n)| n.to_string())
                    .collect(),
                xids: xids.iter().filter(|(d, _)| *d == i).map(|(_, x)| *x).collect(),
            })
        })
        .collect()
}

/// Record critical Xid errors on every GPU of this node in the background (nothing without
/// NVML, or where the driver does not deliver events).
pub fn watch_xid() {
    use nvml_wrapper::bitmasks::event::EventTypes;
    let Some(nvml) = nvml() else { return };
    let spawned = std::thread::Builder::new()
        .name("weft-xid".into())
        .spawn(move || {
            let Ok(mut set) = nvml.create_event_set() else {
                return;
            };
            for i in 0..nvml.device_count().unwrap_or(0) {
                let Ok(d) = nvml.device_by_index(i) else { continue };
                set = match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("GPU {i}: no Xid events ({})", e.error);
                        match nvml.create_event_set() {
                            Ok(s) => s,
                            Err(_) => return,
                        }
                    }
                };
            }
            loop {
                if let Ok(ev) = set.wait(1000) {
                    let index = ev.device.index().unwrap_or(u32::MAX);
                    // An Xid NVML cannot decode still marks the GPU (as 0).
                    let xid = match ev.event_data {
                        Some(nvml_wrapper::enums::event::XidError::Value(x)) => x,
                        _ => 0,
                    };
                    tracing::error!(gpu = index, xid, "critical Xid error");
                    if let Ok(mut v) = XIDS.lock() {
                        v.push((index, xid));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch for Xid errors: {e}");
    }
}

/// Why a GPU makes its node unfit to train on, if it does: any uncorrected ECC error or
/// critical Xid, pages waiting for retirement, hardware slowdown, or a temperature at
/// `max_temp_c` or above.
pub fn problem(g: &GpuHealth, max_temp_c: f64) -> Option<String> {
    let id = format!("GPU {} ({})", g.index, g.name);
    if let Some(n) = g.ecc_uncorrected.filter(|&n| n > 0) {
        return Some(format!("{id}: {n} uncorrected ECC errors"));
    }
    if let Some(x) = g.xids.first() {
        return Some(format!("{id}: critical Xid {x}"));
    }
    if g.retirement_pending == Some(true) {
        return Some(format!(
            "{id}: memory pages waiting for retirement (reset the GPU)"
        ));
    }
    if let Some(t) = g.temp_c.filter(|&t| t as f64 >= max_temp_c) {
        return Some(format!("{id}: {t} °C ≥ launch.max_gpu_temp_c = {max_temp_c}"));
    }
    if let Some(r) = g.throttle.iter().find(|r| r.starts_with("hw_")) {
        return Some(format!("{id}: clocks held down by {r}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> GpuHealth {
        GpuHealth {
            index: 3,
            name: "H100".into(),
            temp_c: Some(61),
            ecc_uncorrected: Some(0),
            retirement_pending: Some(false),
            throttle: vec!["sw_thermal_slowdown".into()],
            xids: vec![],
        }
    }

    #[test]
    fn each_kind_of_gpu_trouble_is_named_and_a_healthy_gpu_passes() {
        assert_eq!(problem(&healthy(), 87.0), None);
        type Spoil = fn(&mut GpuHealth);
        let cases: [(Spoil, &str); 5] = [
            (|g| g.ecc_uncorrected = Some(2), "2 uncorrected ECC"),
            (|g| g.xids = vec![79], "Xid 79"),
            (|g| g.retirement_pending = Some(true), "retirement"),
            (|g| g.temp_c = Some(90), "90 °C"),
            (|g| g.throttle.push("hw_slowdown".into()), "hw_slowdown"),
        ];
        for (spoil, want) in cases {
            let mut g = healthy();
            spoil(&mut g);
            let why = problem(&g, 87.0).expect(want);
            assert!(why.starts_with("GPU 3 (H100)") && why.contains(want), "{why}");
        }
        // Counters a GPU cannot report are not held against it.
        let unknown = GpuHealth {
            temp_c: None,
            ecc_uncorrected: None,
            retirement_pending: None,
            ..healthy()
        };
        assert_eq!(problem(&unknown, 87.0), None);
    }
}
