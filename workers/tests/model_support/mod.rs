//! Tiny random-weight Llama models for tests that must run in seconds: a GGUF
//! writer (F32, F16, Q8_0 and Q4_1 tensors) with a small byte-level BPE
//! tokenizer trained with `tokenizers` stored in the metadata, and the same
//! weights as a Hugging Face directory (safetensors in f32, f16 or bf16).

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

/// The tiny model's recommended temperature, top_p and top_k, in both formats.
pub const SAMPLING: (f32, f32, u32) = (0.6, 0.95, 20);

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
pub struct Noise(pub u64);

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
    tok.train(&mut trainer, prompt::CORPUS.split_inclusive('\n'))
        .unwrap();
    tok
}

/// One tensor of the tiny model: its GGUF name, `[rows, cols]`, its GGUF
/// encoding, and its values before encoding.
struct Tensor {
    name: String,
    rows: usize,
    cols: usize,
    kind: Kind,
    values: Vec<f32>,
}

/// The tiny model's random tensors. Random weights stand for already-converted
/// ones: Q and K rows are in GGUF's permuted order by definition, which the
/// reference (and the Hugging Face writer) undoes.
fn tiny_tensors(vocab: usize) -> Vec<Tensor> {
    let mut noise = Noise(7);
    let hd = DIM / HEADS;
    let std = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    let mut out = Vec::new();
    let mut push = |name: String, rows, cols, kind, values| {
        out.push(Tensor {
            name,
            rows,
            cols,
            kind,
            values,
        })
    };
    push(
        "token_embd.weight".into(),
        vocab,
        DIM,
        Kind::Q8_0,
        noise.vec(vocab * DIM, 0.0, 1.0),
    );
    for l in 0..LAYERS {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        for (name, rows, cols, kind) in [
            ("attn_q", HEADS * hd, DIM, Kind::Q4_1),
            ("attn_k", KV_HEADS * hd, DIM, Kind::F16),
            ("attn_v", KV_HEADS * hd, DIM, Kind::Q8_0),
            ("attn_output", DIM, HEADS * hd, Kind::Q4_1),
            ("ffn_gate", FFN, DIM, Kind::F16),
            ("ffn_up", FFN, DIM, Kind::Q4_1),
            ("ffn_down", DIM, FFN, Kind::Q8_0),
        ] {
            let values = noise.vec(rows * cols, 0.0, std(cols));
            push(p(name), rows, cols, kind, values);
        }
        for norm in ["attn_norm", "ffn_norm"] {
            push(p(norm), 1, DIM, Kind::F32, noise.vec(DIM, 1.0, 0.2));
        }
    }
    push(
        "output_norm.weight".into(),
        1,
        DIM,
        Kind::F32,
        noise.vec(DIM, 1.0, 0.2),
    );
    push(
        "output.weight".into(),
        vocab,
        DIM,
        Kind::F16,
        noise.vec(vocab * DIM, 0.0, std(DIM)),
    );
    out
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
    // The sampling its authors recommend, as llama.cpp's converter records it.
    w.meta("general.sampling.temp", Meta::F32(SAMPLING.0));
    w.meta("general.sampling.top_p", Meta::F32(SAMPLING.1));
    w.meta("general.sampling.top_k", Meta::U32(SAMPLING.2));
    for t in tiny_tensors(vocab) {
        w.tensor(&t.name, t.rows, t.cols, t.kind, &t.values);
    }
    let path = std::env::temp_dir().join(format!("{name}-{}.gguf", std::process::id()));
    w.write(&path);
    path
}

/// Element types of a Hugging Face export.
#[derive(Clone, Copy, Debug)]
pub enum HfDtype {
    F32,
    F16,
    BF16,
}

