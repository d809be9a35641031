//! The CUDA backend against the CPU one: logits on the tiny model for the same
//! steps through the same paged blocks, and sampling through `Compute`.
//! Ignored by default: it needs a CUDA device. `scripts/test.sh` runs it with
//! `--ignored` where the driver library is present.
#![cfg(feature = "cuda")]

// The shared generator; this file needs only the GGUF writer, the tokenizer and plan items.
#[allow(dead_code)]
mod model_support;

use model_support::plan_item;

use workers::model::cuda::CudaCompute;
use workers::model::{load_weights, Forward};
use workers::scheduler::{Compute, Phase, StepPlan};

#[test]
#[ignore = "needs a CUDA device"]
fn cuda_logits_match_the_cpu() {
    if let Err(why) = workers::model::cuda::available() {
        // The whole chain: the driver's own error says why it cannot start.
        let mut why: &dyn std::error::Error = &why;
        let mut reason = why.to_string();
        while let Some(source) = why.source() {
            reason = format!("{reason}: {source}");
            why = source;
        }
        panic!("CUDA unavailable: {reason}");
    }
    let trained = model_support::train_tokenizer();
    let path = model_support::write_tiny_model(&trained, "tiny-cuda");
    let ids = trained
        .encode("Rain fell on the quiet town.", true)
        .unwrap();
    let a = &ids.get_ids()[..9];
    let mut b = a[..8].to_vec();
    b.extend([40, 41, 42]);
    // A prefill over scattered blocks, then a decode batched with a prefill
    // that reuses two of its blocks from the prefix cache.
    let steps = [
        StepPlan {
            items: vec![plan_item(1, Phase::Prefill, &a[..8], 0, &[5, 2], 0.0)],
        },
        StepPlan {
            items: vec![
                plan_item(1, Phase::Decode, a, 8, &[5, 2, 7], 0.0),
                plan_item(2, Phase::Prefill, &b, 8, &[5, 2, 3], 0.8),
            ],
        },
    ];
    let mut cpu = Forward::new(load_weights(&path).unwrap(), 8, 4);
    let mut cuda = CudaCompute::new(&load_weights(&path).unwrap(), 8, 4).unwrap();
    for (s, step) in steps.iter().enumerate() {
        let (ours, theirs) = (cuda.run(step).unwrap(), cpu.run(step));
        assert_eq!(ours.len(), theirs.len());
        for (i, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
            let diff = ours
                .iter()
                .zip(theirs)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            eprintln!("step {s} logits {i}: max |diff| {diff:.2e}, max |logit| {scale:.2}");
            // f16 weights and activations against f32: a few parts in a thousand.
            assert!(
                diff < 2e-2 * scale.max(1.0),
                "step {s} logits {i} differ by {diff}"
            );
        }
    }
    // Sampling on the device (greedy) and on the host (temperature), through `Compute`.
    let mut cuda = CudaCompute::new(&load_weights(&path).unwrap(), 8, 4).unwrap();
    cuda.step(&steps[0]);
    let tokens = cuda.step(&steps[1]);
    let vocab = trained.get_vocab_size(true) as u32;
    assert!(
        tokens.len() == 2 && tokens.iter().all(|t| t.token < vocab),
        "{tokens:?}"
    );
    std::fs::remove_file(path).unwrap();
}
