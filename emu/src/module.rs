//! Modules: the `.entry` kernels of a PTX image with their parameter sizes, and the kernels the
//! emulator can run (the project's kernel ABI, implemented by `vramswap_sim`).

/// One `.entry` of a PTX module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The kernel's name.
    pub name: String,
    /// Size in bytes of each `.param`, in order.
    pub params: Vec<usize>,
    /// Alignment in bytes of each `.param`, in order.
    pub aligns: Vec<usize>,
}

/// A loaded module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its kernels.
    pub entries: Vec<Entry>,
}

/// The kernels of the project's PTX module that the emulator runs, with their parameter
/// sizes: the kernel ABI shared with `kernels/`.
pub const KNOWN_KERNELS: &[(&str, &[usize])] = &[
    // (const u8* src, u64 len, u64* sum)
    ("vramswap_checksum_partial", &[8, 8, 8]),
    // (u64* sum, u64 len)
    ("vramswap_checksum_finish", &[8, 8]),
    // (u8* dst, u64 len, u32 pattern)
    ("vramswap_fill_u32", &[8, 8, 4]),
    // (const u8* src, u32 from, u8* dst, u32 to, u64 count)
    ("vramswap_cast", &[8, 4, 8, 4, 8]),
];

/// Size in bytes of a PTX scalar type (`.u64`, `.f32`, `.b8`, ...).
fn type_size(t: &str) -> Option<usize> {
    let t = t.strip_prefix('.')?;
    let bits: usize = t.get(1..)?.parse().ok()?;
    if !matches!(t.as_bytes()[0], b'u' | b's' | b'b' | b'f') || !matches!(bits, 8 | 16 | 32 | 64) {
        return None;
    }
    Some(bits / 8)
}

/// Parses one `.param` declaration (without the leading `.param`), e.g. `.u64 name`,
/// `.u64 .ptr .global .align 1 name`, `.align 8 .b8 name[16]`: returns (size, alignment).
fn parse_param(decl: &str) -> Result<(usize, usize), String> {
    let toks: Vec<&str> = decl.split_whitespace().collect();
    let mut elem = None;
    let mut align = None;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        if t == ".align" {
            align = toks.get(i + 1).and_then(|a| a.parse::<usize>().ok());
            i += 2;
            continue;
        }
        if elem.is_none() {
            if let Some(s) = type_size(t) {
                elem = Some(s);
            }
        }
        i += 1;
    }
    let elem = elem.ok_or_else(|| format!("`.param {decl}`: no scalar type"))?;
    let name = toks.last().copied().unwrap_or_default();
    let count = match (name.find('['), name.find(']')) {
        (Some(a), Some(b)) if b > a + 1 => name[a + 1..b]
            .parse::<usize>()
            .map_err(|_| format!("`.param {decl}`: bad array length"))?,
        _ => 1,
    };
    let size = elem * count;
    // A `.ptr .align N` qualifier states the alignment of the pointee, not of the parameter.
    let param_align = if count > 1 {
        align.unwrap_or(elem)
    } else {
        elem
    };
    Ok((size, param_align))
}

/// The first driver version (1000 * major + 10 * minor) that loads each PTX ISA version, from
/// the PTX ISA reference's release history ("PTX ISA Version" / "CUDA Release"). A driver JIT
/// compiles PTX up to its own CUDA version's ISA and refuses newer PTX with
/// `CUDA_ERROR_UNSUPPORTED_PTX_VERSION` ("the PTX was compiled with an unsupported
/// toolchain"): PTX from nvcc 13.0 (ISA 9.0) needs a CUDA 13.0 driver.
pub const PTX_ISA_DRIVERS: &[((u32, u32), i32)] = &[
    ((6, 5), 10020),
    ((7, 0), 11000),
    ((7, 1), 11010),
    ((7, 2), 11020),
    ((7, 3), 11030),
    ((7, 4), 11040),
    ((7, 5), 11050),
    ((7, 6), 11060),
    ((7, 7), 11070),
    ((7, 8), 11080),
    ((8, 0), 12000),
    ((8, 1), 12010),
    ((8, 2), 12020),
    ((8, 3), 12030),
    ((8, 4), 12040),
    ((8, 5), 12050),
    ((8, 6), 12070),
    ((8, 7), 12080),
    ((8, 8), 12090),
    ((9, 0), 13000),
    ((9, 1), 13010),
];

/// The ISA version of a PTX image: its `.version major.minor` directive.
pub fn ptx_isa_version(text: &str) -> Option<(u32, u32)> {
    let pos = text.find(".version")?;
    let v = text[pos + ".version".len()..].split_whitespace().next()?;
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The oldest driver version that loads PTX of ISA `isa`: `Some(0)` for ISAs older than the
/// table (every emulated driver loads them), `None` for one newer than the table (no driver the
/// emulator knows loads it).
pub fn driver_for_ptx_isa(isa: (u32, u32)) -> Option<i32> {
    if isa < PTX_ISA_DRIVERS[0].0 {
        return Some(0);
    }
    PTX_ISA_DRIVERS
        .iter()
        .find(|(v, _)| *v == isa)
        .map(|(_, d)| *d)
}

/// Parses the `.entry` kernels of a PTX text image.
pub fn parse_ptx(text: &str) -> Result<Module, String> {
    if !text.contains(".version") || !text.contains(".target") {
        return Err("not a PTX image: no .version / .target directive".into());
    }
    let mut entries = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find(".entry") {
        let after = &rest[pos + ".entry".len()..];
        if !after.starts_with(char::is_whitespace) {
            rest = after;
            continue;
        }
        let open = after
            .find('(')
            .ok_or_else(|| "`.entry` without a parameter list".to_string())?;
        let name = after[..open].trim().to_string();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("bad .entry name `{name}`"));
        }
        let close = after[open..]
            .find(')')
            .ok_or_else(|| format!(".entry {name}: unterminated parameter list"))?
            + open;
        let mut params = Vec::new();
        let mut aligns = Vec::new();
        for decl in after[open + 1..close].split(',') {
            let decl = decl.trim();
            if decl.is_empty() {
                continue;
            }
            let decl = decl
                .strip_prefix(".param")
                .ok_or_else(|| format!(".entry {name}: `{decl}` is not a .param"))?;
            let (size, align) = parse_param(decl).map_err(|e| format!(".entry {name}: {e}"))?;
            params.push(size);
            aligns.push(align);
        }
        entries.push(Entry {
            name,
            params,
            aligns,
        });
        rest = &after[close..];
    }
    // A kernel of the project's ABI with other parameters means the PTX and the emulator
    // disagree: refuse the image rather than misread arguments later.
    for e in &entries {
        if let Some((_, want)) = KNOWN_KERNELS.iter().find(|(n, _)| *n == e.name) {
            if e.params != *want {
                return Err(format!(
                    ".entry {}: parameters of {:?} bytes, the kernel ABI says {:?}",
                    e.name, e.params, want
                ));
            }
        }
    }
    Ok(Module { entries })
}
