"""How signals, lookups and entries travel as bytes (changelog records, lookup requests).

JSON with base64 for binary: readable with any Kafka tool, and exact (float32 vectors keep
their bits, so a shard rebuilt from the changelog answers exactly as the one that wrote it).
"""
from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import numpy as np

from dupwatch.index.protocol import CandidateQuery, Hit
from dupwatch.index.store import Entry, Found, Lookup


def shard_of(tenant: str, image_id: str, shards: int) -> int:
    """The shard (changelog partition) that holds an image: stable across processes."""
    return zlib.crc32(entry_key(tenant, image_id)) % shards


def entry_key(tenant: str, image_id: str) -> bytes:
    return f"{tenant}/{image_id}".encode()  # tenant names never hold a "/"


def split_key(key: bytes) -> tuple[str, str]:
    tenant, _, image_id = key.decode().partition("/")
    return tenant, image_id


def encode_entry(entry: Entry) -> bytes:
    return dumps({"signals": _encode_signals(entry.signals), "record": entry.record,
                   "order": entry.order})


def decode_entry(key: bytes, value: bytes) -> Entry:
    doc = json.loads(value)
    tenant, image_id = split_key(key)
    return Entry(tenant, image_id, _decode_signals(doc["signals"]), doc["record"], doc["order"])


def encode_lookups(queries: list[Lookup]) -> list[dict]:
    return [{"t": q.tenant, "i": q.image_id, "s": _encode_signals(q.signals)} for q in queries]


def decode_lookups(docs: list[dict]) -> list[Lookup]:
    return [Lookup(d["t"], d["i"], _decode_signals(d["s"])) for d in docs]


def encode_found(found: list[Found]) -> list[dict]:
    return [{"h": {stage: [[h.distance, h.order, h.key, *([h.evidence] if h.evidence else [])]
                           for h in hits]
                   for stage, hits in f.hits.items()}, "e": f.earlier} for f in found]


def decode_found(docs: list[dict]) -> list[Found]:
    return [Found({stage: [Hit(float(hit[0]), int(hit[1]), hit[2], *hit[3:]) for hit in hits]
                   for stage, hits in doc["h"].items()}, doc["e"]) for doc in docs]


def _encode_signals(signals: dict[str, Any]) -> dict[str, dict]:
    return {stage: _encode_signal(signal) for stage, signal in signals.items()}


def _decode_signals(docs: dict[str, dict]) -> dict[str, Any]:
    return {stage: _decode_signal(doc) for stage, doc in docs.items()}


def _encode_signal(signal: Any) -> dict:
    if isinstance(signal, CandidateQuery):
        return {"query": _encode_signal(signal.signal), "keys": list(signal.keys)}
    if isinstance(signal, bytes):
        return {"bytes": base64.b64encode(signal).decode()}
    array = np.ascontiguousarray(signal)
    return {"array": base64.b64encode(array.tobytes()).decode(), "dtype": str(array.dtype),
            "shape": list(array.shape)}


def _decode_signal(doc: dict) -> Any:
    if "query" in doc:
        return CandidateQuery(_decode_signal(doc["query"]), tuple(doc["keys"]))
    if "bytes" in doc:
        return base64.b64decode(doc["bytes"])
    raw = base64.b64decode(doc["array"])
    return np.frombuffer(raw, dtype=np.dtype(doc["dtype"])).reshape(doc["shape"]).copy()


def dumps(doc: dict) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(doc, separators=(",", ":")).encode()
