"""A small, independent GGUF reader for the reference: metadata and tensors
dequantized to float64 with NumPy (F32, F16, Q4_1, Q8_0)."""

import struct

import numpy as np

GGML_F32, GGML_F16, GGML_Q4_1, GGML_Q8_0 = 0, 1, 3, 8
# Bytes per block and elements per block.
BLOCKS = {
    GGML_F32: (4, 1),
    GGML_F16: (2, 1),
    GGML_Q4_1: (20, 32),
    GGML_Q8_0: (34, 32),
}
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.data[self.pos : self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def value(self, t):
        if t in SCALARS:
            return self.take(SCALARS[t])
        if t == 8:
            return self.string()
        if t == 9:
            item, n = self.take("<I"), self.take("<Q")
            return [self.value(item) for _ in range(n)]
        raise ValueError(f"unknown metadata type {t}")


def dequantize(kind, raw, count):
    """Elements of one tensor as float64, in GGUF (row-major, ne[0] fastest) order."""
    if kind == GGML_F32:
        return np.frombuffer(raw, "<f4", count).astype(np.float64)
    if kind == GGML_F16:
        return np.frombuffer(raw, "<f2", count).astype(np.float64)
    size, per = BLOCKS[kind]
    b = np.frombuffer(raw, np.uint8, count // per * size).reshape(-1, size)
    f16 = lambda cols: b[:, cols].copy().view("<f2").astype(np.float64)
    if kind == GGML_Q8_0:
        return (f16(slice(0, 2)) * b[:, 2:].view(np.int8)).reshape(-1)
    if kind == GGML_Q4_1:
        # 16 bytes of nibbles: element j in the low nibble of byte j, element j + 16 in its high one.
        q = np.concatenate([b[:, 4:] & 0xF, b[:, 4:] >> 4], axis=1).astype(np.float64)
        return (q * f16(slice(0, 2)) + f16(slice(2, 4))).reshape(-1)
    raise ValueError(f"unsupported tensor type {kind}")


def read(path):
    """(metadata dict, {name: float64 array shaped like PyTorch, slowest dim first})."""
    data = open(path, "rb").read()
    r = Reader(data)
    assert r.data[:4] == b"GGUF", "not a GGUF file"
    r.pos = 4
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    assert version in (2, 3), version
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("<Q") for _ in range(r.take("<I"))]
        infos.append((name, dims, r.take("<I"), r.take("<Q")))
    align = meta.get("general.alignment", 32)
    base = (r.pos + align - 1) // align * align
    tensors = {}
    for name, dims, kind, offset in infos:
        count = int(np.prod(dims))
        size, per = BLOCKS[kind]
        raw = data[base + offset : base + offset + count // per * size]
        tensors[name] = dequantize(kind, raw, count).reshape(list(reversed(dims)))
    return meta, tensors, infos
