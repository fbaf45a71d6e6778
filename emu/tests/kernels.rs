//! Modules and launches: the PTX loader finds the project's kernels by name with their
//! parameter sizes, launches are checked against them, and the kernels compute what the Rust
//! implementations in `vramswap_sim::kernels` compute.

mod common;

use std::ffi::{c_void, CString};

use common::{alloc, destroy, free, setup, stream};
use vramswap_cuda_emu as emu;
use vramswap_cuda_emu::result::*;
use vramswap_sim::kernels;

const PTX: &str = include_str!("fixtures/kernels.ptx");

fn load(text: &str) -> (u32, *mut c_void) {
    let image = CString::new(text).unwrap();
    let mut m = std::ptr::null_mut();
    // SAFETY: a NUL-terminated image and a valid out-pointer.
    let r = unsafe { emu::cuModuleLoadData(&mut m, image.as_ptr() as *const c_void) };
    (r, m)
}

fn function(m: *mut c_void, name: &str) -> (u32, *mut c_void) {
    let name = CString::new(name).unwrap();
    let mut f = std::ptr::null_mut();
    // SAFETY: valid module handle, name and out-pointer.
    let r = unsafe { emu::cuModuleGetFunction(&mut f, m, name.as_ptr()) };
    (r, f)
}

/// Launches `f` with one block of 256 threads and the given argument pointers.
fn launch(f: *mut c_void, s: *mut c_void, args: &mut [*mut c_void]) -> u32 {
    // SAFETY: `args` holds one pointer per kernel parameter, each to a value of its size.
    unsafe {
        emu::cuLaunchKernel(
            f,
            4,
            1,
            1,
            256,
            1,
            1,
            0,
            s,
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
}

fn upload(d: u64, data: &[u8]) {
    // SAFETY: `data` outlives the synchronous copy.
    let r = unsafe { emu::cuMemcpyHtoD_v2(d, data.as_ptr() as *const c_void, data.len()) };
    assert_cu!(r, CUDA_SUCCESS);
}

fn download(d: u64, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    // SAFETY: `out` holds `n` bytes.
    let r = unsafe { emu::cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, d, n) };
    assert_cu!(r, CUDA_SUCCESS);
    out
}

macro_rules! arg {
    ($v:expr) => {
        &mut $v as *mut _ as *mut c_void
    };
}

#[test]
fn kernels_are_found_by_name_and_compute_what_the_host_computes() {
    setup();
    let (r, m) = load(PTX);
    assert_cu!(r, CUDA_SUCCESS);
    let s = stream();
    let n = 10_001usize;
    let data: Vec<u8> = (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    let src = alloc(n);
    upload(src, &data);

    // Checksum: partial sums added into a zeroed accumulator, then finished.
    let sum = alloc(8);
    upload(sum, &0u64.to_le_bytes());
    let (r, partial) = function(m, "vramswap_checksum_partial");
    assert_cu!(r, CUDA_SUCCESS);
    let (r, finish) = function(m, "vramswap_checksum_finish");
    assert_cu!(r, CUDA_SUCCESS);
    let (mut a0, mut a1, mut a2) = (src, n as u64, sum);
    assert_cu!(
        launch(partial, s, &mut [arg!(a0), arg!(a1), arg!(a2)]),
        CUDA_SUCCESS
    );
    let (mut b0, mut b1) = (sum, n as u64);
    assert_cu!(launch(finish, s, &mut [arg!(b0), arg!(b1)]), CUDA_SUCCESS);
    // SAFETY: a stream made above.
    assert_cu!(unsafe { emu::cuStreamSynchronize(s) }, CUDA_SUCCESS);
    let got = u64::from_le_bytes(download(sum, 8).try_into().unwrap());
    assert_eq!(got, kernels::checksum(&data));

    // Fill.
    let (r, fill) = function(m, "vramswap_fill_u32");
    assert_cu!(r, CUDA_SUCCESS);
    let dst = alloc(n);
    let (mut f0, mut f1, mut f2) = (dst, n as u64, 0xDEAD_BEEFu32);
    assert_cu!(
        launch(fill, s, &mut [arg!(f0), arg!(f1), arg!(f2)]),
        CUDA_SUCCESS
    );
    // SAFETY: a stream made above.
    assert_cu!(unsafe { emu::cuStreamSynchronize(s) }, CUDA_SUCCESS);
    let mut want = vec![0u8; n];
    kernels::fill_u32(&mut want, 0xDEAD_BEEF);
    assert_eq!(download(dst, n), want);

    // Cast f32 -> bf16.
    let (r, cast) = function(m, "vramswap_cast");
    assert_cu!(r, CUDA_SUCCESS);
    let count = 1000usize;
    let floats: Vec<u8> = (0..count)
        .flat_map(|i| (i as f32 * 0.37 - 100.0).to_le_bytes())
        .collect();
    let x = alloc(count * 4);
    let y = alloc(count * 2);
    upload(x, &floats);
    let (mut c0, mut c1, mut c2, mut c3, mut c4) = (x, 0u32, y, 2u32, count as u64);
    let r = launch(
        cast,
        s,
        &mut [arg!(c0), arg!(c1), arg!(c2), arg!(c3), arg!(c4)],
    );
    assert_cu!(r, CUDA_SUCCESS);
    // SAFETY: a stream made above.
    assert_cu!(unsafe { emu::cuStreamSynchronize(s) }, CUDA_SUCCESS);
    let mut want = vec![0u8; count * 2];
    kernels::cast(
        &floats,
        vramswap_sim::CastType::F32,
        &mut want,
        vramswap_sim::CastType::BF16,
        count,
    );
    assert_eq!(download(y, count * 2), want);
    // An unknown type code is refused.
    let mut bad = 7u32;
    let r = launch(
        cast,
        s,
        &mut [arg!(c0), arg!(bad), arg!(c2), arg!(c3), arg!(c4)],
    );
    assert_cu!(r, CUDA_ERROR_INVALID_VALUE);

    destroy(s);
    for p in [src, sum, dst, x, y] {
        free(p);
    }
    // SAFETY: a module loaded above.
    assert_cu!(unsafe { emu::cuModuleUnload(m) }, CUDA_SUCCESS);
    assert_cu!(
        launch(
            fill,
            std::ptr::null_mut(),
            &mut [arg!(f0), arg!(f1), arg!(f2)]
        ),
        CUDA_ERROR_INVALID_HANDLE
    );
}

#[test]
fn launches_are_checked_against_the_ptx_parameters_and_dimensions() {
    setup();
    let (r, m) = load(PTX);
    assert_cu!(r, CUDA_SUCCESS);
    let (r, _) = function(m, "vramswap_no_such_kernel");
    assert_cu!(r, CUDA_ERROR_NOT_FOUND);
    let (_, fill) = function(m, "vramswap_fill_u32");
    let dst = alloc(4096);
    let (mut f0, mut f1, mut f2) = (dst, 4096u64, 1u32);
    // SAFETY: the argument pointers are valid; the bad dimensions and lists are the point.
    unsafe {
        let mut args = [arg!(f0), arg!(f1), arg!(f2)];
        let p = args.as_mut_ptr();
        let null: *mut c_void = std::ptr::null_mut();
        let nul: *mut *mut c_void = std::ptr::null_mut();
        assert_cu!(
            emu::cuLaunchKernel(fill, 0, 1, 1, 256, 1, 1, 0, null, p, nul),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_cu!(
            emu::cuLaunchKernel(fill, 1, 1, 1, 0, 1, 1, 0, null, p, nul),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_cu!(
            emu::cuLaunchKernel(fill, 1, 1, 1, 2048, 1, 1, 0, null, p, nul),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_cu!(
            emu::cuLaunchKernel(fill, 1, 1, 1, 256, 1, 1, 0, null, nul, nul),
            CUDA_ERROR_INVALID_VALUE
        );
        let mut one_null = [arg!(f0), null, arg!(f2)];
        assert_cu!(
            emu::cuLaunchKernel(
                fill,
                1,
                1,
                1,
                256,
                1,
                1,
                0,
                null,
                one_null.as_mut_ptr(),
                nul
            ),
            CUDA_ERROR_INVALID_VALUE
        );

        // The `extra` form: a packed buffer whose size must match the PTX parameters
        // (u64, u64, u32 = 20 bytes).
        let mut buf = [0u8; 24];
        buf[..8].copy_from_slice(&dst.to_le_bytes());
        buf[8..16].copy_from_slice(&4096u64.to_le_bytes());
        buf[16..20].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        let run = |size: usize| {
            let mut size = size;
            let mut extra = [
                std::ptr::without_provenance_mut::<c_void>(1),
                buf.as_ptr() as *mut c_void,
                2usize as *mut c_void,
                &mut size as *mut usize as *mut c_void,
                std::ptr::null_mut(),
            ];
            emu::cuLaunchKernel(fill, 1, 1, 1, 256, 1, 1, 0, null, nul, extra.as_mut_ptr())
        };
        assert_cu!(run(16), CUDA_ERROR_INVALID_VALUE);
        assert_cu!(run(40), CUDA_ERROR_INVALID_VALUE);
        assert_cu!(run(20), CUDA_SUCCESS);
        assert_cu!(emu::cuCtxSynchronize(), CUDA_SUCCESS);
        let out = download(dst, 8);
        assert_eq!(out, [4, 3, 2, 1, 4, 3, 2, 1]);

        // A kernel the PTX declares but the emulator does not implement.
        let (r, other) = function(m, "not_emulated");
        assert_cu!(r, CUDA_SUCCESS);
        let mut x = 0u64;
        let mut a = [arg!(x)];
        assert_cu!(
            emu::cuLaunchKernel(other, 1, 1, 1, 1, 1, 1, 0, null, a.as_mut_ptr(), nul),
            CUDA_ERROR_NOT_SUPPORTED
        );
        // A launch touching memory that is not allocated fails like an illegal address.
        let (mut g0, mut g1, mut g2) = (0xdead_0000u64, 64u64, 0u32);
        let mut a = [arg!(g0), arg!(g1), arg!(g2)];
        assert_cu!(
            emu::cuLaunchKernel(fill, 1, 1, 1, 1, 1, 1, 0, null, a.as_mut_ptr(), nul),
            CUDA_ERROR_ILLEGAL_ADDRESS
        );
        assert_cu!(emu::cuModuleUnload(m), CUDA_SUCCESS);
        assert_cu!(emu::cuModuleUnload(m), CUDA_ERROR_INVALID_HANDLE);
    }
    free(dst);
}

#[test]
fn images_that_are_not_the_projects_ptx_are_refused() {
    setup();
    // A project kernel with parameters other than the kernel ABI's.
    let drifted = PTX.replace(
        ".param .u32 vramswap_fill_u32_param_2",
        ".param .u64 vramswap_fill_u32_param_2",
    );
    assert_cu!(load(&drifted).0, CUDA_ERROR_INVALID_PTX);
    assert_cu!(load("hello, not a module").0, CUDA_ERROR_INVALID_IMAGE);
    let mut m = std::ptr::null_mut();
    let elf = *b"\x7fELF\x02\x01\x01\0";
    // SAFETY: an 8-byte image; the loader reads its magic only.
    let r = unsafe { emu::cuModuleLoadData(&mut m, elf.as_ptr() as *const c_void) };
    assert_cu!(r, CUDA_ERROR_NOT_SUPPORTED);
    let parsed = emu::module::parse_ptx(PTX).unwrap();
    let names: Vec<_> = parsed.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "vramswap_checksum_partial",
            "vramswap_checksum_finish",
            "vramswap_fill_u32",
            "vramswap_cast",
            "not_emulated"
        ]
    );
    assert_eq!(parsed.entries[3].params, [8, 4, 8, 4, 8]);
}

#[test]
fn unloading_a_module_under_queued_launches_is_reported_as_misuse() {
    setup();
    let reported = || {
        emu::report_json()
            .matches("while 1 stream(s) still had launches")
            .count()
    };
    let before = reported();
    let n = 1usize << 20;
    let s = stream();
    let dst = alloc(n);
    let mut host = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    assert_cu!(
        unsafe { emu::cuMemHostAlloc(&mut host, n, 0) },
        CUDA_SUCCESS
    );
    for wait_first in [true, false] {
        let (r, m) = load(PTX);
        assert_cu!(r, CUDA_SUCCESS);
        let (r, fill) = function(m, "vramswap_fill_u32");
        assert_cu!(r, CUDA_SUCCESS);
        // A pinned copy at the test device's 10 MB/s keeps the stream busy for 100 ms, so the
        // launch behind it is still queued when the module goes.
        // SAFETY: `host` holds `n` bytes and lives until the synchronisation below.
        let r = unsafe { emu::cuMemcpyHtoDAsync_v2(dst, host, n, s) };
        assert_cu!(r, CUDA_SUCCESS);
        let (mut a0, mut a1, mut a2) = (dst, n as u64, 7u32);
        assert_cu!(
            launch(fill, s, &mut [arg!(a0), arg!(a1), arg!(a2)]),
            CUDA_SUCCESS
        );
        if wait_first {
            // SAFETY: a stream made above.
            assert_cu!(unsafe { emu::cuStreamSynchronize(s) }, CUDA_SUCCESS);
        }
        // SAFETY: the module loaded above.
        assert_cu!(unsafe { emu::cuModuleUnload(m) }, CUDA_SUCCESS);
        let want = before + usize::from(!wait_first);
        assert_eq!(reported(), want, "{}", emu::report_json());
    }
    destroy(s);
    // SAFETY: no copy uses `host` any more (the stream was synchronised).
    assert_cu!(unsafe { emu::cuMemFreeHost(host) }, CUDA_SUCCESS);
    free(dst);
}
