"""One typed settings object for every dupwatch command.

Values come, in rising priority, from the field defaults, ``DUPWATCH_<NAME>`` environment
variables and command-line flags (``--name-with-dashes``). Nothing else in dupwatch reads the
environment: it receives a :class:`Settings`.

Each setting names the commands that read it (``used_by``; without it, its group's usual
readers in ``_GROUP_READERS``): it is a flag on those commands and in their ``--help`` only.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from dupwatch.errors import UserError

ENV_PREFIX = "DUPWATCH_"

# Who reads what: commands by their full name ("bank add", "bench soak").
KAFKA_CLIENTS = frozenset({"worker", "publish", "remove", "bank add", "verdicts", "report",
                           "bench soak"})
TOPIC_CREATORS = frozenset({"worker", "publish", "remove", "bank add"})  # create what they write to
CASCADE_RUNNERS = frozenset({"worker", "scan", "demo", "bench throughput", "bench workers",
                             "bench soak", "bench chaos", "bench hostile", "bench lookup"})
WORKER_RUNNERS = CASCADE_RUNNERS - {"scan"}   # run `dupwatch worker` processes, in-process or not
ENCODER_USERS = CASCADE_RUNNERS | {"bench quality", "bench embedding", "model export"}
VECTOR_INDEX_USERS = CASCADE_RUNNERS | {"bench index", "bench recovery"}

# Headings of the settings' groups in --help, and who reads a setting that does not say.
GROUP_TITLES = {"kafka": "Kafka connection", "topics": "topics", "detection": "detection",
                "limits": "input limits", "worker": "worker", "sharding": "sharded index",
                "lookup": "synchronous lookup (POST /v1/lookup)", "logging": "logging"}
_GROUP_READERS = {"kafka": KAFKA_CLIENTS, "topics": TOPIC_CREATORS,
                  "detection": CASCADE_RUNNERS, "limits": CASCADE_RUNNERS,
                  "worker": frozenset({"worker"}), "sharding": frozenset({"worker"}),
                  "lookup": frozenset({"worker"}), "logging": KAFKA_CLIENTS}


def _opt(default: Any, help: str, group: str, used_by: Iterable[str] | None = None,
         **kwargs: Any) -> Any:
    return field(default=default, metadata=_metadata(help, group, used_by), **kwargs)


def _list(default: list[str], help: str, group: str, used_by: Iterable[str] | None = None,
          **kwargs: Any) -> Any:
    return field(default_factory=lambda: list(default), metadata=_metadata(help, group, used_by),
                 **kwargs)


def _metadata(help: str, group: str, used_by: Iterable[str] | None) -> dict[str, Any]:
    readers = _GROUP_READERS[group] if used_by is None else frozenset(used_by)
    return {"help": help, "group": group, "used_by": readers}


@dataclass(frozen=True)
class Settings:
    """Every setting of every command, frozen: built once per process by :meth:`load` and handed
    down; ``dupwatch.wiring`` turns it into the typed options the other parts take. Each field's
    metadata holds its help text, its group and the commands that read it (``used_by``). A value
    of the wrong type raises :class:`UserError` naming its flag and variable; :meth:`to_env` hands
    the settings to a child process."""
    # -- kafka: where the broker is and how to authenticate to it
    bootstrap_servers: str = _opt(
        "127.0.0.1:9092", "Kafka bootstrap servers, comma separated (host:port,...).", "kafka",
        used_by=KAFKA_CLIENTS | {"broker"})
    security_protocol: str = _opt(
        "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.", "kafka")
    sasl_mechanism: str = _opt("PLAIN", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.", "kafka")
    sasl_username: str = _opt("", "SASL user name.", "kafka")
    sasl_password: str = _opt("", "SASL password (never logged).", "kafka", repr=False)
    ssl_cafile: str = _opt("", "CA bundle (PEM) that signed the brokers' certificates.", "kafka")
    ssl_certfile: str = _opt("", "Client certificate (PEM) for mutual TLS.", "kafka")
    ssl_keyfile: str = _opt("", "Client private key (PEM) for mutual TLS.", "kafka")
    # -- topics: names and layout, created explicitly at start-up
    input_topic: str = _opt("dupwatch.images", "Topic the image events are read from.", "topics",
                            used_by={"worker", "publish"})
    verdict_topic: str = _opt("dupwatch.verdicts", "Topic the verdicts are written to.", "topics",
                              used_by={"worker", "verdicts"})
    dead_letter_topic: str = _opt(
        "dupwatch.dead-letters", "Topic that receives rejected events with a reason.", "topics",
        used_by={"worker", "verdicts"})
    partitions: int = _opt(4, "Partitions for the topics dupwatch creates.", "topics")
    replication_factor: int = _opt(1, "Replication factor for the topics dupwatch creates.", "topics")
    # -- detection: the cascade's stages and thresholds
    stages: list[str] = _list(
        ["sha256", "phash", "phash_reoriented", "embedding", "verify"],
        "Stages of the cascade, in order (sha256, phash, phash_reoriented, embedding, verify).",
        "detection")
    min_score: float = _opt(
        0.99, "Calibrated score (measured precision) a match needs to be decisive, any stage.",
        "detection", used_by=CASCADE_RUNNERS | {"bench quality"})
    phash_size: int = _opt(
        16, "pHash grid side: the hash has phash_size^2 bits (16 gives 256 bits, which keeps "
        "distinct pages of one manual apart where 64 bits do not; the shipped calibration is "
        "fitted for 16).", "detection",
        used_by=CASCADE_RUNNERS | {"bench quality"})
    phash_max_distance: int = _opt(
        64, "Largest Hamming distance (bits) at which a pHash match counts as evidence at all.",
        "detection", used_by=CASCADE_RUNNERS | {"bench quality"})
    phash_near_distance: int = _opt(
        32, "Largest Hamming distance (bits) of a match labelled near_duplicate, not variant.",
        "detection")
    phash_settle_distance: int = _opt(
        12, "Largest Hamming distance (bits) at which a pHash match decides without the verify "
        "stage (when it runs): looser matches are checked by local features first.", "detection",
        used_by=CASCADE_RUNNERS | {"bench quality"})
    decode_draft_side: int = _opt(
        256, "Decode big JPEGs at reduced scale while the shorter side stays >= this (0: off).",
        "detection", used_by=CASCADE_RUNNERS | {"bench quality"})
    weights: str = _opt(
        "", "Encoder weights file (empty: the bundled artifacts/weights/encoder-v3.pt, whose SHA-256 "
        "dupwatch knows).", "detection", used_by=ENCODER_USERS)
    weights_sha256: str = _opt(
        "", "SHA-256 (hex) that --weights must have; required with --weights: weights are code "
        "and load only when pinned.", "detection", used_by=ENCODER_USERS)
    embedding_resolution: int = _opt(
        160, "Side in pixels the encoder sees (the model was trained at 160).", "detection",
        used_by=ENCODER_USERS)
    embedding_device: str = _opt("auto", "auto (CUDA when present), cuda or cpu.", "detection",
                                 used_by=ENCODER_USERS)
    embedding_backend: str = _opt(
        "onnx", "How the encoder runs: onnx (ONNX Runtime, fp32, shipped), onnx-int8 (int8, "
        "faster on CPUs with VNNI, slightly different descriptors; `dupwatch model export` "
        "first) or torch (PyTorch, for GPUs: the gpu extra); speed: docs/benchmarks.md.",
        "detection",
        used_by=ENCODER_USERS - {"model export"})
    export_dir: str = _opt(
        "", "Folder of the ONNX exports, made by `dupwatch model export` (empty: "
        "~/.cache/dupwatch/exports).", "detection", used_by=ENCODER_USERS)
    embedding_threads: int = _opt(
        0, "CPU threads for the encoder (0: the backend's default, one per core).", "detection",
        used_by=ENCODER_USERS)
    vector_index: str = _opt(
        "flat", "Embedding index of each tenant: flat (exact; search time grows with the index), "
        "hnsw-sq8 (graph of int8 codes: fast at any size, best recall; removals are filtered "
        "tombstones) or ivf-sq8 (int8 inverted file: least memory, lower recall). Measured "
        "latency, recall and memory: docs/benchmarks.md.", "detection", used_by=VECTOR_INDEX_USERS)
    vector_train_after: int = _opt(
        200_000, "hnsw-sq8 / ivf-sq8: vectors an index serves exactly (flat) before it trains on "
        "them and switches, once; ivf-sq8 makes one list per 50 of them.", "detection",
        used_by=VECTOR_INDEX_USERS)
    vector_ef_search: int = _opt(
        256, "hnsw-sq8: candidates kept while walking the graph per search; more finds more "
        "true neighbours and is slower.", "detection", used_by=VECTOR_INDEX_USERS)
    vector_nprobe: int = _opt(
        16, "ivf-sq8: lists scanned per search; more finds more true neighbours and is slower.",
        "detection", used_by=VECTOR_INDEX_USERS)
    search_k: int = _opt(8, "Candidates each stage fetches from its index.", "detection")
    top_k: int = _opt(0, "Best candidates to list in each verdict (0: none).", "detection")
    # -- limits: what counts as bad input
    max_event_bytes: int = _opt(
        16 * 1024 * 1024, "Largest accepted event or image, in bytes.", "limits",
        used_by=CASCADE_RUNNERS | {"publish", "bank add"})
    max_image_pixels: int = _opt(
        50_000_000, "Largest accepted image area in pixels (decompression-bomb guard).", "limits",
        used_by=CASCADE_RUNNERS | {"bench quality", "report"})
    decode_timeout_ms: int = _opt(
        10_000, "Longest one image may take to decode: then its decode process is killed and the "
        "event dead-lettered as decode_timeout (0: no limit).", "limits")
    decode_memory_mb: int = _opt(
        1024, "Memory one decode process may take for one image beyond its own (0: no limit); "
        "more is dead-lettered as too_large.", "limits")
    max_jpeg_scans: int = _opt(
        100, "Most scans a progressive JPEG may have, counted from its markers before decoding "
        "(encoders write about 10); more is dead-lettered as too_complex (0: no limit).",
        "limits")
    max_metadata_bytes: int = _opt(
        16 * 1024, "Largest accepted 'metadata' object, as JSON bytes.", "limits")
    uri_roots: list[str] = _list(
        [], "Directories that file:// URIs may point into, comma separated (empty: none).",
        "limits", used_by={"worker"})
    fetch_allow_hosts: list[str] = _list(
        [], "Hosts that http(s):// URIs may fetch from, comma separated; *.example.com matches "
        "every subdomain of example.com (empty: http(s) URIs are refused).", "limits",
        used_by={"worker"})
    fetch_allow_private_networks: list[str] = _list(
        [], "Private, loopback or link-local networks (CIDR, e.g. 10.1.0.0/16) that fetches may "
        "reach anyway, such as an internal image store (empty: all refused, against SSRF).",
        "limits", used_by={"worker"})
    fetch_timeout_s: float = _opt(
        10.0, "Longest one http(s) fetch may take, redirects and retries included.", "limits",
        used_by={"worker"})
    fetch_connect_timeout_s: float = _opt(
        3.0, "Longest wait for one connection to a fetch host.", "limits", used_by={"worker"})
    fetch_retries: int = _opt(
        2, "Extra fetch attempts after a transient failure (connection error, timeout, HTTP "
        "5xx, 408 or 429); then the event is dead-lettered as fetch_failed.", "limits",
        used_by={"worker"})
    fetch_max_redirects: int = _opt(
        3, "Most redirects one fetch follows; each hop is checked like the first.", "limits",
        used_by={"worker"})
    fetch_tenant_concurrency: int = _opt(
        16, "Fetches one tenant may run at once; its others wait for its own slots (on their own "
        "fetch_timeout_s clock), never for another tenant's.", "limits", used_by={"worker"})
    dead_letter_excerpt_bytes: int = _opt(
        1024, "Bytes of the original payload kept in a dead-letter record.", "limits",
        used_by={"worker", "scan"})
    # -- worker: the stream processor
    group_id: str = _opt("dupwatch", "Consumer group and Faust app id of the workers.", "worker")
    worker_name: str = _opt(
        f"{socket.gethostname()}-{os.getpid()}", "Name written into each verdict.", "worker")
    batch_size: int = _opt(64, "Most events the worker (or scan: files) takes into one batch.",
                           "worker", used_by=WORKER_RUNNERS | {"scan", "bench embedding"})
    batch_timeout_ms: int = _opt(
        20, "Longest wait (ms) for a batch to fill before it is processed.", "worker",
        used_by=WORKER_RUNNERS)
    decode_threads: int = _opt(
        os.cpu_count() or 2, "Processes that decode a batch's images in parallel (one tenant uses "
        "at most this many; the pool grows to twice as many while several tenants have images), "
        "and threads that parse events.", "worker", used_by=CASCADE_RUNNERS)
    search_threads: int = _opt(
        1, "FAISS (OpenMP) threads per search; more only helps big batched searches.", "worker",
        used_by=VECTOR_INDEX_USERS)
    state_dir: str = _opt(
        "", "Directory for index snapshots, loaded at start and saved at stop (empty: memory only).",
        "worker")
    web_port: int = _opt(
        6066, "Port of the worker's HTTP server: /metrics, /healthz and /readyz.", "worker")
    web_enabled: bool = _opt(
        True, "Serve the worker's HTTP endpoints (metrics and health probes).", "worker")
    rebalance_timeout_s: float = _opt(
        20.0, "Consumer-group rebalance timeout (s); a join waits about half of it.", "worker",
        used_by={"worker", "bench workers"})
    session_timeout_s: float = _opt(
        20.0, "Consumer-group session timeout (s): how soon a dead worker is noticed.", "worker")

    # -- sharding: the index split over workers (one worker hosts every shard)
    shards: int = _opt(
        8, "Index shards: partitions of the changelog that holds a worker's index, fixed for the "
        "index's life (the most workers that share the index). A worker hosts the shards Kafka "
        "assigns it; a lone worker hosts all of them.", "sharding",
        used_by={"worker", "bench workers"})
    index_topic_prefix: str = _opt(
        "dupwatch.index", "Prefix of the sharded index's topics: .changelog, .lookups, .answers.",
        "sharding")
    control_topic: str = _opt(
        "dupwatch.control", "Topic of takedown and bank commands (dupwatch remove, bank add).",
        "sharding", used_by={"worker", "remove", "bank add"})
    match_only_tenants: list[str] = _list(
        [], "Tenants checked against their bank but never indexed (moderation banks).",
        "sharding")
    snapshot_interval_s: float = _opt(
        60.0, "How often a worker snapshots its shards into state_dir (0: only when it stops).",
        "sharding")
    lookup_retry_s: float = _opt(
        5.0, "Resend a lookup to shards that have not answered within this long (rebalancing).",
        "sharding")

    # -- lookup: the worker's synchronous HTTP lookup (streams/lookup_api.py)
    api_tokens: list[str] = _list(
        [], "Bearer tokens that may call POST /v1/lookup, comma separated; TOKEN:t1|t2 limits "
        "one to tenants t1 and t2. The endpoint is off while no token is configured here or in "
        "api_tokens_file (never logged).", "lookup", repr=False)
    api_tokens_file: str = _opt(
        "", "File of lookup tokens, one per line in the api_tokens form (# comments), e.g. "
        "mounted from a Kubernetes Secret.", "lookup")
    lookup_queue: int = _opt(
        32, "Lookups a worker takes at once (waiting or running); more are answered 503 with "
        "Retry-After.", "lookup")
    token: str = _opt(
        "", "Bearer token for `dupwatch lookup` (better in the environment than on the command "
        "line, where other users can see it).", "lookup", used_by={"lookup"}, repr=False)

    # -- logging
    log_level: str = _opt(
        "info", "debug, info, warning or error: dupwatch's own lines at this level and above. "
        "Faust and aiokafka log only warnings and errors, librdkafka nothing, unless debug.",
        "logging", used_by=KAFKA_CLIENTS | {"broker", "demo"})

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None,
             args: argparse.Namespace | None = None) -> "Settings":
        """Defaults, overridden by ``DUPWATCH_*`` variables, overridden by parsed CLI flags."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f, raw)
            flag_value = getattr(args, f.name, None) if args is not None else None
            if flag_value is not None:
                values[f.name] = _parse(f, flag_value) if isinstance(flag_value, str) else flag_value
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, command: str) -> None:
        """Add a ``--flag`` for each setting ``command`` reads, under its group's heading, with
        its default; unset flags keep the environment's or the default value."""
        groups: dict[str, argparse._ArgumentGroup] = {}
        for f in dataclasses.fields(cls):
            if command not in f.metadata["used_by"]:
                continue
            group = f.metadata["group"]
            if group not in groups:
                groups[group] = parser.add_argument_group(f"{GROUP_TITLES[group]} settings")
            env_name = ENV_PREFIX + f.name.upper()
            groups[group].add_argument(
                "--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=_metavar(f),
                help=f"{f.metadata['help']} [default: {_shown_default(f) or '(empty)'}; env "
                     f"{env_name}]".replace("%", "%%"))

    @classmethod
    def reference_rows(cls) -> list[tuple[str, str, str, str]]:
        """(flag, env var, default, help) for every setting: docs/configuration.md's rows."""
        return [("--" + f.name.replace("_", "-"), ENV_PREFIX + f.name.upper(), _shown_default(f),
                 f.metadata["help"]) for f in dataclasses.fields(cls)]

    def to_env(self) -> dict[str, str]:
        """These settings as ``DUPWATCH_*`` variables, to hand to a child process."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            env[ENV_PREFIX + f.name.upper()] = (",".join(value) if isinstance(value, list)
                                                else str(value).lower() if isinstance(value, bool)
                                                else str(value))
        return env

    def export_path(self) -> Path | None:
        return Path(self.export_dir).expanduser() if self.export_dir else None

    def state_path(self) -> Path | None:
        return Path(self.state_dir) if self.state_dir else None


_MACHINE_DEFAULTS = {"worker_name": "<hostname>-<pid>", "decode_threads": "<CPU count>"}


def _shown_default(f: dataclasses.Field) -> str:
    if f.name in _MACHINE_DEFAULTS:
        return _MACHINE_DEFAULTS[f.name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return ",".join(default) if isinstance(default, list) else str(default)


def _metavar(f: dataclasses.Field) -> str:
    return {"int": "N", "float": "SECONDS" if f.name.endswith("_s") else "X",
            "bool": "true|false", "list[str]": "A,B"}.get(str(f.type), "TEXT")


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = str(f.type)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "list[str]":
            return [part.strip() for part in raw.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"setting {f.name} expects {kind}, got {raw!r} "
            f"(from --{f.name.replace('_', '-')} or {ENV_PREFIX}{f.name.upper()})") from None
    return raw
