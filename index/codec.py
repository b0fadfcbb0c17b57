"""How signals, lookups and entries travel as bytes (changelog records, lookup requests).

Both are exact (float32 vectors keep their bits, so a shard rebuilt from the changelog answers
exactly as the one that wrote it).

- Lookups and answers: JSON with base64 for binary, readable with any Kafka tool.
- Changelog entries: a small binary layout (:data:`ENTRY_MAGIC`, the order, the record as JSON,
  then each signal's raw bytes with its stage, kind, dtype and shape), because a shard replays
  millions of them after a crash: an entry is ~13 KB, mostly the local features, and decoding
  it from JSON and base64 cost ~100 us (a 1M-image shard: 2 minutes of decoding alone); the
  binary layout decodes in a few. Entries written as JSON by earlier versions (their first byte
  is ``{``) are still read: a compacted changelog keeps them until their image is indexed again.
"""
from __future__ import annotations

import base64
import json
import struct
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


# Never a JSON document's first byte, so old (JSON) and binary entries tell themselves apart.
ENTRY_MAGIC = b"\x00dw1"
_HEAD = struct.Struct(">4sqI")    # magic, order, record length
_SIGNAL = struct.Struct(">BBI")   # stage name length, kind (_BYTES or _ARRAY), payload length
_ARRAY = struct.Struct(">BB")     # dtype name length, dimensions (each a >I after the name)
_BYTES, _ARRAY_KIND = 0, 1


def encode_entry(entry: Entry) -> bytes:
    record = entry.record if isinstance(entry.record, bytes) else dumps(entry.record)
    parts = [_HEAD.pack(ENTRY_MAGIC, entry.order, len(record)), record,
             bytes([len(entry.signals)])]
    for stage, signal in entry.signals.items():
        parts += _encode_binary_signal(stage.encode(), signal)
    return b"".join(parts)


def encode_entry_json(entry: Entry) -> bytes:
    """An entry as earlier versions wrote it (JSON and base64), which :func:`decode_entry`
    still reads: for compatibility tests and `bench recovery`'s comparison."""
    record = json.loads(entry.record) if isinstance(entry.record, bytes) else entry.record
    return dumps({"signals": _encode_signals(entry.signals), "record": record,
                  "order": entry.order})


def _encode_binary_signal(stage: bytes, signal: Any) -> list[bytes]:
    if isinstance(signal, bytes):
        return [_SIGNAL.pack(len(stage), _BYTES, len(signal)), stage, signal]
    array = np.ascontiguousarray(signal)
    dtype = array.dtype.str.encode()
    return [_SIGNAL.pack(len(stage), _ARRAY_KIND, array.nbytes), stage,
            _ARRAY.pack(len(dtype), array.ndim), dtype,
            struct.pack(f">{array.ndim}I", *array.shape), array.tobytes()]


def decode_entry(key: bytes, value: bytes) -> Entry:
    tenant, image_id = split_key(key)
    if not value.startswith(ENTRY_MAGIC):
        doc = json.loads(value)  # written as JSON by an earlier version
        return Entry(tenant, image_id, _decode_signals(doc["signals"]), doc["record"],
                     doc["order"])
    _, order, record_length = _HEAD.unpack_from(value)
    at = _HEAD.size + record_length
    record = value[_HEAD.size:at]  # JSON, decoded by the store only when asked
    signals: dict[str, Any] = {}
    count, at = value[at], at + 1
    for _ in range(count):
        at = _decode_binary_signal(value, at, signals)
    return Entry(tenant, image_id, signals, record, order)


def _decode_binary_signal(value: bytes, at: int, into: dict[str, Any]) -> int:
    """Decode the signal at ``at`` into ``into``; return where the next one starts."""
    name_length, kind, length = _SIGNAL.unpack_from(value, at)
    at += _SIGNAL.size
    stage = value[at:at + name_length].decode()
    at += name_length
    if kind == _BYTES:
        into[stage] = value[at:at + length]
        return at + length
    dtype_length, dims = _ARRAY.unpack_from(value, at)
    at += _ARRAY.size
    dtype = np.dtype(value[at:at + dtype_length].decode())
    at += dtype_length
    shape = struct.unpack_from(f">{dims}I", value, at)
    at += 4 * dims
    into[stage] = np.frombuffer(value, dtype, length // dtype.itemsize, at).reshape(shape).copy()
    return at + length


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
