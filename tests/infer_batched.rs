//! Batched generation over the swap engine: weights come from an acquired set, and greedy
//! batched output equals greedy one-prompt-at-a-time output, token for token, over several
//! batch shapes and models; bad model directories give clear errors.
#![cfg(feature = "infer")]

use std::path::Path;
use std::sync::Arc;

use vramswap::backend::sim::SimBackend;
use vramswap::infer::{
    argmax, generate, new_model, Device, GenerateOptions, KvCache, Llama, LlamaParams, ModelDir,
    Sampling, StopReason, TinyModelSpec,
};
use vramswap::swap::{SwapConfig, SwapEngine};

fn engine() -> SwapEngine {
    SwapEngine::new(
        Arc::new(SimBackend::with_capacity(256 << 20)),
        SwapConfig::default(),
    )
    .unwrap()
}

/// Writes a model, registers it, acquires it and builds the candle model from the guard.
fn model(dir: &Path, spec: &TinyModelSpec) -> (ModelDir, Llama) {
    new_model(dir, spec).unwrap();
    let md = ModelDir::open(dir).unwrap();
    let e = engine();
    md.register(&e, "m").unwrap();
    let g = e.acquire("m").unwrap();
    let params = LlamaParams::build(&md.config, &g, &Device::Cpu).unwrap();
    let m = Llama::new(md.config.clone(), params, &Device::Cpu).unwrap();
    (md, m)
}

/// Whether two rows of logits are equal bit for bit (not merely within rounding).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn specs() -> Vec<TinyModelSpec> {
    vec![
        // Grouped-query attention, untied head.
        TinyModelSpec {
            layers: 2,
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            seed: 1,
            ..Default::default()
        },
        // One key/value head, tied embeddings, a different rope base is in the config below.
        TinyModelSpec {
            layers: 1,
            hidden: 48,
            heads: 6,
            kv_heads: 1,
            tie_embeddings: true,
            seed: 2,
            ..Default::default()
        },
        // Full multi-head attention.
        TinyModelSpec {
            layers: 2,
            hidden: 32,
            heads: 2,
            kv_heads: 2,
            seed: 3,
            ..Default::default()
        },
    ]
}

const PROMPTS: [&str; 6] = [
    "a",
    "hello there",
    "The quick brown fox",
    "xy",
    "12345678901",
    "é✓",
];

#[test]
fn greedy_batched_output_equals_one_prompt_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    for (k, spec) in specs().iter().enumerate() {
        let (md, m) = model(&tmp.path().join(format!("m{k}")), spec);
        let ids: Vec<Vec<u32>> = PROMPTS
            .iter()
            .map(|p| md.encode_prompt(p).unwrap())
            .collect();
        let opts = GenerateOptions {
            max_new_tokens: 6,
            ..Default::default()
        };
        let serial: Vec<Vec<u32>> = ids
            .iter()
            .map(|p| {
                generate(&m, std::slice::from_ref(p), &opts).unwrap()[0]
                    .tokens
                    .clone()
            })
            .collect();
        // A model that says the same thing whatever the prompt would make this test vacuous.
        let distinct: std::collections::BTreeSet<&Vec<u32>> = serial.iter().collect();
        assert!(
            distinct.len() >= 4,
            "model {k} barely depends on its prompt: {serial:?}"
        );
        // Different rows stop at different times only through stop tokens: pick one that
        // row 0 produces so that batches lose rows on the way.
        for shape in [
            vec![0, 1],
            vec![2, 0, 3],
            vec![5, 4, 3, 2, 1, 0],
            vec![1, 1, 2],
        ] {
            let batch: Vec<Vec<u32>> = shape.iter().map(|&i| ids[i].clone()).collect();
            let out = generate(&m, &batch, &opts).unwrap();
            for (row, &i) in shape.iter().enumerate() {
                assert_eq!(
                    out[row].tokens, serial[i],
                    "model {k}, batch {shape:?}, row {row}"
                );
            }
        }
    }
}

