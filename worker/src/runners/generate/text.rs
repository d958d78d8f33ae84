//! Turning generated tokens into text as they come: whole UTF-8 characters only, and
//! stop strings cut out even when they span several tokens.
//!
//! A byte-level BPE token can end in the middle of a multi-byte character, and a token's
//! text can depend on its neighbours, so each step decodes a short window of recent tokens
//! and emits what it adds to the previous window's text (the approach of Hugging Face's
//! text-generation-inference). Text that could still turn into a stop string is held back
//! until it either completes one (generation stops; the stop string is not output) or
//! cannot any more.

use std::sync::Arc;

use tokenizers::Tokenizer;

/// The text of one generation, so far.
pub struct TextStream {
    tokenizer: Arc<Tokenizer>,
    tokens: Vec<u32>,
    /// Tokens before `prefix` are already in `text`; `prefix..read` is the decoding window.
    prefix: usize,
    read: usize,
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    stops: Vec<String>,
}

/// What one more token added.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// Text ready to send (may be empty).
    pub text: String,
    /// A stop string appeared; generation must end.
    pub stopped: bool,
}

impl TextStream {
    pub fn new(tokenizer: Arc<Tokenizer>, stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self { tokenizer, tokens: Vec::new(), prefix: 0, read: 0, text: String::new(), sent: 0, stops }
    }

    pub fn push(&mut self, token: u32) -> anyhow::Result<Step> {
        self.tokens.push(token);
        let decode = |tokens: &[u32]| self.tokenizer.decode(tokens, true).map_err(|e| anyhow::anyhow!("decode: {e}"));
        let before = decode(&self.tokens[self.prefix..self.read])?;
        let after = decode(&self.tokens[self.prefix..])?;
        // An incomplete character decodes as U+FFFD; wait for the token that completes it.
        if after.len() > before.len() && !after.ends_with('\u{fffd}') {
            self.text.push_str(&after[before.len()..]);
            self.prefix = self.read;
            self.read = self.tokens.len();
        }
        Ok(self.release())
    }

    /// Everything not yet sent, at the end of generation (held-back text included).
    pub fn finish(&mut self) -> String {
        let rest = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        rest
    }

    /// All text output so far, without any stop string.
    pub fn text(&self) -> &str {
        &self.text[..self.sent]
    }

    fn release(&mut self) -> Step {
        let pending = &self.text[self.sent..];
        // A stop string ends the text where it starts.
        let search_from = floor_char_boundary(&self.text, self.sent.saturating_sub(self.longest_stop()));
        let found = self.stops.iter().filter_map(|s| self.text[search_from..].find(s.as_str())).min();
        if let Some(at) = found {
            let end = (search_from + at).max(self.sent);
            let text = self.text[self.sent..end].to_string();
            self.text.truncate(end);
            self.sent = end;
            return Step { text, stopped: true };
        }
        // Hold back the longest tail that is the start of some stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(pending.len() + 1))
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n) && pending.ends_with(&stop[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        let text = self.text[self.sent..end].to_string();
        self.sent = end;
        Step { text, stopped: false }
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    /// A byte-level tokenizer with one token per byte: "é" takes two tokens.
    fn bytes_tokenizer() -> Tokenizer {
        let vocab: tokenizers::models::bpe::Vocab =
            ByteLevel::alphabet().into_iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
        let mut t = Tokenizer::new(BPE::builder().vocab_and_merges(vocab, vec![]).build().unwrap());
        t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        t.with_decoder(Some(ByteLevel::default()));
        t
    }

    fn run(text: &str, stops: &[&str]) -> (Vec<String>, bool, String) {
        let tokenizer = Arc::new(bytes_tokenizer());
        let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        let mut stream = TextStream::new(tokenizer, stops.iter().map(|s| s.to_string()).collect());
        let mut chunks = Vec::new();
        for id in ids {
            let step = stream.push(id).unwrap();
            if !step.text.is_empty() {
                chunks.push(step.text);
            }
            if step.stopped {
                return (chunks, true, stream.text().to_string());
            }
        }
        let rest = stream.finish();
        if !rest.is_empty() {
            chunks.push(rest);
        }
        (chunks, false, stream.text().to_string())
    }

    #[test]
    fn chunks_are_whole_characters() {
        let (chunks, stopped, text) = run("né 日本", &[]);
        assert!(!stopped);
        assert_eq!(text, "né 日本");
        assert_eq!(chunks, ["n", "é", " ", "日", "本"]);
    }

    #[test]
    fn stop_string_across_tokens_is_cut_out() {
        let (chunks, stopped, text) = run("Hello END world", &["END"]);
        assert!(stopped);
        assert_eq!(text, "Hello ");
        assert_eq!(chunks.concat(), "Hello ");
    }

    #[test]
    fn a_partial_stop_is_released_when_it_cannot_complete() {
        let (chunks, stopped, text) = run("an ENd", &["END"]);
        assert!(!stopped);
        assert_eq!(text, "an ENd");
        assert!(chunks.contains(&"ENd".to_string()), "{chunks:?}");
    }
}
