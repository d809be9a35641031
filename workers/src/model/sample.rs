//! Choosing the next token from logits. The logits are first adjusted
//! (`logit_bias`, then presence and frequency penalties over the tokens
//! generated so far, as OpenAI defines them), then the token is the argmax at
//! temperature 0, otherwise a draw under temperature, top-k and top-p
//! (nucleus). The random draw is a pure function of the sequence's seed and
//! the position, so a preempted sequence recomputes the same tokens and a
//! repeated seeded request repeats its text. Log probabilities, when asked
//! for, are of the adjusted logits over temperature (1 when greedy) across the
//! whole vocabulary, before top-k and top-p cut it: the distribution the
//! model gave, not the truncated one the draw used.

use std::collections::HashMap;

use crate::scheduler::{Sampled, Sampling, TokenLogprobs};

/// Temperatures at or below this are greedy: dividing by them would overflow.
const GREEDY_BELOW: f32 = 1e-5;

/// Whether `sampling` takes the most likely token of the model's own logits:
/// then an argmax is all that is needed (a GPU computes it on the device).
#[cfg(feature = "cuda")]
pub fn is_plain_argmax(sampling: &Sampling) -> bool {
    is_greedy(sampling) && !sampling.adjusts() && sampling.logprobs.is_none()
}

fn is_greedy(sampling: &Sampling) -> bool {
    sampling.temperature <= GREEDY_BELOW
}

/// The token to generate at `position` of a sequence seeded with `seed`,
/// whose completion so far is `generated`. Adjusts `logits` in place.
pub fn sample(
    logits: &mut [f32],
    sampling: &Sampling,
    generated: &[u32],
    seed: u64,
    position: usize,
) -> Sampled {
    adjust(logits, sampling, generated);
    let (token, temperature) = if is_greedy(sampling) {
        (argmax(logits), 1.0)
    } else {
        let t = sampling.temperature;
        (draw(logits, sampling, seed, position), t)
    };
    Sampled {
        token,
        logprobs: sampling
            .logprobs
            .map(|top| logprobs(logits, temperature, token, top as usize)),
    }
}

/// `logit_bias`, then OpenAI's penalties: each token generated `c` times
/// loses `c * frequency_penalty + presence_penalty`.
fn adjust(logits: &mut [f32], sampling: &Sampling, generated: &[u32]) {
    for &(id, bias) in sampling.logit_bias.iter() {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += bias;
        }
    }
    if sampling.presence_penalty == 0.0 && sampling.frequency_penalty == 0.0 {
        return;
    }
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &id in generated {
        *counts.entry(id).or_default() += 1;
    }
    for (id, count) in counts {
        if let Some(l) = logits.get_mut(id as usize) {
            *l -= count as f32 * sampling.frequency_penalty + sampling.presence_penalty;
        }
    }
}

