//! A faster path through byte-level BPE tokenizers (GPT-2's family, which
//! SmolLM2's and the built-in one belong to): the same split of text into
//! words and the same BPE model, without the general pipeline's bookkeeping
//! (normalized strings with alignments and offsets for every split), which
//! costs more than the merges themselves. It is used only where it gives the
//! tokenizer's own tokens, checked when the tokenizer loads.

use regex::Regex;
use tokenizers::models::bpe::BPE;
use tokenizers::{Model, ModelWrapper};

/// GPT-2's split of text into words, less the look-ahead `\s+(?!\S)` that
/// this regex engine lacks: [`ByteLevelBpe::words`] gives a run of
/// whitespace followed by a word back its last character, as the look-ahead does.
const WORDS: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

pub struct ByteLevelBpe {
    model: BPE,
    words: Regex,
    /// Numbers are split into single characters before the words (SmolLM2's `Digits` step).
    single_digits: bool,
    /// GPT-2's alphabet: the character each byte stands for in the vocabulary.
    chars: [char; 256],
}

impl ByteLevelBpe {
    /// The fast path for `inner`, if its model is BPE; whether it gives
    /// `inner`'s tokens is for the caller to check (see `pieces`).
    pub fn of(inner: &tokenizers::Tokenizer, single_digits: bool) -> Option<ByteLevelBpe> {
        let ModelWrapper::BPE(model) = inner.get_model() else {
            return None;
        };
        Some(ByteLevelBpe {
            model: model.clone(),
            words: Regex::new(WORDS).expect("a valid pattern"),
            single_digits,
            chars: alphabet(),
        })
    }

    /// The token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut word = String::new();
        let mut push = |w: &str| -> Result<(), String> {
            word.clear();
            word.extend(w.bytes().map(|b| self.chars[b as usize]));
            let tokens = self.model.tokenize(&word).map_err(|e| e.to_string())?;
            ids.extend(tokens.iter().map(|t| t.id));
            Ok(())
        };
        if !self.single_digits {
            return self.words(text, &mut push).map(|()| ids);
        }
        let mut from = 0;
        for (at, c) in text.char_indices().filter(|(_, c)| c.is_numeric()) {
            self.words(&text[from..at], &mut push)?;
            push(&text[at..at + c.len_utf8()])?;
            from = at + c.len_utf8();
        }
        self.words(&text[from..], &mut push)?;
        Ok(ids)
    }

    /// Calls `word` on each of `text`'s words in order.
    fn words(
        &self,
        text: &str,
        word: &mut dyn FnMut(&str) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut at = 0;
        while let Some(m) = self.words.find_at(text, at) {
            let found = m.as_str();
            let last = found.char_indices().last().map_or(0, |(i, _)| i);
            if m.end() < text.len() && last > 0 && found.chars().all(char::is_whitespace) {
                // A run of whitespace before a word keeps its last character
                // for the word (or for itself, when that is not a space).
                word(&found[..last])?;
                at = m.start() + last;
                continue;
            }
            word(found)?;
            at = m.end();
        }
        Ok(())
    }
}

/// GPT-2's bytes-to-characters map: printable bytes stand for themselves,
/// the others for the characters from U+0100 on, in byte order.
fn alphabet() -> [char; 256] {
    let printable = |b: u32| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut chars = ['\0'; 256];
    let mut next = 256;
    for (b, c) in chars.iter_mut().enumerate() {
        let b = b as u32;
        *c = if printable(b) {
            char::from_u32(b)
        } else {
            next += 1;
            char::from_u32(next - 1)
        }
        .expect("valid characters");
    }
    chars
}
