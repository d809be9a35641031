"""A small, independent reader of a Hugging Face model directory for the
reference: config.json and *.safetensors (F32, F16, BF16) as float64 NumPy."""

import glob
import json
import os
import struct

import numpy as np


def tensors(path):
    """{name: float64 array} of one safetensors file."""
    data = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[base + start : base + end]
        dtype = info["dtype"]
        if dtype == "F32":
            a = np.frombuffer(raw, "<f4")
        elif dtype == "F16":
            a = np.frombuffer(raw, "<f2")
        elif dtype == "BF16":
            # bf16 is the top half of an f32.
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view("<f4")
        else:
            raise ValueError(f"{name}: unsupported dtype {dtype}")
        out[name] = a.astype(np.float64).reshape(info["shape"])
    return out


def read(directory):
    """(config dict, {name: float64 array}) over every shard."""
    config = json.load(open(os.path.join(directory, "config.json")))
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        out.update(tensors(path))
    return config, out
