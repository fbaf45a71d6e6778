//! One setup for the bindings: the backend, the caching allocator and the swap engine wired
//! together, as the C ABI's `vramswap_context_create*` and Python's `vramswap.Engine(...)`
//! both build them.
//!
//! One precedence, **arguments over the environment**:
//! - the backend: the one asked for; `Auto` reads `VRAMSWAP_BACKEND`, then tries CUDA and falls
//!   back to `sim` ([`crate::backend::open`]);
//! - the simulated device: `VRAMSWAP_SIM_CONF` and `VRAMSWAP_SIM_FAULTS`, with
//!   [`EngineSetup::sim_capacity`] over the capacity;
//! - the allocator: [`EngineSetup::alloc_conf`] when given, `VRAMSWAP_ALLOC_CONF` otherwise;
//! - the engine: [`EngineSetup::swap_conf`] when given, `VRAMSWAP_SWAP_CONF` and
//!   `VRAMSWAP_IDLE_TIMEOUT` otherwise; then [`EngineSetup::device_budget`],
//!   [`EngineSetup::host_budget`] and [`EngineSetup::idle_timeout`] over either;
//! - the shared host store: [`EngineSetup::store`] when given, `VRAMSWAP_STORE` otherwise.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::alloc::{AllocatorConfig, CachingAllocator};
use crate::backend::{self, sim::SimBackend, BackendChoice, BackendKind, SharedBackend};
use crate::error::{Error, Result};
use crate::swap::{SwapConfig, SwapEngine};

/// What to build; `Default` is the automatic backend on device 0 configured by the environment.
#[derive(Clone, Debug, Default)]
pub struct EngineSetup {
    /// Which backend.
    pub backend: BackendChoice,
    /// The device ordinal (not negative).
    pub device: i32,
    /// The simulated device's memory in bytes, over `VRAMSWAP_SIM_CONF`'s, when the backend is
    /// `sim`; ignored on CUDA.
    pub sim_capacity: Option<u64>,
    /// The allocator's configuration string (the syntax of `VRAMSWAP_ALLOC_CONF`), instead of
    /// that variable.
    pub alloc_conf: Option<String>,
    /// The engine's configuration string (the syntax of `VRAMSWAP_SWAP_CONF`), instead of that
    /// variable and `VRAMSWAP_IDLE_TIMEOUT`.
    pub swap_conf: Option<String>,
    /// The device budget in bytes, over the configuration's.
    pub device_budget: Option<u64>,
    /// The host budget in bytes, over the configuration's.
    pub host_budget: Option<u64>,
    /// The idle timeout, over the configuration's.
    pub idle_timeout: Option<Duration>,
    /// The shared host store's socket (see [`crate::store`]), over `VRAMSWAP_STORE`.
    pub store: Option<PathBuf>,
}

/// The pieces an [`EngineSetup`] builds, wired together (the allocator attached to the engine).
pub struct Engine {
    /// The backend opened.
    pub backend: SharedBackend,
    /// Why this backend (e.g. `"auto: using the simulated device (...)"`).
    pub selected_because: String,
    /// The caching allocator over it.
    pub alloc: Arc<CachingAllocator>,
    /// The swap engine over it, with `alloc` attached.
    pub engine: SwapEngine,
}

impl EngineSetup {
    /// Opens the backend and builds the allocator and the engine, with the precedence of the
    /// [module](self). Configuration errors come before anything is opened, so a bad value
    /// leaves nothing behind.
    pub fn build(self) -> Result<Engine> {
        if self.device < 0 {
            return Err(Error::InvalidArgument(format!(
                "device {} is negative",
                self.device
            )));
        }
        let alloc_conf = match &self.alloc_conf {
            Some(s) => AllocatorConfig::parse(s)?,
            None => AllocatorConfig::from_env()?,
        };
        let mut swap_conf = match &self.swap_conf {
            Some(s) => {
                let mut c = SwapConfig::default();
                c.apply(s)?;
                c
            }
            None => SwapConfig::from_env()?,
        };
        if let Some(b) = self.device_budget {
            swap_conf.device_budget = Some(b);
        }
        if let Some(b) = self.host_budget {
            swap_conf.host_budget = Some(b);
        }
        if let Some(t) = self.idle_timeout {
            swap_conf.idle_timeout = Some(t);
        }
        swap_conf.store = self
            .store
            .clone()
            .or(swap_conf.store)
            .or_else(crate::swap::store_from_env);
        let sim = || -> Result<SharedBackend> {
            check_sim_ordinal(self.device)?;
            Ok(Arc::new(
                SimBackend::from_env_with_capacity(self.sim_capacity)?.with_ordinal(self.device),
            ))
        };
        let (backend, selected_because) = match self.backend {
            BackendChoice::Sim => (sim()?, "sim backend requested".to_string()),
            choice => {
                let (b, why) = backend::open(choice, self.device)?;
                match b.kind() {
                    // Auto fell back to `sim`: the same simulated device as asked for directly
                    // (the capacity argument, the ordinal and its check apply to it too).
                    BackendKind::Sim => (sim()?, why),
                    _ => (b, why),
                }
            }
        };
        let alloc = Arc::new(CachingAllocator::new(backend.clone(), alloc_conf)?);
        let engine = SwapEngine::new(backend.clone(), swap_conf)?;
        engine.attach_allocator(&alloc);
        Ok(Engine {
            backend,
            selected_because,
            alloc,
            engine,
        })
    }
}

/// How many simulated devices a process has: `VRAMSWAP_SIM_DEVICES` (default 1).
pub fn sim_device_count() -> Result<u32> {
    match std::env::var("VRAMSWAP_SIM_DEVICES") {
        Err(_) => Ok(1),
        Ok(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| Error::Config {
                key: "VRAMSWAP_SIM_DEVICES".into(),
                problem: format!("`{v}` is not a device count (1 to {})", u32::MAX),
            }),
    }
}

/// A simulated device, like a CUDA one, exists only for the ordinals below the count.
fn check_sim_ordinal(device: i32) -> Result<()> {
    let count = sim_device_count()?;
    if device < 0 || device as u64 >= u64::from(count) {
        return Err(Error::InvalidDevice {
            backend: "sim",
            ordinal: device,
            count,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_come_before_the_environment_and_bad_ones_open_nothing() {
        let built = EngineSetup {
            backend: BackendChoice::Sim,
            sim_capacity: Some(256 << 20),
            alloc_conf: Some("limit_mb:64".into()),
            swap_conf: Some("device_budget:32MiB".into()),
            device_budget: Some(16 << 20),
            ..EngineSetup::default()
        }
        .build()
        .unwrap();
        assert_eq!(built.backend.properties().total_memory, 256 << 20);
        assert_eq!(
            built.alloc.config().limit,
            crate::alloc::MemoryLimit::Bytes(64 << 20)
        );
        assert_eq!(built.engine.config().device_budget, Some(16 << 20));
        for bad in [
            EngineSetup {
                alloc_conf: Some("limit_mb:x".into()),
                ..EngineSetup::default()
            },
            EngineSetup {
                swap_conf: Some("nope:1".into()),
                ..EngineSetup::default()
            },
            EngineSetup {
                device: -1,
                ..EngineSetup::default()
            },
        ] {
            assert_eq!(
                bad.build().err().map(|e| e.kind()),
                Some(crate::ErrorKind::InvalidArgument)
            );
        }
    }
}
