"""The index split into shards that follow Kafka partitions.

Three topics, each with ``shards`` partitions (partition n is shard n):
- ``<prefix>.changelog`` (compacted) holds every index update, keyed ``tenant/image_id``: an
  image's entry (its signal for each stage and the verdict it got) or a tombstone (takedown).
  It is the truth; a shard is whatever its partition says.
- ``<prefix>.lookups``: a worker checking a batch sends the batch's lookup to every shard.
- ``<prefix>.answers``: shards answer there, on the partition the asking worker reads.

Every worker runs a :class:`ShardServer`: a member of the ``<group>.shards`` consumer group on
the lookups topic, so Kafka's group assignment decides which worker hosts which shard. A shard
it is given is rebuilt from the latest local snapshot plus the changelog's tail, and its lookups
partition stays paused until then: a shard that has not caught up answers nothing, and the
asking worker waits (and re-asks) rather than miss. Before answering, a shard applies the
changelog up to its current end, so every update acknowledged before a lookup is seen by it.
:class:`ShardClient` is the cascade's :class:`~dupwatch.index.Store` over those topics; it
answers lookups for the shards its own worker hosts in-process (no broker round trip), so a
lone worker hosting every shard is as fast as an index in its own memory.

Crash-only: if the server's thread dies, ``failure`` is set, ``/healthz`` fails, lookups raise
:class:`~dupwatch.errors.WorkerFailed` and the process is asked to stop (SIGTERM to itself),
so it exits non-zero and the orchestrator restarts it. A damaged shard snapshot is logged and
the shard rebuilt from the changelog alone (index/snapshot.py).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from dupwatch.errors import ConfigError, StateError, WorkerFailed
from dupwatch.index import Entry, Found, LocalStore, Lookup, set_search_threads
from dupwatch.index.snapshot import BackgroundSnapshot, SnapshotError
from dupwatch.index.codec import (
    decode_entry, decode_found, decode_lookups, dumps, encode_entry, encode_found, encode_lookups,
    entry_key, shard_of, split_key,
)
from dupwatch.messaging.kafka import (
    CHANGELOG_DELETE_RETENTION_MS, KafkaOptions, ShardTopics, confluent_config, max_message_bytes,
)

log = logging.getLogger(__name__)

SIZES_EVERY_S = 5.0
# Longest wait of one pass of the shard thread for lookups (or, while a shard rebuilds, for its
# changelog): short, since each pass also applies what the changelog brought meanwhile.
PASS_WAIT_S = 0.005
QUICK_SNAPSHOT_IMAGES = 10_000  # a shard this small is written in about a second
# Kafka may drop a tombstone delete.retention.ms after compaction: a snapshot older than that
# could miss a takedown, so such snapshots are not used (the changelog alone rebuilds the shard).
_SNAPSHOT_MAX_AGE_S = CHANGELOG_DELETE_RETENTION_MS / 1000 - 24 * 3600


@dataclass(frozen=True)
class ShardOptions:
    """A worker's sharded store: ``shards`` changelog partitions (fixed for the index's life)
    under ``index_topic_prefix``, the consumer groups named after ``group_id`` with its group
    timeouts, snapshots under ``state_dir`` every ``snapshot_interval_s``, lookups resent to
    silent shards after ``lookup_retry_s``, FAISS threads per search."""
    group_id: str
    worker_name: str
    index_topic_prefix: str
    shards: int
    session_timeout_s: float
    rebalance_timeout_s: float
    search_threads: int
    state_dir: Path | None
    snapshot_interval_s: float
    lookup_retry_s: float


def _fast_consumer(kafka: KafkaOptions, **extra: object) -> Consumer:
    # Short fetch waits: a lookup is two hops, and the bundled broker (Tansu) answers a fetch
    # some way into its maximum wait even when data arrived at once (measured: a record's
    # latency p50 4.5 ms at 5 ms, 7 ms at 50, 115 ms at 500). Not shorter: each consumer asks
    # again every wait, and at 5 ms an idle worker kept 12 % of a core and its broker 40 %
    # busy (6.7 % and 11 % at 50 ms).
    return Consumer(confluent_config(kafka, **{
        "enable.auto.commit": False, "fetch.wait.max.ms": 50,
        "fetch.max.bytes": max_message_bytes(kafka.max_event_bytes) * 4,
        "max.partition.fetch.bytes": max_message_bytes(kafka.max_event_bytes), **extra}))


class _Shard:
    """One shard this worker hosts: its store, where it is in the changelog, and whether it
    has caught up with the changelog's end as it was when the shard was assigned."""

    def __init__(self, number: int, store: LocalStore, next_offset: int, caught_up_at: int,
                 snapshot: "_Snapshotted") -> None:
        self.number = number
        self.store = store
        self.next_offset = next_offset
        self.caught_up_at = caught_up_at
        self.snapshot = snapshot  # its latest snapshot on disk
        self.answering = False  # its lookups partition is resumed

    @property
    def ready(self) -> bool:
        return self.next_offset >= self.caught_up_at

    def snapshot_due(self) -> bool:
        """Changed since its latest snapshot, or that snapshot is missing or nears the age at
        which it is no longer used (the changelog's tombstone retention)."""
        return self._snapshot_stale() or self.next_offset > self.snapshot.offset

    def worth_a_snapshot_now(self) -> bool:
        """Whether writing a snapshot while the worker waits (a rebalance, a stop) saves the
        next start more than it costs: a small shard, or more records since the latest
        snapshot than half its images (`bench recovery`: applying a record costs ~1.5x
        writing one; at a million images a snapshot takes minutes, more than a stop may)."""
        changed = self.next_offset - self.snapshot.offset
        return self._snapshot_stale() or (changed > 0 and (
            len(self.store) < QUICK_SNAPSHOT_IMAGES or changed > len(self.store) / 2))

    def _snapshot_stale(self) -> bool:
        return time.time() - self.snapshot.saved_at > _SNAPSHOT_MAX_AGE_S / 2


