//! The few `cuda.h` structures the emulated calls take, with their C layouts. Enumerations are
//! read as plain `u32` so that an out-of-range value from a caller is an error, not undefined
//! behaviour.

use std::ffi::{c_int, c_void};

/// `CUmemLocation`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemLocation {
    /// `CUmemLocationType` (1 = device).
    pub type_: u32,
    /// Device ordinal for a device location.
    pub id: c_int,
}

/// The `allocFlags` member of `CUmemAllocationProp`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAllocFlags {
    /// `compressionType`.
    pub compression_type: u8,
    /// `gpuDirectRDMACapable`.
    pub gpu_direct_rdma_capable: u8,
    /// `usage`.
    pub usage: u16,
    /// `reserved`.
    pub reserved: [u8; 4],
}

/// `CUmemAllocationProp`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAllocationProp {
    /// `CUmemAllocationType` (1 = pinned).
    pub type_: u32,
    /// `requestedHandleTypes`.
    pub requested_handle_types: u32,
    /// Where the memory lives.
    pub location: CUmemLocation,
    /// `win32HandleMetaData`.
    pub win32_handle_meta_data: *mut c_void,
    /// `allocFlags`.
    pub alloc_flags: CUmemAllocFlags,
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAccessDesc {
    /// The device the access applies to.
    pub location: CUmemLocation,
    /// `CUmemAccess_flags` (3 = read-write).
    pub flags: u32,
}
