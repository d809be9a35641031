"""An independent Llama forward pass in float64 NumPy, for checking the worker's.

Usage: llama_ref.py MODEL.gguf TOKEN,TOKEN,...  prints the logits of every
position as JSON, `[[vocab floats] per token]`.

It un-permutes GGUF's Q and K rows back to Hugging Face's layout and applies
Hugging Face's half-split rotary embedding, so agreeing with the worker (which
rotates adjacent pairs on the file's rows) shows both conventions meet.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_read  # noqa: E402


def unpermute(w, heads):
    """Inverse of llama.cpp's convert-time permutation of Q/K rows."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(meta, t, tokens):
    dim = meta["llama.embedding_length"]
    heads = meta["llama.attention.head_count"]
    kv_heads = meta.get("llama.attention.head_count_kv", heads)
    eps = meta["llama.attention.layer_norm_rms_epsilon"]
    base = meta.get("llama.rope.freq_base", 10000.0)
    hd = dim // heads
    n = len(tokens)
    x = t["token_embd.weight"][tokens]
    inv_freq = base ** (-np.arange(0, hd, 2) / hd)
    angles = np.outer(np.arange(n), inv_freq)
    cos = np.cos(np.concatenate([angles, angles], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], axis=-1))[:, None, :]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(meta["llama.block_count"]):
        w = lambda name: t[f"blk.{i}.{name}.weight"]
        h = rms_norm(x, w("attn_norm"), eps)
        q = (h @ unpermute(w("attn_q"), heads).T).reshape(n, heads, hd)
        k = (h @ unpermute(w("attn_k"), kv_heads).T).reshape(n, kv_heads, hd)
        v = (h @ w("attn_v").T).reshape(n, kv_heads, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = heads // kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(n, dim)
        x = x + attn @ w("attn_output").T
        h = rms_norm(x, w("ffn_norm"), eps)
        gate, up = h @ w("ffn_gate").T, h @ w("ffn_up").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w("ffn_down").T
    head = t.get("output.weight", t["token_embd.weight"])
    return rms_norm(x, t["output_norm.weight"], eps) @ head.T


def main():
    meta, tensors, _ = gguf_read.read(sys.argv[1])
    tokens = [int(s) for s in sys.argv[2].split(",")]
    json.dump(forward(meta, tensors, tokens).tolist(), sys.stdout)


if __name__ == "__main__":
    main()
