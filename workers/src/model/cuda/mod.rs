//! The CUDA backend (cargo feature `cuda`): the `llama` forward pass on one
//! GPU through cudarc, whose driver, cuBLAS and NVRTC libraries load at run
//! time, so building needs no CUDA toolkit.
//!
//! Weights live on the device as f16, whatever the model file stores (Q4_1
//! blocks are dequantized at load: cuBLAS multiplies f16, and a 135M model is
//! 270 MB). Matrix products run on cuBLAS with f32 accumulation into an f32
//! residual stream; the kernels in `kernels` (NVRTC) embed, normalize, rotate,
//! store K/V into the paged cache, attend through block tables, and take the
//! SiLU gate. The KV cache is f16 in the same paged layout the scheduler's
//! block tables address. Plain greedy sampling is an argmax on the device, so
//! only token ids come back; anything more (temperature, top-k, top-p,
//! penalties, bias, log probabilities) copies that sequence's logits to the
//! host and uses the CPU sampler, so seeded draws match the CPU backend's.

mod gemm;
mod kernels;

use std::sync::Arc;

use cudarc::cublas::result::CublasError;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DriverError};
use cudarc::nvrtc::CompileError;
use half::f16;

use self::gemm::Gemm;
use self::kernels::{AttentionShape, Kernels, ATTENTION_THREADS};
use super::matrix::Matrix;
use super::sample::{is_plain_argmax, sample};
use super::weights::{Hyper, Weights};
use crate::scheduler::{Compute, Sampled, StepPlan};

