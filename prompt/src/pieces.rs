//! Tokenizing a prompt piece by piece, each distinct piece once.
//!
//! A tokenizer cuts its input at its added tokens (`<|im_start|>` and the
//! like) before anything else and tokenizes what lies between them alone,
//! and a byte-level BPE never merges across a newline that opens a chat
//! message. So a prompt's tokens are the concatenation of its pieces'
//! tokens, and a piece seen before (a system prompt, an earlier turn of the
//! conversation) costs a hash and a lookup instead of a pass through the
//! tokenizer. Whether that holds for a tokenizer is checked when it loads,
//! by tokenizing probe prompts both ways; where it does not, prompts are
//! tokenized whole.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};

use aho_corasick::{AhoCorasick, MatchKind};
use protocol::openai::ChatMessage;
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use xxhash_rust::xxh3::xxh3_128_with_seed;

/// What the cache holds, in 4-byte units: a piece's ids plus
/// [`ENTRY_UNITS`] for its entry. 16 MiB in all; the least used go first
/// (quick_cache's CLOCK-PRO-like policy).
const CACHE_UNITS: u64 = 1 << 22;

/// An entry's key, pointer and bookkeeping, about 128 bytes, in 4-byte units.
const ENTRY_UNITS: u64 = 32;

/// Shards of the cache: a piece larger than a shard's share (256k tokens)
/// is tokenized every time.
const SHARDS: usize = 16;

/// Keys hash the piece's text with a seed of this process, so no one can
/// write a text whose key another's has.
static SEED: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(0u64));

/// A tokenizer's pieces: how to find its added tokens, what its
/// post-processor puts around a sequence, and the tokens of pieces seen.
pub struct Pieces {
    /// The added tokens, longest match first (as the tokenizer matches them), and their ids.
    added: Option<(AhoCorasick, Vec<u32>)>,
    /// Tokens the post-processor adds before and after a sequence (BOS, EOS).
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    cache: Cache<u128, Arc<[u32]>, BySize>,
}

#[derive(Clone)]
struct BySize;

impl Weighter<u128, Arc<[u32]>> for BySize {
    fn weight(&self, _: &u128, tokens: &Arc<[u32]>) -> u64 {
        tokens.len() as u64 + ENTRY_UNITS
    }
}

/// Tokenizes a text, with the post-processor's special tokens or without.
pub type Encode<'a> = dyn Fn(&str, bool) -> Result<Vec<u32>, String> + 'a;

impl Pieces {
    /// The pieces of `inner`, if prompts tokenized piece by piece with
    /// `encode` come out as `encode` gives them whole; `None` otherwise.
    pub fn of(inner: &tokenizers::Tokenizer, encode: &Encode<'_>) -> Option<Pieces> {
        let mut added: Vec<(u32, tokenizers::AddedToken)> =
            inner.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        // Tokens matched with stripping, word bounds or on normalized text
        // reach into their neighbours: not cut here as the tokenizer cuts.
        let normalizes = inner.get_normalizer().is_some();
        // Truncation or padding would apply to each piece alone.
        if inner.get_truncation().is_some() || inner.get_padding().is_some() {
            return None;
        }
        if added
            .iter()
            .any(|(_, t)| t.lstrip || t.rstrip || t.single_word || (t.normalized && normalizes))
        {
            return None;
        }
        let plain = encode("a", false).ok().filter(|p| !p.is_empty())?;
        let framed = encode("a", true).ok()?;
        let at = framed.windows(plain.len()).position(|w| w == plain)?;
        let matcher = (!added.is_empty()).then(|| {
            let contents = added.iter().map(|(_, t)| t.content.as_str());
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(contents)
                .expect("added tokens make an automaton")
        });
        let pieces = Pieces {
            added: matcher.map(|m| (m, added.iter().map(|(id, _)| *id).collect())),
            prefix: framed[..at].to_vec(),
            suffix: framed[at + plain.len()..].to_vec(),
            cache: Cache::with_options(
                OptionsBuilder::new()
                    .estimated_items_capacity(1 << 14)
                    .weight_capacity(CACHE_UNITS)
                    .shards(SHARDS)
                    .build()
                    .expect("valid cache options"),
                BySize,
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            ),
        };
        let specials: Vec<&str> = added
            .iter()
            .take(3)
            .map(|(_, t)| t.content.as_str())
            .collect();
        probes(&specials)
            .iter()
            .all(|probe| {
                let refs: Vec<&str> = probe.iter().map(String::as_str).collect();
                let whole = encode(&probe.concat(), true);
                whole.is_ok() && whole == pieces.tokens(&refs, encode)
            })
            .then_some(pieces)
    }

    /// The tokens of the text `pieces` make together, each piece's text
    /// between added tokens from the cache when seen before.
    pub fn tokens(&self, pieces: &[&str], encode: &Encode<'_>) -> Result<Vec<u32>, String> {
        // Text runs three to four bytes a token; half the bytes (and a few
        // for short pieces of added tokens) rarely grows.
        let bytes: usize = pieces.iter().map(|p| p.len()).sum();
        let mut ids = Vec::with_capacity(self.prefix.len() + bytes / 2 + self.suffix.len() + 8);
        ids.extend_from_slice(&self.prefix);
        for piece in pieces {
            let mut from = 0;
            if let Some((matcher, added)) = &self.added {
                for m in matcher.find_iter(*piece) {
                    self.text(&piece[from..m.start()], &mut ids, encode)?;
                    ids.push(added[m.pattern().as_usize()]);
                    from = m.end();
                }
            }
            self.text(&piece[from..], &mut ids, encode)?;
        }
        ids.extend(&self.suffix);
        Ok(ids)
    }

    fn text(&self, text: &str, ids: &mut Vec<u32>, encode: &Encode<'_>) -> Result<(), String> {
        if text.is_empty() {
            return Ok(());
        }
        let key = xxh3_128_with_seed(text.as_bytes(), *SEED);
        if let Some(tokens) = self.cache.get(&key) {
            ids.extend_from_slice(&tokens);
            return Ok(());
        }
        let tokens: Arc<[u32]> = encode(text, false)?.into();
        ids.extend_from_slice(&tokens);
        self.cache.insert(key, tokens);
        Ok(())
    }
}

/// Prompts, as pieces, that tell whether cutting changes the tokens: chat
/// messages cut as the sim's template cuts them, and text around added
/// tokens, with the whitespace, digits, punctuation and characters that
/// tokenizers treat apart.
fn probes(specials: &[&str]) -> Vec<Vec<String>> {
    let texts = [
        "Hello world",
        " leading space",
        "trailing spaces  ",
        "trailing newline\n",
        "\n\nnew lines\n",
        "naïve café — 日本語 🌧",
        "digits 12345 and 3.14",
        "x",
        "",
    ];
    let mut probes = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let next = texts[(i + 1) % texts.len()];
        let chat = crate::render::chat_pieces(&[
            ChatMessage::new("system", *text),
            ChatMessage::new("user", next),
        ]);
        probes.push(chat.pieces().into_iter().map(str::to_string).collect());
        for special in specials {
            probes.push(vec![format!(
                "{special}user\n{text}{special}\n{special}{next}"
            )]);
            probes.push(vec![
                format!("{text}{special}"),
                format!("{special} {next}"),
            ]);
        }
    }
    probes
}
