//! The shell scripts never pipe a command into a reader that stops early.
//!
//! Under `set -o pipefail`, `producer | grep -q PATTERN` (or `| head`, `| grep -m N`) fails at
//! random: the reader exits at its first match, the producer dies of SIGPIPE, and the pipeline
//! reports the producer's failure. `scripts/test.sh` failed 7 runs in 40 that way (issue 20). The
//! scripts capture the producer's output first and search the captured text instead.

use std::path::{Path, PathBuf};

/// Every script CI or a user runs: `scripts/*.sh` and `.ci/run`.
fn scripts() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    out.push(root.join(".ci/run"));
    out.sort();
    out
}

/// The early-exiting reader a line pipes into, if any: `grep -q`, `grep -m`, `head`.
fn early_reader(line: &str) -> Option<&'static str> {
    let code = line.split('#').next().unwrap_or("");
    // Pipe stages after the first; `||` is not a pipe.
    let code = code.replace("||", " ");
    code.split('|').skip(1).find_map(|stage| {
        let words: Vec<&str> = stage.split_whitespace().collect();
        match words.as_slice() {
            ["head", ..] => Some("head"),
            ["grep", flags @ ..] if flags.iter().any(|f| is_quiet_or_max(f)) => Some("grep -q/-m"),
            _ => None,
        }
    })
}

fn is_quiet_or_max(flag: &str) -> bool {
    flag.starts_with('-') && !flag.starts_with("--") && (flag.contains('q') || flag.contains('m'))
        || flag == "--quiet"
        || flag.starts_with("--max-count")
}

#[test]
fn the_detector_catches_the_pattern_that_failed() {
    assert_eq!(
        early_reader(r#"if ! ldd "$X" | grep -q "$Y"; then"#),
        Some("grep -q/-m")
    );
    assert_eq!(
        early_reader("nm -D lib.so | grep -qF cuInit"),
        Some("grep -q/-m")
    );
    assert_eq!(
        early_reader("cargo build | sed s/a/b/ | head -n1 || true"),
        Some("head")
    );
    assert_eq!(early_reader(r#"if ! grep -q x <<<"$OUT"; then"#), None);
    assert_eq!(early_reader("a || b"), None);
    assert_eq!(early_reader("du -sm x | cut -f1"), None);
}

#[test]
fn no_script_pipes_into_a_reader_that_stops_early() {
    let mut found = Vec::new();
    for script in scripts() {
        let text = std::fs::read_to_string(&script).unwrap();
        for (i, line) in text.lines().enumerate() {
            if let Some(reader) = early_reader(line) {
                found.push(format!(
                    "{}:{}: pipes into {reader}: {line}",
                    script.display(),
                    i + 1
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "capture the producer's output first (VAR=\"$(cmd)\"; grep -q x <<<\"$VAR\"):\n{}",
        found.join("\n")
    );
}
