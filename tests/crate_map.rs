//! The crate-root diagram (`src/lib.rs`) and the README's code map name every module of the
//! crate, so a new module cannot be added without placing it in the picture.

use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names of `pub mod NAME;` items in `src/lib.rs`.
fn crate_modules() -> Vec<String> {
    let lib = read("src/lib.rs");
    let mods: Vec<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .filter_map(|rest| rest.strip_suffix(';'))
        .map(str::to_string)
        .collect();
    assert!(mods.len() >= 10, "found only {mods:?} in src/lib.rs");
    mods
}

/// The text of the first ```text block of the crate docs.
fn diagram() -> String {
    let lib = read("src/lib.rs");
    let docs: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    let start = docs
        .iter()
        .position(|l| l.trim() == "```text")
        .expect("a ```text diagram in the crate docs");
    let len = docs[start + 1..]
        .iter()
        .position(|l| l.trim() == "```")
        .expect("the diagram's closing fence");
    docs[start + 1..start + 1 + len].join("\n")
}

fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w == word)
}

#[test]
fn crate_root_diagram_shows_every_module() {
    let picture = diagram();
    let missing: Vec<String> = crate_modules()
        .into_iter()
        .filter(|m| !has_word(&picture, m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules missing from the diagram in src/lib.rs: {missing:?}"
    );
}

#[test]
fn readme_code_map_names_every_module() {
    let readme = read("README.md");
    let map = readme
        .split("## Code map")
        .nth(1)
        .expect("a `## Code map` section in README.md");
    let map = map.split("\n## ").next().unwrap_or(map);
    let missing: Vec<String> = crate_modules()
        .into_iter()
        .filter(|m| !has_word(map, m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules missing from the README's code map: {missing:?}"
    );
}
