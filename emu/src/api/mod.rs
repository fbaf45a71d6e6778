//! The exported CUDA Driver API entry points, by area. Every function has the real C ABI and
//! the real symbol name, checks its arguments as the driver reference documents, and is wrapped
//! so that no panic crosses into C (`CUDA_ERROR_UNKNOWN` instead).

#![allow(non_snake_case)]

pub mod context;
pub mod errors;
pub mod memory;
pub mod module;
pub mod stream;
