//! Tiny random-weight Llama models as GGUF files, for tests that must run in
//! seconds: a GGUF writer (F32, F16, Q8_0 and Q4_1 tensors) and a small
//! byte-level BPE tokenizer trained with `tokenizers`, stored in the metadata.

use std::path::{Path, PathBuf};

use half::f16;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, TokenizerBuilder,
};

/// The tiny model's shape.
pub const DIM: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const FFN: usize = 96;
pub const LAYERS: usize = 2;

pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

#[derive(Clone, Copy)]
pub enum Kind {
    F32,
    F16,
    Q8_0,
    Q4_1,
}

enum Meta {
    U32(u32),
    F32(f32),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A GGUF v3 file being assembled.
#[derive(Default)]
pub struct GgufWriter {
    meta: Vec<(String, Meta)>,
    /// Name, GGUF dims (fastest first), ggml type id, encoded bytes.
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl GgufWriter {
    fn meta(&mut self, key: &str, value: Meta) {
        self.meta.push((key.to_string(), value));
    }

    /// A `[rows, cols]` row-major matrix (GGUF dims `[cols, rows]`; vectors have rows = 1).
    pub fn tensor(&mut self, name: &str, rows: usize, cols: usize, kind: Kind, x: &[f32]) {
        assert_eq!(x.len(), rows * cols);
        let (id, bytes) = match kind {
            Kind::F32 => (0, x.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Kind::F16 => (
                1,
                x.iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            Kind::Q8_0 => (8, x.chunks(32).flat_map(q8_0).collect()),
            Kind::Q4_1 => (3, x.chunks(32).flat_map(q4_1).collect()),
        };
        let dims = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        self.tensors.push((name.to_string(), dims, id, bytes));
    }

    pub fn write(&self, path: &Path) {
        const ALIGN: usize = 32;
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.meta.len() as u64).to_le_bytes());
        for (key, value) in &self.meta {
            put_str(&mut out, key);
            match value {
                Meta::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Meta::Strs(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|s| put_str(&mut out, s));
                }
                Meta::I32s(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    items.iter().for_each(|v| out.extend(v.to_le_bytes()));
                }
            }
        }
        let mut offset = 0usize;
        for (name, dims, id, bytes) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(id.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset = (offset + bytes.len()).div_ceil(ALIGN) * ALIGN;
        }
        for (_, _, _, bytes) in &self.tensors {
            out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
            out.extend(bytes);
        }
        std::fs::write(path, out).unwrap();
    }
}

fn q8_0(block: &[f32]) -> Vec<u8> {
    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(block.iter().map(|v| {
        if d == 0.0 {
            0
        } else {
            (v / d).round() as i8 as u8
        }
    }));
    out
}

fn q4_1(block: &[f32]) -> Vec<u8> {
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let q = |v: f32| {
        if d == 0.0 {
            0
        } else {
            ((v - min) / d).round().clamp(0.0, 15.0) as u8
        }
    };
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(f16::from_f32(min).to_le_bytes());
    out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
    out
}

/// Deterministic normal-ish noise (sum of uniforms), scaled by `std`.
pub struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn vec(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        // Four uniforms: variance 4/12; rescale to `std`.
        (0..n)
            .map(|_| mean + std * ((0..4).map(|_| self.uniform()).sum::<f32>() - 2.0) * 3f32.sqrt())
            .collect()
    }
}

/// Trains the tiny tokenizer: byte-level BPE over digits-split text, as SmolLM2's.
pub fn train_tokenizer() -> tokenizers::Tokenizer {
    let byte_level = ByteLevel::default().add_prefix_space(false);
    let pre = Sequence::new(vec![Digits::new(true).into(), byte_level.into()]);
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(400)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            SPECIALS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build()
        .into();
    let mut tok: tokenizers::Tokenizer = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default().into())
    .with_pre_tokenizer(Some(pre.into()))
    .with_decoder(Some(byte_level.into()))
    .build()
    .unwrap()
    .into();
    tok.train(
        &mut trainer,
        workers::tokenizer::CORPUS.split_inclusive('\n'),
    )
    .unwrap();
    tok
}

