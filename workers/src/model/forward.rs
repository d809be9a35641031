//! The forward pass over one scheduler step: every item's tokens (prefill
//! chunks and decodes of many sequences) go through the layers together as one
//! batch of rows; only attention looks at which sequence a row belongs to.

use super::attention::{attend, KvStore, TokenPlace};
use super::exp::exp;
use super::matmul::matmul;
use super::team::Team;
use super::weights::Weights;
use crate::scheduler::StepPlan;

/// The model, its KV cache memory and the threads that compute on them.
pub struct Forward {
    weights: Weights,
    store: KvStore,
    team: &'static Team,
    /// `rope_base^(-2i / head_dim)` for each rotary pair `i`.
    inv_freq: Vec<f64>,
}

impl Forward {
    /// `num_blocks` blocks of `block_size` tokens: the geometry of the scheduler's `KvCache`.
    pub fn new(weights: Weights, num_blocks: usize, block_size: usize) -> Forward {
        let h = &weights.hyper;
        let store = KvStore::new(num_blocks, block_size, h.layers, h.kv_heads, h.head_dim);
        let inv_freq = (0..h.head_dim / 2)
            .map(|i| f64::from(h.rope_base).powf(-2.0 * i as f64 / h.head_dim as f64))
            .collect();
        Forward {
            weights,
            store,
            team: Team::global(),
            inv_freq,
        }
    }

    /// Runs `plan`, storing every token's K/V in its sequence's blocks, and
    /// returns the next-token logits of each item with `sample` set, in order.
    pub fn run(&mut self, plan: &StepPlan) -> Vec<Vec<f32>> {
        let h = self.weights.hyper.clone();
        let (dim, hd) = (h.dim, h.head_dim);
        let (q_dim, kv_dim) = (h.heads * hd, h.kv_dim());
        let qkv_dim = q_dim + 2 * kv_dim;
        let places: Vec<TokenPlace<'_>> = plan
            .items
            .iter()
            .flat_map(|item| {
                (0..item.tokens.len()).map(|i| TokenPlace {
                    blocks: &item.blocks,
                    position: item.start + i,
                })
            })
            .collect();
        let rows = places.len();
        let mut x = vec![0.0f32; rows * dim];
        let tokens = plan.items.iter().flat_map(|item| &item.tokens);
        for (&t, x) in tokens.zip(x.chunks_exact_mut(dim)) {
            self.weights.embed.rows_into(t as usize, x);
        }
        let (cos, sin) = self.rotary_tables(&places);
        let mut normed = vec![0.0f32; rows * dim];
        let mut qkv = vec![0.0f32; rows * qkv_dim];
        let mut proj = vec![0.0f32; rows * dim];
        let mut gate_up = vec![0.0f32; rows * 2 * h.ffn_dim];
        let mut act = vec![0.0f32; rows * h.ffn_dim];
        for (l, layer) in self.weights.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, h.norm_eps, &mut normed);
            matmul(self.team, &normed, &layer.wqkv, &mut qkv, rows);
            let mut q = Vec::with_capacity(rows * q_dim);
            for (t, row) in qkv.chunks_exact_mut(qkv_dim).enumerate() {
                let half = hd / 2;
                let (cos, sin) = (
                    &cos[t * half..(t + 1) * half],
                    &sin[t * half..(t + 1) * half],
                );
                // Q and K heads alike; V (the tail) is not rotated.
                for head in row[..q_dim + kv_dim].chunks_exact_mut(hd) {
                    rotate(head, cos, sin);
                }
                q.extend_from_slice(&row[..q_dim]);
                let (k, v) = row[q_dim..].split_at(kv_dim);
                self.store
                    .write(places[t].blocks, places[t].position, l, k, v);
            }
            let attn = attend(
                self.team,
                &self.store,
                l,
                &places,
                &q,
                h.heads,
                h.kv_heads,
                hd,
            );
            matmul(self.team, &attn, &layer.wo, &mut proj, rows);
            add(&mut x, &proj);
            rms_norm(&x, &layer.ffn_norm, h.norm_eps, &mut normed);
            matmul(self.team, &normed, &layer.w_gate_up, &mut gate_up, rows);
            for (a, gu) in act
                .chunks_exact_mut(h.ffn_dim)
                .zip(gate_up.chunks_exact(2 * h.ffn_dim))
            {
                let (g, u) = gu.split_at(h.ffn_dim);
                for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + exp(-g, &|a, b, c| a * b + c)) * u;
                }
            }
            matmul(self.team, &act, &layer.w_down, &mut proj, rows);
            add(&mut x, &proj);
        }
        self.logits(plan, &x)
    }

    /// Final norm and LM head for the last row of each sampling item only.
    fn logits(&self, plan: &StepPlan, x: &[f32]) -> Vec<Vec<f32>> {
        let h = &self.weights.hyper;
        let mut last = Vec::new();
        let mut end = 0;
        for item in &plan.items {
            end += item.tokens.len();
            if item.sample {
                last.extend_from_slice(&x[(end - 1) * h.dim..end * h.dim]);
            }
        }
        let rows = last.len() / h.dim;
        let mut normed = vec![0.0f32; last.len()];
        rms_norm(&last, &self.weights.out_norm, h.norm_eps, &mut normed);
        let mut logits = vec![0.0f32; rows * h.vocab];
        matmul(
            self.team,
            &normed,
            self.weights.lm_head(),
            &mut logits,
            rows,
        );
        logits.chunks_exact(h.vocab).map(<[f32]>::to_vec).collect()
    }

    /// Per-token cos and sin of each rotary pair's angle, `[tokens, head_dim / 2]`.
    fn rotary_tables(&self, places: &[TokenPlace<'_>]) -> (Vec<f32>, Vec<f32>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for place in places {
            for &f in &self.inv_freq {
                let (s, c) = (place.position as f64 * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        (cos, sin)
    }
}

/// Rotary embedding in llama.cpp's "normal" form: pairs `(2i, 2i + 1)`. GGUF
/// converters permute Q and K rows so this equals Hugging Face's half-split
/// rotation on the original weights (the NumPy reference checks exactly that).
fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (mean_square + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
