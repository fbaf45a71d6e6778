//! The [`Backend`] implementation (cudarc's `safe` layer): one method per operation, each
//! binding the context and checking the driver's result.

use std::ffi::c_void;
use std::ptr;

use cudarc::driver::sys::{self, CUresult};

use super::handles::Kind;
use super::result::{check, check_alloc};
use super::version::version_text;
use super::CudaBackend;
use crate::backend::{
    Backend, CastType, DeviceProperties, DevicePtr, Event, MemInfo, PhysHandle, Stream,
};
use crate::error::{Error, Result};

impl Backend for CudaBackend {
    fn properties(&self) -> &DeviceProperties {
        &self.props
    }

    fn mem_info(&self) -> Result<MemInfo> {
        let _bound = self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers; context bound.
        check("cuMemGetInfo_v2", unsafe {
            sys::cuMemGetInfo_v2(&mut free, &mut total)
        })?;
        Ok(MemInfo {
            free: free as u64,
            total: total as u64,
        })
    }

    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
        let _bound = self.bind()?;
        let mut p = 0;
        // SAFETY: valid out-pointer; context bound.
        let r = unsafe { sys::cuMemAlloc_v2(&mut p, bytes as usize) };
        check_alloc(self, "cuMemAlloc_v2", bytes, r)?;
        Ok(DevicePtr(p))
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the pointer and reports an error for a bad one.
        check("cuMemFree_v2", unsafe { sys::cuMemFree_v2(ptr.0) })
    }

    fn alloc_async(&self, bytes: u64, stream: Stream) -> Result<DevicePtr> {
        let _bound = self.bind()?;
        let mut p = 0;
        // SAFETY: valid out-pointer; the stream handle is the caller's.
        let r = unsafe { sys::cuMemAllocAsync(&mut p, bytes as usize, Self::stream(stream)) };
        check_alloc(self, "cuMemAllocAsync", bytes, r)?;
        Ok(DevicePtr(p))
    }

    fn free_async(&self, ptr: DevicePtr, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the pointer.
        check("cuMemFreeAsync", unsafe {
            sys::cuMemFreeAsync(ptr.0, Self::stream(stream))
        })
    }

    fn reserve(&self, bytes: u64) -> Result<DevicePtr> {
        let _bound = self.bind()?;
        let mut p = 0;
        // SAFETY: valid out-pointer; alignment 0 = granularity, no fixed address.
        check("cuMemAddressReserve", unsafe {
            sys::cuMemAddressReserve(&mut p, bytes as usize, 0, 0, 0)
        })?;
        Ok(DevicePtr(p))
    }

    fn free_reservation(&self, va: DevicePtr, bytes: u64) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the range.
        check("cuMemAddressFree", unsafe {
            sys::cuMemAddressFree(va.0, bytes as usize)
        })
    }

    fn create_physical(&self, bytes: u64) -> Result<PhysHandle> {
        let _bound = self.bind()?;
        let prop = self.alloc_prop();
        let mut h = 0;
        // SAFETY: `prop` is a valid pinned-device description; valid out-pointer.
        let r = unsafe { sys::cuMemCreate(&mut h, bytes as usize, &prop, 0) };
        check_alloc(self, "cuMemCreate", bytes, r)?;
        self.live.insert(Kind::Physical, h);
        Ok(PhysHandle(h))
    }

    fn release_physical(&self, handle: PhysHandle) -> Result<()> {
        let _bound = self.bind()?;
        self.live.remove("cuMemRelease", Kind::Physical, handle.0)?;
        // SAFETY: the handle is live: this backend made it and has not released it.
        let r = check("cuMemRelease", unsafe { sys::cuMemRelease(handle.0) });
        if r.is_err() {
            self.live.insert(Kind::Physical, handle.0);
        }
        r
    }

    fn map(&self, va: DevicePtr, bytes: u64, handle: PhysHandle) -> Result<()> {
        let _bound = self.bind()?;
        self.live.check("cuMemMap", Kind::Physical, handle.0)?;
        // SAFETY: the handle is live; the driver validates the range; offset must be 0.
        check("cuMemMap", unsafe {
            sys::cuMemMap(va.0, bytes as usize, 0, handle.0, 0)
        })?;
        let desc = sys::CUmemAccessDesc {
            location: self.alloc_prop().location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: one valid descriptor for the range just mapped.
        let r = unsafe { sys::cuMemSetAccess(va.0, bytes as usize, &desc, 1) };
        if let Err(e) = check("cuMemSetAccess", r) {
            // SAFETY: undoes the mapping made above so no half-made state remains.
            unsafe {
                let _ = sys::cuMemUnmap(va.0, bytes as usize);
            }
            return Err(e);
        }
        Ok(())
    }

    fn unmap(&self, va: DevicePtr, bytes: u64) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the driver validates the range.
        check("cuMemUnmap", unsafe {
            sys::cuMemUnmap(va.0, bytes as usize)
        })
    }

    fn host_alloc_pinned(&self, bytes: u64) -> Result<*mut u8> {
        let _bound = self.bind()?;
        let mut p: *mut c_void = ptr::null_mut();
        // SAFETY: valid out-pointer; PORTABLE makes it pinned for all contexts.
        let r =
            unsafe { sys::cuMemHostAlloc(&mut p, bytes as usize, sys::CU_MEMHOSTALLOC_PORTABLE) };
        check("cuMemHostAlloc", r)?;
        Ok(p as *mut u8)
    }

    unsafe fn host_free_pinned(&self, ptr: *mut u8) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller passes a pointer from `host_alloc_pinned` no copy still uses.
        check("cuMemFreeHost", unsafe {
            sys::cuMemFreeHost(ptr as *mut c_void)
        })
    }

    unsafe fn host_register(&self, ptr: *mut u8, bytes: u64, read_only: bool) -> Result<()> {
        // "Using this flag with a current context associated with a device that does not have
        // this attribute set will cause cuMemHostRegister to error with
        // CUDA_ERROR_NOT_SUPPORTED" (CU_MEMHOSTREGISTER_READ_ONLY): say why before asking.
        if read_only && !self.props.read_only_host_register {
            return Err(Error::Unsupported(format!(
                "{} cannot register host memory read-only \
                 (CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED is 0), which direct \
                 loading of mapped weight files needs; load without `direct` (into the pinned \
                 arena) instead",
                self.props.name
            )));
        }
        let _bound = self.bind()?;
        let mut flags = sys::CU_MEMHOSTREGISTER_PORTABLE;
        if read_only {
            flags |= sys::CU_MEMHOSTREGISTER_READ_ONLY;
        }
        // SAFETY: the caller guarantees the range is a valid mapping for as long as registered.
        check("cuMemHostRegister_v2", unsafe {
            sys::cuMemHostRegister_v2(ptr as *mut c_void, bytes as usize, flags)
        })
    }

    unsafe fn host_unregister(&self, ptr: *mut u8) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller guarantees no copy still uses the range.
        check("cuMemHostUnregister", unsafe {
            sys::cuMemHostUnregister(ptr as *mut c_void)
        })
    }

    fn stream_create(&self) -> Result<Stream> {
        let _bound = self.bind()?;
        let mut s: sys::CUstream = ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuStreamCreate", unsafe {
            sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
        })?;
        self.live.insert(Kind::Stream, s as u64);
        Ok(Stream(s as u64))
    }

    fn stream_destroy(&self, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        self.live
            .remove("cuStreamDestroy_v2", Kind::Stream, stream.0)?;
        // SAFETY: the stream is live and this backend's own.
        let r = check("cuStreamDestroy_v2", unsafe {
            sys::cuStreamDestroy_v2(Self::stream(stream))
        });
        if r.is_err() {
            self.live.insert(Kind::Stream, stream.0);
        }
        r
    }

    fn stream_synchronize(&self, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the stream is this backend's or the caller's own (the caller keeps it valid).
        check("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(Self::stream(stream))
        })
    }

    fn stream_query(&self, stream: Stream) -> Result<bool> {
        let _bound = self.bind()?;
        // SAFETY: the stream is this backend's or the caller's own (the caller keeps it valid).
        let r = unsafe { sys::cuStreamQuery(Self::stream(stream)) };
        if r == CUresult::CUDA_ERROR_NOT_READY {
            return Ok(false);
        }
        check("cuStreamQuery", r)?;
        Ok(true)
    }

    fn event_create(&self, timing: bool) -> Result<Event> {
        let _bound = self.bind()?;
        let flags = if timing {
            sys::CUevent_flags::CU_EVENT_DEFAULT as u32
        } else {
            sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32
        };
        let mut e: sys::CUevent = ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut e, flags)
        })?;
        self.live.insert(Kind::Event, e as u64);
        Ok(Event(e as u64))
    }

    fn event_destroy(&self, event: Event) -> Result<()> {
        let _bound = self.bind()?;
        self.live
            .remove("cuEventDestroy_v2", Kind::Event, event.0)?;
        // SAFETY: the event is live: this backend made it and has not destroyed it.
        let r = check("cuEventDestroy_v2", unsafe {
            sys::cuEventDestroy_v2(Self::event(event))
        });
        if r.is_err() {
            self.live.insert(Kind::Event, event.0);
        }
        r
    }

    fn event_record(&self, event: Event, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        self.live.check("cuEventRecord", Kind::Event, event.0)?;
        // SAFETY: the event is live; the stream is this backend's or the caller's own.
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(Self::event(event), Self::stream(stream))
        })
    }

    fn event_query(&self, event: Event) -> Result<bool> {
        let _bound = self.bind()?;
        self.live.check("cuEventQuery", Kind::Event, event.0)?;
        // SAFETY: the event is live.
        let r = unsafe { sys::cuEventQuery(Self::event(event)) };
        if r == CUresult::CUDA_ERROR_NOT_READY {
            return Ok(false);
        }
        check("cuEventQuery", r)?;
        Ok(true)
    }

    fn event_synchronize(&self, event: Event) -> Result<()> {
        let _bound = self.bind()?;
        self.live
            .check("cuEventSynchronize", Kind::Event, event.0)?;
        // SAFETY: the event is live.
        check("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(Self::event(event))
        })
    }

    fn stream_wait_event(&self, stream: Stream, event: Event) -> Result<()> {
        let _bound = self.bind()?;
        self.live.check("cuStreamWaitEvent", Kind::Event, event.0)?;
        // SAFETY: the event is live; the stream is this backend's or the caller's own.
        check("cuStreamWaitEvent", unsafe {
            sys::cuStreamWaitEvent(Self::stream(stream), Self::event(event), 0)
        })
    }

    fn event_elapsed_ms(&self, start: Event, end: Event) -> Result<f32> {
        let Some((name, f)) = self.elapsed_time else {
            return Err(Error::Unsupported(format!(
                "the CUDA driver (CUDA {}) exports neither cuEventElapsedTime_v2 nor \
                 cuEventElapsedTime",
                version_text(self.props.driver_version)
            )));
        };
        let _bound = self.bind()?;
        self.live.check(name, Kind::Event, start.0)?;
        self.live.check(name, Kind::Event, end.0)?;
        let mut ms = 0f32;
        // SAFETY: `f` is the driver's cuEventElapsedTime(_v2), looked up with its C signature;
        // valid out-pointer; both events are live.
        check(name, unsafe {
            f(&mut ms, Self::event(start), Self::event(end))
        })?;
        Ok(ms)
    }

    fn synchronize(&self) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: plain driver call with the context bound.
        check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
    }

    unsafe fn copy_htod_async(
        &self,
        dst: DevicePtr,
        src: *const u8,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller keeps `src` valid until the copy completes.
        check("cuMemcpyHtoDAsync_v2", unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                dst.0,
                src as *const c_void,
                bytes as usize,
                Self::stream(stream),
            )
        })
    }

    unsafe fn copy_dtoh_async(
        &self,
        dst: *mut u8,
        src: DevicePtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: the caller keeps `dst` valid and untouched until the copy completes.
        check("cuMemcpyDtoHAsync_v2", unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                dst as *mut c_void,
                src.0,
                bytes as usize,
                Self::stream(stream),
            )
        })
    }

    fn copy_dtod_async(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: device addresses are validated by the driver.
        check("cuMemcpyDtoDAsync_v2", unsafe {
            sys::cuMemcpyDtoDAsync_v2(dst.0, src.0, bytes as usize, Self::stream(stream))
        })
    }

    fn memset_d8_async(&self, dst: DevicePtr, value: u8, bytes: u64, stream: Stream) -> Result<()> {
        let _bound = self.bind()?;
        // SAFETY: device addresses are validated by the driver.
        check("cuMemsetD8Async", unsafe {
            sys::cuMemsetD8Async(dst.0, value, bytes as usize, Self::stream(stream))
        })
    }

    fn checksum_async(
        &self,
        src: DevicePtr,
        bytes: u64,
        out: DevicePtr,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        self.kernels()?.checksum(src, bytes, out, stream)
    }

    fn fill_u32_async(
        &self,
        dst: DevicePtr,
        bytes: u64,
        pattern: u32,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        self.kernels()?.fill_u32(dst, bytes, pattern, stream)
    }

    fn cast_async(
        &self,
        src: DevicePtr,
        from: CastType,
        dst: DevicePtr,
        to: CastType,
        count: u64,
        stream: Stream,
    ) -> Result<()> {
        let _bound = self.bind()?;
        self.kernels()?.cast(src, from, dst, to, count, stream)
    }
}
