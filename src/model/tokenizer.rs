//! Text <-> token ids. HF folders use their `tokenizer.json`; GGUF models get a byte-level BPE
//! rebuilt from `tokenizer.ggml.*` with the pre-tokenizer named by `tokenizer.ggml.pre`
//! (`smollm` splits every digit and adds no prefix space), so ids match the HF tokenizer exactly.

use crate::error::{Error, Result};
use std::collections::HashSet;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special_ids: HashSet<u32>,
}

const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::file("tokenizer.json", path, e))?;
        Ok(Self::wrap(inner))
    }

    fn wrap(inner: tokenizers::Tokenizer) -> Self {
        let special_ids = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        Tokenizer { inner, special_ids }
    }

    /// Builds a byte-level BPE tokenizer from GGUF `tokenizer.ggml.*` metadata.
    /// `token_types` follow llama.cpp: 3 = control, 4 = user-defined (both become added tokens).
    pub fn from_gguf_parts(
        model: &str,
        pre: &str,
        tokens: Vec<String>,
        merges: Vec<String>,
        token_types: Option<Vec<f64>>,
        bos: Option<u32>,
        add_bos: bool,
    ) -> Result<Self> {
        if model != "gpt2" {
            return Err(Error::unsupported("tokenizer.ggml.model", format!("`{model}` (only gpt2-style byte-level BPE is rebuilt from GGUF; load an HF folder with tokenizer.json instead)")));
        }
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tok: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "gpt2" | "default" => byte_level.into(),
            "llama-bpe" | "llama3" | "qwen2" => {
                let pattern = if pre == "qwen2" {
                    QWEN2_PATTERN
                } else {
                    LLAMA3_PATTERN
                };
                let split = Split::new(
                    SplitPattern::Regex(pattern.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(tok_err)?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
            other => {
                return Err(Error::unsupported(
                    "tokenizer.ggml.pre",
                    format!("`{other}` (supported: smollm, gpt2, llama-bpe, qwen2)"),
                ))
            }
        };
        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i as u32);
        }
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("bad merge `{m}`")))
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = match &token_types {
            Some(types) => tokens
                .iter()
                .zip(types)
                .filter(|(_, &t)| t == 3.0 || t == 4.0)
                .map(|(s, &t)| AddedToken::from(s.clone(), t == 3.0))
                .collect(),
            None => vec![],
        };
        inner.add_special_tokens(&specials);
        if add_bos {
            if let Some(bos) = bos {
                let name = tokens.get(bos as usize).cloned().unwrap_or_default();
                let tp = tokenizers::processors::template::TemplateProcessing::builder()
                    .try_single(format!("{name} $A"))
                    .and_then(|b| b.try_pair(format!("{name} $A {name} $B")))
                    .map_err(tok_err)?
                    .special_tokens(vec![(name.clone(), bos)])
                    .build()
                    .map_err(tok_err)?;
                inner.with_post_processor(Some(tp));
            }
        }
        Ok(Self::wrap(inner))
    }

    /// Encodes text; special-token strings in the text map to their ids (as in chat templates).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The longest token in the vocabulary, in characters of its vocabulary string (for byte-level
    /// BPE one character per byte it covers): no token covers more characters of input text, so a
    /// text of `c` characters encodes to at least `c / max_token_chars()` tokens (before any
    /// normalizer, which the caller allows for).
    pub fn max_token_chars(&self) -> usize {
        self.inner
            .get_vocab(true)
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(1)
            .max(1)
    }
}
