use std::sync::{Arc, Mutex};

use half::{bf16, f16};
use proptest::prelude::*;

use super::*;
use crate::arena::{ArenaConfig, PinnedArena};
use crate::backend::sim::SimBackend;

fn setup() -> (Arc<SimBackend>, Arc<PinnedArena>) {
    let b = Arc::new(SimBackend::with_capacity(1 << 30));
    let a = PinnedArena::new(
        b.clone(),
        ArenaConfig {
            slab_size: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    (b, a)
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A tiny two-layer model: embeddings, two layers, a head, one I64 tensor.
fn model() -> Vec<(String, DType, Vec<u64>, Vec<u8>)> {
    let mut out = vec![
        (
            "model.embed_tokens.weight".to_string(),
            DType::F32,
            vec![4, 3],
            f32s(&[0.5; 12]),
        ),
        (
            "lm_head.weight".into(),
            DType::F32,
            vec![3, 4],
            f32s(&[1.25; 12]),
        ),
        (
            "position_ids".into(),
            DType::I64,
            vec![2],
            [7i64, 9].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    ];
    for l in 0..2 {
        let v: Vec<f32> = (0..6).map(|i| (l * 10 + i) as f32 + 0.1).collect();
        out.push((
            format!("model.layers.{l}.mlp.weight"),
            DType::F32,
            vec![2, 3],
            f32s(&v),
        ));
    }
    out
}

fn write(path: &Path, tensors: &[(String, DType, Vec<u64>, Vec<u8>)]) {
    let refs: Vec<(&str, DType, &[u64], &[u8])> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    save(path, &refs).unwrap();
}

#[test]
fn single_file_loads_every_tensor_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    write(&file, &model());
    let (_b, arena) = setup();
    let w = load(&file, &arena, &LoadOptions::default()).unwrap();
    for (name, dtype, shape, bytes) in model() {
        assert_eq!(w.tensor(&name).unwrap(), &bytes[..], "{name}");
        let t = w.desc().find(&name).unwrap();
        assert_eq!((t.dtype, &t.shape), (dtype, &shape));
    }
    let layers = w.desc().layers();
    assert_eq!(layers.len(), 3);
    assert_eq!(layers[1].name, "model.layers.0");
    assert!(arena.stats().used_bytes > 0);
    drop(w);
    assert_eq!(arena.stats().used_bytes, 0);
}

#[test]
fn sharded_checkpoint_with_index_loads_as_one_set() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    write(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &m[..2],
    );
    write(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &m[2..],
    );
    let mut map = serde_json::Map::new();
    for (i, (name, ..)) in m.iter().enumerate() {
        let shard = if i < 2 { 1 } else { 2 };
        map.insert(
            name.clone(),
            format!("model-0000{shard}-of-00002.safetensors").into(),
        );
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.path().join(INDEX_FILE), index.to_string()).unwrap();
    let (_b, arena) = setup();
    let w = load(dir.path(), &arena, &LoadOptions::default()).unwrap();
    assert_eq!(w.desc().tensors.len(), m.len());
    for (name, _, _, bytes) in &m {
        assert_eq!(w.tensor(name).unwrap(), &bytes[..]);
    }
    assert_eq!(w.segments().len(), 1, "one contiguous arena range");
    let insp = inspect(dir.path()).unwrap();
    assert_eq!(insp.files.len(), 2);
}

#[test]
fn directory_of_shards_without_index_loads_as_one_set() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    write(&dir.path().join("a.safetensors"), &m[..3]);
    write(&dir.path().join("b.safetensors"), &m[3..]);
    let (_b, arena) = setup();
    let w = load(dir.path(), &arena, &LoadOptions::default()).unwrap();
    assert_eq!(w.desc().tensors.len(), m.len());
}

#[test]
fn cast_to_bf16_converts_floats_and_keeps_integers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    write(&file, &model());
    let (_b, arena) = setup();
    let opts = LoadOptions {
        cast: Some(DType::BF16),
        ..Default::default()
    };
    let w = load(&file, &arena, &opts).unwrap();
    let t = w.desc().find("lm_head.weight").unwrap();
    assert_eq!((t.dtype, t.len), (DType::BF16, 24));
    let got = w.tensor("model.layers.1.mlp.weight").unwrap();
    let want: Vec<u8> = (0..6)
        .flat_map(|i| bf16::from_f32((10 + i) as f32 + 0.1).to_le_bytes())
        .collect();
    assert_eq!(got, &want[..]);
    assert_eq!(w.desc().find("position_ids").unwrap().dtype, DType::I64);
    let back = LoadOptions {
        cast: Some(DType::F16),
        ..Default::default()
    };
    let h = load(&file, &arena, &back).unwrap();
    let e = h.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!(&e[..2], &f16::from_f32(0.5).to_le_bytes());
}

#[test]
fn progress_reaches_the_total_on_the_calling_thread() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.safetensors");
    let big = vec![3u8; 20 << 20];
    save(&file, &[("x", DType::U8, &[20 << 20], &big)]).unwrap();
    let (_b, arena) = setup();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let caller = std::thread::current().id();
    let opts = LoadOptions {
        progress: Some(Arc::new(move |p: LoadProgress| {
            assert_eq!(std::thread::current().id(), caller);
            s2.lock().unwrap().push(p);
        })),
        threads: 3,
        ..Default::default()
    };
    let w = load(&file, &arena, &opts).unwrap();
    let seen = seen.lock().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(
        (last.bytes_done, last.bytes_total),
        (20 << 20, w.total_bytes())
    );
    assert!(seen.windows(2).all(|p| p[0].bytes_done <= p[1].bytes_done));
    assert!(w.tensor("x").unwrap().iter().all(|&x| x == 3));
}