/// Highest first, ties to the lower id, so orders (and draws) are deterministic.
fn order(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

fn draw(logits: &[f32], sampling: &Sampling, seed: u64, position: usize) -> u32 {
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / sampling.temperature))
        .collect();
    let k = sampling.top_k as usize;
    if k > 0 && k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, order);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(order);
    let max = candidates[0].1;
    let mut probs: Vec<f32> = candidates.iter().map(|c| (c.1 - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    // Nucleus: the fewest most-likely tokens whose mass reaches top_p, at least one.
    let mut keep = probs.len();
    if sampling.top_p < 1.0 {
        let mut mass = 0.0;
        for (i, p) in probs.iter().enumerate() {
            mass += p / total;
            if mass >= sampling.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    probs.truncate(keep);
    let kept: f32 = probs.iter().sum();
    let mut target = uniform(seed, position) as f32 * kept;
    for (c, p) in candidates.iter().zip(&probs) {
        if target < *p {
            return c.0;
        }
        target -= p;
    }
    // Rounding can leave a sliver of `target`; it belongs to the last kept token.
    candidates[keep - 1].0
}

/// `token`'s log probability under softmax(`logits` / `temperature`), and
/// the `top` most likely tokens' (sums in f64: a vocabulary of 50k f32
/// terms would lose digits).
fn logprobs(logits: &[f32], temperature: f32, token: u32, top: usize) -> TokenLogprobs {
    let t = f64::from(temperature);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scaled = |l: f32| (f64::from(l) - f64::from(max)) / t;
    let log_total = logits.iter().map(|&l| scaled(l).exp()).sum::<f64>().ln();
    let logprob = |id: u32| (scaled(logits[id as usize]) - log_total) as f32;
    let mut best: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    let top = top.min(best.len());
    if top > 0 && top < best.len() {
        best.select_nth_unstable_by(top - 1, order);
    }
    best.truncate(top);
    best.sort_unstable_by(order);
    TokenLogprobs {
        logprob: logprob(token),
        top: best.into_iter().map(|(id, _)| (id, logprob(id))).collect(),
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A uniform draw in `[0, 1)` from SplitMix64 of the seed and position.
fn uniform(seed: u64, position: usize) -> f64 {
    let mut z = seed ^ (position as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32, top_k: u32) -> Sampling {
        Sampling {
            temperature,
            top_p,
            top_k,
            ..Sampling::default()
        }
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, 2.9, -1.0, 0.5];

    fn pick(s: &Sampling, generated: &[u32], seed: u64, position: usize) -> Sampled {
        sample(&mut LOGITS.to_vec(), s, generated, seed, position)
    }

    fn histogram(s: &Sampling) -> [usize; 5] {
        let mut counts = [0; 5];
        for position in 0..4000 {
            counts[pick(s, &[], 42, position).token as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_picks_the_most_likely() {
        assert_eq!(pick(&sampling(0.0, 1.0, 0), &[], 1, 0).token, 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let [a, b, c, d, e] = histogram(&sampling(1.0, 1.0, 2));
        assert_eq!((a, d, e), (0, 0, 0));
        assert!(b > c && c > 1500, "{b} {c}");
        // The top two hold ~0.82 of the mass at temperature 1.
        let counts = histogram(&sampling(1.0, 0.8, 0));
        assert_eq!(counts[0] + counts[3] + counts[4], 0);
        let all = histogram(&sampling(1.0, 1.0, 0));
        assert!(all.iter().all(|&n| n > 0), "{all:?}");
    }

    #[test]
    fn draws_depend_only_on_seed_and_position() {
        let s = sampling(1.5, 1.0, 0);
        let run = |seed| {
            (0..50)
                .map(|p| pick(&s, &[], seed, p).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn bias_and_penalties_move_the_argmax() {
        let mut s = sampling(0.0, 1.0, 0);
        s.logit_bias = vec![(4, 3.0)].into();
        assert_eq!(pick(&s, &[], 1, 0).token, 4);
        // Token 1 generated once: presence alone (0.2) leaves it first, frequency
        // on two occurrences (2 * 0.1 + 0.2 = 0.4 > 0.1) hands the lead to token 2.
        let mut s = sampling(0.0, 1.0, 0);
        s.presence_penalty = 0.05;
        assert_eq!(pick(&s, &[1], 1, 0).token, 1);
        s.presence_penalty = 0.2;
        s.frequency_penalty = 0.1;
        assert_eq!(pick(&s, &[1, 1, 3], 1, 0).token, 2);
        // A negative penalty rewards repetition.
        s.presence_penalty = -2.0;
        s.frequency_penalty = -0.5;
        assert_eq!(pick(&s, &[0], 1, 0).token, 0);
    }

    #[test]
    fn logprobs_are_of_the_adjusted_logits_over_temperature() {
        let mut s = sampling(0.5, 0.5, 1);
        s.logprobs = Some(3);
        s.logit_bias = vec![(0, 1.0)].into();
        let got = pick(&s, &[], 9, 0).logprobs.unwrap();
        // Adjusted: [2, 3, 2.9, -1, 0.5] / 0.5, normalized over all five.
        let scaled: Vec<f64> = [2.0, 3.0, 2.9, -1.0, 0.5].iter().map(|l| l / 0.5).collect();
        let log_total = scaled.iter().map(|l| l.exp()).sum::<f64>().ln();
        let want = |id: usize| (scaled[id] - log_total) as f32;
        // top_k = 1 makes token 1 the only draw; top_p does not cut the report.
        assert!((got.logprob - want(1)).abs() < 1e-6, "{got:?}");
        let ids: Vec<u32> = got.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 2, 0]);
        for (id, lp) in &got.top {
            assert!((lp - want(*id as usize)).abs() < 1e-6, "{got:?}");
        }
        // Greedy reports the distribution at temperature 1.
        let mut s = sampling(0.0, 1.0, 0);
        s.logprobs = Some(0);
        let got = pick(&s, &[], 9, 0).logprobs.unwrap();
        let total: f64 = LOGITS.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((f64::from(got.logprob) - (3.0 - total.ln())).abs() < 1e-6);
        assert!(got.top.is_empty());
    }
}
