//! Grammars for constrained decoding (structured outputs, tool calls), compiled by llguidance
//! against the model's own vocabulary. `GrammarCompiler` is built once per model (the token trie
//! of every token's bytes, special tokens marked as llguidance expects) and compiles a `Grammar`
//! into a fresh per-sequence `Constraint`. What always holds: a grammar that compiles here is the
//! one the sequence is held to; one that does not is refused before it is queued, with
//! llguidance's reason (an unsupported JSON-schema keyword is named in it).

use super::constraint::Constraint;
use crate::error::{Error, Result};
use crate::model::Model;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use std::sync::Arc;

/// What a sequence's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON schema (`{"type": "object"}` for plain JSON objects).
    JsonSchema(Value),
    /// A regular expression (the whole output matches it).
    Regex(String),
    /// One of these strings, exactly.
    Choice(Vec<String>),
    /// A Lark grammar in llguidance's dialect (may embed `%json {...}` schemas).
    Lark(String),
}

/// The model's vocabulary as llguidance sees it, and the real tokenizer for text it tokenizes.
struct ModelTokEnv {
    trie: TokTrie,
    model: Arc<Model>,
}

impl TokenizerEnv for ModelTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match self.model.tokenizer() {
            Ok(t) => t
                .encode_plain(&String::from_utf8_lossy(s))
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles grammars for one model; cheap to share (`Arc`), built once (~100 ms for 49k tokens).
pub struct GrammarCompiler {
    factory: ParserFactory,
}

impl GrammarCompiler {
    pub fn new(model: &Arc<Model>) -> Result<Self> {
        let tok = model.tokenizer()?;
        let json: Value = serde_json::from_str(&tok.to_hf_json()?)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| Error::Tokenizer(format!("vocabulary for grammars: {e}")))?;
        // The logits rows are the model's vocabulary: pad (tokens the tokenizer never yields).
        let vocab = model.config().vocab_size;
        if words.len() > vocab {
            return Err(Error::Tokenizer(format!(
                "tokenizer has {} tokens, the model {vocab}",
                words.len()
            )));
        }
        words.resize(vocab, Vec::new());
        let eos = *model.eos_ids.first().ok_or_else(|| {
            Error::unsupported("model", "no end-of-sequence token: grammars need one")
        })?;
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, eos), &words)
            .with_eos_tokens(&model.eos_ids);
        let env: TokEnv = Arc::new(ModelTokEnv {
            trie,
            model: model.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::Internal(format!("grammar compiler: {e}")))?;
        factory.quiet();
        Ok(GrammarCompiler { factory })
    }

    /// The bytes grammars see for `ids` (a special token as its text).
    pub fn token_bytes(&self, ids: &[u32]) -> Vec<u8> {
        self.factory.tok_env().tok_trie().decode(ids)
    }

    /// Compiles `g` into a fresh constraint; `param` names the request field for a refusal.
    pub fn compile(&self, g: &Grammar, param: &str) -> Result<Constraint> {
        let top = match g {
            Grammar::JsonSchema(s) => TopLevelGrammar::from_json_schema(compact_json(s)),
            Grammar::Regex(r) => TopLevelGrammar::from_regex(r),
            Grammar::Choice(c) => TopLevelGrammar::from_lark(choice_lark(c)),
            Grammar::Lark(l) => TopLevelGrammar::from_lark(l.clone()),
        };
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| Error::invalid(param, format!("grammar not supported: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::invalid(param, format!("grammar not supported: {e}")));
        }
        Ok(Constraint::new(matcher))
    }
}

/// Compact separators and no free whitespace, unless the schema says otherwise (`x-guidance`):
/// a small model given free whitespace may emit it until `max_tokens` and never close the JSON.
fn compact_json(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(obj) = s.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
        });
    }
    s
}

/// A Lark grammar matching exactly one of `choices`.
pub fn choice_lark(choices: &[String]) -> String {
    let alts: Vec<String> = choices
        .iter()
        .map(|c| serde_json::to_string(c).expect("a string serializes"))
        .collect();
    format!("start: {}", alts.join(" | "))
}
