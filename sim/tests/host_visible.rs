//! Host-visible simulated memory (`host_visible:true`): device addresses are host addresses,
//! mapped bytes are the set's bytes in place, and unmapped ranges fault on access.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use vramswap_sim::{parse_config, SimConfig, SimDevice};

fn device() -> SimDevice {
    let c = parse_config("host_visible:true,capacity_mb:64", SimConfig::default()).unwrap();
    assert!(c.host_visible);
    SimDevice::new(c)
}

/// Reserves, creates and maps `len` bytes, granting access; returns (va, handle).
fn mapped(dev: &SimDevice, len: u64) -> (u64, u64) {
    let va = dev.reserve(len, 0).unwrap();
    let h = dev.create(len).unwrap();
    dev.map(va, len, h, 0).unwrap();
    dev.set_access(va, len).unwrap();
    (va, h)
}

#[test]
fn config_key_is_strict_and_off_by_default() {
    assert!(!SimConfig::default().host_visible);
    let e = parse_config("host_visible:maybe", SimConfig::default()).unwrap_err();
    assert!(e.contains("host_visible") && e.contains("maybe"), "{e}");
}

#[test]
fn mapped_bytes_are_host_addressable_both_ways() {
    let dev = device();
    let g = dev.granularity();
    let (va, h) = mapped(&dev, 2 * g);
    let src: Vec<u8> = (0..2 * g).map(|i| (i * 7 % 251) as u8).collect();
    // SAFETY: `src` is a live host buffer of the copied length.
    unsafe { dev.copy_htod(va, src.as_ptr(), src.len() as u64, 0) }.unwrap();
    dev.synchronize().unwrap();
    // SAFETY: `va` is mapped read-write over `2 * g` bytes of host-visible memory.
    let seen = unsafe { std::slice::from_raw_parts(va as *const u8, src.len()) };
    assert_eq!(seen, &src[..]);
    // A host write through the device address is what the device then reads.
    // SAFETY: as above; no device work is in flight on the range.
    unsafe { *(va as *mut u8).add(5) = 0xAB };
    let mut back = vec![0u8; 8];
    // SAFETY: `back` is a live host buffer of the copied length.
    unsafe { dev.copy_dtoh(back.as_mut_ptr(), va, 8, 0) }.unwrap();
    dev.synchronize().unwrap();
    assert_eq!(back[5], 0xAB);
    dev.unmap(va, 2 * g).unwrap();
    dev.release(h).unwrap();
    dev.address_free(va, 2 * g).unwrap();
    assert!(dev.leaks().is_clean(), "{:?}", dev.leaks());
}

#[test]
fn plain_allocations_are_host_memory_and_capacity_holds() {
    let dev = device();
    let p = dev.alloc(1000).unwrap();
    // SAFETY: a live plain allocation of 1000 bytes on a host-visible device.
    unsafe { std::ptr::write_bytes(p as *mut u8, 3, 1000) };
    let mut back = [0u8; 4];
    // SAFETY: `back` is a live host buffer of the copied length.
    unsafe { dev.copy_dtoh(back.as_mut_ptr(), p + 996, 4, 0) }.unwrap();
    dev.synchronize().unwrap();
    assert_eq!(back, [3; 4]);
    let err = dev.alloc(65 << 20).unwrap_err();
    assert!(err.to_string().contains("out of memory"), "{err}");
    dev.free(p).unwrap();
}

#[test]
fn remapping_another_allocation_shows_its_bytes_not_stale_ones() {
    let dev = device();
    let g = dev.granularity();
    let (va, h1) = mapped(&dev, g);
    // SAFETY: mapped read-write above.
    unsafe { std::ptr::write_bytes(va as *mut u8, 0x11, g as usize) };
    dev.unmap(va, g).unwrap();
    let h2 = dev.create(g).unwrap();
    dev.map(va, g, h2, 0).unwrap();
    dev.set_access(va, g).unwrap();
    // SAFETY: mapped read-write again, now to a fresh (zeroed) allocation.
    let first = unsafe { *(va as *const u8) };
    assert_eq!(first, 0, "the new mapping shows the old allocation's bytes");
    dev.unmap(va, g).unwrap();
    // The first allocation kept its bytes while unmapped.
    dev.map(va, g, h1, 0).unwrap();
    dev.set_access(va, g).unwrap();
    // SAFETY: mapped read-write to the first allocation.
    assert_eq!(unsafe { *(va as *const u8).add(g as usize - 1) }, 0x11);
    dev.unmap(va, g).unwrap();
    dev.release(h1).unwrap();
    dev.release(h2).unwrap();
    dev.address_free(va, g).unwrap();
}

/// Runs in a child process only (`HV_CHILD` set): reads an unmapped range, which must fault.
#[test]
fn child_reads_unmapped_range() {
    let Ok(what) = std::env::var("HV_CHILD") else {
        return;
    };
    let dev = device();
    let g = dev.granularity();
    let (va, _h) = mapped(&dev, g);
    match what.as_str() {
        "unmapped" => dev.unmap(va, g).unwrap(),
        "not_granted" => {
            dev.unmap(va, g).unwrap();
            let h = dev.create(g).unwrap();
            dev.map(va, g, h, 0).unwrap();
        }
        _ => {}
    }
    // SAFETY: deliberately unsound in the "unmapped" cases: the read must fault, which the
    // parent test checks; in the "mapped" case the range is mapped read-write.
    let v = unsafe { std::ptr::read_volatile(va as *const u8) };
    println!("read {v}");
}

fn child(what: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_reads_unmapped_range", "--nocapture"])
        .env("HV_CHILD", what)
        .output()
        .unwrap()
        .status
}

#[test]
fn reading_unmapped_or_ungranted_memory_faults() {
    assert!(
        child("mapped").success(),
        "the control read of mapped memory failed"
    );
    for what in ["unmapped", "not_granted"] {
        let st = child(what);
        assert_eq!(
            st.signal(),
            Some(11),
            "{what}: expected SIGSEGV, got {st:?}"
        );
    }
}
