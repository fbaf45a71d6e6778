//! Shared memory for sets: an anonymous memory file (`memfd_create`), filled once, then sealed
//! so that nobody, the store included, can write, grow or shrink it again. Clients map it
//! read-only; a sealed file cannot be mapped writable, so one client cannot change the bytes
//! another computes with.

use std::fs::File;
use std::os::fd::OwnedFd;

use memmap2::{Mmap, MmapMut, MmapOptions};
use rustix::fs::{MemfdFlags, SealFlags};

/// A new shared memory file of `bytes` bytes (zeros), named `vramswap:NAME` in `/proc/*/maps`.
pub(crate) fn create(name: &str, bytes: u64) -> std::io::Result<File> {
    let label: String = format!("vramswap:{name}")
        .chars()
        .filter(|c| *c != '\0')
        .take(200)
        .collect();
    let fd: OwnedFd = rustix::fs::memfd_create(
        label.as_str(),
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, bytes)?;
    Ok(File::from(fd))
}

/// Maps `file` writable, to fill it.
pub(crate) fn map_mut(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: the file is a memory file this process made and has not sealed yet; nobody else
    // maps it writable (clients get it only after `seal`, which refuses writable mappings).
    unsafe { MmapMut::map_mut(file) }
}

/// Maps `file` read-only, its page tables filled at once (`MAP_POPULATE`): the pages exist
/// already (the store filled them), and one call that maps them all costs less than a fault
/// per 4 KiB on the first copy.
pub(crate) fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the file is sealed against writes, growing and shrinking (`seal`) before anyone
    // maps it read-only, so the mapped bytes never change and never vanish under the mapping.
    unsafe { MmapOptions::new().populate().map(file) }
}

/// Seals `file`: no more writes, no resizing, no more seals. Fails (`EBUSY`) while a writable
/// shared mapping of it exists anywhere.
pub(crate) fn seal(file: &File) -> std::io::Result<()> {
    rustix::fs::fcntl_add_seals(
        file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(())
}

/// Whether `file` carries the seals of [`seal`] (a client checks what the store handed it).
pub(crate) fn is_sealed(file: &File) -> bool {
    rustix::fs::fcntl_get_seals(file).is_ok_and(|s| {
        s.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_file_keeps_its_bytes_and_refuses_writers() {
        let f = create("test", 4096).unwrap();
        {
            let mut m = map_mut(&f).unwrap();
            m[..4].copy_from_slice(b"abcd");
            // A writable mapping blocks the seal.
            assert!(seal(&f).is_err());
        }
        assert!(!is_sealed(&f));
        seal(&f).unwrap();
        assert!(is_sealed(&f));
        assert_eq!(&map(&f).unwrap()[..4], b"abcd");
        assert!(map_mut(&f).is_err(), "no writable mapping after the seal");
        assert!(rustix::fs::ftruncate(&f, 0).is_err(), "no shrinking");
    }
}