/// The guarantee under the token-for-token equality, checked directly: on the CPU a row's
/// logits have the same bits in a padded batch as alone, at the prompt and at every decode step
/// (the batch-invariant linear and attention kernels), for a model big enough that the linears
/// take the threaded path at the prompt.
#[test]
fn batched_logits_have_the_same_bits_as_one_prompt_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = specs();
    all.push(TinyModelSpec {
        layers: 2,
        hidden: 256,
        heads: 8,
        kv_heads: 4,
        intermediate: 688,
        seed: 4,
        ..Default::default()
    });
    for (n, spec) in all.iter().enumerate() {
        let (md, m) = model(&tmp.path().join(format!("b{n}")), spec);
        let ids: Vec<Vec<u32>> = PROMPTS
            .iter()
            .map(|p| md.encode_prompt(p).unwrap())
            .collect();
        let longest = ids.iter().map(Vec::len).max().unwrap();
        let pads: Vec<usize> = ids.iter().map(|p| longest - p.len()).collect();
        let padded: Vec<Vec<u32>> = ids
            .iter()
            .map(|p| [vec![0u32; longest - p.len()], p.clone()].concat())
            .collect();
        let mut batch_cache = KvCache::new();
        let mut alone_caches: Vec<KvCache> = ids.iter().map(|_| KvCache::new()).collect();
        let mut batch = m.forward(&padded, &pads, &mut batch_cache).unwrap();
        let mut alone: Vec<_> = ids
            .iter()
            .zip(&mut alone_caches)
            .map(|(p, c)| m.forward(std::slice::from_ref(p), &[0], c).unwrap())
            .collect();
        for step in 0..4 {
            let rows = batch.to_vec2::<f32>().unwrap();
            let mut next = Vec::new();
            for (r, a) in alone.iter().enumerate() {
                let a = a.to_vec2::<f32>().unwrap();
                assert!(
                    same_bits(&rows[r], &a[0]),
                    "model {n}, step {step}, row {r}: batched logits differ from the row alone"
                );
                next.push(vec![argmax(&a[0])]);
            }
            batch = m.forward(&next, &pads, &mut batch_cache).unwrap();
            alone = next
                .iter()
                .zip(&mut alone_caches)
                .map(|(t, c)| m.forward(std::slice::from_ref(t), &[0], c).unwrap())
                .collect();
        }
    }
}

/// The KV cache grows by doubling past its first 64 slots: decoding a sequence one token at a
/// time, through two growths, gives at every position the same logits bits as one prompt pass
/// over the sequence up to there (different code paths, the same per-row arithmetic), for a
/// padded batch too.
#[test]
fn token_by_token_decoding_through_cache_growth_matches_one_prompt_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = model(&tmp.path().join("g"), &specs()[0]);
    let seq: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % 250).collect();
    let short: Vec<u32> = seq[..100].to_vec();
    // Row 0: the whole sequence; row 1: its first 100 tokens, left-padded by 50.
    let mut cache = KvCache::new();
    let mut per_pos = Vec::new();
    let pads = [0usize, 50];
    let first = vec![vec![seq[0]], vec![0]];
    let mut logits = m.forward(&first, &pads, &mut cache).unwrap();
    per_pos.push(logits.to_vec2::<f32>().unwrap());
    for p in 1..seq.len() {
        let row1 = if p >= 50 { short[p - 50] } else { 0 };
        logits = m
            .forward(&[vec![seq[p]], vec![row1]], &pads, &mut cache)
            .unwrap();
        per_pos.push(logits.to_vec2::<f32>().unwrap());
    }
    assert_eq!(cache.slots(), 150);
    for end in [1usize, 63, 64, 65, 100, 128, 129, 150] {
        let mut c = KvCache::new();
        let whole = m.forward(&[seq[..end].to_vec()], &[0], &mut c).unwrap();
        let whole = whole.to_vec2::<f32>().unwrap();
        let step = &per_pos[end - 1][0];
        assert!(
            same_bits(&whole[0], step),
            "position {end}: decoding token by token differs from one pass"
        );
        if end > 50 {
            let mut c = KvCache::new();
            let alone = m
                .forward(&[short[..end - 50].to_vec()], &[0], &mut c)
                .unwrap();
            let alone = alone.to_vec2::<f32>().unwrap();
            assert!(
                same_bits(&alone[0], &per_pos[end - 1][1]),
                "position {end}: the padded row differs from its sequence alone"
            );
        }
    }
}

