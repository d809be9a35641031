"""An independent Llama forward pass in float64 NumPy, for checking the worker's.

Usage: llama_ref.py MODEL TOKEN,TOKEN,...  prints the logits of every position
as JSON, `[[vocab floats] per token]`. MODEL is a GGUF file or a Hugging Face
directory.

It un-permutes GGUF's Q and K rows back to Hugging Face's layout (a Hugging
Face directory already has it) and applies Hugging Face's half-split rotary
embedding, so agreeing with the worker (which rotates adjacent pairs, on rows it
permutes when loading a directory) shows both conventions meet.

Where the worker rounds activations to 16 bits, before products with quantized
weights, this rounds them the same way, and it rounds K and V to float16, as
the worker's cache stores them; all else is float64.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_read  # noqa: E402
import hf_read  # noqa: E402


def unpermute(w, heads):
    """Inverse of llama.cpp's convert-time permutation of Q/K rows."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def q8_round(x):
    """The worker's rounding of activations that meet quantized weights: per
    block of 32, to the nearest multiple of max|x| / 32767, halves to even."""
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    d = np.abs(blocks).max(axis=-1, keepdims=True) / 32767
    q = np.round(blocks / np.where(d > 0, d, 1))
    return (q * d).reshape(x.shape)


def from_gguf(path):
    """Shape and tensors, GGUF-named, with Q and K in Hugging Face's row order."""
    meta, t, infos = gguf_read.read(path)
    heads = meta["llama.attention.head_count"]
    shape = {
        "kinds": {name: kind for name, _, kind, _ in infos},
        "dim": meta["llama.embedding_length"],
        "layers": meta["llama.block_count"],
        "heads": heads,
        "kv_heads": meta.get("llama.attention.head_count_kv", heads),
        "eps": meta["llama.attention.layer_norm_rms_epsilon"],
        "base": meta.get("llama.rope.freq_base", 10000.0),
    }
    for i in range(shape["layers"]):
        q, k = f"blk.{i}.attn_q.weight", f"blk.{i}.attn_k.weight"
        t[q] = unpermute(t[q], heads)
        t[k] = unpermute(t[k], shape["kv_heads"])
    return shape, t


HF_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def from_hf(directory):
    """Shape and tensors of a Hugging Face directory, renamed to GGUF's names."""
    c, hf = hf_read.read(directory)
    shape = {
        "kinds": {},
        "dim": c["hidden_size"],
        "layers": c["num_hidden_layers"],
        "heads": c["num_attention_heads"],
        "kv_heads": c.get("num_key_value_heads", c["num_attention_heads"]),
        "eps": c["rms_norm_eps"],
        "base": c.get("rope_theta", 10000.0),
    }
    t = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
    if not c.get("tie_word_embeddings", False):
        t["output.weight"] = hf["lm_head.weight"]
    for i in range(shape["layers"]):
        for ours, theirs in HF_NAMES.items():
            t[f"blk.{i}.{ours}.weight"] = hf[f"model.layers.{i}.{theirs}.weight"]
    return shape, t


def forward(shape, t, tokens):
    dim, heads, kv_heads = shape["dim"], shape["heads"], shape["kv_heads"]
    eps, base = shape["eps"], shape["base"]
    hd = dim // heads
    n = len(tokens)
    x = t["token_embd.weight"][tokens]
    inv_freq = base ** (-np.arange(0, hd, 2) / hd)
    angles = np.outer(np.arange(n), inv_freq)
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]
    mask = np.triu(np.full((n, n), -np.inf), 1)

    def products(h, *names):
        """`h` times each matrix, as the worker computes them: as one product
        (it concatenates the matrices), on activations rounded to 16 bits when
        all of them are quantized alike."""
        kinds = {shape["kinds"].get(name) for name in names}
        if len(kinds) == 1 and kinds <= {gguf_read.GGML_Q4_1, gguf_read.GGML_Q8_0}:
            h = q8_round(h)
        return [h @ t[name].T for name in names]

    for i in range(shape["layers"]):
        w = lambda name: t[f"blk.{i}.{name}.weight"]
        names = lambda *short: [f"blk.{i}.{s}.weight" for s in short]
        h = rms_norm(x, w("attn_norm"), eps)
        q, k, v = products(h, *names("attn_q", "attn_k", "attn_v"))
        q = q.reshape(n, heads, hd)
        k = k.reshape(n, kv_heads, hd)
        v = v.reshape(n, kv_heads, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = (a.astype(np.float16).astype(np.float64) for a in (k, v))
        group = heads // kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(n, dim)
        x = x + products(attn, *names("attn_output"))[0]
        h = rms_norm(x, w("ffn_norm"), eps)
        gate, up = products(h, *names("ffn_gate", "ffn_up"))
        x = x + products(gate / (1 + np.exp(-gate)) * up, *names("ffn_down"))[0]
    head = "output.weight" if "output.weight" in t else "token_embd.weight"
    return products(rms_norm(x, t["output_norm.weight"], eps), head)[0]


def main():
    path = sys.argv[1]
    shape, tensors = from_hf(path) if os.path.isdir(path) else from_gguf(path)
    tokens = [int(s) for s in sys.argv[2].split(",")]
    json.dump(forward(shape, tensors, tokens).tolist(), sys.stdout)


if __name__ == "__main__":
    main()
