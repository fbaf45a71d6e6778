//! Every malformed checkpoint gets its own error naming the file and the problem, leaves no
//! arena range and no registration behind, in copy and in direct mode, and never panics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vramswap::arena::{ArenaConfig, PinnedArena};
use vramswap::backend::sim::SimBackend;
use vramswap::load::{inspect, load, LoadOptions, INDEX_FILE};
use vramswap::Error;

/// A file: the 8-byte length of `json`, `json`, then `data` zero bytes.
fn raw(json: &str, data: usize) -> Vec<u8> {
    let mut f = (json.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(json.as_bytes());
    f.extend(std::iter::repeat_n(0u8, data));
    f
}

/// Writes `bytes` as `m.safetensors` in a fresh directory, loads it in both modes and inspects
/// it; every attempt must fail with `Malformed` naming the file and containing `problem`.
fn rejects(bytes: &[u8], problem: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    std::fs::write(&file, bytes).unwrap();
    rejects_path(&file, &file, problem);
}

fn rejects_path(path: &Path, named: &Path, problem: &str) {
    let b = Arc::new(SimBackend::with_capacity(1 << 30));
    let arena = PinnedArena::new(b.clone(), ArenaConfig::default()).unwrap();
    for direct in [false, true] {
        let opts = LoadOptions {
            direct,
            ..Default::default()
        };
        match load(path, &arena, &opts) {
            Err(Error::Malformed {
                path: p,
                problem: got,
            }) => {
                assert_eq!(p, named, "error names the file at fault");
                assert!(got.contains(problem), "`{got}` does not say `{problem}`");
                let line = Error::Malformed {
                    path: p,
                    problem: got,
                }
                .to_string();
                assert!(!line.contains('\n'), "one line: {line}");
            }
            other => panic!("expected a malformed-file error, got {other:?}"),
        }
        assert_eq!(arena.stats().used_bytes, 0, "no arena range left behind");
        assert_eq!(
            b.device().leaks().registered_ranges,
            0,
            "no registration left behind"
        );
    }
    assert!(matches!(inspect(path), Err(Error::Malformed { .. })));
}

const OK_ENTRY: &str = r#""a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;

#[test]
fn empty_file_is_rejected() {
    rejects(&[], "file is empty");
}

#[test]
fn file_shorter_than_the_length_prefix_is_rejected() {
    rejects(
        &[1, 0, 0],
        "file is 3 bytes, too short for the 8-byte header length",
    );
}

#[test]
fn header_length_past_the_end_of_the_file_is_rejected() {
    let mut f = raw(&format!("{{{OK_ENTRY}}}"), 8);
    f[..8].copy_from_slice(&1000u64.to_le_bytes());
    rejects(&f, "header length 1000 bytes runs past the end of the file");
}

#[test]
fn header_larger_than_100_mb_is_rejected() {
    let mut f = raw("{}", 0);
    f[..8].copy_from_slice(&200_000_000u64.to_le_bytes());
    rejects(&f, "exceeds the limit of 100000000 bytes");
}

#[test]
fn invalid_json_is_rejected() {
    rejects(&raw(r#"{"a": {"dtype": "#, 0), "header is not valid JSON");
}

#[test]
fn unknown_dtype_is_rejected() {
    rejects(
        &raw(
            r#"{"w":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}"#,
            1,
        ),
        "tensor `w`: unknown dtype `F7`",
    );
}

#[test]
fn shape_disagreeing_with_the_byte_range_is_rejected() {
    rejects(
        &raw(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        ),
        "tensor `w`: shape [3] of F32 needs 12 bytes but data_offsets span 8",
    );
}

#[test]
fn offsets_past_the_data_are_rejected() {
    rejects(
        &raw(
            r#"{"w":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}}"#,
            8,
        ),
        "tensor `w`: data_offsets end at byte 16, past the end of the data section (8 bytes)",
    );
}

#[test]
fn overlapping_tensors_are_rejected() {
    rejects(
        &raw(
            r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}"#,
            12,
        ),
        "tensors `a` (bytes 0..8) and `b` (bytes 4..12) overlap",
    );
}

#[test]
fn duplicate_names_are_rejected() {
    rejects(
        &raw(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
            8,
        ),
        "tensor `a` is listed twice",
    );
}

#[test]
fn duplicate_names_across_shards_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let one = raw(&format!("{{{OK_ENTRY}}}"), 8);
    std::fs::write(dir.path().join("a.safetensors"), &one).unwrap();
    std::fs::write(dir.path().join("b.safetensors"), &one).unwrap();
    rejects_path(
        dir.path(),
        &dir.path().join("b.safetensors"),
        "tensor `a` is also in",
    );
}

#[test]
fn index_naming_a_missing_shard_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model-1.safetensors"),
        raw(&format!("{{{OK_ENTRY}}}"), 8),
    )
    .unwrap();
    let index = r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}"#;
    let index_path: PathBuf = dir.path().join(INDEX_FILE);
    std::fs::write(&index_path, index).unwrap();
    rejects_path(
        dir.path(),
        &index_path,
        "names shard `model-2.safetensors`, which does not exist",
    );
}

#[test]
fn index_mapping_a_tensor_to_a_shard_without_it_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model-1.safetensors"),
        raw(&format!("{{{OK_ENTRY}}}"), 8),
    )
    .unwrap();
    let index_path: PathBuf = dir.path().join(INDEX_FILE);
    std::fs::write(
        &index_path,
        r#"{"weight_map": {"zz": "model-1.safetensors"}}"#,
    )
    .unwrap();
    rejects_path(dir.path(), &index_path, "maps tensor `zz`");
}

#[test]
fn header_that_is_not_an_object_is_rejected() {
    rejects(&raw("[1, 2]", 0), "header is not a JSON object");
}

/// A header of more tensors than one file may hold (1.4 million one-byte tensors fit under the
/// 100 MB header cap and cost 2.4 GB of RAM to parse) is refused at the limit, naming it; one at
/// the limit loads.
#[test]
fn a_header_of_too_many_tensors_is_refused_naming_the_limit() {
    use vramswap::load::MAX_TENSORS;
    let header = |n: usize| {
        let entries: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#""t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
                    i + 1
                )
            })
            .collect();
        format!("{{{}}}", entries.join(","))
    };
    rejects(
        &raw(&header(MAX_TENSORS + 1), MAX_TENSORS + 1),
        &format!("more than {MAX_TENSORS} tensors"),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    std::fs::write(&file, raw(&header(MAX_TENSORS), MAX_TENSORS)).unwrap();
    assert_eq!(inspect(&file).unwrap().sources.len(), MAX_TENSORS);
}

#[test]
fn entry_missing_its_offsets_is_rejected() {
    rejects(
        &raw(r#"{"w":{"dtype":"U8","shape":[1]}}"#, 1),
        "tensor `w`: no data_offsets",
    );
}

#[test]
fn budget_too_small_for_a_valid_file_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    let big = vec![1u8; 3 << 20];
    vramswap::load::save(
        &file,
        &[("x", vramswap::weights::DType::U8, &[3 << 20], &big)],
    )
    .unwrap();
    let b = Arc::new(SimBackend::with_capacity(1 << 30));
    let arena = PinnedArena::new(
        b.clone(),
        ArenaConfig {
            budget: Some(2 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    let e = load(&file, &arena, &LoadOptions::default()).unwrap_err();
    assert!(matches!(e, Error::HostBudgetExceeded { .. }), "{e}");
    assert_eq!(arena.stats().used_bytes, 0);
    assert_eq!(b.device().leaks().pinned_bytes, 0);
}