@dataclass(frozen=True)
class _Snapshotted:
    """How far into its changelog a shard's snapshot goes and when it was written (zeros:
    none)."""
    offset: int = 0
    saved_at: float = 0.0

    @property
    def meta(self) -> dict:
        """As the snapshot's manifest keeps it (read back by ShardServer._recover)."""
        return {"next_offset": self.offset, "saved_at": self.saved_at}


class ShardServer:
    """Hosts the shards Kafka assigns to this worker and answers their lookups (own thread)."""

    def __init__(self, options: ShardOptions, kafka: KafkaOptions,
                 new_store: Callable[[], LocalStore]) -> None:
        self.options = options
        self.topics = ShardTopics.of(options.index_topic_prefix)
        self._new_store = new_store
        self._shards: dict[int, _Shard] = {}
        self._kept_from_revoke: dict[int, _Shard] = {}
        self._heartbeat_s = min(3.0, options.session_timeout_s / 3)
        self._lookups = _fast_consumer(kafka, **{
            "group.id": f"{options.group_id}.shards", "auto.offset.reset": "latest",
            "session.timeout.ms": int(options.session_timeout_s * 1000),
            "max.poll.interval.ms": max(int(options.rebalance_timeout_s * 1000), 6000),
            "heartbeat.interval.ms": int(self._heartbeat_s * 1000)})
        self._changelog = _fast_consumer(kafka, **{"group.id": f"{options.group_id}.changelog"})
        self._answers = Producer(confluent_config(kafka, **{
            "linger.ms": 1, "message.max.bytes": max_message_bytes(kafka.max_event_bytes) * 4}))
        self._stop_requested_at: float | None = None  # set from the caller's thread by stop()
        # Held by this thread while it changes the shards (changelog, assignment, snapshots)
        # and by the cascade's thread while it answers from them in-process; notified after
        # each pass over the changelog.
        self._applied = threading.Condition(threading.RLock())
        self.failure: BaseException | None = None
        # From subscribing, and from each revoke, until the assignment that ends the rebalance.
        self._rebalancing = True
        self._thread = threading.Thread(target=self._run, name="dupwatch-shards", daemon=True)
        self._last_snapshot = self._last_sizes = time.monotonic()
        self._writing: _Writing | None = None
        self._due: list[int] = []  # shards to snapshot in the background, in turn
        # Entries per stage and tenant in each hosted shard, for the metrics (refreshed here,
        # read from the web thread).
        self.sizes: dict[int, dict[str, dict[str, int]]] = {}
        self.structures: dict[int, dict[str, str]] = {}
        self.snapshotted_at: dict[int, float] = {}  # Unix time of each shard's last snapshot

    def start(self) -> "ShardServer":
        self._lookups.subscribe([self.topics.lookups], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Leave the shard group once it has settled (see :meth:`_may_leave`), snapshot, close."""
        self._stop_requested_at = time.monotonic()
        self._thread.join(timeout=60)

    @property
    def ready(self) -> bool:
        """Every shard this worker hosts has caught up (false while one is rebuilding)."""
        return all(shard.ready for shard in list(self._shards.values()))

    @property
    def assigned(self) -> bool:
        """This worker has joined the shard group and no rebalance is under way (it may host no
        shards: more workers than shards)."""
        return not self._rebalancing

    def hosted(self) -> list[int]:
        return sorted(self._shards)

    def _run(self) -> None:
        # OpenMP's thread count is per calling thread; idle OpenMP threads would spin-wait
        # beside the decode threads (see dupwatch.index.set_search_threads).
        set_search_threads(self.options.search_threads)
        try:
            while not self._may_leave():
                # While a shard rebuilds, the pass waits on the changelog (outside the lock, so
                # lookups answered in-process go on), not on lookups it does not answer yet.
                rebuilding = any(not shard.answering for shard in self._shards.values())
                fetched = _drain(self._changelog, PASS_WAIT_S if rebuilding else 0.0, 1024)
                with self._applied:
                    self._apply_changelog(fetched)
                    self._applied.notify_all()
                requests = [m for m in _drain(self._lookups, 0.0 if rebuilding else PASS_WAIT_S,
                                              256) if not m.error()]
                with self._applied:
                    if requests:
                        self._answer(requests)
                    self._tick()
        except BaseException as exc:
            self.failure = exc
            log.critical("the shard server failed; this worker stops (exit status %d) so that "
                         "it is restarted", WorkerFailed.exit_status, exc_info=True)
            with self._applied:
                self._applied.notify_all()  # a lookup waiting on a shard gives up now
            self._stop_the_worker()
            return
        finally:
            with self._applied:
                for shard in self._kept_from_revoke.values():
                    self._snapshot(shard)
                self._snapshot_all()
            self._lookups.close()
            self._changelog.close()
            self._answers.flush(10)

    def _stop_the_worker(self) -> None:
        """Crash-only: the worker's orderly stop, then exit status 70 (wiring/worker.py)."""
        os.kill(os.getpid(), signal.SIGTERM)

    def check_alive(self) -> None:
        """Raise WorkerFailed if the server's thread has died."""
        if self.failure is not None:
            raise WorkerFailed(f"the shard server failed ({self.failure!r})")

    # -- in-process lookups, from the cascade's thread

    def answer_here(self, queries: list[Lookup], k: int, wanted: set[int],
                    written: dict[int, int], merged: list[Found], wait_s: float) -> set[int]:
        """Answer ``queries`` from the shards in ``wanted`` this worker hosts and serves, each
        once it has applied the changelog up to ``written`` (this worker's own writes) and the
        end last heard from the broker; fold the answers into ``merged`` and return the shards
        that answered (the rest are asked over the broker)."""
        deadline = time.monotonic() + wait_s
        with self._applied:
            while True:
                self.check_alive()
                here = {n: shard for n, shard in self._shards.items()
                        if n in wanted and shard.answering and not self._rebalancing}
                behind = [shard for shard in here.values()
                          if shard.next_offset < self._target(shard, written)]
                left = deadline - time.monotonic()
                if not behind or left <= 0:
                    break
                self._applied.wait(timeout=left)
            answered = set()
            for number, shard in here.items():
                if shard in behind:
                    continue
                for total, found in zip(merged, shard.store.lookup(queries, k), strict=True):
                    total.merge(found, k)
                answered.add(number)
            return answered

    def _target(self, shard: _Shard, written: dict[int, int]) -> int:
        end = self._changelog.get_watermark_offsets(
            TopicPartition(self.topics.changelog, shard.number), cached=True)
        return max(written.get(shard.number, 0), end[1] if end and end[1] >= 0 else 0)

    def hosts_all(self, shards: int) -> bool:
        """Whether this worker serves every one of ``shards`` shards right now."""
        return (not self._rebalancing and len(self._shards) == shards
                and all(shard.answering for shard in list(self._shards.values())))

    def _may_leave(self) -> bool:
        """After stop(), keep serving for one heartbeat (to hear of any rebalance under way)
        and until that rebalance has assigned this worker, at most a session plus a rebalance
        timeout. A member that leaves in the middle of a rebalance can wedge the group on some
        brokers: on Tansu the next members' SyncGroup then waits forever for the departed
        leader's assignment. Leaving a settled group is safe everywhere."""
        if self._stop_requested_at is None:
            return False
        waited = time.monotonic() - self._stop_requested_at
        limit = self.options.session_timeout_s + self.options.rebalance_timeout_s
        return waited >= limit or (waited >= self._heartbeat_s + 0.5 and not self._rebalancing)

    # -- assignment: rebuild before answering, snapshot on the way out

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._applied:
            self._assign(consumer, partitions)

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lookups sent while a shard rebuilds are answered once it has caught up: start each
        # partition at its end as it is now, not wherever "latest" is when it resumes.
        for tp in partitions:
            tp.offset = consumer.get_watermark_offsets(tp, timeout=30, cached=False)[1]
        consumer.assign(partitions)
        consumer.pause(partitions)  # resumed shard by shard as each catches up
        for tp in partitions:
            self._shards[tp.partition] = self._kept(tp.partition) or self._recover(tp.partition)
        for shard in self._kept_from_revoke.values():  # gone elsewhere: keep them on disk
            self._snapshot(shard)
        self._kept_from_revoke = {}
        self._reassign_changelog()
        self._rebalancing = False
        log.info("hosting shards %s", self.hosted())

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._applied:
            self._revoke(partitions)

    def _revoke(self, partitions: list[TopicPartition]) -> None:
        """Shards are kept in memory until the next assignment: a rebalance usually hands
        most of them straight back, and those then only catch up instead of rebuilding."""
        self._rebalancing = True
        for tp in partitions:
            shard = self._shards.pop(tp.partition, None)
            if shard is not None:
                self._kept_from_revoke[tp.partition] = shard
        self._reassign_changelog()
        log.info("shards %s revoked (the shard group is rebalancing, or this worker leaves)",
                 sorted(tp.partition for tp in partitions))

    def _kept(self, number: int) -> _Shard | None:
        shard = self._kept_from_revoke.pop(number, None)
        if shard is not None:
            shard.caught_up_at = self._changelog.get_watermark_offsets(
                TopicPartition(self.topics.changelog, number), timeout=30, cached=False)[1]
            shard.answering = False
        return shard

    def _recover(self, number: int) -> _Shard:
        store, next_offset = self._new_store(), OFFSET_BEGINNING
        snapshot = self._snapshot_dir(number)
        try:
            saved = store.load(snapshot) if snapshot is not None else None
        except SnapshotError as exc:  # never served partially: the changelog alone rebuilds it
            log.error("%s; rebuilding shard %d from the changelog alone", exc, number)
            saved = None
        snapshotted = _Snapshotted()
        if saved is not None and time.time() - saved["saved_at"] < _SNAPSHOT_MAX_AGE_S:
            next_offset = saved["next_offset"]
            snapshotted = _Snapshotted(next_offset, saved["saved_at"])
        elif saved is not None:
            store = self._new_store()  # it could miss takedowns compacted away since
        low, high = self._changelog.get_watermark_offsets(
            TopicPartition(self.topics.changelog, number), timeout=30, cached=False)
        start = low if next_offset == OFFSET_BEGINNING else max(next_offset, low)
        log.info("rebuilding shard %d from offset %d to %d", number, start, high)
        return _Shard(number, store, start, high, snapshotted)

    def _reassign_changelog(self) -> None:
        self._changelog.assign([TopicPartition(self.topics.changelog, shard.number, shard.next_offset)
                                for shard in self._shards.values()])

    # -- the changelog: the shards' only writer

    def _apply_changelog(self, messages: list[Message]) -> None:
        fetched: dict[int, list[Message]] = {}
        for message in messages:
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("changelog read error: %s", message.error())
                continue
            shard = self._shards.get(message.partition())
            if shard is None or message.offset() < shard.next_offset:
                continue  # revoked meanwhile, or already in the snapshot
            fetched.setdefault(shard.number, []).append(message)
        for number, batch in fetched.items():
            apply(self._shards[number].store, [(m.key(), m.value()) for m in batch])
            self._shards[number].next_offset = batch[-1].offset() + 1
        for shard in self._shards.values():
            if not shard.answering:
                # Also the end the latest fetch reported: some brokers' offset lists (Tansu's)
                # give the last record batch's first offset + 1, short of its last record.
                end = self._changelog.get_watermark_offsets(
                    TopicPartition(self.topics.changelog, shard.number), cached=True)
                shard.caught_up_at = max(shard.caught_up_at, end[1] if end else 0)
            if shard.ready and not shard.answering:
                self._lookups.resume([TopicPartition(self.topics.lookups, shard.number)])
                shard.answering = True
                log.info("shard %d caught up at changelog offset %d; answering lookups",
                         shard.number, shard.next_offset)

    def _catch_up(self, requests: list[Message]) -> None:
        """Apply the changelog, for the shards asked, up to the end as this worker last heard
        it from the broker and past every update the askers wrote before asking."""
        targets: dict[int, int] = {}
        for message in requests:
            shard = self._shards.get(message.partition())
            if shard is None:
                continue
            after = json.loads(message.value()).get("after", {}).get(str(shard.number), 0)
            # cached: the end the last fetch reported (milliseconds old), no broker round trip
            end = self._changelog.get_watermark_offsets(
                TopicPartition(self.topics.changelog, shard.number), cached=True)
            targets[shard.number] = max(targets.get(shard.number, 0), after,
                                        end[1] if end and end[1] >= 0 else 0)
        while any(n in self._shards and self._shards[n].next_offset < target
                  for n, target in targets.items()):
            self._apply_changelog(_drain(self._changelog, 0.05, 1024))

    # -- lookups

    def _answer(self, requests: list[Message]) -> None:
        self._catch_up(requests)
        for message in requests:
            shard = self._shards.get(message.partition())
            if shard is None:
                continue  # revoked: the asking worker re-asks the new host
            request = json.loads(message.value())
            found = shard.store.lookup(decode_lookups(request["queries"]), request["k"])
            self._answers.produce(self.topics.answers, partition=request["reply_partition"],
                                  value=dumps({"id": request["id"], "shard": shard.number,
                                               "found": encode_found(found)}))
        self._answers.poll(0)  # sent in the background; flushed when the server stops

    # -- snapshots

    def _snapshot_dir(self, number: int) -> Path | None:
        state = self.options.state_dir
        return state / "shards" / str(number) if state is not None else None

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_sizes >= SIZES_EVERY_S:
            self._last_sizes = now
            self.sizes = {n: shard.store.size() for n, shard in self._shards.items()}
            self.structures = {n: shard.store.structures() for n, shard in self._shards.items()}
        self._background_snapshots()

    def _background_snapshots(self) -> None:
        """Every ``snapshot_interval_s``, each hosted shard that changed since its latest
        snapshot is written in turn by a forked child, while this thread goes on applying and
        answering (index/snapshot.py): lookups wait only for the fork."""
        if self._writing is not None:
            if (written := self._writing.snapshot.poll()) is None:
                return
            self._snapshot_ended(self._writing, written)
        interval = self.options.snapshot_interval_s
        if not self._due and interval > 0 and time.monotonic() - self._last_snapshot >= interval:
            self._last_snapshot = time.monotonic()
            self._due = self.hosted()
        while self._due and self._writing is None:
            shard = self._shards.get(self._due.pop(0))
            target = self._snapshot_dir(shard.number) if shard is not None else None
            if shard is not None and target is not None and shard.ready and shard.snapshot_due():
                covers = _Snapshotted(shard.next_offset, time.time())
                self._writing = _Writing(shard.number, covers,
                                         shard.store.save_in_background(target, covers.meta))

    def _snapshot_ended(self, writing: "_Writing", written: bool) -> None:
        self._writing = None
        shard = self._shards.get(writing.shard) or self._kept_from_revoke.get(writing.shard)
        if written and shard is not None:
            self._snapshotted(shard, writing.covers)
            log.info("shard %d snapshotted in %.1f s", writing.shard,
                     time.monotonic() - writing.snapshot.started)
        elif not written:  # the changelog still holds everything: log it, go on serving
            log.error("could not snapshot shard %d into %s: %s", writing.shard,
                      writing.snapshot.target, writing.snapshot.error)

    def _snapshot_all(self) -> None:
        for shard in list(self._shards.values()):
            self._snapshot(shard)

    def _snapshot(self, shard: _Shard) -> None:
        """Now, in this thread (a rebalance, a stop), if it is worth the wait
        (:meth:`_Shard.worth_a_snapshot_now`); a background snapshot being written is stopped
        first (two writers would clobber each other's partial copy; the previous snapshot
        stays whole). Crash-safe (index/snapshot.py): a crash or full disk leaves the previous
        one."""
        if self._writing is not None and self._writing.snapshot.cancel():
            self._snapshot_ended(self._writing, True)  # it had just been written
        elif self._writing is not None:
            log.info("stopped the background snapshot of shard %d (this worker stops or "
                     "rebalances); its previous snapshot stays", self._writing.shard)
            self._writing = None
        target = self._snapshot_dir(shard.number)
        if target is None or not shard.ready or not shard.worth_a_snapshot_now():
            return
        covers = _Snapshotted(shard.next_offset, time.time())
        try:
            shard.store.save(target, covers.meta)
        except OSError as exc:  # the changelog still holds everything: log it, go on serving
            log.error("could not snapshot shard %d into %s: %s", shard.number, target, exc)
            return
        self._snapshotted(shard, covers)

    def _snapshotted(self, shard: _Shard, covers: _Snapshotted) -> None:
        shard.snapshot = covers
        self.snapshotted_at[shard.number] = covers.saved_at


@dataclass(frozen=True)
class _Writing:
    """A background snapshot under way: of which shard, and what it will cover."""
    shard: int
    covers: _Snapshotted
    snapshot: BackgroundSnapshot


def _drain(consumer: Consumer, timeout_s: float, limit: int) -> list[Message]:
    """What has arrived, waiting at most ``timeout_s`` for the first message (``consume``
    alone would wait the whole timeout for ``limit`` messages)."""
    first = consumer.poll(timeout_s)
    return [] if first is None else [first, *consumer.consume(limit - 1, timeout=0)]


def apply(store: LocalStore, records: list[tuple[bytes, bytes | None]]) -> None:
    """Changelog records (key, value) into a shard, in order: an entry replaces its image, a
    tombstone (no value) removes it. The entries between tombstones are added as one batch
    (index/store.py): `dupwatch bench recovery` compares that with one at a time."""
    entries: list[Entry] = []
    for key, value in records:
        if value is not None:
            entries.append(decode_entry(key, value))
            continue
        store.add(entries)
        entries = []
        store.remove(*_tenant_and_ids(key))
    store.add(entries)


def _tenant_and_ids(key: bytes) -> tuple[str, list[str]]:
    tenant, image_id = split_key(key)
    return tenant, [image_id]


class StoreClosing(BaseException):
    """A lookup cut short because the worker is stopping: the batch's events are not
    acknowledged, so another worker (or this one, restarted) processes them."""


class ShardClient:
    """The cascade's store over the shards: lookups go to every shard, in-process for those
    this worker hosts (``local``) and over the broker for the rest, and are merged; updates are
    changelog records. Used from one thread (the cascade's)."""

    def __init__(self, options: ShardOptions, kafka: KafkaOptions,
                 local: ShardServer | None = None) -> None:
        self.options = options
        self.topics = ShardTopics.of(options.index_topic_prefix)
        self.shards = options.shards
        self._local = local
        self.closing = False  # set from the stopping thread: lookups give up
        self._written: dict[int, int] = {}  # changelog partition -> offset after our last write
        self._producer = Producer(confluent_config(kafka, **{
            "linger.ms": 1, "message.max.bytes": max_message_bytes(kafka.max_event_bytes) * 4,
            "enable.idempotence": True}))
        self._answers = _fast_consumer(kafka, **{"group.id": f"{options.group_id}.answers"})
        partitions = self._answers.list_topics(self.topics.answers, timeout=30) \
            .topics[self.topics.answers].partitions
        self._reply_partition = zlib.crc32(f"{options.worker_name}/{uuid.uuid4()}".encode()) \
            % len(partitions)
        # From the end as it is now: an answer produced after this can never be skipped.
        tp = TopicPartition(self.topics.answers, self._reply_partition)
        tp.offset = self._answers.get_watermark_offsets(tp, timeout=30, cached=False)[1]
        self._answers.assign([tp])

    @property
    def round_trip(self) -> bool:
        """Whether a lookup goes over the broker (some shard is hosted elsewhere)."""
        return self._local is None or not self._local.hosts_all(self.shards)

    def lookup(self, queries: list[Lookup], k: int) -> list[Found]:
        if not queries:
            return []
        merged = [Found() for _ in queries]
        waiting = set(range(self.shards))
        request_id, request = uuid.uuid4().hex, b""
        while waiting:
            if self.closing:
                raise StoreClosing("the worker is stopping")
            if self._local is not None:
                waiting -= self._local.answer_here(queries, k, waiting, self._written, merged,
                                                   self.options.lookup_retry_s)
            if not waiting:
                break
            request = request or dumps({
                "id": request_id, "reply_partition": self._reply_partition, "k": k,
                "after": {str(n): offset for n, offset in self._written.items()},
                "queries": encode_lookups(queries)})
            for shard in waiting:
                self._producer.produce(self.topics.lookups, value=request, partition=shard)
            self._producer.poll(0)
            waiting -= self._collect(request_id, waiting, merged, k)
            if waiting:
                log.warning("shards %s did not answer within %.0f s (rebalancing or rebuilding?); "
                            "asking again", sorted(waiting), self.options.lookup_retry_s)
        return merged

    def _collect(self, request_id: str, waiting: set[int], merged: list[Found], k: int) -> set[int]:
        """Answers to this request until every shard in ``waiting`` has answered or time is up."""
        answered: set[int] = set()
        deadline = time.monotonic() + self.options.lookup_retry_s
        while answered != waiting and time.monotonic() < deadline and not self.closing:
            for message in _drain(self._answers, 0.05, 64):
                if message.error():
                    continue
                answer = json.loads(message.value())
                shard = answer["shard"]
                if answer["id"] != request_id or shard not in waiting or shard in answered:
                    continue  # another worker's (shared partition), or a resent duplicate
                answered.add(shard)
                for total, found in zip(merged, decode_found(answer["found"]), strict=True):
                    total.merge(found, k)
        return answered

    def add(self, entries: list[Entry]) -> None:
        for entry in entries:
            self._write(entry.tenant, entry.image_id, encode_entry(entry))
        self._flush()

    def remove(self, tenant: str, image_ids: list[str]) -> int:
        """Tombstones on every shard that holds one of them; returns how many were written."""
        for image_id in image_ids:
            self._write(tenant, image_id, None)
        self._flush()
        return len(image_ids)

    def _write(self, tenant: str, image_id: str, value: bytes | None) -> None:
        self._producer.produce(self.topics.changelog, key=entry_key(tenant, image_id), value=value,
                               partition=shard_of(tenant, image_id, self.shards),
                               on_delivery=self._written_at)

    def _written_at(self, error: KafkaError | None, message: Message) -> None:
        """Remember how far this worker has written each shard: its next lookup waits for the
        shard to have applied that much, so a batch always sees the batches before it."""
        if error is None:
            self._written[message.partition()] = max(self._written.get(message.partition(), 0),
                                                     message.offset() + 1)

    def _flush(self) -> None:
        """Until the broker has every update: the verdicts go out only after their updates."""
        while self._producer.flush(30) > 0:
            log.warning("changelog writes not acknowledged yet; waiting for the broker")

    def close(self) -> None:
        self._flush()
        self._answers.close()


def check_shard_count(options: ShardOptions, kafka: KafkaOptions) -> None:
    """The shard count is fixed for the index's life (an image's shard is a hash modulo it):
    refuse a worker whose --shards differs from the changelog's partitions."""
    topic = ShardTopics.of(options.index_topic_prefix).changelog
    consumer = Consumer(confluent_config(kafka, **{"group.id": f"{options.group_id}.check"}))
    try:
        partitions = len(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
    finally:
        consumer.close()
    if partitions != options.shards:
        raise ConfigError(
            f"the index's changelog {topic} has {partitions} shards (partitions) and this worker "
            f"was given --shards {options.shards}: the count is fixed for the index's life. "
            f"Start it with --shards {partitions}, or use a new --index-topic-prefix for a new, "
            "empty index")


def refuse_in_memory_snapshot(state_dir: Path) -> None:
    """A state_dir written by the in-memory store of dupwatch before the sharded store (its
    records.json at the top) cannot be served by the shards: say what to do, start nothing."""
    old = state_dir / "records.json"
    if old.is_file():
        raise StateError(
            f"{old} is an index snapshot of dupwatch's old in-memory store, which workers no "
            "longer keep (their index is the changelog-backed shards). Its images are not in "
            "the changelog: re-publish them (dupwatch publish) to this worker, then move "
            f"{state_dir}'s old files aside (docs/operations.md: Migrating from the in-memory store)")
