//! The `llama` engine's [`Compute`]: the forward pass, then one sampled token
//! per item that asks for one.

use std::path::Path;

use super::forward::Forward;
use super::sample::sample;
use super::weights::Weights;
use super::ModelError;
use crate::scheduler::{Compute, StepPlan};

pub struct LlamaCompute {
    forward: Forward,
}

impl LlamaCompute {
    /// Loads the model at `path` (GGUF file or Hugging Face directory), with KV
    /// memory for `num_blocks` blocks of `block_size`.
    pub fn load(path: &Path, num_blocks: usize, block_size: usize) -> Result<Self, ModelError> {
        Ok(LlamaCompute::new(
            Weights::load(path)?,
            num_blocks,
            block_size,
        ))
    }

    pub fn new(weights: Weights, num_blocks: usize, block_size: usize) -> Self {
        LlamaCompute {
            forward: Forward::new(weights, num_blocks, block_size),
        }
    }
}

impl Compute for LlamaCompute {
    fn step(&mut self, plan: &StepPlan) -> Vec<u32> {
        let logits = self.forward.run(plan);
        plan.items
            .iter()
            .filter(|item| item.sample)
            .zip(logits)
            .map(|(item, logits)| {
                let position = item.start + item.tokens.len();
                sample(&logits, &item.sampling, item.seed, position)
            })
            .collect()
    }
}