/// Why the CUDA backend could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("the CUDA {0} library cannot be loaded")]
    Library(&'static str),
    #[error("no CUDA device")]
    NoDevice,
    #[error("CUDA driver")]
    Driver(#[from] DriverError),
    #[error("cuBLAS")]
    Blas(#[from] CublasError),
    #[error("compiling the kernels")]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Unsupported(String),
}

/// Whether the backend can run here: the driver, cuBLAS and NVRTC libraries
/// load, and there is a device. Checked before any other call, since cudarc
/// panics on a library it cannot load.
pub fn available() -> Result<(), CudaError> {
    // SAFETY: each only tries to open its library under the usual names.
    let libraries = unsafe {
        [
            ("driver (libcuda)", cudarc::driver::sys::is_culib_present()),
            ("cuBLAS", cudarc::cublas::sys::is_culib_present()),
            ("NVRTC", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    if let Some((name, _)) = libraries.iter().find(|(_, present)| !present) {
        return Err(CudaError::Library(name));
    }
    if CudaContext::device_count()? < 1 {
        return Err(CudaError::NoDevice);
    }
    Ok(())
}

struct DeviceLayer {
    attn_norm: CudaSlice<f32>,
    wqkv: CudaSlice<f16>,
    wo: CudaSlice<f16>,
    ffn_norm: CudaSlice<f32>,
    w_gate_up: CudaSlice<f16>,
    w_down: CudaSlice<f16>,
}

/// The model on CUDA device 0, with its KV cache.
pub struct CudaCompute {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    gemm: Gemm,
    hyper: Hyper,
    embed: CudaSlice<f16>,
    layers: Vec<DeviceLayer>,
    out_norm: CudaSlice<f32>,
    /// `None` when tied to `embed`.
    lm_head: Option<CudaSlice<f16>>,
    /// Per layer, K then V: `[layers][2][slots][kv_dim]`.
    kv: CudaSlice<f16>,
    /// cos and sin of each rotary pair's angle at every position a sequence
    /// can reach, `[slots, head_dim / 2]`, computed in f64 as the CPU does.
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    block_size: usize,
    /// KV slots: `num_blocks * block_size`.
    slots: usize,
}

impl CudaCompute {
    /// Uploads `weights` and allocates KV memory for `num_blocks` blocks of `block_size`.
    pub fn new(weights: &Weights, num_blocks: usize, block_size: usize) -> Result<Self, CudaError> {
        available()?;
        let h = weights.hyper.clone();
        if h.head_dim > ATTENTION_THREADS {
            return Err(CudaError::Unsupported(format!(
                "heads of {} exceed the attention kernel's {ATTENTION_THREADS}",
                h.head_dim
            )));
        }
        let slots = num_blocks * block_size;
        // Kernels take sizes and slot numbers as `int`.
        let largest = [slots * h.kv_dim(), h.vocab * h.dim, 2 * h.ffn_dim * h.dim];
        if largest.iter().any(|&n| i32::try_from(n).is_err()) {
            return Err(CudaError::Unsupported(
                "a matrix or the KV cache has more than 2^31 elements".into(),
            ));
        }
        let ctx = CudaContext::new(0)?;
        // SAFETY: all work goes to the one stream below, whose order alone
        // sequences every read after the write it depends on.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let kernels = Kernels::compile(&ctx, stream.clone())?;
        let gemm = Gemm::new(stream.clone())?;
        let f16s = |m: &Matrix| {
            let values: Vec<f16> = m.to_f32().into_iter().map(f16::from_f32).collect();
            stream.clone_htod(&values)
        };
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    attn_norm: stream.clone_htod(&l.attn_norm)?,
                    wqkv: f16s(&l.wqkv)?,
                    wo: f16s(&l.wo)?,
                    ffn_norm: stream.clone_htod(&l.ffn_norm)?,
                    w_gate_up: f16s(&l.w_gate_up)?,
                    w_down: f16s(&l.w_down)?,
                })
            })
            .collect::<Result<Vec<_>, DriverError>>()?;
        let half = h.head_dim / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(slots * half),
            Vec::with_capacity(slots * half),
        );
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| f64::from(h.rope_base).powf(-2.0 * i as f64 / h.head_dim as f64))
            .collect();
        for pos in 0..slots {
            for freq in &inv_freq {
                let (s, c) = (pos as f64 * freq).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Ok(CudaCompute {
            embed: f16s(&weights.embed)?,
            lm_head: weights.lm_head.as_ref().map(f16s).transpose()?,
            out_norm: stream.clone_htod(&weights.out_norm)?,
            kv: stream.alloc_zeros(h.layers * 2 * slots * h.kv_dim())?,
            cos: stream.clone_htod(&cos)?,
            sin: stream.clone_htod(&sin)?,
            layers,
            kernels,
            gemm,
            stream,
            hyper: h,
            block_size,
            slots,
        })
    }

    /// Runs `plan`, storing every token's K/V in its sequence's blocks, and
    /// returns the logits of each item with `sample` set (`[items, vocab]`),
    /// as [`super::Forward::run`] does on the CPU.
    pub fn run(&mut self, plan: &StepPlan) -> Result<Vec<Vec<f32>>, CudaError> {
        let Some(logits) = self.forward(plan)? else {
            return Ok(Vec::new());
        };
        let logits = self.stream.clone_dtoh(&logits)?;
        Ok(logits
            .chunks_exact(self.hyper.vocab)
            .map(<[f32]>::to_vec)
            .collect())
    }

    fn try_step(&mut self, plan: &StepPlan) -> Result<Vec<Sampled>, CudaError> {
        let Some(logits) = self.forward(plan)? else {
            return Ok(Vec::new());
        };
        let vocab = self.hyper.vocab;
        let items: Vec<_> = plan.items.iter().filter(|item| item.sample).collect();
        let mut ids = self.stream.alloc_zeros::<i32>(items.len())?;
        self.kernels.argmax(&logits, vocab, &mut ids)?;
        let ids = self.stream.clone_dtoh(&ids)?;
        items
            .iter()
            .zip(ids)
            .enumerate()
            .map(|(i, (item, id))| {
                if is_plain_argmax(&item.sampling) {
                    return Ok(Sampled {
                        token: id as u32,
                        logprobs: None,
                    });
                }
                let mut row = self
                    .stream
                    .clone_dtoh(&logits.slice(i * vocab..(i + 1) * vocab))?;
                let position = item.start + item.tokens.len();
                let s = &item.sampling;
                Ok(sample(&mut row, s, &item.generated, item.seed, position))
            })
            .collect()
    }

    /// The step's logits on the device, `[sampled items, vocab]`, or `None` when
    /// no item samples (device buffers cannot be empty).
    fn forward(&mut self, plan: &StepPlan) -> Result<Option<CudaSlice<f32>>, CudaError> {
        self.stream.context().bind_to_thread()?;
        let h = &self.hyper;
        let (dim, hd, ffn) = (h.dim, h.head_dim, h.ffn_dim);
        let (q_dim, kv_dim) = (h.heads * hd, h.kv_dim());
        let qkv_dim = q_dim + 2 * kv_dim;
        let bs = self.block_size;
        let inputs = StepInputs::new(plan, bs);
        let t = inputs.tokens.len();
        if t == 0 {
            return Ok(None);
        }
        let s = &self.stream;
        let tokens = s.clone_htod(&inputs.tokens)?;
        let positions = s.clone_htod(&inputs.positions)?;
        let slots = s.clone_htod(&inputs.slots)?;
        let token_seq = s.clone_htod(&inputs.token_seq)?;
        let tables = s.clone_htod(&inputs.tables)?;
        let shape = AttentionShape {
            heads: h.heads,
            kv_heads: h.kv_heads,
            head_dim: hd,
            qkv_dim,
            max_blocks: inputs.max_blocks,
            block_size: bs,
        };
        let mut x = s.alloc_zeros::<f32>(t * dim)?;
        let mut normed = s.alloc_zeros::<f16>(t * dim)?;
        let mut qkv = s.alloc_zeros::<f32>(t * qkv_dim)?;
        let mut attn = s.alloc_zeros::<f16>(t * q_dim)?;
        let mut gate_up = s.alloc_zeros::<f32>(t * 2 * ffn)?;
        let mut act = s.alloc_zeros::<f16>(t * ffn)?;
        let (k, g) = (&self.kernels, &self.gemm);
        let plane = self.slots * kv_dim;
        k.embed(&tokens, &self.embed, &mut x, dim)?;
        for (l, layer) in self.layers.iter().enumerate() {
            k.rms_norm(&x, &layer.attn_norm, &mut normed, t, h.norm_eps)?;
            g.matmul(&normed, &layer.wqkv, &mut qkv, t, qkv_dim, dim, false)?;
            k.rotary(
                &mut qkv,
                &positions,
                &self.cos,
                &self.sin,
                h.heads + h.kv_heads,
                hd,
                qkv_dim,
            )?;
            // Every token's K/V is stored before any token attends: a prefill
            // token reads its chunk's earlier tokens from the cache.
            let mut layer_kv = self.kv.slice_mut(2 * l * plane..2 * (l + 1) * plane);
            let (mut k_cache, mut v_cache) = layer_kv.split_at_mut(plane);
            k.store_kv(
                &qkv,
                &slots,
                &mut k_cache,
                &mut v_cache,
                q_dim,
                kv_dim,
                qkv_dim,
            )?;
            let k_cache = self.kv.slice(2 * l * plane..(2 * l + 1) * plane);
            let v_cache = self.kv.slice((2 * l + 1) * plane..2 * (l + 1) * plane);
            k.attention(
                &qkv, &k_cache, &v_cache, &tables, &token_seq, &positions, &mut attn, &shape,
            )?;
            g.matmul(&attn, &layer.wo, &mut x, t, dim, q_dim, true)?;
            k.rms_norm(&x, &layer.ffn_norm, &mut normed, t, h.norm_eps)?;
            g.matmul(
                &normed,
                &layer.w_gate_up,
                &mut gate_up,
                t,
                2 * ffn,
                dim,
                false,
            )?;
            k.silu_mul(&gate_up, &mut act, t, ffn)?;
            g.matmul(&act, &layer.w_down, &mut x, t, dim, ffn, true)?;
        }
        let rows = inputs.sample_rows.len();
        if rows == 0 {
            return Ok(None);
        }
        let mut logits = s.alloc_zeros::<f32>(rows * h.vocab)?;
        let sample_rows = s.clone_htod(&inputs.sample_rows)?;
        let mut last = s.alloc_zeros::<f32>(rows * dim)?;
        k.gather_rows(&x, &sample_rows, &mut last, dim)?;
        let mut last_normed = s.alloc_zeros::<f16>(rows * dim)?;
        k.rms_norm(&last, &self.out_norm, &mut last_normed, rows, h.norm_eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        g.matmul(&last_normed, head, &mut logits, rows, h.vocab, dim, false)?;
        Ok(Some(logits))
    }
}

impl Compute for CudaCompute {
    fn step(&mut self, plan: &StepPlan) -> Vec<Sampled> {
        // The trait has no error path, and a failed CUDA call leaves the device
        // in an unknown state: stop the engine loudly rather than serve from it.
        self.try_step(plan)
            .unwrap_or_else(|e| panic!("CUDA step failed: {}", error_chain(&e)))
    }
}

/// `e` and its causes, for the one message a failed step leaves.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// A step's per-token inputs, as the kernels read them.
struct StepInputs {
    tokens: Vec<i32>,
    positions: Vec<i32>,
    /// Each token's KV slot: its block's number times the block size, plus its offset.
    slots: Vec<i32>,
    /// Each token's item, indexing `tables`.
    token_seq: Vec<i32>,
    /// Items' block tables, `[items, max_blocks]`, padded with 0.
    tables: Vec<i32>,
    max_blocks: usize,
    /// The last row of each item that samples.
    sample_rows: Vec<i32>,
}

impl StepInputs {
    fn new(plan: &StepPlan, block_size: usize) -> StepInputs {
        let max_blocks = plan
            .items
            .iter()
            .map(|i| i.blocks.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut inputs = StepInputs {
            tokens: Vec::new(),
            positions: Vec::new(),
            slots: Vec::new(),
            token_seq: Vec::new(),
            tables: vec![0; plan.items.len() * max_blocks],
            max_blocks,
            sample_rows: Vec::new(),
        };
        for (seq, item) in plan.items.iter().enumerate() {
            for (b, block) in item.blocks.iter().enumerate() {
                inputs.tables[seq * max_blocks + b] = block.0 as i32;
            }
            for (i, &token) in item.tokens.iter().enumerate() {
                let pos = item.start + i;
                let block = item.blocks[pos / block_size].0 as usize;
                inputs.tokens.push(token as i32);
                inputs.positions.push(pos as i32);
                inputs
                    .slots
                    .push((block * block_size + pos % block_size) as i32);
                inputs.token_seq.push(seq as i32);
            }
            if item.sample {
                inputs.sample_rows.push(inputs.tokens.len() as i32 - 1);
            }
        }
        inputs
    }
}
