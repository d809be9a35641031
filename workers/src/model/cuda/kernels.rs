//! The backend's own kernels, as CUDA C compiled by NVRTC when the model
//! loads, and their launches. f16 values travel as `unsigned short` and are
//! converted with PTX instructions, so the source needs no CUDA header (NVRTC
//! finds none without a toolkit installed).

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig,
    PushKernelArg,
};
use half::f16;

use super::CudaError;

/// Threads per block of the attention kernel, and positions per tile: a
/// query head is at most this wide.
pub const ATTENTION_THREADS: usize = 128;

const SOURCE: &str = r#"
#define INF __int_as_float(0x7f800000)
#define TILE 128

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// The sum over the block (blockDim.x a multiple of 32), returned to every thread.
__device__ float block_sum(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // an earlier call may still be reading scratch
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < blockDim.x / 32 ? scratch[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

__device__ float block_max(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < blockDim.x / 32 ? scratch[lane] : -INF;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// x[t] = table[tokens[t]], widened. One block per token.
extern "C" __global__ void embed(const int* tokens, const unsigned short* table, float* x, int dim) {
    const unsigned short* row = table + (long long)tokens[blockIdx.x] * dim;
    float* out = x + (long long)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = h2f(row[i]);
}

// out[t] = x[t] / rms(x[t]) * w, to f16 for the next matrix product. One block per row.
extern "C" __global__ void rms_norm(const float* x, const float* w, unsigned short* out, int dim, float eps) {
    __shared__ float scratch[32];
    const float* row = x + (long long)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += row[i] * row[i];
    float scale = 1.0f / sqrtf(block_sum(ss, scratch) / dim + eps);
    unsigned short* o = out + (long long)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = f2h(row[i] * scale * w[i]);
}

// Rotates the first `heads` heads of each token's QKV row (Q's, then K's) in
// pairs (2i, 2i + 1), GGUF's order, by the angles of the token's position.
extern "C" __global__ void rotary(float* qkv, const int* positions, const float* cos_table,
                                  const float* sin_table, int heads, int head_dim, int qkv_dim) {
    int half = head_dim / 2;
    const float* c = cos_table + (long long)positions[blockIdx.x] * half;
    const float* s = sin_table + (long long)positions[blockIdx.x] * half;
    float* row = qkv + (long long)blockIdx.x * qkv_dim;
    for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
        int i = p % half;
        float* pair = row + (p / half) * head_dim + 2 * i;
        float a = pair[0], b = pair[1];
        pair[0] = a * c[i] - b * s[i];
        pair[1] = a * s[i] + b * c[i];
    }
}

// Writes each token's K and V into its cache slot (block * block_size + offset).
extern "C" __global__ void store_kv(const float* qkv, const int* slots, unsigned short* k_cache,
                                    unsigned short* v_cache, int q_dim, int kv_dim, int qkv_dim) {
    const float* k = qkv + (long long)blockIdx.x * qkv_dim + q_dim;
    const float* v = k + kv_dim;
    long long at = (long long)slots[blockIdx.x] * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        k_cache[at + i] = f2h(k[i]);
        v_cache[at + i] = f2h(v[i]);
    }
}

// Causal attention of one query head of one token (block (token, head), TILE
// threads) over its sequence's positions 0..=position, read through the
// sequence's block table: a tile of TILE positions at a time, softmax kept
// online. Thread d < head_dim owns output dimension d. Serves decode and
// prefill alike (a prefill token sees the chunk's earlier tokens, stored first).
extern "C" __global__ void attention(const float* qkv, const unsigned short* k_cache,
                                     const unsigned short* v_cache, const int* block_tables,
                                     const int* token_seq, const int* positions, unsigned short* out,
                                     int heads, int kv_heads, int head_dim, int qkv_dim,
                                     int max_blocks, int block_size, float scale) {
    __shared__ float q[TILE];
    __shared__ float p[TILE];
    __shared__ int slot[TILE];
    __shared__ float scratch[32];
    int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    int kv_dim = kv_heads * head_dim;
    int kv_at = h / (heads / kv_heads) * head_dim;
    int pos = positions[t];
    const int* table = block_tables + (long long)token_seq[t] * max_blocks;
    if (d < head_dim) q[d] = qkv[(long long)t * qkv_dim + h * head_dim + d];
    __syncthreads();
    float m = -INF, l = 0.0f, acc = 0.0f;
    for (int start = 0; start <= pos; start += TILE) {
        int j = start + threadIdx.x;
        float s = -INF;
        if (j <= pos) {
            int sl = table[j / block_size] * block_size + j % block_size;
            slot[threadIdx.x] = sl;
            const unsigned short* k = k_cache + (long long)sl * kv_dim + kv_at;
            float dot = 0.0f;
            for (int i = 0; i < head_dim; ++i) dot += q[i] * h2f(k[i]);
            s = dot * scale;
        }
        // Position `start` is always in range, so the tile's maximum is finite.
        float new_m = fmaxf(m, block_max(s, scratch));
        float e = j <= pos ? expf(s - new_m) : 0.0f;
        p[threadIdx.x] = e;
        float correction = expf(m - new_m);  // 0 on the first tile, m being -INF
        // block_sum's barriers also publish p and slot.
        l = l * correction + block_sum(e, scratch);
        if (d < head_dim) {
            acc *= correction;
            int n = min(TILE, pos + 1 - start);
            for (int jj = 0; jj < n; ++jj) {
                acc += p[jj] * h2f(v_cache[(long long)slot[jj] * kv_dim + kv_at + d]);
            }
        }
        m = new_m;
        __syncthreads();  // the next tile overwrites p and slot
    }
    if (d < head_dim) out[((long long)t * heads + h) * head_dim + d] = f2h(acc / l);
}

// act = silu(gate) * up, from the fused [gate | up] row, to f16.
extern "C" __global__ void silu_mul(const float* gate_up, unsigned short* out, int ffn) {
    const float* g = gate_up + (long long)blockIdx.x * 2 * ffn;
    const float* u = g + ffn;
    unsigned short* o = out + (long long)blockIdx.x * ffn;
    for (int i = threadIdx.x; i < ffn; i += blockDim.x) o[i] = f2h(g[i] / (1.0f + expf(-g[i])) * u[i]);
}

// out[i] = x[rows[i]]: the rows whose next token is sampled.
extern "C" __global__ void gather_rows(const float* x, const int* rows, float* out, int dim) {
    const float* src = x + (long long)rows[blockIdx.x] * dim;
    float* dst = out + (long long)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
}

// The index of each row's largest logit, the lowest among equals (NaNs never
// win), as the CPU sampler's greedy choice. One block of 1024 threads per row.
extern "C" __global__ void argmax(const float* logits, int vocab, int* out) {
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float* row = logits + (long long)blockIdx.x * vocab;
    float v = -INF;
    int idx = 0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        if (row[i] > v) { v = row[i]; idx = i; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, v, o);
        int oi = __shfl_xor_sync(0xffffffff, idx, o);
        if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { best_v[warp] = v; best_i[warp] = idx; }
    __syncthreads();
    if (warp == 0) {
        v = lane < blockDim.x / 32 ? best_v[lane] : -INF;
        idx = lane < blockDim.x / 32 ? best_i[lane] : 0;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffff, v, o);
            int oi = __shfl_xor_sync(0xffffffff, idx, o);
            if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
        }
        if (lane == 0) out[blockIdx.x] = idx;
    }
}
"#;

