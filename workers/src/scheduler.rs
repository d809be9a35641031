//! Continuous batching: which sequences run each engine step and how many
//! tokens each computes. Pure: the scheduler decides, a [`Compute`] does the
//! arithmetic, so the sim and a real model share every scheduling decision.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::LoadReport;

use protocol::KvEvent;

use crate::kv_cache::{BlockId, KvCache, SeqId};

/// Limits the scheduler enforces.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_running: usize,
    /// Prompt tokens computed per step, across all sequences.
    pub max_prefill_tokens_per_step: usize,
    pub max_model_len: usize,
    /// Generating this token ends a sequence.
    pub eos_token: Option<u32>,
}

/// A request as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NewSequence {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    /// Generated tokens to continue from (a stream resumed from another
    /// worker): computed like a preempted sequence's, counted as completion.
    pub resumed: Vec<u32>,
    pub max_tokens: usize,
    /// Seeds the sequence's sampling, so a repeated request repeats its output.
    pub seed: u64,
    pub sampling: Sampling,
    /// Another choice of the same request (`n` > 1): this one waits until
    /// that one's prompt is computed, then shares its prompt's KV blocks
    /// through the prefix cache instead of computing them again.
    pub after: Option<SeqId>,
}

/// How a sequence's next token is drawn from the model's distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 takes the most likely token (greedy).
    pub temperature: f32,
    /// Nucleus sampling: only the most likely tokens holding this much probability. 1 keeps all.
    pub top_p: f32,
    /// Only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: u32,
    /// Subtracted from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// Added to these tokens' logits before anything else.
    pub logit_bias: Arc<[(u32, f32)]>,
    /// Report each token's log probability and this many most likely
    /// alternatives'; `None` reports none.
    pub logprobs: Option<u8>,
}

impl Sampling {
    /// Whether the logits are changed before the draw.
    pub fn adjusts(&self) -> bool {
        !self.logit_bias.is_empty() || self.penalizes()
    }

    /// Whether the draw depends on the tokens generated so far.
    pub fn penalizes(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

impl Default for Sampling {
    /// OpenAI's defaults: temperature 1, no truncation, no adjustment.
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Arc::new([]),
            logprobs: None,
        }
    }
}

/// A token drawn for a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// When the sequence asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

impl Sampled {
    /// `token`, as drawn from a distribution that holds nothing else (the
    /// sim's): log probability 0, and no alternative.
    pub fn certain(token: u32, sampling: &Sampling) -> Sampled {
        Sampled {
            token,
            logprobs: sampling.logprobs.map(|top| TokenLogprobs {
                logprob: 0.0,
                top: (top > 0).then_some((token, 0.0)).into_iter().collect(),
            }),
        }
    }
}

/// Log probabilities of a drawn token and of the most likely tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// Most likely first: `(token, logprob)`.
    pub top: Vec<(u32, f32)>,
}

/// Work of one step: each item computes `tokens` of one sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepPlan {
    pub items: Vec<PlanItem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanItem {
    pub seq: SeqId,
    pub phase: Phase,
    /// Position of `tokens[0]` in the sequence.
    pub start: usize,
    pub tokens: Vec<u32>,
    /// Whether this item ends at the sequence's last token, so the next token is sampled.
    pub sample: bool,
    pub seed: u64,
    pub sampling: Sampling,
    /// The tokens generated so far, when the sampling penalizes them (else empty).
    pub generated: Vec<u32>,
    /// The sequence's block table: the physical blocks holding its positions
    /// `0..start + tokens.len()`, where a real compute reads and writes K/V.
    pub blocks: Vec<BlockId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Prompt tokens (or, after preemption, prompt and generated tokens) being computed.
    Prefill,
    /// The one token generated last step.
    Decode,
}

/// The arithmetic of a step.
pub trait Compute {
    /// Runs `plan`, returning one sampled token for each item with `sample` set, in order.
    fn step(&mut self, plan: &StepPlan) -> Vec<Sampled>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced its end-of-sequence token (or the server hit a stop string).
    Stop,
    /// `max_tokens` or `max_model_len` was reached.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    pub cached_tokens: usize,
}