/// A step that fails (here: a batch of the wrong size for the cache) is an error and leaves
/// the cache as it was: the next good step gives the same logits as a cache that never failed.
#[test]
fn a_failed_step_leaves_the_cache_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, m) = model(&tmp.path().join("f"), &specs()[0]);
    let prompt = vec![vec![5u32, 6, 7], vec![8, 9, 10]];
    let (mut good, mut bad) = (KvCache::new(), KvCache::new());
    m.forward(&prompt, &[0, 0], &mut good).unwrap();
    m.forward(&prompt, &[0, 0], &mut bad).unwrap();
    let err = m
        .forward(&[vec![1], vec![2], vec![3]], &[0, 0, 0], &mut bad)
        .unwrap_err();
    assert!(err.to_string().contains("rows"), "{err}");
    assert_eq!(bad.slots(), 3);
    let next = [vec![11u32], vec![12]];
    let a = m.forward(&next, &[0, 0], &mut good).unwrap();
    let b = m.forward(&next, &[0, 0], &mut bad).unwrap();
    assert_eq!(
        a.to_vec2::<f32>().unwrap(),
        b.to_vec2::<f32>().unwrap(),
        "the cache changed after a failed step"
    );
}

#[test]
fn stop_tokens_and_per_row_budgets_end_rows_without_changing_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, m) = model(tmp.path(), &specs()[0]);
    let ids: Vec<Vec<u32>> = PROMPTS[..4]
        .iter()
        .map(|p| md.encode_prompt(p).unwrap())
        .collect();
    let free = generate(
        &m,
        &ids,
        &GenerateOptions {
            max_new_tokens: 8,
            ..Default::default()
        },
    )
    .unwrap();
    // Stop row 0 at its third token; give row 1 a budget of 2.
    let stop = free[0].tokens[2];
    let opts = GenerateOptions {
        max_new_tokens: 8,
        max_new_per_row: Some(vec![8, 2, 8, 8]),
        stop_tokens: vec![stop],
        sampling: Sampling::Greedy,
    };
    let out = generate(&m, &ids, &opts).unwrap();
    let first_stop = free[0].tokens.iter().position(|&t| t == stop).unwrap();
    assert_eq!(out[0].tokens, free[0].tokens[..=first_stop]);
    assert_eq!(out[0].stop, StopReason::StopToken);
    assert_eq!(out[1].tokens, free[1].tokens[..2]);
    assert_eq!(out[1].stop, StopReason::Length);
    for r in 2..4 {
        let cut = free[r]
            .tokens
            .iter()
            .position(|&t| t == stop)
            .map_or(8, |p| p + 1);
        assert_eq!(out[r].tokens, free[r].tokens[..cut]);
    }
}

#[test]
fn seeded_sampling_repeats_and_does_not_depend_on_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, m) = model(tmp.path(), &specs()[0]);
    let ids: Vec<Vec<u32>> = PROMPTS[..3]
        .iter()
        .map(|p| md.encode_prompt(p).unwrap())
        .collect();
    let sampling = Sampling::Sample {
        temperature: 1.5,
        top_p: 0.9,
        seed: 42,
    };
    let opts = GenerateOptions {
        max_new_tokens: 8,
        sampling,
        ..Default::default()
    };
    let a = generate(&m, &ids, &opts).unwrap();
    let b = generate(&m, &ids, &opts).unwrap();
    assert_eq!(a, b);
    // Row 0 of a batch draws with seed 42; alone, it draws the same.
    let alone = generate(&m, &ids[..1], &opts).unwrap();
    assert_eq!(alone[0], a[0]);
    let greedy = generate(
        &m,
        &ids,
        &GenerateOptions {
            max_new_tokens: 8,
            ..Default::default()
        },
    )
    .unwrap();
    assert_ne!(
        a, greedy,
        "sampling at temperature 1.5 should leave the greedy path somewhere"
    );
}

#[test]
fn bad_model_directories_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    new_model(&dir, &specs()[0]).unwrap();
    // A config whose heads do not divide the hidden size.
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5"),
    )
    .unwrap();
    let e = ModelDir::open(&dir).unwrap_err().to_string();
    assert!(e.contains("num_attention_heads"), "{e}");
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(ModelDir::open(&dir)
        .unwrap_err()
        .to_string()
        .contains("config.json"));
    // A config that does not match the weights' shapes.
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 88", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let md = ModelDir::open(&dir).unwrap();
    let e = engine();
    md.register(&e, "m").unwrap();
    let g = e.acquire("m").unwrap();
    let err = LlamaParams::build(&md.config, &g, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gate_proj") && err.contains("shape"), "{err}");
    // Missing tokenizer.
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert!(ModelDir::open(&dir)
        .unwrap_err()
        .to_string()
        .contains("tokenizer.json"));
}

