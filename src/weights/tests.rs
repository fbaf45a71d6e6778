use std::sync::Arc;

use super::*;
use crate::arena::{ArenaConfig, PinnedArena};
use crate::backend::sim::SimBackend;

fn spec(name: &str, dtype: DType, shape: &[u64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

#[test]
fn layer_prefixes_of_common_model_families_are_recognised() {
    assert_eq!(
        layer_of("model.layers.12.mlp.up_proj.weight"),
        Some(("model.layers", 12))
    );
    assert_eq!(
        layer_of("transformer.h.0.attn.c_attn.weight"),
        Some(("transformer.h", 0))
    );
    assert_eq!(
        layer_of("layers.3.attention.wq.weight"),
        Some(("layers", 3))
    );
    assert_eq!(layer_of("blocks.7.norm1.weight"), Some(("blocks", 7)));
    assert_eq!(
        layer_of("encoder.layer.5.output.dense.bias"),
        Some(("encoder.layer", 5))
    );
    assert_eq!(layer_of("model.embed_tokens.weight"), None);
    assert_eq!(layer_of("lm_head.weight"), None);
    assert_eq!(layer_of("model.layers.norm"), None);
}

#[test]
fn layout_makes_each_layer_one_aligned_contiguous_range() {
    let desc = WeightSetDesc::layout(vec![
        spec("model.layers.10.w", DType::F16, &[3, 5]),
        spec("model.layers.2.b", DType::F32, &[7]),
        spec("lm_head.weight", DType::BF16, &[4, 4]),
        spec("model.layers.2.a", DType::U8, &[1]),
        spec("model.embed_tokens.weight", DType::F32, &[10, 2]),
    ])
    .unwrap();
    for t in &desc.tensors {
        assert_eq!(t.offset % TENSOR_ALIGN, 0, "{}", t.name);
    }
    let layers = desc.layers();
    let names: Vec<_> = layers.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["other", "model.layers.2", "model.layers.10"]);
    for w in layers.windows(2) {
        assert!(w[0].end <= w[1].start, "groups are disjoint and in order");
    }
    assert_eq!(layers[1].tensor_indices.len(), 2);
    assert_eq!(desc.total_bytes, layers[2].end);
    assert_eq!(desc.find("model.layers.10.w").unwrap().len, 30);
}

#[test]
fn new_rejects_overlap_bad_length_out_of_bounds_and_duplicates() {
    let t = |name: &str, offset, len| TensorInfo {
        name: name.into(),
        dtype: DType::U8,
        shape: vec![len],
        offset,
        len,
    };
    let e = WeightSetDesc::new(vec![t("a", 0, 10), t("b", 5, 10)], 100).unwrap_err();
    assert!(e.to_string().contains("overlap"), "{e}");
    let e = WeightSetDesc::new(vec![t("a", 95, 10)], 100).unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");
    let e = WeightSetDesc::new(vec![t("a", 0, 1), t("a", 10, 1)], 100).unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
    let mut bad = t("a", 0, 10);
    bad.shape = vec![11];
    let e = WeightSetDesc::new(vec![bad], 100).unwrap_err();
    assert!(e.to_string().contains("needs 11 bytes"), "{e}");
}

#[test]
fn from_arrays_copies_each_tensor_and_zeroes_padding() {
    let b = Arc::new(SimBackend::with_capacity(1 << 30));
    let arena = PinnedArena::new(b.clone(), ArenaConfig::default()).unwrap();
    let a: Vec<u8> = (0..12).collect();
    let c = [9u8; 3];
    let w = HostWeights::from_arrays(
        &arena,
        vec![
            ("layers.0.a".into(), DType::F32, vec![3], &a),
            ("emb".into(), DType::U8, vec![3], &c),
        ],
    )
    .unwrap();
    assert_eq!(w.tensor("layers.0.a").unwrap(), &a[..]);
    assert_eq!(w.tensor("emb").unwrap(), &c[..]);
    let all = w.host_range().unwrap().as_slice();
    assert!(all[3..256].iter().all(|&x| x == 0));
    assert_eq!(w.segments().len(), 1);
    let e = HostWeights::from_arrays(&arena, vec![("x".into(), DType::F16, vec![3], &c)]);
    assert!(e.is_err());
    drop(w);
    assert_eq!(arena.stats().used_bytes, 0);
}

mod layout_properties {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..6, 0u8..4).prop_map(|(l, w)| format!("model.layers.{l}.w{w}")),
            (0u64..3, 0u8..3).prop_map(|(l, w)| format!("transformer.h.{l}.p{w}")),
            (0u8..5).prop_map(|w| format!("embed{w}")),
        ]
    }

    proptest! {
        /// Whatever the tensors, a laid-out set validates, every tensor is aligned, and the layer
        /// groups are disjoint, in order, and each covers only its own tensors.
        #[test]
        fn layout_groups_are_contiguous_aligned_and_disjoint(
            specs in proptest::collection::btree_map(name(), (0usize..4, proptest::collection::vec(0u64..9, 0..3)), 0..30)
        ) {
            let dtypes = [DType::U8, DType::F16, DType::F32, DType::F64];
            let specs: Vec<TensorSpec> = specs
                .into_iter()
                .map(|(n, (d, shape))| TensorSpec { name: n, dtype: dtypes[d], shape })
                .collect();
            let desc = WeightSetDesc::layout(specs.clone()).unwrap();
            prop_assert_eq!(desc.tensors.len(), specs.len());
            prop_assert!(validate(&desc.tensors, desc.total_bytes).is_ok());
            let groups = desc.layers();
            for t in &desc.tensors {
                prop_assert_eq!(t.offset % TENSOR_ALIGN, 0);
            }
            for w in groups.windows(2) {
                prop_assert!(w[0].end <= w[1].start);
            }
            for g in &groups {
                for (i, t) in desc.tensors.iter().enumerate() {
                    let inside = t.len > 0 && t.offset >= g.start && t.end() <= g.end;
                    if inside {
                        prop_assert!(g.tensor_indices.contains(&i), "{} inside {}", t.name, g.name);
                    }
                }
            }
        }
    }
}

#[test]
fn weight_sets_and_ranges_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<HostWeights>();
    send_sync::<crate::arena::HostRange>();
    send_sync::<crate::arena::PinnedArena>();
}
