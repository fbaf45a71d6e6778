//! An older emulated driver (`EmuOptions`, the `driver_version` and `read_only_host_register`
//! keys of `VRAMSWAP_EMU_CONF`): what it reports, the entry points and attributes it lacks, and
//! the PTX it cannot load. A test binary of its own: the options are fixed at the process's
//! only initialisation.

use std::ffi::{c_void, CString};

use vramswap_cuda_emu as emu;
use vramswap_cuda_emu::result::*;
use vramswap_cuda_emu::EmuOptions;
use vramswap_sim::SimDevice;

const PTX: &str = include_str!("fixtures/kernels.ptx");

fn load(text: &str) -> u32 {
    let image = CString::new(text).unwrap();
    let mut m = std::ptr::null_mut();
    // SAFETY: a NUL-terminated image and a valid out-pointer.
    let r = unsafe { emu::cuModuleLoadData(&mut m, image.as_ptr() as *const c_void) };
    if r == CUDA_SUCCESS {
        // SAFETY: the module just loaded.
        assert_eq!(unsafe { emu::cuModuleUnload(m) }, CUDA_SUCCESS);
    }
    r
}

#[test]
fn a_cuda_12_4_driver_lacks_what_came_later() {
    let opts = EmuOptions {
        driver_version: 12040,
        read_only_host_register: false,
    };
    let dev = SimDevice::new(emu::state::base_config());
    assert_eq!(emu::init_with_device_and_options(dev, opts), CUDA_SUCCESS);
    // SAFETY: plain driver calls with valid out-pointers; the events are the ones created
    // here, and `buf` outlives its registration.
    unsafe {
        let mut v = 0;
        assert_eq!(emu::cuDriverGetVersion(&mut v), CUDA_SUCCESS);
        assert_eq!(v, 12040);
        assert_eq!(emu::cuInit(0), CUDA_SUCCESS);
        let mut ctx: *mut c_void = std::ptr::null_mut();
        assert_eq!(emu::cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
        assert_eq!(emu::cuCtxSetCurrent(ctx), CUDA_SUCCESS);

        // Attributes: 113 is configured to 0; both it and 115 exist in 12.4.
        let mut a = -1;
        assert_eq!(emu::cuDeviceGetAttribute(&mut a, 113, 0), CUDA_SUCCESS);
        assert_eq!(a, 0);
        assert_eq!(emu::cuDeviceGetAttribute(&mut a, 115, 0), CUDA_SUCCESS);
        assert_eq!(a, 1);

        // Without the attribute, a read-only registration is CUDA_ERROR_NOT_SUPPORTED.
        let mut buf = vec![0u8; 1 << 16];
        let p = buf.as_mut_ptr() as *mut c_void;
        assert_eq!(
            emu::cuMemHostRegister_v2(p, buf.len(), 8),
            CUDA_ERROR_NOT_SUPPORTED
        );
        assert_eq!(emu::cuMemHostRegister_v2(p, buf.len(), 0), CUDA_SUCCESS);
        assert_eq!(emu::cuMemHostUnregister(p), CUDA_SUCCESS);

        let (mut e0, mut e1) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(emu::cuEventCreate(&mut e0, 0), CUDA_SUCCESS);
        assert_eq!(emu::cuEventCreate(&mut e1, 0), CUDA_SUCCESS);
        assert_eq!(emu::cuEventRecord(e0, std::ptr::null_mut()), CUDA_SUCCESS);
        assert_eq!(emu::cuEventRecord(e1, std::ptr::null_mut()), CUDA_SUCCESS);
        assert_eq!(emu::cuEventSynchronize(e1), CUDA_SUCCESS);
        let mut ms = -1f32;
        // The entry point every driver has works; the 12.8 one is missing here.
        assert_eq!(emu::cuEventElapsedTime(&mut ms, e0, e1), CUDA_SUCCESS);
        assert!(ms >= 0.0);
        assert!(emu::report_json().contains("\"violations\":[]"));
        assert_eq!(
            emu::cuEventElapsedTime_v2(&mut ms, e0, e1),
            CUDA_ERROR_NOT_SUPPORTED
        );
        assert_eq!(emu::cuEventDestroy_v2(e0), CUDA_SUCCESS);
        assert_eq!(emu::cuEventDestroy_v2(e1), CUDA_SUCCESS);
    }
    // The call of a missing entry point is misuse, in the report.
    let r = emu::report_json();
    assert!(r.contains("\"clean\":false"), "{r}");
    assert!(r.contains("\"driver_version\":12040"), "{r}");
    assert!(
        r.contains("cuEventElapsedTime_v2 was called, but a CUDA 12.4 driver has no such"),
        "{r}"
    );

    // PTX up to ISA 8.4 (CUDA 12.4) loads; 8.5 and nvcc 13.0's 9.0 do not.
    assert!(PTX.contains(".version 8.0"));
    assert_eq!(load(PTX), CUDA_SUCCESS);
    assert_eq!(
        load(&PTX.replace(".version 8.0", ".version 8.4")),
        CUDA_SUCCESS
    );
    for newer in [".version 8.5", ".version 9.0", ".version 9.9"] {
        assert_eq!(
            load(&PTX.replace(".version 8.0", newer)),
            CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
            "{newer}"
        );
    }
}

#[test]
fn the_emulators_own_keys_are_parsed_and_checked() {
    use emu::state::parse_emu_conf;
    let (o, rest) =
        parse_emu_conf("driver_version:12040, capacity_mb:64,read_only_host_register:0").unwrap();
    assert_eq!(
        o,
        EmuOptions {
            driver_version: 12040,
            read_only_host_register: false
        }
    );
    assert_eq!(rest, "capacity_mb:64");
    assert_eq!(parse_emu_conf("").unwrap().0, EmuOptions::default());
    assert_eq!(EmuOptions::default().driver_version, emu::DRIVER_VERSION);
    for bad in [
        "driver_version:12.4",
        "driver_version:9020",
        "driver_version:13010",
        "read_only_host_register:maybe",
    ] {
        let e = parse_emu_conf(bad).unwrap_err();
        let key = bad.split(':').next().unwrap();
        assert!(e.starts_with(key), "the error names `{key}`: {e}");
    }
}