#[test]
fn prompts_longer_than_the_model_allows_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinyModelSpec {
        max_positions: 16,
        ..specs()[0].clone()
    };
    let (md, m) = model(tmp.path(), &spec);
    let ids = vec![md.encode_prompt("0123456789").unwrap()];
    let err = generate(
        &m,
        &ids,
        &GenerateOptions {
            max_new_tokens: 8,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    // A budget near usize::MAX is the same refusal, not an overflow.
    let err = generate(
        &m,
        &ids,
        &GenerateOptions {
            max_new_tokens: usize::MAX,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    let err = generate(&m, &[vec![]], &GenerateOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
}

/// A checkpoint holding a tensor the model does not read (here a q_proj bias in a Llama
/// without `attention_bias`) is refused, naming the tensor; with `attention_bias` true the
/// same model reads its biases, and one missing is named.
#[test]
fn tensors_nobody_reads_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    new_model(&dir, &specs()[0]).unwrap();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let cfg = ModelDir::open(&dir).unwrap().config;
    let q_out = cfg.num_attention_heads * cfg.head_dim();
    let bias = vec![0u8; q_out * 4];
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    tensors.push((
        "model.layers.0.self_attn.q_proj.bias".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![q_out], &bias).unwrap(),
    ));
    let out = safetensors::serialize(tensors, None).unwrap();
    std::fs::write(&path, out).unwrap();

    let build = |dir: &std::path::Path| {
        let md = ModelDir::open(dir).unwrap();
        let e = engine();
        md.register(&e, "m").unwrap();
        let g = e.acquire("m").unwrap();
        LlamaParams::build(&md.config, &g, &Device::Cpu).map(|_| ())
    };
    let err = build(&dir).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.0.self_attn.q_proj.bias") && err.contains("does not read"),
        "{err}"
    );
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["attention_bias"] = serde_json::Value::Bool(true);
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let err = build(&dir).unwrap_err().to_string();
    assert!(err.contains("self_attn.k_proj.bias"), "{err}");
}

/// `--chat` prompts: without a chat template a clear error; with one in
/// `tokenizer_config.json`, the rendered text tokenized without added specials (the template
/// writes BOS itself); `chat_template.jinja` takes priority, as in transformers 5.
#[test]
fn chat_prompts_render_the_models_template() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    new_model(&dir, &specs()[0]).unwrap();
    let e = ModelDir::open(&dir).unwrap().encode_chat("hi").unwrap_err();
    assert!(e.to_string().contains("no chat template"), "{e}");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"},
            "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"}"#,
    )
    .unwrap();
    let md = ModelDir::open(&dir).unwrap();
    let want: Vec<u32> = std::iter::once(256)
        .chain("[user]hi".bytes().map(u32::from))
        .chain(std::iter::once(257))
        .chain("[assistant]".bytes().map(u32::from))
        .collect();
    assert_eq!(md.encode_chat("hi").unwrap(), want);
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{{ messages[0].content | upper }}",
    )
    .unwrap();
    let md = ModelDir::open(&dir).unwrap();
    assert_eq!(
        md.encode_chat("hi").unwrap(),
        vec![u32::from(b'H'), u32::from(b'I')]
    );
}

#[test]
fn a_decode_step_reads_every_projection_and_the_head() {
    // What the CPU batch split weighs its groups by: here 2 layers of q, k, v, o (4 heads of
    // 8, 2 of them key/value heads), gate, up, down, and an untied head, in f32.
    let tmp = tempfile::tempdir().unwrap();
    let (md, m) = model(tmp.path(), &specs()[0]);
    let c = &md.config;
    let (h, hd, i) = (c.hidden_size, c.head_dim(), c.intermediate_size);
    let block = h * c.num_attention_heads * hd * 2 + 2 * h * c.kv_heads() * hd + 3 * h * i;
    assert_eq!(
        m.step_weight_bytes(),
        4 * (c.num_hidden_layers * block + c.vocab_size * h)
    );
}