/// Threads per block of the row-wise kernels.
const ROW_THREADS: u32 = 256;
const ARGMAX_THREADS: u32 = 1024;

/// The compiled kernels, launched on one stream.
pub struct Kernels {
    stream: Arc<CudaStream>,
    embed: CudaFunction,
    rms_norm: CudaFunction,
    rotary: CudaFunction,
    store_kv: CudaFunction,
    attention: CudaFunction,
    silu_mul: CudaFunction,
    gather_rows: CudaFunction,
    argmax: CudaFunction,
}

/// One block per row.
fn per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A size as the kernels' `int`.
fn int(n: usize) -> i32 {
    i32::try_from(n).expect("sizes are checked to fit an int at load")
}

/// Arguments of one attention launch, all but the buffers.
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub qkv_dim: usize,
    pub max_blocks: usize,
    pub block_size: usize,
}

// SAFETY (the note every launch below refers to): the arguments match the kernel's parameters in
// number, order and type (`i32` for `int`, `f16` for `unsigned short`), and each
// buffer holds every element the kernel indexes for the given sizes and grid,
// which the callers in `mod.rs` size from the same figures. Kernels on one
// stream run in launch order, so no launch reads a buffer before it is written.
impl Kernels {
    pub fn compile(ctx: &Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Kernels, CudaError> {
        let ptx = cudarc::nvrtc::compile_ptx(SOURCE)?;
        let module = ctx.load_module(ptx)?;
        let f = |name: &str| module.load_function(name);
        Ok(Kernels {
            stream,
            embed: f("embed")?,
            rms_norm: f("rms_norm")?,
            rotary: f("rotary")?,
            store_kv: f("store_kv")?,
            attention: f("attention")?,
            silu_mul: f("silu_mul")?,
            gather_rows: f("gather_rows")?,
            argmax: f("argmax")?,
        })
    }

    pub fn embed(
        &self,
        tokens: &CudaSlice<i32>,
        table: &CudaSlice<f16>,
        x: &mut CudaSlice<f32>,
        dim: usize,
    ) -> Result<(), CudaError> {
        let dim = int(dim);
        let mut launch = self.stream.launch_builder(&self.embed);
        launch.arg(tokens).arg(table).arg(x).arg(&dim);
        // SAFETY: see the note on this impl.
        unsafe { launch.launch(per_row(tokens.len(), ROW_THREADS)) }?;
        Ok(())
    }

    pub fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        out: &mut CudaSlice<f16>,
        rows: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let dim = int(w.len());
        let mut launch = self.stream.launch_builder(&self.rms_norm);
        launch.arg(x).arg(w).arg(out).arg(&dim).arg(&eps);
        // SAFETY: see the note on this impl.
        unsafe { launch.launch(per_row(rows, ROW_THREADS)) }?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rotary(
        &self,
        qkv: &mut CudaSlice<f32>,
        positions: &CudaSlice<i32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        heads: usize,
        head_dim: usize,
        qkv_dim: usize,
    ) -> Result<(), CudaError> {
        let heads = int(heads);
        let head_dim = int(head_dim);
        let qkv_dim = int(qkv_dim);
        let mut launch = self.stream.launch_builder(&self.rotary);
        launch
            .arg(qkv)
            .arg(positions)
            .arg(cos)
            .arg(sin)
            .arg(&heads)
            .arg(&head_dim)
            .arg(&qkv_dim);
        // SAFETY: see the note on this impl.
        unsafe { launch.launch(per_row(positions.len(), ROW_THREADS)) }?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn store_kv(
        &self,
        qkv: &CudaSlice<f32>,
        slots: &CudaSlice<i32>,
        k_cache: &mut CudaViewMut<'_, f16>,
        v_cache: &mut CudaViewMut<'_, f16>,
        q_dim: usize,
        kv_dim: usize,
        qkv_dim: usize,
    ) -> Result<(), CudaError> {
        let q_dim = int(q_dim);
        let kv_dim = int(kv_dim);
        let qkv_dim = int(qkv_dim);
        let mut launch = self.stream.launch_builder(&self.store_kv);
        launch
            .arg(qkv)
            .arg(slots)
            .arg(k_cache)
            .arg(v_cache)
            .arg(&q_dim)
            .arg(&kv_dim)
            .arg(&qkv_dim);
        // SAFETY: see the note on this impl.
        unsafe { launch.launch(per_row(slots.len(), ROW_THREADS)) }?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: &CudaSlice<f32>,
        k_cache: &CudaView<'_, f16>,
        v_cache: &CudaView<'_, f16>,
        block_tables: &CudaSlice<i32>,
        token_seq: &CudaSlice<i32>,
        positions: &CudaSlice<i32>,
        out: &mut CudaSlice<f16>,
        shape: &AttentionShape,
    ) -> Result<(), CudaError> {
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let heads = int(shape.heads);
        let kv_heads = int(shape.kv_heads);
        let head_dim = int(shape.head_dim);
        let qkv_dim = int(shape.qkv_dim);
        let max_blocks = int(shape.max_blocks);
        let block_size = int(shape.block_size);
        let mut launch = self.stream.launch_builder(&self.attention);
        launch
            .arg(qkv)
            .arg(k_cache)
            .arg(v_cache)
            .arg(block_tables)
            .arg(token_seq)
            .arg(positions)
            .arg(out)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&head_dim)
            .arg(&qkv_dim)
            .arg(&max_blocks)
            .arg(&block_size)
            .arg(&scale);
        let config = LaunchConfig {
            grid_dim: (positions.len() as u32, shape.heads as u32, 1),
            block_dim: (ATTENTION_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: see the note on this impl.
        unsafe { launch.launch(config) }?;
        Ok(())
    }

    pub fn silu_mul(
        &self,
        gate_up: &CudaSlice<f32>,
        out: &mut CudaSlice<f16>,
        rows: usize,
        ffn: usize,
    ) -> Result<(), CudaError> {
        let ffn = int(ffn);
        let mut launch = self.stream.launch_builder(&self.silu_mul);
        launch.arg(gate_up).arg(out).arg(&ffn);
        // SAFETY: see the note on this impl.
        unsafe { launch.launch(per_row(rows, ROW_THREADS)) }?;
        Ok(())
    }

    pub fn gather_rows(
        &self,
        x: &CudaSlice<f32>,
        rows: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
        dim: usize,
    ) -> Result<(), CudaError> {
        let dim = int(dim);
        let mut launch = self.stream.launch_builder(&self.gather_rows);
        launch.arg(x).arg(rows).arg(out).arg(&dim);
        // SAFETY: see the note on this impl.
        unsafe { launch.launch(per_row(rows.len(), ROW_THREADS)) }?;
        Ok(())
    }

    pub fn argmax(
        &self,
        logits: &CudaSlice<f32>,
        vocab: usize,
        out: &mut CudaSlice<i32>,
    ) -> Result<(), CudaError> {
        let (vocab, rows) = (int(vocab), out.len());
        let mut launch = self.stream.launch_builder(&self.argmax);
        launch.arg(logits).arg(&vocab).arg(out);
        // SAFETY: see the note on this impl.
        unsafe { launch.launch(per_row(rows, ARGMAX_THREADS)) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SOURCE;

    /// NVRTC needs no GPU: wherever its library loads, the kernels must compile.
    #[test]
    #[ignore = "needs the NVRTC library (CUDA toolkit)"]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: only tries to open the library under its usual names.
        let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        assert!(present, "the NVRTC library cannot be loaded");
        if let Err(e) = cudarc::nvrtc::compile_ptx(SOURCE) {
            panic!("{e:?}");
        }
    }
}
