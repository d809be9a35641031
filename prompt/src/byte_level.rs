//! A faster path through byte-level BPE tokenizers (GPT-2's family, which
//! SmolLM2's and the built-in one belong to): the same split of text into
//! words and the same BPE model, without the general pipeline's bookkeeping
//! (normalized strings with alignments and offsets for every split), which
//! costs more than the merges themselves. It is taken only for a tokenizer
//! built exactly so (no normalizer; GPT-2's byte-level split, with or
//! without single digits first; a BPE model), and only where it gives that
//! tokenizer's own tokens on sample texts when it loads
//! (`tokenizer::agrees`).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;
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
}

impl ByteLevelBpe {
    /// The fast path for `inner`, if it is built as this path assumes;
    /// whether it gives `inner`'s tokens is for the caller to check.
    pub fn of(inner: &tokenizers::Tokenizer) -> Option<ByteLevelBpe> {
        if inner.get_normalizer().is_some() {
            return None;
        }
        let ModelWrapper::BPE(model) = inner.get_model() else {
            return None;
        };
        // The pre-tokenizer's own description says what it is made of.
        let pre = serde_json::to_value(inner.get_pre_tokenizer()?).ok()?;
        let gpt2 = |p: &Value| {
            p["type"] == "ByteLevel" && p["add_prefix_space"] == false && p["use_regex"] == true
        };
        let single_digits = match pre["type"].as_str()? {
            "ByteLevel" if gpt2(&pre) => false,
            "Sequence" => match pre["pretokenizers"].as_array()?.as_slice() {
                [digits, words]
                    if digits["type"] == "Digits"
                        && digits["individual_digits"] == true
                        && gpt2(words) =>
                {
                    true
                }
                _ => return None,
            },
            _ => return None,
        };
        // Its own copy: a word cache apart from the pipeline's.
        Some(ByteLevelBpe {
            model: model.clone(),
            words: Regex::new(WORDS).expect("a valid pattern"),
            single_digits,
        })
    }

    /// The token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut word = String::new();
        let mut push = |w: &str| -> Result<(), String> {
            word.clear();
            word.extend(w.bytes().map(|b| ALPHABET[b as usize]));
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

/// GPT-2's alphabet: the character each byte stands for in a byte-level
/// vocabulary. Printable bytes stand for themselves, the others for the
/// characters from U+0100 on, in byte order.
static ALPHABET: LazyLock<[char; 256]> = LazyLock::new(|| {
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
});

fn printable(b: u32) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The byte a character of GPT-2's alphabet stands for.
pub fn byte_of(c: char) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|b| b as u8)
}
