//! The simulated GPU behind vramswap's `sim` backend and its emulated CUDA driver.
//!
//! One device model, two faces: `vramswap`'s `sim` backend calls [`SimDevice`] directly, and
//! the `vramswap-cuda-emu` crate exposes the same model through the CUDA Driver API's C ABI.
//! The model is faithful where code above it could go wrong:
//!
//! - a capacity, past which allocations fail with out-of-memory;
//! - opaque device addresses the host cannot dereference (only copies reach the bytes), never
//!   reused, so a stale pointer is an illegal address;
//! - streams that run their work asynchronously and in order on worker threads, events, and
//!   stream-wait-event;
//! - virtual address reservation, physical allocations and mapping at a granularity, with
//!   access granted separately, as `cuMemSetAccess` does;
//! - pinned and pageable host memory (copies of either are stream-ordered and asynchronous:
//!   for pageable memory the driver reference promises no more than "might be synchronous");
//! - fault injection (fail the Nth call of an operation);
//! - an optional bandwidth model per copy direction;
//! - a stream-ordering checker that reports unordered conflicting accesses on different streams.

#![warn(missing_docs)]

mod config;
mod device;
mod error;
mod host;
mod host_visible;
pub mod kernels;
pub mod kv;
mod memory;
mod race;
mod stream;

pub use config::{parse_config, CONFIG_KEYS};
pub use device::{
    Kernel, LeakReport, LinkDir, LinkSpan, LinkWatch, SimCounters, SimDevice, LINK_LOG,
};
pub use error::{cuda_code_of, SimError, SimResult};
pub use host::HostKind;
pub use kernels::CastType;
pub use kv::KvError;
pub use memory::VA_BASE;
pub use race::{Access, Space, Violation};
pub use stream::WorkMark;

/// What the stream-ordering checker does with a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RaceMode {
    /// No checking.
    Off,
    /// Record violations; [`SimDevice::violations`] returns them.
    #[default]
    Record,
    /// Record them and fail the offending operation with [`SimError::Race`].
    Error,
}

/// Copy bandwidths of the optional bandwidth model, in bytes per second. Host-to-device and
/// device-to-host are independent links (two copy engines); copies in one direction share it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Host to device.
    pub h2d: f64,
    /// Device to host.
    pub d2h: f64,
    /// Device to device.
    pub d2d: f64,
    /// Fraction of the link a copy from or to pageable memory reaches (0 < f ≤ 1).
    pub pageable_factor: f64,
}

impl Default for Bandwidth {
    /// A PCIe Gen4 x16-like link: 25 GB/s each way, pageable at 40 % of that.
    fn default() -> Self {
        Bandwidth {
            h2d: 25e9,
            d2h: 25e9,
            d2d: 1000e9,
            pageable_factor: 0.4,
        }
    }
}

/// Configuration of a simulated device.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Device name reported to users.
    pub name: String,
    /// Bytes of device memory.
    pub capacity: u64,
    /// Granularity of the virtual-memory calls (2 MiB, as on Hopper).
    pub granularity: u64,
    /// Asynchronous copy engines reported.
    pub copy_engines: u32,
    /// Bandwidth model; `None` copies at host memcpy speed.
    pub bandwidth: Option<Bandwidth>,
    /// What the stream-ordering checker does.
    pub race_mode: RaceMode,
    /// Device addresses are real host virtual addresses (`host_visible:true`): mapped ranges
    /// are shared memory the host can read and write in place, unmapped ones fault on access.
    /// Off by default. Linux only.
    pub host_visible: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            name: "vramswap simulated GPU".into(),
            capacity: 8 << 30,
            granularity: 2 << 20,
            copy_engines: 2,
            bandwidth: None,
            race_mode: RaceMode::Record,
            host_visible: false,
        }
    }
}

/// Operations that fault injection can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// Plain and stream-ordered device allocations.
    DeviceAlloc,
    /// Physical allocations of the virtual-memory API (`cuMemCreate`).
    PhysCreate,
    /// Address reservations.
    Reserve,
    /// Mappings (`cuMemMap`).
    Map,
    /// Unmappings (`cuMemUnmap`).
    Unmap,
    /// Releases of physical allocations (`cuMemRelease`).
    PhysRelease,
    /// Copies in any direction.
    Copy,
    /// Memsets.
    Memset,
    /// Pinned host allocations.
    HostAlloc,
    /// Host registrations.
    HostRegister,
    /// Kernel launches.
    Launch,
    /// Stream creation.
    StreamCreate,
    /// Event creation.
    EventCreate,
}

impl FaultOp {
    /// Every operation, for parsing and listing.
    pub const ALL: [FaultOp; 13] = [
        FaultOp::DeviceAlloc,
        FaultOp::PhysCreate,
        FaultOp::Reserve,
        FaultOp::Map,
        FaultOp::Unmap,
        FaultOp::PhysRelease,
        FaultOp::Copy,
        FaultOp::Memset,
        FaultOp::HostAlloc,
        FaultOp::HostRegister,
        FaultOp::Launch,
        FaultOp::StreamCreate,
        FaultOp::EventCreate,
    ];

    /// Short name used in `VRAMSWAP_SIM_FAULTS` / `VRAMSWAP_EMU_FAULTS` (`alloc`, `create`,
    /// `reserve`, `map`, `unmap`, `release`, `copy`, `memset`, `host_alloc`, `register`,
    /// `launch`, `stream`, `event`).
    pub fn name(self) -> &'static str {
        match self {
            FaultOp::DeviceAlloc => "alloc",
            FaultOp::PhysCreate => "create",
            FaultOp::Reserve => "reserve",
            FaultOp::Map => "map",
            FaultOp::Unmap => "unmap",
            FaultOp::PhysRelease => "release",
            FaultOp::Copy => "copy",
            FaultOp::Memset => "memset",
            FaultOp::HostAlloc => "host_alloc",
            FaultOp::HostRegister => "register",
            FaultOp::Launch => "launch",
            FaultOp::StreamCreate => "stream",
            FaultOp::EventCreate => "event",
        }
    }

    /// Parses [`FaultOp::name`].
    pub fn from_name(name: &str) -> Option<FaultOp> {
        FaultOp::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The `CUresult` an injected fault of this operation reads as.
    pub fn cuda_name(self) -> &'static str {
        match self {
            FaultOp::DeviceAlloc | FaultOp::PhysCreate | FaultOp::HostAlloc => {
                "CUDA_ERROR_OUT_OF_MEMORY"
            }
            FaultOp::Copy | FaultOp::Memset | FaultOp::Launch => "CUDA_ERROR_LAUNCH_FAILED",
            _ => "CUDA_ERROR_INVALID_VALUE",
        }
    }
}

/// Parses a fault plan: `op:N` pairs separated by commas (for example `map:3,copy:10`), each
/// making the Nth call of that operation fail.
pub fn parse_faults(spec: &str) -> Result<Vec<(FaultOp, u64)>, String> {
    let mut out = Vec::new();
    for pair in kv::pairs("fault", spec) {
        let (op, n) = pair.map_err(|e| format!("{}: expected op:N", e.problem))?;
        let op = FaultOp::from_name(op).ok_or_else(|| {
            let names: Vec<_> = FaultOp::ALL.iter().map(|o| o.name()).collect();
            format!(
                "fault `{op}:{n}`: unknown operation `{op}` (one of {})",
                names.join(", ")
            )
        })?;
        let n = kv::parse_int_in(op.name(), n, 1..=u64::MAX)
            .map_err(|e| format!("fault {e} (counts start at 1)"))?;
        out.push((op, n));
    }
    Ok(out)
}