/// What happened to a sequence during a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// First admission; later readmissions after preemption are not reported.
    Admitted { seq: SeqId, cached_tokens: usize },
    /// A generated token (the end-of-sequence token is not reported).
    Token {
        seq: SeqId,
        id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        seq: SeqId,
        reason: FinishReason,
        usage: TokenUsage,
    },
}

#[derive(Debug)]
struct Sequence {
    id: SeqId,
    prompt_len: usize,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    max_tokens: usize,
    seed: u64,
    sampling: Sampling,
    after: Option<SeqId>,
    /// Tokens with a KV cache slot; the last generated token has none until its decode step.
    slots: usize,
    /// Tokens whose KV is computed.
    computed: usize,
    /// Set at first admission.
    cached_tokens: Option<usize>,
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    cache: KvCache,
    waiting: VecDeque<Sequence>,
    /// In admission order: the last is the first to be preempted.
    running: Vec<Sequence>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, cache: KvCache) -> Self {
        Scheduler {
            config,
            cache,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    /// Queues a sequence. The caller guarantees `prompt.len() + max_tokens <=
    /// max_model_len` and a cache that can hold `max_model_len` tokens, so
    /// every sequence fits once it runs alone.
    pub fn add(&mut self, seq: NewSequence) {
        debug_assert!(!seq.prompt.is_empty() && seq.max_tokens > seq.resumed.len());
        let prompt_len = seq.prompt.len();
        let mut tokens = seq.prompt;
        tokens.extend(seq.resumed);
        self.waiting.push_back(Sequence {
            id: seq.id,
            prompt_len,
            tokens,
            max_tokens: seq.max_tokens,
            seed: seq.seed,
            sampling: seq.sampling,
            after: seq.after,
            slots: 0,
            computed: 0,
            cached_tokens: None,
        });
    }

    /// Drops a sequence wherever it is, freeing its blocks at once.
    pub fn cancel(&mut self, id: SeqId) {
        self.waiting.retain(|s| s.id != id);
        if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i);
            self.cache.free(id);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn load(&self) -> LoadReport {
        LoadReport {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_blocks_used: self.cache.used_blocks(),
            kv_blocks_total: self.cache.total_blocks(),
            // A waiting prompt's cached prefix costs no prefill: counting it
            // would make the worker holding a prefix look busiest to routers.
            prefill_tokens_pending: self
                .running
                .iter()
                .map(|s| s.prompt_len.saturating_sub(s.computed))
                // Another choice of a request computes only what its first
                // choice leaves, less than a block: not counted.
                .chain(self.waiting.iter().filter(|s| s.after.is_none()).map(|s| {
                    let cached = self.cache.cached_prefix_tokens(&s.tokens[..s.prompt_len]);
                    s.prompt_len.saturating_sub(s.computed.max(cached))
                }))
                .sum(),
            // Rates need a clock; the engine loop fills it in.
            decode_tokens_per_s: 0.0,
        }
    }

    pub fn drain_kv_events(&mut self) -> Vec<KvEvent> {
        self.cache.drain_events()
    }

    /// Plans a step, runs it on `compute`, and applies the sampled tokens.
    pub fn step(&mut self, compute: &mut dyn Compute) -> Vec<Output> {
        let mut out = Vec::new();
        let plan = self.schedule(&mut out);
        if !plan.items.is_empty() {
            let sampled = compute.step(&plan);
            self.apply(&plan, sampled, &mut out);
        }
        out
    }

    fn schedule(&mut self, out: &mut Vec<Output>) -> StepPlan {
        let mut plan = StepPlan::default();
        // Decodes first: sequences already generating keep going while prompts prefill.
        let preempted = self.schedule_decodes(&mut plan);
        let mut budget = self.config.max_prefill_tokens_per_step;
        for seq in &self.running {
            if budget > 0 && seq.computed < seq.slots {
                plan.items.push(prefill_chunk(seq, &mut budget));
            }
        }
        // Admitting right after preempting would only preempt again.
        while !preempted && budget > 0 && self.running.len() < self.config.max_running {
            let Some(seq) = self.waiting.front() else {
                break;
            };
            // First come, first served: a big prompt at the head is not overtaken.
            if !self.cache.can_allocate(&seq.tokens) || self.computing_prompt(seq.after) {
                break;
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            let cached = self
                .cache
                .allocate(seq.id, &seq.tokens)
                .expect("checked can_allocate");
            seq.slots = seq.tokens.len();
            seq.computed = cached;
            if seq.cached_tokens.is_none() {
                // Of the prompt: a resumed sequence's cache may hold more.
                let cached = cached.min(seq.prompt_len);
                seq.cached_tokens = Some(cached);
                out.push(Output::Admitted {
                    seq: seq.id,
                    cached_tokens: cached,
                });
            }
            plan.items.push(prefill_chunk(&seq, &mut budget));
            self.running.push(seq);
        }
        // Last, once every planned slot is allocated.
        for item in &mut plan.items {
            item.blocks = self
                .cache
                .block_table(item.seq)
                .expect("planned sequences hold blocks")
                .to_vec();
        }
        plan
    }

    /// Whether `seq` runs and has prompt tokens left to compute.
    fn computing_prompt(&self, seq: Option<SeqId>) -> bool {
        seq.is_some_and(|id| {
            self.running
                .iter()
                .any(|s| s.id == id && s.computed < s.prompt_len)
        })
    }

    /// Gives every generating sequence a slot for its newest token, preempting
    /// the most recently admitted sequences while blocks run short. Returns whether
    /// any sequence was preempted.
    fn schedule_decodes(&mut self, plan: &mut StepPlan) -> bool {
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() {
            let seq = &self.running[i];
            if seq.computed < seq.slots || seq.slots == seq.tokens.len() {
                i += 1;
                continue;
            }
            let token = seq.tokens[seq.slots];
            if self.cache.append_token(seq.id, token).is_err() {
                // Victims come from the back, after `i`, so none has a planned item yet.
                self.preempt_last();
                preempted = true;
                continue; // retry `i`, unless it was the victim
            }
            // `slots` catches up when the step is applied, so the prefill pass below
            // does not mistake this sequence for one with prompt left to compute.
            plan.items.push(PlanItem {
                seq: seq.id,
                phase: Phase::Decode,
                start: seq.computed,
                tokens: vec![token],
                sample: true,
                seed: seq.seed,
                sampling: seq.sampling.clone(),
                generated: seq.penalized_tokens(true),
                blocks: Vec::new(),
            });
            i += 1;
        }
        preempted
    }

    /// Frees the most recently admitted sequence and queues it first, to
    /// recompute its prompt and generated tokens once blocks free up.
    fn preempt_last(&mut self) {
        let mut victim = self
            .running
            .pop()
            .expect("a sequence needing a block is running");
        self.cache.free(victim.id);
        victim.slots = 0;
        victim.computed = 0;
        self.waiting.push_front(victim);
    }

    fn apply(&mut self, plan: &StepPlan, sampled: Vec<Sampled>, out: &mut Vec<Output>) {
        let mut sampled = sampled.into_iter();
        for item in &plan.items {
            let i = self
                .running
                .iter()
                .position(|s| s.id == item.seq)
                .expect("planned sequences run");
            let seq = &mut self.running[i];
            seq.computed = item.start + item.tokens.len();
            seq.slots = seq.slots.max(seq.computed);
            self.cache.mark_computed(seq.id, seq.computed);
            if !item.sample {
                continue;
            }
            let Sampled { token, logprobs } = sampled
                .next()
                .expect("compute samples one token per sampling item");
            seq.tokens.push(token);
            let completion_tokens = seq.tokens.len() - seq.prompt_len;
            let reason = if Some(token) == self.config.eos_token {
                Some(FinishReason::Stop)
            } else {
                out.push(Output::Token {
                    seq: seq.id,
                    id: token,
                    logprobs,
                });
                (completion_tokens >= seq.max_tokens
                    || seq.tokens.len() >= self.config.max_model_len)
                    .then_some(FinishReason::Length)
            };
            if let Some(reason) = reason {
                let usage = TokenUsage {
                    prompt_tokens: seq.prompt_len,
                    completion_tokens,
                    cached_tokens: seq.cached_tokens.unwrap_or(0),
                };
                out.push(Output::Finished {
                    seq: seq.id,
                    reason,
                    usage,
                });
                let id = seq.id;
                self.running.remove(i);
                self.cache.free(id);
            }
        }
    }
}

impl Sequence {
    /// What penalties need of a step that samples: the tokens generated so far.
    fn penalized_tokens(&self, samples: bool) -> Vec<u32> {
        if samples && self.sampling.penalizes() {
            self.tokens[self.prompt_len..].to_vec()
        } else {
            Vec::new()
        }
    }
}

/// The next prefill chunk of `seq`, as much as `budget` allows.
fn prefill_chunk(seq: &Sequence, budget: &mut usize) -> PlanItem {
    let n = (seq.slots - seq.computed).min(*budget);
    *budget -= n;
    let end = seq.computed + n;
    let sample = end == seq.tokens.len();
    PlanItem {
        seq: seq.id,
        phase: Phase::Prefill,
        start: seq.computed,
        tokens: seq.tokens[seq.computed..end].to_vec(),
        sample,
        seed: seq.seed,
        sampling: seq.sampling.clone(),
        generated: seq.penalized_tokens(sample),
        blocks: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples `1000 + position + seed % 7`, records every plan, and ends sequences on demand.
    #[derive(Default)]
    struct Recorder {
        plans: Vec<StepPlan>,
    }

    impl Compute for Recorder {
        fn step(&mut self, plan: &StepPlan) -> Vec<Sampled> {
            self.plans.push(plan.clone());
            plan.items
                .iter()
                .filter(|i| i.sample)
                .map(|i| {
                    let token = 1000 + (i.start + i.tokens.len()) as u32 + i.seed as u32 % 7;
                    Sampled::certain(token, &i.sampling)
                })
                .collect()
        }
    }

    const BS: usize = 4;

    fn scheduler(num_blocks: usize, max_running: usize, prefill_budget: usize) -> Scheduler {
        Scheduler::new(
            SchedulerConfig {
                max_running,
                max_prefill_tokens_per_step: prefill_budget,
                max_model_len: 64,
                eos_token: Some(7),
            },
            KvCache::new(num_blocks, BS),
        )
    }

    /// A sequence whose prompt shares no block with another id's.
    fn seq(id: u64, prompt_len: u32, max_tokens: usize) -> NewSequence {
        let first = id as u32 * 100;
        NewSequence {
            id: SeqId(id),
            prompt: (first..first + prompt_len).collect(),
            resumed: Vec::new(),
            max_tokens,
            seed: id * 7,
            sampling: Sampling::default(),
            after: None,
        }
    }

    fn summary(plan: &StepPlan) -> Vec<(u64, Phase, usize)> {
        plan.items
            .iter()
            .map(|i| (i.seq.0, i.phase, i.tokens.len()))
            .collect()
    }

    fn run_to_idle(s: &mut Scheduler, c: &mut Recorder) -> Vec<Output> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            if s.is_idle() {
                return out;
            }
            out.extend(s.step(c));
        }
        panic!("scheduler did not finish");
    }

    fn tokens_of(out: &[Output], id: u64) -> Vec<u32> {
        out.iter()
            .filter_map(|o| match o {
                Output::Token { seq, id: t, .. } if seq.0 == id => Some(*t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn long_prompts_prefill_in_chunks_while_others_decode() {
        let mut s = scheduler(64, 8, 8);
        let mut c = Recorder::default();
        s.add(seq(1, 4, 10));
        s.step(&mut c);
        s.add(seq(2, 20, 1));
        for _ in 0..4 {
            s.step(&mut c);
        }
        let plans: Vec<_> = c.plans.iter().map(summary).collect();
        assert_eq!(plans[0], [(1, Phase::Prefill, 4)]);
        // Sequence 1 decodes every step; sequence 2's 20 tokens go 8 + 8 + 4.
        assert_eq!(plans[1], [(1, Phase::Decode, 1), (2, Phase::Prefill, 8)]);
        assert_eq!(plans[2], [(1, Phase::Decode, 1), (2, Phase::Prefill, 8)]);
        assert_eq!(plans[3], [(1, Phase::Decode, 1), (2, Phase::Prefill, 4)]);
        assert!(c.plans[3].items[1].sample && !c.plans[2].items[1].sample);
        // Sequence 2 wanted one token and is done; sequence 1 goes on alone.
        assert_eq!(plans[4], [(1, Phase::Decode, 1)]);
    }

    #[test]
    fn sequences_join_and_leave_a_running_batch() {
        let mut s = scheduler(64, 2, 100);
        let mut c = Recorder::default();
        s.add(seq(1, 4, 3));
        s.add(seq(2, 4, 1));
        s.add(seq(3, 4, 2));
        let out = run_to_idle(&mut s, &mut c);
        let plans: Vec<_> = c.plans.iter().map(summary).collect();
        // max_running = 2: sequence 3 joins once sequence 2 leaves.
        assert_eq!(plans[0], [(1, Phase::Prefill, 4), (2, Phase::Prefill, 4)]);
        assert_eq!(plans[1], [(1, Phase::Decode, 1), (3, Phase::Prefill, 4)]);
        assert_eq!(plans[2], [(1, Phase::Decode, 1), (3, Phase::Decode, 1)]);
        assert_eq!(tokens_of(&out, 1), [1004, 1005, 1006]);
        let finished: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Finished { seq, reason, usage } => {
                    Some((seq.0, *reason, usage.completion_tokens))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            finished,
            [
                (2, FinishReason::Length, 1),
                (1, FinishReason::Length, 3),
                (3, FinishReason::Length, 2)
            ]
        );
        assert_eq!(s.load().kv_blocks_used, 0);
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_which_recomputes_later() {
        // 4 blocks of 4: two sequences of 7 prompt tokens fill them at the 9th token.
        let mut s = scheduler(4, 8, 100);
        let mut c = Recorder::default();
        s.add(seq(1, 7, 4));
        s.add(seq(2, 7, 4));
        let out = run_to_idle(&mut s, &mut c);
        let plans: Vec<_> = c.plans.iter().map(summary).collect();
        assert_eq!(plans[0], [(1, Phase::Prefill, 7), (2, Phase::Prefill, 7)]);
        assert_eq!(plans[1], [(1, Phase::Decode, 1), (2, Phase::Decode, 1)]);
        // Both need a third block; only sequence 1, admitted first, keeps going.
        assert_eq!(plans[2], [(1, Phase::Decode, 1)]);
        assert_eq!(plans[3], [(1, Phase::Decode, 1)]);
        // Sequence 1 is done; sequence 2 recomputes its 7 + 2 tokens but for the first
        // block, which stayed in the prefix cache.
        assert_eq!(plans[4], [(2, Phase::Prefill, 5)]);
        assert_eq!(plans[5], [(2, Phase::Decode, 1)]);
        // Recompute is invisible in the output: same tokens as if never preempted.
        assert_eq!(tokens_of(&out, 1), [1007, 1008, 1009, 1010]);
        assert_eq!(tokens_of(&out, 2), [1007, 1008, 1009, 1010]);
        let admitted = out
            .iter()
            .filter(|o| matches!(o, Output::Admitted { .. }))
            .count();
        assert_eq!(admitted, 2);
        assert_eq!(s.load().kv_blocks_used, 0);
    }

    #[test]
    fn repeated_prompts_report_cached_tokens() {
        let mut s = scheduler(64, 8, 100);
        let mut c = Recorder::default();
        s.add(seq(1, 10, 1));
        run_to_idle(&mut s, &mut c);
        s.add(NewSequence {
            id: SeqId(2),
            ..seq(1, 10, 1)
        });
        let out = run_to_idle(&mut s, &mut c);
        assert_eq!(
            out[0],
            Output::Admitted {
                seq: SeqId(2),
                cached_tokens: 8
            }
        );
        assert_eq!(summary(c.plans.last().unwrap()), [(2, Phase::Prefill, 2)]);
        let Some(Output::Finished { usage, .. }) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(
            *usage,
            TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 1,
                cached_tokens: 8
            }
        );
    }

    #[test]
    fn choices_of_one_request_share_the_prompt_blocks() {
        let mut s = scheduler(64, 8, 100);
        let mut c = Recorder::default();
        // Three choices of a 10-token prompt: two full blocks and two tokens.
        s.add(seq(1, 10, 3));
        for (id, seed) in [(2, 15), (3, 17)] {
            s.add(NewSequence {
                id: SeqId(id),
                seed,
                after: Some(SeqId(1)),
                ..seq(1, 10, 3)
            });
        }
        s.step(&mut c);
        assert_eq!(summary(&c.plans[0]), [(1, Phase::Prefill, 10)]);
        assert_eq!(s.load().kv_blocks_used, 3);
        let out = s.step(&mut c);
        // The others join once the prompt is computed, each computing only the
        // tokens past the last full block; the blocks before are shared.
        assert_eq!(
            summary(&c.plans[1]),
            [
                (1, Phase::Decode, 1),
                (2, Phase::Prefill, 2),
                (3, Phase::Prefill, 2)
            ]
        );
        assert_eq!(s.load().kv_blocks_used, 2 + 3);
        let cached: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Admitted { cached_tokens, .. } => Some(*cached_tokens),
                _ => None,
            })
            .collect();
        assert_eq!(cached, [8, 8]);
        let out = [out, run_to_idle(&mut s, &mut c)].concat();
        // Each choice draws its own tokens from its own seed.
        let [a, b] = [tokens_of(&out, 2), tokens_of(&out, 3)];
        assert!(a.len() == 3 && b.len() == 3 && a != b, "{a:?} {b:?}");
        assert_eq!(s.load().kv_blocks_used, 0);
    }

    #[test]
    fn other_choices_go_on_when_the_first_is_cancelled() {
        let mut s = scheduler(64, 8, 4);
        let mut c = Recorder::default();
        // The first choice's 10 prompt tokens take three steps at 4 a step.
        s.add(seq(1, 10, 3));
        s.add(NewSequence {
            id: SeqId(2),
            after: Some(SeqId(1)),
            ..seq(1, 10, 3)
        });
        s.step(&mut c);
        assert_eq!(s.load().waiting, 1);
        s.cancel(SeqId(1));
        // Nothing holds the second back now: it computes the prompt itself
        // (the one block the first finished is in the prefix cache).
        let out = run_to_idle(&mut s, &mut c);
        assert_eq!(tokens_of(&out, 2).len(), 3);
        assert_eq!(s.load().kv_blocks_used, 0);
    }

    #[test]
    fn cancellation_frees_blocks_at_once() {
        let mut s = scheduler(64, 8, 100);
        let mut c = Recorder::default();
        s.add(seq(1, 30, 10));
        s.add(seq(2, 4, 10));
        s.step(&mut c);
        assert_eq!(s.load().kv_blocks_used, 8 + 1);
        s.cancel(SeqId(1));
        assert_eq!(s.load().kv_blocks_used, 1);
        s.add(seq(3, 4, 10));
        s.cancel(SeqId(3));
        assert_eq!(s.load().waiting, 0);
        s.cancel(SeqId(2));
        assert!(s.is_idle());
        assert_eq!(s.load().kv_blocks_used, 0);
    }

    #[test]
    fn eos_and_max_model_len_end_sequences() {
        struct Eos;
        impl Compute for Eos {
            fn step(&mut self, plan: &StepPlan) -> Vec<Sampled> {
                let eos = Sampled::certain(7, &Sampling::default());
                plan.items
                    .iter()
                    .filter(|i| i.sample)
                    .map(|_| eos.clone())
                    .collect()
            }
        }
        let mut s = scheduler(64, 8, 100);
        s.add(seq(1, 4, 10));
        let out = s.step(&mut Eos);
        // The end-of-sequence token counts as generated but is not emitted.
        assert!(matches!(
            out.as_slice(),
            [Output::Admitted { .. }, Output::Finished { reason: FinishReason::Stop, usage, .. }]
                if usage.completion_tokens == 1
        ));
        let mut c = Recorder::default();
        s.add(seq(2, 60, 100));
        let out = run_to_idle(&mut s, &mut c);
        assert_eq!(tokens_of(&out, 2).len(), 4);
        assert!(matches!(
            out.last(),
            Some(Output::Finished {
                reason: FinishReason::Length,
                ..
            })
        ));
    }
}
