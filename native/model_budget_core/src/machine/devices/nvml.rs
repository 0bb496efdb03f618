//! The NVML probe: one lazily started NVML handle per process, re-used by
//! every call, with a failed start remembered until `refresh`.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use parking_lot::RwLock;

use super::{visible, Gpu, GpuStatus, Unavailable};

/// The name CUDA programs load NVML by: the runtime soname, present with
/// every driver install (the unversioned `.so` comes only with dev files).
const LIBRARY: &str = "libnvidia-ml.so.1";

/// A started NVML with what does not change while it runs.
struct Probe {
    nvml: Nvml,
    driver_version: String,
    /// Name and UUID of each GPU, in NVML order.
    gpus: Vec<(String, String)>,
}

type State = Arc<Result<Probe, Unavailable>>;

/// `None` until first use. Readers share the probe; `refresh` swaps it.
static STATE: RwLock<Option<State>> = RwLock::new(None);

/// How many times NVML was started, so tests can see it is started once.
static STARTS: AtomicUsize = AtomicUsize::new(0);

/// The GPUs CUDA programs would see with `CUDA_VISIBLE_DEVICES` set to
/// `visible` (`None`: unset; see [`visible::select`]), numbered as CUDA
/// numbers them, with their memory now. Empty when NVML is unavailable;
/// [`status`] says why.
pub fn devices(visible: Option<&str>) -> Vec<Gpu> {
    match &*probe() {
        Ok(probe) => probe.visible_gpus(visible),
        Err(_) => Vec::new(),
    }
}

/// Whether [`devices`] is known to list no GPU, without touching the driver
/// or waiting for a lock: true once NVML failed to start (the failure is
/// remembered until [`refresh`]). False before the first probe, while a
/// refresh holds the state, and whenever NVML works, since then every
/// [`devices`] call reads memory from the driver. Lets `:auto` budgets skip
/// the trip to a dirty scheduler on machines without NVIDIA GPUs.
pub fn known_absent() -> bool {
    STATE
        .try_read()
        .is_some_and(|state| matches!(state.as_deref(), Some(Err(_))))
}

/// Whether NVML works, and how many GPUs [`devices`] lists for `visible`.
pub fn status(visible: Option<&str>) -> GpuStatus {
    status_of(&probe(), visible)
}

/// Starts NVML again (after a driver install or a fix), replacing the
/// remembered handle or failure, and returns the new [`status`].
pub fn refresh(visible: Option<&str>) -> GpuStatus {
    let mut state = STATE.write();
    // Let go of the old handle first so that NVML is not started twice
    // (a reader that still holds it keeps it alive until it is done).
    *state = None;
    let fresh = start_nvml();
    *state = Some(Arc::clone(&fresh));
    drop(state);
    status_of(&fresh, visible)
}

fn status_of(state: &State, visible: Option<&str>) -> GpuStatus {
    match &**state {
        Ok(probe) => GpuStatus::Ok {
            driver_version: probe.driver_version.clone(),
            count: u32::try_from(probe.visible(visible).len()).unwrap_or(u32::MAX),
        },
        Err(why) => GpuStatus::Unavailable(why.clone()),
    }
}

/// The probe, started on first use.
fn probe() -> State {
    if let Some(state) = &*STATE.read() {
        return Arc::clone(state);
    }
    let mut state = STATE.write();
    Arc::clone(state.get_or_insert_with(start_nvml))
}

fn start_nvml() -> State {
    STARTS.fetch_add(1, Ordering::Relaxed);
    Arc::new(start(OsStr::new(LIBRARY)))
}

/// Loads `library`, starts NVML and reads what does not change: the driver
/// version and each GPU's name and UUID. Memory is read once here too, so
/// that a library too old for the memory query fails now, with a reason.
fn start(library: &OsStr) -> Result<Probe, Unavailable> {
    let nvml = Nvml::builder().lib_path(library).init().map_err(why)?;
    let driver_version = nvml.sys_driver_version().map_err(why)?;
    let count = nvml.device_count().map_err(why)?;
    let gpus = (0..count)
        .map(|nvml_index| {
            let on_gpu = |err| on_device(nvml_index, err);
            let device = nvml.device_by_index(nvml_index).map_err(on_gpu)?;
            device.memory_info().map_err(on_gpu)?;
            Ok((
                device.name().map_err(on_gpu)?,
                device.uuid().map_err(on_gpu)?,
            ))
        })
        .collect::<Result<_, Unavailable>>()?;
    Ok(Probe {
        nvml,
        driver_version,
        gpus,
    })
}

impl Probe {
    /// NVML indices of the GPUs CUDA would show, in CUDA's order.
    fn visible(&self, value: Option<&str>) -> Vec<usize> {
        let uuids: Vec<&str> = self.gpus.iter().map(|(_, uuid)| uuid.as_str()).collect();
        visible::select(value, &uuids)
    }

