//! Incremental detokenization with stop strings. Text is released only once it is final: a
//! token that ends mid-UTF-8 waits for the next, and any tail that could still grow into a stop
//! string is held back. A matched stop string and everything after it is never released.

use crate::model::Tokenizer;

#[derive(Default)]
pub struct Detokenizer {
    prefix_offset: usize,
    read_offset: usize,
    /// Decoded text not yet released (may be the start of a stop string).
    held: String,
}

pub enum TextStep {
    /// Release this text and continue.
    Continue(String),
    /// A stop string matched: release this text and finish.
    Stopped(String),
}

impl Detokenizer {
    /// Feeds the output ids so far (the newest last).
    pub fn step(&mut self, tok: Option<&Tokenizer>, output: &[u32], stop: &[String]) -> TextStep {
        if let Some(tok) = tok {
            let prefix = tok
                .decode(&output[self.prefix_offset..self.read_offset], true)
                .unwrap_or_default();
            let full = tok
                .decode(&output[self.prefix_offset..], true)
                .unwrap_or_default();
            if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
                if let Some(new) = full.get(prefix.len()..) {
                    self.held.push_str(new);
                    self.prefix_offset = self.read_offset;
                    self.read_offset = output.len();
                }
            }
        }
        if let Some(at) = stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return TextStep::Stopped(out);
        }
        // Hold back the longest tail that is a proper prefix of some stop string.
        let hold = stop
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .map(move |n| &s[..n])
            })
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - hold;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        TextStep::Continue(out)
    }

    /// Releases whatever is held (the sequence ended for another reason).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}
