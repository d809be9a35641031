"""Log probabilities of a generated completion, from the float64 NumPy forward
pass of `llama_ref.py`, for checking the worker's sampler.

Usage: sampling_ref.py MODEL PROMPT GENERATED PARAMS  where PROMPT and
GENERATED are comma-separated token ids and PARAMS is JSON: `temperature`
(0 is greedy, reported at 1), `presence_penalty`, `frequency_penalty`,
`logit_bias` (`{"id": bias}`) and `top` (alternatives to list). Prints, for
each generated token, `{"logprob": its log probability, "top": [[id,
logprob], ...]}` as OpenAI defines them: the logits biased, then penalized
by the tokens generated before it, then divided by the temperature and
normalized over the whole vocabulary.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402


def ids(text):
    return [int(s) for s in text.split(",") if s]


def main():
    path, prompt, generated, params = sys.argv[1], ids(sys.argv[2]), ids(sys.argv[3]), json.loads(sys.argv[4])
    shape, tensors = llama_ref.from_hf(path) if os.path.isdir(path) else llama_ref.from_gguf(path)
    # Causal: one pass gives the logits after every position.
    logits = llama_ref.forward(shape, tensors, prompt + generated)
    temperature = params.get("temperature") or 1.0
    out = []
    for i, token in enumerate(generated):
        row = logits[len(prompt) - 1 + i].copy()
        for tid, bias in params.get("logit_bias", {}).items():
            row[int(tid)] += bias
        counts = np.bincount(np.array(generated[:i], dtype=np.int64), minlength=row.size)
        row -= counts * params.get("frequency_penalty", 0.0) + (counts > 0) * params.get("presence_penalty", 0.0)
        scaled = row / temperature
        logprobs = scaled - (scaled.max() + np.log(np.exp(scaled - scaled.max()).sum()))
        top = np.argsort(-logprobs, kind="stable")[: params.get("top", 0)]
        out.append({"logprob": float(logprobs[token]), "top": [[int(j), float(logprobs[j])] for j in top]})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