    fn visible_gpus(&self, value: Option<&str>) -> Vec<Gpu> {
        self.visible(value)
            .into_iter()
            .zip(0u32..)
            .map(|(position, gpu_index)| {
                let (name, uuid) = &self.gpus[position];
                // `position` came from `gpus`, whose length came from a u32.
                let nvml_index = u32::try_from(position).unwrap_or(u32::MAX);
                let memory = self
                    .nvml
                    .device_by_index(nvml_index)
                    .and_then(|device| device.memory_info());
                let (total, free, used) = memory.map_or((0, 0, 0), |m| (m.total, m.free, m.used));
                Gpu {
                    gpu_index,
                    nvml_index,
                    name: name.clone(),
                    uuid: uuid.clone(),
                    memory_total: total,
                    memory_free: free,
                    memory_used: used,
                }
            })
            .collect()
    }
}

fn on_device(nvml_index: u32, err: NvmlError) -> Unavailable {
    match why(err) {
        Unavailable::Nvml(message) => Unavailable::Device {
            nvml_index,
            message,
        },
        other => other,
    }
}

/// Sorts NVML's errors into the reasons a person can act on.
fn why(err: NvmlError) -> Unavailable {
    match err {
        NvmlError::LibloadingError(e) => Unavailable::LibraryNotFound(e.to_string()),
        NvmlError::LibraryNotFound => Unavailable::LibraryNotFound(LIBRARY.to_owned()),
        NvmlError::FailedToLoadSymbol(symbol) => {
            Unavailable::FunctionMissing(format!("it lacks {symbol}"))
        }
        NvmlError::FunctionNotFound => {
            Unavailable::FunctionMissing("a function is missing".to_owned())
        }
        NvmlError::DriverNotLoaded => Unavailable::DriverNotLoaded,
        NvmlError::LibRmVersionMismatch => Unavailable::VersionMismatch,
        NvmlError::NoPermission => Unavailable::NoPermission,
        other => Unavailable::Nvml(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_reported_as_such() {
        let err = start(OsStr::new("libmodel-budget-no-such-nvml.so.1")).err();
        match err {
            Some(Unavailable::LibraryNotFound(detail)) => {
                assert!(
                    detail.contains("libmodel-budget-no-such-nvml.so.1"),
                    "{detail}"
                )
            }
            other => panic!("expected LibraryNotFound, got {other:?}"),
        }
    }

    #[test]
    fn a_library_without_nvml_is_reported_as_too_old() {
        // libc loads but has no nvmlInit_v2.
        match start(OsStr::new("libc.so.6")).err() {
            Some(Unavailable::FunctionMissing(detail)) => {
                assert!(detail.contains("nvmlInit_v2"), "{detail}")
            }
            other => panic!("expected FunctionMissing, got {other:?}"),
        }
    }

    #[test]
    fn errors_become_readable_reasons() {
        let cases = [
            (NvmlError::DriverNotLoaded, "kernel driver is not loaded"),
            (NvmlError::LibRmVersionMismatch, "version mismatch"),
            (NvmlError::NoPermission, "no permission"),
            (NvmlError::LibraryNotFound, "(libnvidia-ml.so.1) not found"),
            (NvmlError::FunctionNotFound, "too old"),
            (NvmlError::Unknown, "NVML failed: an internal driver error"),
        ];
        for (err, expected) in cases {
            let message = why(err).to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
        assert_eq!(
            on_device(3, NvmlError::GpuLost).to_string(),
            "GPU 3 could not be read: device fell off the bus or has otherwise become inacessible"
        );
        assert_eq!(
            on_device(3, NvmlError::NoPermission),
            Unavailable::NoPermission
        );
    }

    /// One test for the shared state, so that no other test races it.
    #[test]
    fn started_once_remembered_and_refreshed() {
        let before = STARTS.load(Ordering::Relaxed);
        let first = status(None);
        let started = STARTS.load(Ordering::Relaxed);
        assert!(started <= before + 1);
        for _ in 0..3 {
            assert_eq!(status(None), first);
            devices(None);
        }
        assert_eq!(STARTS.load(Ordering::Relaxed), started, "NVML restarted");
        assert_eq!(known_absent(), matches!(first, GpuStatus::Unavailable(_)));
        let again = refresh(None);
        assert_eq!(STARTS.load(Ordering::Relaxed), started + 1);
        assert_eq!(status(None), again);
        match again {
            GpuStatus::Ok { count, .. } => {
                assert!(!known_absent(), "NVML works: each probe reads the driver");
                assert_eq!(devices(None).len(), count as usize);
                assert!(devices(Some("")).is_empty());
                assert!(matches!(status(Some("-1")), GpuStatus::Ok { count: 0, .. }));
            }
            GpuStatus::Unavailable(why) => {
                assert!(known_absent());
                assert!(devices(None).is_empty());
                assert!(devices(Some("0")).is_empty());
                assert!(!why.to_string().is_empty());
            }
        }
    }
}