/// Writes the same tiny model as [`write_tiny_model`] as a Hugging Face
/// directory: every tensor holds the GGUF file's values after decoding (so an
/// f32 export computes exactly what the GGUF file does), Q and K rows back in
/// Hugging Face's order, in `dtype`, over two safetensors shards.
pub fn write_tiny_hf(tokenizer: &tokenizers::Tokenizer, name: &str, dtype: HfDtype) -> PathBuf {
    let vocab = tokenizer.get_vocab_size(true);
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut shards: [Vec<ShardTensor>; 2] = Default::default();
    for t in tiny_tensors(vocab) {
        let mut values = decoded(t.kind, &t.values);
        let (hf_name, shard) = hf_name(&t.name);
        if t.name.contains("attn_q") || t.name.contains("attn_k") {
            let heads = t.rows / (DIM / HEADS);
            values = half_split_rotary_rows(&values, heads, t.cols);
        }
        let shape = if t.rows == 1 {
            vec![t.cols]
        } else {
            vec![t.rows, t.cols]
        };
        let bytes = match dtype {
            HfDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            HfDtype::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            HfDtype::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        shards[shard].push((hf_name, shape, bytes));
    }
    let st_dtype = match dtype {
        HfDtype::F32 => safetensors::Dtype::F32,
        HfDtype::F16 => safetensors::Dtype::F16,
        HfDtype::BF16 => safetensors::Dtype::BF16,
    };
    for (i, shard) in shards.iter().enumerate() {
        let views = shard.iter().map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes);
            (name.clone(), view.unwrap())
        });
        let file = dir.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        safetensors::serialize_to_file(views, None, &file).unwrap();
    }
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": DIM,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "intermediate_size": FFN,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "max_position_embeddings": 256,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "torch_dtype": format!("{dtype:?}").to_lowercase(),
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    let tokenizer_config = serde_json::json!({
        "chat_template": CHAT_TEMPLATE,
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
    });
    let write = |file: &str, value: &serde_json::Value| {
        std::fs::write(dir.join(file), serde_json::to_string_pretty(value).unwrap()).unwrap()
    };
    write("config.json", &config);
    write("tokenizer_config.json", &tokenizer_config);
    let (temperature, top_p, top_k) = SAMPLING;
    let generation = serde_json::json!({
        "bos_token_id": 1, "eos_token_id": 2, "do_sample": true,
        "temperature": temperature, "top_p": top_p, "top_k": top_k,
    });
    write("generation_config.json", &generation);
    tokenizer.save(dir.join("tokenizer.json"), false).unwrap();
    dir
}

/// A tensor bound for a safetensors shard: name, shape, little-endian bytes.
type ShardTensor = (String, Vec<usize>, Vec<u8>);

/// The Hugging Face name of a GGUF tensor, and the shard it goes in.
fn hf_name(gguf: &str) -> (String, usize) {
    let name = match gguf {
        "token_embd.weight" => return ("model.embed_tokens.weight".into(), 0),
        "output_norm.weight" => return ("model.norm.weight".into(), 1),
        "output.weight" => return ("lm_head.weight".into(), 1),
        other => other,
    };
    let rest = name.strip_prefix("blk.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let part = match rest.strip_suffix(".weight").unwrap() {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        other => panic!("unknown tensor {other}"),
    };
    let shard = usize::from(layer != "0");
    (format!("model.layers.{layer}.{part}.weight"), shard)
}

/// Inverse of llama.cpp's permutation: each head's adjacent-pair rows
/// `(2i, 2i + 1)` back to halves `(i, i + head_dim / 2)`.
fn half_split_rotary_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let head_dim = w.len() / cols / heads;
    let mut out = vec![0.0; w.len()];
    for head in 0..heads {
        for i in 0..head_dim / 2 {
            for p in 0..2 {
                let from = head * head_dim + 2 * i + p;
                let to = head * head_dim + p * head_dim / 2 + i;
                out[to * cols..(to + 1) * cols].copy_from_slice(&w[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// `values` as a reader of the GGUF file sees them: encoded in `kind`, then decoded.
fn decoded(kind: Kind, values: &[f32]) -> Vec<f32> {
    let f16_at = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    match kind {
        Kind::F32 => values.to_vec(),
        Kind::F16 => values.iter().map(|v| f16::from_f32(*v).to_f32()).collect(),
        Kind::Q8_0 => values
            .chunks(32)
            .flat_map(|c| {
                let b = q8_0(c);
                let d = f16_at(&b, 0);
                b[2..]
                    .iter()
                    .map(move |&q| d * f32::from(q as i8))
                    .collect::<Vec<_>>()
            })
            .collect(),
        Kind::Q4_1 => values
            .chunks(32)
            .flat_map(|c| {
                let b = q4_1(c);
                let (d, m) = (f16_at(&b, 0), f16_at(&b, 2));
                let lo = b[4..].iter().map(move |&q| d * f32::from(q & 0xF) + m);
                let hi = b[4..].iter().map(move |&q| d * f32::from(q >> 4) + m);
                lo.chain(hi).collect::<Vec<_>>()
            })
            .collect(),
    }
}

/// One sequence's part of a step: `tokens[start..]` over `blocks`, sampled
/// with `temperature` (0 is greedy) and a fixed seed.
pub fn plan_item(
    seq: u64,
    phase: workers::scheduler::Phase,
    tokens: &[u32],
    start: usize,
    blocks: &[u32],
    temperature: f32,
) -> workers::scheduler::PlanItem {
    use workers::kv_cache::{BlockId, SeqId};
    use workers::scheduler::{PlanItem, Sampling};
    PlanItem {
        seq: SeqId(seq),
        phase,
        start,
        tokens: tokens[start..].to_vec(),
        sample: true,
        seed: 3,
        sampling: Sampling {
            temperature,
            ..Sampling::default()
        },
        generated: Vec::new(),
        blocks: blocks.iter().map(|&b| BlockId(b)).collect(),
    }
}