#[test]
fn direct_mode_registers_the_mapping_read_only_and_unregisters_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    write(&dir.path().join("a.safetensors"), &m[..3]);
    write(&dir.path().join("b.safetensors"), &m[3..]);
    let (b, arena) = setup();
    let opts = LoadOptions {
        direct: true,
        ..Default::default()
    };
    let w = load(dir.path(), &arena, &opts).unwrap();
    assert!(w.is_direct());
    assert_eq!(
        arena.stats().pinned_bytes,
        0,
        "nothing copied into the arena"
    );
    assert_eq!(b.device().leaks().registered_ranges, 2);
    for (name, _, _, bytes) in &m {
        assert_eq!(w.tensor(name).unwrap(), &bytes[..], "{name}");
    }
    assert_eq!(w.segments().len(), 2);
    drop(w);
    assert_eq!(b.device().leaks().registered_ranges, 0);
}

#[test]
fn direct_mode_with_a_cast_is_refused() {
    let (_b, arena) = setup();
    let opts = LoadOptions {
        direct: true,
        cast: Some(DType::F16),
        ..Default::default()
    };
    assert!(matches!(
        load(Path::new("nowhere"), &arena, &opts),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn header_round_trips_through_encode_and_parse() {
    let t = vec![HeaderTensor {
        name: "a".into(),
        dtype: DType::F16,
        shape: vec![2, 2],
        begin: 0,
        end: 8,
    }];
    let mut file = encode_header(&t, &[("k".to_string(), "v".to_string())].into());
    file.extend_from_slice(&[0; 8]);
    let h = parse_header(&file).unwrap();
    assert_eq!(h.tensors, t);
    assert_eq!(h.metadata["k"], "v");
    assert_eq!(h.data_len, 8);
}

fn valid_file() -> Vec<u8> {
    let t: Vec<HeaderTensor> = (0..3u64)
        .map(|i| HeaderTensor {
            name: format!("t{i}"),
            dtype: DType::F32,
            shape: vec![2],
            begin: i * 8,
            end: i * 8 + 8,
        })
        .collect();
    let mut f = encode_header(&t, &BTreeMap::new());
    f.extend_from_slice(&[1; 24]);
    f
}

proptest! {
    /// Random bytes never panic the parser.
    #[test]
    fn parser_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_header(&bytes);
    }

    /// A valid file with bytes flipped, inserted or cut never panics the parser, and whatever it
    /// accepts is in bounds and free of overlaps.
    #[test]
    fn parser_never_panics_on_mutated_headers(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut f = valid_file();
        for (at, byte, kind) in edits {
            let i = at.index(f.len());
            match kind {
                0 => f[i] = byte,
                1 => f.insert(i, byte),
                _ => { f.remove(i); }
            }
        }
        let n = f.len();
        if cut.index(4) == 0 { f.truncate(cut.index(n + 1)); }
        if let Ok(h) = parse_header(&f) {
            prop_assert_eq!(h.data_start + h.data_len, f.len() as u64);
            for t in &h.tensors {
                prop_assert!(t.begin <= t.end && t.end <= h.data_len);
            }
        }
    }
}

#[test]
fn header_only_file_loads_as_an_empty_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.safetensors");
    save(&file, &[]).unwrap();
    let (_b, arena) = setup();
    let w = load(&file, &arena, &LoadOptions::default()).unwrap();
    assert_eq!((w.total_bytes(), w.desc().tensors.len()), (0, 0));
    assert_eq!(arena.stats().slabs, 0);
}

#[test]
fn failed_registration_in_direct_mode_unregisters_the_files_already_registered() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    write(&dir.path().join("a.safetensors"), &m[..3]);
    write(&dir.path().join("b.safetensors"), &m[3..]);
    let (b, arena) = setup();
    b.inject_fault(vramswap_sim::FaultOp::HostRegister, 2);
    let opts = LoadOptions {
        direct: true,
        ..Default::default()
    };
    assert!(load(dir.path(), &arena, &opts).is_err());
    assert_eq!(b.device().leaks().registered_ranges, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any set of tensors saved and loaded comes back byte for byte, in either mode.
    #[test]
    fn saved_tensors_load_back_byte_for_byte(
        tensors in proptest::collection::btree_map(
            "(model\\.layers\\.[0-3]\\.)?[a-z]{1,6}",
            (0usize..4, proptest::collection::vec(0u64..40, 0..3), any::<u8>()),
            0..12,
        ),
        direct in any::<bool>(),
    ) {
        let dtypes = [DType::U8, DType::BF16, DType::F32, DType::I64];
        let owned: Vec<(String, DType, Vec<u64>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, (d, shape, seed))| {
                let dtype = dtypes[d];
                let len = crate::weights::byte_len(dtype, &shape).unwrap() as usize;
                let bytes = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
                (n, dtype, shape, bytes)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.safetensors");
        write(&file, &owned);
        let (b, arena) = setup();
        let opts = LoadOptions { direct, threads: 2, ..Default::default() };
        let w = load(&file, &arena, &opts).unwrap();
        prop_assert_eq!(w.desc().tensors.len(), owned.len());
        for (name, dtype, shape, bytes) in &owned {
            prop_assert_eq!(w.tensor(name).unwrap(), &bytes[..]);
            let t = w.desc().find(name).unwrap();
            prop_assert_eq!((t.dtype, &t.shape), (*dtype, shape));
        }
        drop(w);
        prop_assert_eq!(arena.stats().used_bytes, 0);
        prop_assert_eq!(b.device().leaks().registered_ranges, 0);
    }
}
