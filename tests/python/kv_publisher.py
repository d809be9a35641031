"""A KV-event publisher that speaks vLLM's and SGLang's ZeroMQ wire format,
for the gateway's end-to-end tests (neither engine runs without a GPU).

The schema follows `vllm/distributed/kv_events.py` and SGLang's
`srt/disaggregation/kv_events.py`: msgspec structs, tagged events, a PUB
socket sending `[topic, seq (8 bytes big-endian), payload]`, and a ROUTER
replay socket that answers a start sequence with `[seq, payload]` messages
and then `[-1, b""]`. `--encoding array` writes the structs as arrays
(SGLang, and vLLM's `array_like` structs); `--encoding map` as maps with a
`type` tag (vLLM's newer structs). `--hash-bytes` sends block hashes as
32-byte strings, as vLLM's SHA-256 hashing does, instead of integers.

Commands come as JSON lines on stdin, one batch each:
  {"events": [...]}                   publish a batch
  {"events": [...], "drop": true}     number and keep it for replay, but do not
                                      send it (what a full PUB queue does)
  {"events": [...], "drop": "forget"} number it and lose it entirely (what a
                                      replay buffer that rolled over does)
Each event is a dict with "type" and the struct's fields. After each command
the script prints "published SEQ".
"""

import argparse
import json
import select
import sys
import time
from typing import Any, Optional, Union

import msgspec
import zmq


def schema(array_like: bool):
    opts = dict(array_like=array_like, omit_defaults=True, gc=False)

    class EventBatch(msgspec.Struct, **opts):
        ts: float
        events: list[Any]
        data_parallel_rank: Optional[int] = None

    class KVCacheEvent(msgspec.Struct, tag=True, **opts):
        pass

    class BlockStored(KVCacheEvent):
        block_hashes: list[Union[bytes, int]]
        parent_block_hash: Optional[Union[bytes, int]]
        token_ids: list[int]
        block_size: int
        lora_id: Optional[int]
        medium: Optional[str]
        lora_name: Optional[str]
        extra_keys: Optional[list[Optional[tuple[Any, ...]]]] = None
        group_idx: Optional[int] = None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[Union[bytes, int]]
        medium: Optional[str]
        group_idx: Optional[int] = None

    class AllBlocksCleared(KVCacheEvent):
        pass

    return EventBatch, BlockStored, BlockRemoved, AllBlocksCleared


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--replay", required=True)
    parser.add_argument("--encoding", choices=["array", "map"], default="array")
    parser.add_argument("--hash-bytes", action="store_true")
    parser.add_argument("--topic", default="kv-events")
    args = parser.parse_args()

    EventBatch, BlockStored, BlockRemoved, AllBlocksCleared = schema(args.encoding == "array")
    encoder = msgspec.msgpack.Encoder()

    def block_hash(h):
        if h is None or not args.hash_bytes:
            return h
        return int(h).to_bytes(32, "big")

    def event(e):
        kind = e["type"]
        if kind == "BlockStored":
            return BlockStored(
                block_hashes=[block_hash(h) for h in e["block_hashes"]],
                parent_block_hash=block_hash(e.get("parent_block_hash")),
                token_ids=e["token_ids"],
                block_size=e["block_size"],
                lora_id=e.get("lora_id"),
                medium=e.get("medium", "GPU"),
                lora_name=e.get("lora_name"),
                extra_keys=[tuple(k) if k is not None else None for k in e["extra_keys"]]
                if e.get("extra_keys") is not None
                else None,
            )
        if kind == "BlockRemoved":
            return BlockRemoved(
                block_hashes=[block_hash(h) for h in e["block_hashes"]],
                medium=e.get("medium", "GPU"),
            )
        if kind == "AllBlocksCleared":
            return AllBlocksCleared()
        raise ValueError(f"unknown event type {kind}")

    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(args.endpoint)
    replay = ctx.socket(zmq.ROUTER)
    replay.bind(args.replay)
    print(f"publishing on {args.endpoint}, replaying on {args.replay}", flush=True)

    buffer = []  # (seq, payload), as the engines keep for replay
    seq = 0
    topic = args.topic.encode()

    def serve_replay():
        while replay.poll(0):
            client, _, start = replay.recv_multipart()
            start = int.from_bytes(start, "big")
            for s, payload in buffer:
                if s >= start:
                    replay.send_multipart((client, b"", s.to_bytes(8, "big"), payload))
            replay.send_multipart((client, b"", (-1).to_bytes(8, "big", signed=True), b""))

    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0.01)
        serve_replay()
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:
            break
        command = json.loads(line)
        batch = EventBatch(ts=time.time(), events=[event(e) for e in command["events"]])
        payload = encoder.encode(batch)
        drop = command.get("drop", False)
        if drop != "forget":
            buffer.append((seq, payload))
        if not drop:
            pub.send_multipart((topic, seq.to_bytes(8, "big"), payload))
        print(f"published {seq}", flush=True)
        seq += 1


if __name__ == "__main__":
    main()
