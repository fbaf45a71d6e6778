//! The committed C header `ffi/include/vramswap.h` is what cbindgen generates from `src/capi/`
//! and `ffi/cbindgen.toml` now. Regenerate it with
//! `VRAMSWAP_BLESS_HEADER=1 cargo test --test capi_header`.

use std::path::Path;

const HEADER: &str = "ffi/include/vramswap.h";

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("ffi/cbindgen.toml"))
        .expect("ffi/cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn committed_header_matches_cbindgen_output() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(HEADER);
    let fresh = generate();
    if std::env::var_os("VRAMSWAP_BLESS_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write the header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()))
            + 1;
        panic!(
            "{HEADER} is stale (first difference at line {line}): the C API in src/capi/ or \
             ffi/cbindgen.toml changed. Regenerate it with\n    \
             VRAMSWAP_BLESS_HEADER=1 cargo test --test capi_header\nand commit it."
        );
    }
}

#[test]
fn header_declares_the_stable_core() {
    let h = generate();
    for decl in [
        "} vramswap_status;",
        "VRAMSWAP_OK = 0,",
        "typedef enum vramswap_backend_kind {",
        "typedef struct vramswap_context vramswap_context;",
        "typedef struct vramswap_guard vramswap_guard;",
        "vramswap_status vramswap_context_create(vramswap_backend_kind backend,",
        "vramswap_status vramswap_context_destroy(vramswap_context *ctx);",
        "vramswap_status vramswap_malloc(vramswap_context *ctx,",
        "vramswap_status vramswap_free(vramswap_context *ctx, void *ptr);",
        "const char *vramswap_last_error_message(void);",
        "void *vramswap_torch_malloc(ssize_t size, int device, void *stream);",
        "void vramswap_torch_free(void *ptr, ssize_t size, int device, void *stream);",
        "#ifdef __cplusplus",
        "extern \"C\" {",
    ] {
        assert!(h.contains(decl), "the header lacks `{decl}`:\n{h}");
    }
}
