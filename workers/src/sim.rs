//! The sim engine's compute: sleeps as long as a step would take on a GPU,
//! per a linear timing model, and recites the corpus so the output reads like text.

use std::time::Duration;

use crate::config::SimConfig;
use crate::scheduler::{Compute, Phase, Sampled, StepPlan};
use prompt::{Tokenizer, TokenizerError, CORPUS};

pub struct SimCompute {
    timing: SimConfig,
    /// The corpus as token ids: the text every sequence recites from its own offset.
    corpus: Vec<u32>,
}

impl SimCompute {
    pub fn new(timing: SimConfig, tokenizer: &Tokenizer) -> Result<Self, TokenizerError> {
        let corpus = tokenizer.encode(CORPUS)?;
        assert!(!corpus.is_empty(), "the embedded corpus is not empty");
        Ok(SimCompute { timing, corpus })
    }

    /// How long a real engine would spend on `plan`.
    fn duration(&self, plan: &StepPlan) -> Duration {
        let (mut prefill_tokens, mut decodes) = (0u64, 0u64);
        for item in &plan.items {
            match item.phase {
                Phase::Prefill => prefill_tokens += item.tokens.len() as u64,
                Phase::Decode => decodes += 1,
            }
        }
        let t = &self.timing;
        Duration::from_micros(
            t.prefill_us_per_token * prefill_tokens
                + t.decode_step_us
                + t.decode_us_per_seq * decodes,
        )
    }

    /// The token at `position` of a sequence seeded with `seed`. A pure function of
    /// both, so a preempted sequence recomputes exactly what it had, and the same
    /// request with the same seed gets the same text.
    fn token_at(&self, seed: u64, position: usize) -> u32 {
        let len = self.corpus.len() as u64;
        self.corpus[((seed % len + position as u64 % len) % len) as usize]
    }
}

impl Compute for SimCompute {
    /// The sim recites, so its next token is certain: log probability 0.
    fn step(&mut self, plan: &StepPlan) -> Vec<Sampled> {
        let duration = self.duration(plan);
        if !duration.is_zero() {
            // The engine runs on its own OS thread, so blocking it is the point.
            std::thread::sleep(duration);
        }
        plan.items
            .iter()
            .filter(|item| item.sample)
            .map(|item| {
                let token = self.token_at(item.seed, item.start + item.tokens.len());
                Sampled::certain(token, &item.sampling)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::SeqId;
    use crate::scheduler::PlanItem;

    fn item(phase: Phase, tokens: usize, sample: bool, seed: u64) -> PlanItem {
        PlanItem {
            seq: SeqId(seed),
            phase,
            start: 10,
            tokens: vec![1; tokens],
            sample,
            seed,
            sampling: Default::default(),
            generated: Vec::new(),
            blocks: Vec::new(),
        }
    }

    #[test]
    fn timing_model_and_deterministic_text() {
        let tok = Tokenizer::builtin().unwrap();
        let timing = SimConfig {
            prefill_us_per_token: 2,
            decode_step_us: 100,
            decode_us_per_seq: 10,
        };
        let mut sim = SimCompute::new(timing, &tok).unwrap();
        let plan = StepPlan {
            items: vec![
                item(Phase::Prefill, 50, false, 1),
                item(Phase::Decode, 1, true, 2),
                item(Phase::Decode, 1, true, 3),
            ],
        };
        assert_eq!(
            sim.duration(&plan),
            Duration::from_micros(2 * 50 + 100 + 10 * 2)
        );
        sim.timing = SimConfig {
            prefill_us_per_token: 0,
            decode_step_us: 0,
            decode_us_per_seq: 0,
        };
        let a: Vec<u32> = sim.step(&plan).into_iter().map(|s| s.token).collect();
        assert_eq!(a.len(), 2);
        assert_eq!(
            a,
            sim.step(&plan)
                .into_iter()
                .map(|s| s.token)
                .collect::<Vec<_>>()
        );
        // Consecutive positions recite consecutive corpus text.
        let text: Vec<u32> = (0..20).map(|p| sim.token_at(7, p)).collect();
        let decoded = tok.decode(&text).unwrap();
        assert!(CORPUS.contains(&decoded), "{decoded}");
    }
}