/// Writes a tiny random model with `tokenizer`'s vocabulary to a temp file.
pub fn write_tiny_model(tokenizer: &tokenizers::Tokenizer, name: &str) -> PathBuf {
    let vocab = tokenizer.get_vocab_size(true);
    let mut tokens = vec![String::new(); vocab];
    for (text, id) in tokenizer.get_vocab(true) {
        tokens[id as usize] = text;
    }
    let json = serde_json::to_value(tokenizer).unwrap();
    let merges: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m.as_str() {
            Some(s) => s.to_string(),
            None => format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()),
        })
        .collect();
    let types = tokens
        .iter()
        .map(|t| if SPECIALS.contains(&t.as_str()) { 3 } else { 1 })
        .collect();
    let mut w = GgufWriter::default();
    w.meta("general.architecture", Meta::Str("llama".into()));
    for (key, v) in [
        ("block_count", LAYERS),
        ("context_length", 256),
        ("embedding_length", DIM),
        ("feed_forward_length", FFN),
        ("attention.head_count", HEADS),
        ("attention.head_count_kv", KV_HEADS),
        ("rope.dimension_count", DIM / HEADS),
        ("vocab_size", vocab),
    ] {
        w.meta(&format!("llama.{key}"), Meta::U32(v as u32));
    }
    w.meta("llama.rope.freq_base", Meta::F32(10_000.0));
    w.meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5));
    w.meta("tokenizer.ggml.model", Meta::Str("gpt2".into()));
    w.meta("tokenizer.ggml.pre", Meta::Str("smollm".into()));
    w.meta("tokenizer.ggml.tokens", Meta::Strs(tokens));
    w.meta("tokenizer.ggml.token_type", Meta::I32s(types));
    w.meta("tokenizer.ggml.merges", Meta::Strs(merges));
    w.meta("tokenizer.ggml.bos_token_id", Meta::U32(1));
    w.meta("tokenizer.ggml.eos_token_id", Meta::U32(2));
    w.meta("tokenizer.chat_template", Meta::Str(CHAT_TEMPLATE.into()));
    let mut noise = Noise(7);
    let hd = DIM / HEADS;
    let std = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    // Random weights stand for already-converted ones: Q and K rows are in
    // GGUF's permuted order by definition, which the reference undoes.
    w.tensor(
        "token_embd.weight",
        vocab,
        DIM,
        Kind::Q8_0,
        &noise.vec(vocab * DIM, 0.0, 1.0),
    );
    for l in 0..LAYERS {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        let mut m = |name: &str, rows, cols, kind| {
            w.tensor(
                &p(name),
                rows,
                cols,
                kind,
                &noise.vec(rows * cols, 0.0, std(cols)),
            )
        };
        m("attn_q", HEADS * hd, DIM, Kind::Q4_1);
        m("attn_k", KV_HEADS * hd, DIM, Kind::F16);
        m("attn_v", KV_HEADS * hd, DIM, Kind::Q8_0);
        m("attn_output", DIM, HEADS * hd, Kind::Q4_1);
        m("ffn_gate", FFN, DIM, Kind::F16);
        m("ffn_up", FFN, DIM, Kind::Q4_1);
        m("ffn_down", DIM, FFN, Kind::Q8_0);
        for norm in ["attn_norm", "ffn_norm"] {
            w.tensor(&p(norm), 1, DIM, Kind::F32, &noise.vec(DIM, 1.0, 0.2));
        }
    }
    w.tensor(
        "output_norm.weight",
        1,
        DIM,
        Kind::F32,
        &noise.vec(DIM, 1.0, 0.2),
    );
    w.tensor(
        "output.weight",
        vocab,
        DIM,
        Kind::F16,
        &noise.vec(vocab * DIM, 0.0, std(DIM)),
    );
    let path = std::env::temp_dir().join(format!("{name}-{}.gguf", std::process::id()));
    w.write(&path);
    path
}
