//! Errors of the simulated device, one per CUDA driver result it stands for.

use std::fmt;

/// What a simulated driver operation can fail with.
///
/// Each variant corresponds to one `CUresult` of the CUDA Driver API; [`SimError::cuda_name`]
/// gives that name, and [`SimError::cuda_code`] its numeric value, so the `sim` backend and the
/// emulated driver report the same errors a real driver would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// An argument is out of range (zero size, misaligned address, bad flag).
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// Not enough simulated device memory for the request.
    #[error("out of memory: requested {requested} bytes, {free} of {capacity} bytes free")]
    OutOfMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes free on the device at the time.
        free: u64,
        /// The device's capacity.
        capacity: u64,
    },
    /// A handle (stream, event, physical allocation) that does not exist or was destroyed.
    #[error("invalid handle: {0}")]
    InvalidHandle(String),
    /// An access to a device address that is not mapped, not accessible, or freed.
    #[error("illegal address: {0}")]
    IllegalAddress(String),
    /// Work is still pending (query of a stream or event).
    #[error("not ready")]
    NotReady,
    /// The operation is not allowed in the current state (unmap of a range not mapped, free of a
    /// reservation that still has mappings, device write into read-only host memory).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// A host range is already registered.
    #[error("host memory already registered: {0}")]
    HostMemoryAlreadyRegistered(String),
    /// A host range is not registered.
    #[error("host memory not registered: {0}")]
    HostMemoryNotRegistered(String),
    /// A failure planted by fault injection.
    #[error("injected fault in {op} (call #{nth})")]
    InjectedFault {
        /// The operation that failed.
        op: crate::FaultOp,
        /// Which call of that operation failed (1-based).
        nth: u64,
    },
    /// The stream-ordering checker found unordered conflicting accesses (only in
    /// [`crate::RaceMode::Error`]).
    #[error("stream-ordering violation: {0}")]
    Race(String),
    /// The operation is not supported by the simulated device.
    #[error("not supported: {0}")]
    NotSupported(String),
}

impl SimError {
    /// The `CUresult` name this error stands for.
    pub fn cuda_name(&self) -> &'static str {
        match self {
            SimError::InvalidValue(_) => "CUDA_ERROR_INVALID_VALUE",
            SimError::OutOfMemory { .. } => "CUDA_ERROR_OUT_OF_MEMORY",
            SimError::InvalidHandle(_) => "CUDA_ERROR_INVALID_HANDLE",
            SimError::IllegalAddress(_) => "CUDA_ERROR_ILLEGAL_ADDRESS",
            SimError::NotReady => "CUDA_ERROR_NOT_READY",
            SimError::NotPermitted(_) => "CUDA_ERROR_NOT_PERMITTED",
            SimError::HostMemoryAlreadyRegistered(_) => "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
            SimError::HostMemoryNotRegistered(_) => "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
            // An injected fault reads as the failure a driver would most plausibly give.
            SimError::InjectedFault { op, .. } => op.cuda_name(),
            SimError::Race(_) => "CUDA_ERROR_ILLEGAL_STATE",
            SimError::NotSupported(_) => "CUDA_ERROR_NOT_SUPPORTED",
        }
    }

    /// The numeric `CUresult` this error stands for (values from `cuda.h`).
    pub fn cuda_code(&self) -> u32 {
        cuda_code_of(self.cuda_name())
    }
}

/// Numeric value of a `CUresult` name, as `cuda.h` defines it (999, `CUDA_ERROR_UNKNOWN`, for
/// names this table does not know).
pub fn cuda_code_of(name: &str) -> u32 {
    match name {
        "CUDA_SUCCESS" => 0,
        "CUDA_ERROR_INVALID_VALUE" => 1,
        "CUDA_ERROR_OUT_OF_MEMORY" => 2,
        "CUDA_ERROR_NOT_INITIALIZED" => 3,
        "CUDA_ERROR_DEINITIALIZED" => 4,
        "CUDA_ERROR_NO_DEVICE" => 100,
        "CUDA_ERROR_INVALID_DEVICE" => 101,
        "CUDA_ERROR_INVALID_IMAGE" => 200,
        "CUDA_ERROR_INVALID_CONTEXT" => 201,
        "CUDA_ERROR_INVALID_PTX" => 218,
        "CUDA_ERROR_NOT_FOUND" => 500,
        "CUDA_ERROR_NOT_READY" => 600,
        "CUDA_ERROR_ILLEGAL_ADDRESS" => 700,
        "CUDA_ERROR_LAUNCH_FAILED" => 719,
        "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED" => 712,
        "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED" => 713,
        "CUDA_ERROR_NOT_PERMITTED" => 800,
        "CUDA_ERROR_NOT_SUPPORTED" => 801,
        "CUDA_ERROR_INVALID_HANDLE" => 400,
        "CUDA_ERROR_ILLEGAL_STATE" => 401,
        _ => 999,
    }
}

impl fmt::Display for crate::FaultOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Result of a simulated driver operation.
pub type SimResult<T> = Result<T, SimError>;
