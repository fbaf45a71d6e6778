//! Tokenizers: `tokenizer.json` through the `tokenizers` crate, and the byte-level one that
//! [`super::new_model`] writes.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Special tokens of the byte-level tokenizer, after the 256 byte tokens: `<s>` = 256,
/// `</s>` = 257, `<pad>` = 258.
pub const BYTE_SPECIALS: [&str; 3] = ["<s>", "</s>", "<pad>"];

/// A loaded `tokenizer.json`.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` at `path`.
    pub fn from_file(path: &Path) -> Result<TextTokenizer> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| Error::Malformed {
            path: path.to_path_buf(),
            problem: format!("not a tokenizer.json the tokenizers crate can load: {e}"),
        })?;
        Ok(TextTokenizer { inner })
    }

    /// Id of a token string, when the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Prompt ids as transformers 5's `tokenizer(text).input_ids` gives them: the text's tokens
    /// with the special tokens `tokenizer.json`'s post-processor adds (none without one).
    /// transformers 5 decides by the post-processor alone when there is a `tokenizer.json`: it
    /// drops `tokenizer_config.json`'s `add_bos_token` / `add_eos_token` when loading one
    /// (`tokenization_utils_base`), so those flags are not read here either.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::InvalidArgument(format!("cannot tokenize {text:?}: {e}")))
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::InvalidArgument(format!("cannot tokenize {text:?}: {e}")))
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::InvalidArgument(format!("cannot decode {ids:?}: {e}")))
    }

    /// Tokens the tokenizer knows, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// GPT-2's reversible map from bytes to printable characters, which the `ByteLevel`
/// pre-tokenizer and decoder use.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(&chars) {
        out[*b as usize] = char::from_u32(*c).unwrap_or('\u{FFFD}');
    }
    out
}

/// A byte-level BPE `tokenizer.json` with no merges: token `b` is byte `b` (0..256), then the
/// specials `<s>`, `</s>` and `<pad>` (256-258), then `<extra_N>` specials up to `vocab`
/// tokens. Its post-processor puts `<s>` before a prompt. Any text round-trips.
pub fn byte_level_tokenizer_json(vocab: usize) -> Result<String> {
    let min = 256 + BYTE_SPECIALS.len();
    if vocab < min {
        return Err(Error::InvalidArgument(format!(
            "a byte-level tokenizer needs a vocabulary of at least {min} tokens, not {vocab}"
        )));
    }
    let chars = byte_chars();
    let v: serde_json::Map<String, serde_json::Value> = chars
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
        .collect();
    let added: Vec<serde_json::Value> = (256..vocab)
        .map(|id| {
            let content = BYTE_SPECIALS
                .get(id - 256)
                .map_or_else(|| format!("<extra_{}>", id - min), |s| s.to_string());
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": false, "use_regex": false});
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [256], "tokens": ["<s>"]}}},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": v, "merges": []}
    });
    Ok(serde_json::to_string_pretty(&json).expect("a JSON value serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_tokenizer_round_trips_any_text_one_token_per_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, byte_level_tokenizer_json(300).unwrap()).unwrap();
        let t = TextTokenizer::from_file(&p).unwrap();
        assert_eq!(t.vocab_size(), 300);
        let text = "Hé llo,\n wörld ✓";
        let ids = t.encode(text).unwrap();
        assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
        assert_eq!(t.decode(&ids).unwrap(), text);
        // Specials are skipped when decoding.
        assert_eq!(t.decode(&[256, 104, 105, 257, 299]).unwrap(), "hi");
        // The post-processor adds BOS to prompts.
        assert_eq!(t.encode_prompt("hi").unwrap(), vec![256, 104, 105]);
    }

    #[test]
    fn too_small_a_vocabulary_is_an_error() {
        assert!(byte_level_tokenizer_json(100).is_err());
    }
}
