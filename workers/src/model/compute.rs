//! The `llama` engine's [`Compute`]: the forward pass, then one sampled token
//! per item that asks for one.

use super::forward::Forward;
use super::sample::sample;
use super::weights::Weights;
use crate::scheduler::{Compute, Sampled, StepPlan};

pub struct LlamaCompute {
    forward: Forward,
}

impl LlamaCompute {
    pub fn new(weights: Weights, num_blocks: usize, block_size: usize) -> Self {
        LlamaCompute {
            forward: Forward::new(weights, num_blocks, block_size),
        }
    }
}

impl Compute for LlamaCompute {
    fn step(&mut self, plan: &StepPlan) -> Vec<Sampled> {
        let logits = self.forward.run(plan);
        plan.items
            .iter()
            .filter(|item| item.sample)
            .zip(logits)
            .map(|(item, mut logits)| {
                let position = item.start + item.tokens.len();
                sample(
                    &mut logits,
                    &item.sampling,
                    &item.generated,
                    item.seed,
                    position,
                )
            })
            .collect()
    }
}
