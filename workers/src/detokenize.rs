//! Incremental detokenization: the new text each generated token adds, held
//! back while the tokens so far end inside a multi-byte character.

use prompt::{Tokenizer, TokenizerError};

/// What a replacement character looks like once byte-level decoding meets half a UTF-8 sequence.
const REPLACEMENT: char = '\u{FFFD}';

/// Turns a stream of token ids into a stream of text pieces.
///
/// Decoding each token alone is wrong twice over: a byte-level token may hold
/// half a character, and SentencePiece-style decoders drop a token's leading
/// space when it comes first. So each step decodes a short window of earlier
/// tokens plus the new ones and emits only what the new ones added.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Start of the context window: tokens before it are never decoded again.
    prefix_offset: usize,
    /// End of what has been emitted: tokens from here on are not yet text.
    read_offset: usize,
}

impl Detokenizer {
    /// Adds one token; returns the text it completes (empty while a character is incomplete).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() <= prefix.len() || full.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let Some(new) = full.get(prefix.len()..) else {
            // The context decoded differently with more tokens after it; wait for more.
            return Ok(String::new());
        };
        let new = new.to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(new)
    }

    /// Whatever is still held back, as best it decodes; called once the sequence ends.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let mut d = Detokenizer::default();
        let mut out: Vec<String> = ids.iter().map(|&id| d.push(tok, id).unwrap()).collect();
        out.push(d.flush(tok).unwrap());
        out
    }

    #[test]
    fn pieces_concatenate_to_the_text() {
        let tok = Tokenizer::builtin().unwrap();
        for text in [
            "The rain grows heavier through the afternoon.",
            "naïve café — 日本語 🌧 ok",
        ] {
            let ids = tok.encode(text).unwrap();
            let out = pieces(&tok, &ids);
            assert_eq!(out.concat(), text);
            assert!(out.iter().all(|p| !p.contains(REPLACEMENT)), "{out:?}");
        }
    }

    #[test]
    fn multibyte_characters_are_held_until_complete() {
        let tok = Tokenizer::builtin().unwrap();
        // The corpus is ASCII, so each byte of these characters is its own token.
        let ids = tok.encode("🌧").unwrap();
        assert_eq!(ids.len(), 4);
        let out = pieces(&tok, &ids);
        assert_eq!(out, ["", "", "", "🌧", ""]);
    }

    #[test]
    fn a_truncated_character_is_flushed_as_is() {
        let tok = Tokenizer::builtin().unwrap();
        let ids = tok.encode("a日").unwrap();
        let out = pieces(&tok, &ids[..ids.len() - 1]);
        assert_eq!(out[0], "a");
        assert!(out.last().unwrap().contains(REPLACEMENT));
    }
}
