//! Gives the emulated driver the ELF soname `libcuda.so`, so that once it is loaded (by path,
//! through `VRAMSWAP_CUDA_DRIVER`), the dynamic loader resolves `dlopen("libcuda.so")` to it.
//! The file itself stays `libvramswap_cuda_emu.so`: nothing named `libcuda.so*` is ever written
//! into `target/`, where it could shadow a real driver on `LD_LIBRARY_PATH`.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
