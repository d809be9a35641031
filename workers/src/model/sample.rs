//! Choosing the next token from logits: greedy at temperature 0, otherwise
//! temperature, top-k and top-p (nucleus) sampling. The random draw is a pure
//! function of the sequence's seed and the position, so a preempted sequence
//! recomputes the same tokens and a repeated seeded request repeats its text.

use crate::scheduler::Sampling;

/// Temperatures at or below this are greedy: dividing by them would overflow.
const GREEDY_BELOW: f32 = 1e-5;

/// Whether `sampling` takes the most likely token: then only an argmax is needed.
pub fn is_greedy(sampling: &Sampling) -> bool {
    sampling.temperature <= GREEDY_BELOW
}

/// The token to generate at `position` of a sequence seeded with `seed`.
pub fn sample(logits: &[f32], sampling: &Sampling, seed: u64, position: usize) -> u32 {
    if is_greedy(sampling) {
        return argmax(logits);
    }
    let mut candidates: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / sampling.temperature))
        .collect();
    // Highest first, ties to the lower id, so the order (and the draw) is deterministic.
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
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
        }
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, 2.9, -1.0, 0.5];

    fn histogram(s: &Sampling) -> [usize; 5] {
        let mut counts = [0; 5];
        for position in 0..4000 {
            counts[sample(&LOGITS, s, 42, position) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_picks_the_most_likely() {
        assert_eq!(sample(&LOGITS, &sampling(0.0, 1.0, 0), 1, 0), 1);
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
                .map(|p| sample(&LOGITS, &s, seed, p))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
