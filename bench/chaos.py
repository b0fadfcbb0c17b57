"""`dupwatch bench chaos`: three workers under steady traffic while workers are killed and the
broker is frozen, checked for events lost, answered inconsistently, or copies missed.

The run
- The embedded broker (Tansu) and WORKERS worker processes sharing one sharded index, each
  with its own name, web port and state_dir (in a temporary folder), so a restarted worker
  loads its shards' snapshots (written every SNAPSHOT_INTERVAL_S) and applies the changelog
  after them. Rebalance and session timeouts are GROUP_TIMEOUT_S, what the bundled broker
  needs (docs/development.md).
- Capacity: without --rate, once the workers are ready they drain PROBE_EVENTS of the mix
  published at once, and their answer rate is their capacity; the traffic then runs at
  CAPACITY_SHARE of it for --minutes.
- Traffic: `bench/traffic.py`'s mix (fresh, exact, variant, bad input) over TENANTS, and
  BOMB_TENANT sending one of `bench hostile`'s scan bombs every BOMB_EVERY_S.
- Faults, one at a time, from a seeded schedule: every --kill-every seconds (+-25 %) a random
  worker gets SIGKILL and is started again at once (named ``chaos-<slot>.<life>``, same
  state_dir); --stalls times, at equal fractions of the run, the broker gets SIGSTOP for
  --stall-seconds, then SIGCONT. A fault waits until the previous fault's window has closed
  and QUIET_S more, so windows never overlap (a stall that is due goes before a kill that is,
  and no kill starts within --kill-every before a planned stall: see next_fault).
  Faults start only while the traffic runs, and no kill in its last KILL_FREE_TAIL (its
  replacement should meet traffic). A worker that exits on its own is started again too, and
  the run fails.

A fault window runs from the fault (SIGKILL or SIGSTOP sent) until all of these hold:
1. the fault is over: the killed worker's replacement started, or SIGCONT sent;
2. every worker answers /readyz 200 (in its group, no rebalance under way, shards caught up):
   the window's ``recovered`` moment;
3. every event published before that moment has an outcome: the backlog the fault built has
   drained (at half capacity it drains about as fast as it built up).
A worker that turns unready during 3 sends the window back to 2. There is no fixed settle
margin: the window ends when the fault's effect does, measured. A window not recovered within
RECOVERY_TIMEOUT_S fails the run; one whose backlog is not drained SETTLE_MAX_S after recovery
closes and says so. An event belongs to every window its life overlaps (its publication to its
first outcome, or to the end of the run if none came); "outside" holds the events that overlap
no window.

Counted over the whole run (and per window and outside):
- lost: published events that got neither a verdict nor a dead letter;
- inconsistent: events answered more than once (re-delivered) whose outcomes differ in label
  or match;
- missed copies: exact copies (the bytes of an earlier event of the same tenant, a new id)
  published after the verdict of one of the events with those bytes came back, so that image
  was in the index (its changelog write is acknowledged before its verdict is sent), whose
  outcome is not ``exact_duplicate`` of one of those events. SHA-256 decides this, not the
  model. Variants are not counted: whether an edited picture matches is the model's call. The
  report gives the share of variants matched (of those published after their source's verdict)
  inside and outside windows, so a fault that made the model miss would show there.
Also per window and outside: re-deliveries, p50/p99 latency (submitted_at to the first
verdict's arrival, paced traffic only) and the highest consumer lag sampled. Every
SAMPLE_EVERY_S the series records each worker's consumer lag (its /metrics,
``dupwatch_consumer_lag``) and RSS, and the broker's RSS; every OFFSETS_EVERY_S,
``input_offsets`` records the group's committed offset and the end of each input partition.

Goals (GOALS): nothing lost, inconsistent or missed; p99 outside windows <= 2 s; worker RSS
growth <= 10 % over the last half of the traffic: for each worker life, from its first sample
in the last half at least RSS_WARMUP_S after it was ready to its last sample, where those are
at least RSS_MIN_SPAN_S apart (workers restart often, so a life is the unit a leak grows in);
the largest growth counts. Exit status 1 when anything is lost, inconsistent or missed, a
worker exited unexpectedly (on its own, or not 0 at the final SIGTERM) or a window never
recovered; the workers' logs and every event with its outcomes (events.jsonl) are then kept
beside --out (FILE.logs/, or --logs DIR, which keeps them whatever happens).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from dupwatch.bench.report import machine, markdown_table, percentiles_ms, write_results
from dupwatch.bench.traffic import (
    MIX, Ledger, PacedPublisher, Run, Senders, Traffic, drain_rate, make_events,
    publish_events, rss_mb, sources, worker_metrics,
)
from dupwatch.errors import UserError
from dupwatch.messaging.broker import EmbeddedBroker, free_port
from dupwatch.messaging.kafka import confluent_config
from dupwatch.reporting.progress import Progress, wanted
from dupwatch.settings import Settings
from dupwatch.streams.worker_process import WorkerProcess
from dupwatch.wiring.kafka import ensure_topics, kafka_options

WORKERS = 3
CAPACITY_SHARE = 0.5
PROBE_EVENTS = 2000
TENANTS = ("shop-a", "shop-b")
BOMB_TENANT = "mallory"
BOMB_EVERY_S = 30.0
GROUP_TIMEOUT_S = 6.0         # rebalance and session timeouts
SNAPSHOT_INTERVAL_S = 15.0    # kills come every ~45 s: a restarted worker finds a snapshot
QUIET_S = 5.0                 # at least this long between a window's end and the next fault
KILL_FREE_TAIL = 0.1          # no kill starts in this last share of the traffic
RECOVERY_TIMEOUT_S = 180.0
SETTLE_MAX_S = 120.0
START_TIMEOUT_S = 300.0       # three workers starting at once on a small machine
SAMPLE_EVERY_S = 5.0
OFFSETS_EVERY_S = 1.0
POLL_S = 0.25
RSS_WARMUP_S = 30.0
RSS_MIN_SPAN_S = 60.0
SEED = 26
GOALS = {"lost": 0, "inconsistent": 0, "missed_copies": 0, "p99_outside_windows_ms": 2000,
         "worker_rss_growth_last_half": 0.10}
_REBUILDING = re.compile(r"rebuilding shard (\d+) from offset (\d+) to (\d+)")


@dataclass(frozen=True)
class Schedule:
    """How long the traffic runs and which faults strike meanwhile (the command's options)."""
    seconds: float
    kill_every_s: float = 45.0      # 0: no kills
    stalls: int = 2
    stall_s: float = 15.0

    def check(self) -> None:
        if self.seconds <= 0:
            raise UserError("--minutes must be more than 0")
        if self.kill_every_s < 0 or self.stalls < 0 or self.stall_s <= 0:
            raise UserError("--kill-every and --stalls must be 0 or more, --stall-seconds more "
                            "than 0")


def run_chaos_bench(settings: Settings, schedule: Schedule, rate: float | None,
                    images_dir: str | None, out: str, logs: str | None = None) -> int:
    schedule.check()
    if rate is not None and rate <= 0:
        raise UserError("--rate must be more than 0 events/s")
    traffic = Traffic(sources(images_dir), settings,
                      Senders(TENANTS, "chaos", BOMB_TENANT, BOMB_EVERY_S), seed=SEED)
    run = uuid.uuid4().hex[:8]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as scratch:
        settings = settings.replace(
            bootstrap_servers=broker.bootstrap_servers, input_topic=f"chaos-{run}.images",
            verdict_topic=f"chaos-{run}.verdicts", dead_letter_topic=f"chaos-{run}.dead-letters",
            index_topic_prefix=f"chaos-{run}.index", control_topic=f"chaos-{run}.control",
            group_id=f"dupwatch-chaos-{run}", rebalance_timeout_s=GROUP_TIMEOUT_S,
            session_timeout_s=GROUP_TIMEOUT_S, snapshot_interval_s=SNAPSHOT_INTERVAL_S)
        ensure_topics(settings)
        chaos = Chaos(settings, traffic, broker, Cluster(settings, Path(scratch)))
        capacity = None
        try:
            chaos.start()
            if rate is None:
                capacity = chaos.probe()
                rate = CAPACITY_SHARE * capacity["images_per_s"]
            chaos.run(rate, schedule)
        finally:
            chaos.stop()
        results = _results(chaos, rate, schedule, capacity)
        if logs or results["failed"]:
            kept = Path(logs or Path(out).with_suffix(".logs"))
            shutil.copytree(scratch, kept, dirs_exist_ok=True,
                            ignore=lambda _, names: [n for n in names if n.startswith("state-")])
            _write_events(chaos.ledger, kept / "events.jsonl")
            results["logs"] = str(kept)
    print(_windows_table(results))
    print()
    print(_minute_table(chaos.series.per_minute()))
    print()
    print(_goals_table(results))
    write_results(out, results, _summary_rows(results))
    return 1 if results["failed"] else 0


def _write_events(ledger: Ledger, path: Path) -> None:
    """Every event published and every outcome it got, a JSON line each (the evidence)."""
    with path.open("w") as out:
        for key in ledger.order:
            out.write(json.dumps({"key": key, "kind": ledger.kinds[key],
                                  "published_at": ledger.published_at[key],
                                  "copies": ledger.sources.get(key),
                                  "outcomes": [o._asdict() for o in ledger.outcomes.get(key, [])]})
                      + "\n")


@dataclass
class Life:
    """One run of a worker slot, from its start to its kill or stop (times: time.time())."""
    slot: int
    worker: WorkerProcess
    log: Path
    started_at: float
    ready_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    killed: bool = False

    @property
    def name(self) -> str:
        return self.worker.settings.worker_name

    @property
    def pid(self) -> int | None:
        return self.worker.process.pid if self.worker.process else None

    def alive(self) -> bool:
        return self.worker.process is not None and self.worker.process.poll() is None

    def ready(self) -> bool:
        """Its /readyz answers 200 (and the first time, when)."""
        url = f"http://127.0.0.1:{self.worker.settings.web_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                ready = response.status == 200
        except OSError:  # not listening (yet), or 503
            return False
        if ready and self.ready_at is None:
            self.ready_at = time.time()
        return ready


class Cluster:
    """WORKERS worker slots, each running one life at a time. Only the fault thread starts,
    kills and restarts (after :meth:`start_all`); others read ``current``."""

    def __init__(self, settings: Settings, scratch: Path) -> None:
        self.settings = settings
        self.scratch = scratch
        self.lives: list[Life] = []
        self.current: list[Life] = []
        self.unexpected: list[dict] = []   # exits nobody asked for

    def start_all(self) -> None:
        for slot in range(WORKERS):
            self.start(slot)
        if self.wait_ready(START_TIMEOUT_S) is None:
            raise UserError(f"bench chaos: the {WORKERS} workers were not ready within "
                            f"{START_TIMEOUT_S:.0f} s; their logs: {self.scratch}")

    def start(self, slot: int) -> Life:
        name = f"chaos-{slot}.{sum(1 for life in self.lives if life.slot == slot)}"
        log = self.scratch / f"{name}.log"
        worker = WorkerProcess(self.settings.replace(
            worker_name=name, web_port=free_port(),
            state_dir=str(self.scratch / f"state-{slot}")), log).start()
        life = Life(slot, worker, log, time.time())
        self.lives.append(life)
        if slot < len(self.current):
            self.current[slot] = life
        else:
            self.current.append(life)
        return life

    def kill(self, slot: int) -> Life:
        life = self.current[slot]
        life.killed = True
        life.worker.kill()
        life.ended_at = time.time()
        life.exit_code = life.worker.stop()  # already gone: its exit code, and its log closed
        return life

    def ready(self) -> bool:
        return all([life.ready() for life in self.current])  # ask each: ready_at is recorded

    def wait_ready(self, timeout_s: float) -> float | None:
        """When every worker answered ready, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.restart_exited()
            if self.ready():
                return time.time()
            time.sleep(POLL_S)
        return None

    def restart_exited(self) -> None:
        """A worker that exited without being killed is recorded and started again, as an
        orchestrator would."""
        for life in list(self.current):
            if not life.alive() and not life.killed:
                life.ended_at = time.time()
                life.exit_code = life.worker.stop()
                self.unexpected.append({"worker": life.name, "exit_code": life.exit_code,
                                        "at": life.ended_at, "when": "during the run"})
                print(f"bench chaos: worker {life.name} exited on its own with status "
                      f"{life.exit_code}; starting it again", file=sys.stderr)
                self.start(life.slot)

    def stop_all(self) -> None:
        """SIGTERM each worker in turn: each leaves only once its group has settled."""
        for life in self.current:
            if life.ended_at is not None:
                continue
            life.exit_code = life.worker.stop()
            life.ended_at = time.time()
            if life.exit_code != 0:
                self.unexpected.append({"worker": life.name, "exit_code": life.exit_code,
                                        "at": life.ended_at, "when": "at the final SIGTERM"})


@dataclass
class Window:
    """One fault and its effect (times: time.time(); see the module's docstring)."""
    kind: str                          # "kill" or "stall"
    target: str                        # the killed worker, or "broker"
    started_at: float
    fault_ended_at: float | None = None
    recovered_at: float | None = None
    ended_at: float | None = None
    replacement: str | None = None     # the killed worker's next life
    note: str = ""                     # how it closed, when not as defined

    def open_at(self, at: float) -> bool:
        return self.started_at <= at and (self.ended_at is None or at <= self.ended_at)


def next_fault(elapsed: float, not_before: float, kill_at: float, last_kill: float,
               stall_plan: list[float], kill_every_s: float) -> str | None:
    """Which fault starts now ("stall", "kill"), if any (times in seconds from the start). A due
    stall goes first, and no kill starts within ``kill_every_s`` before the next planned stall:
    that kill's window would push the stall back, past the traffic's end if it ran long (a
    one-minute run under load lost its planned stall so)."""
    if elapsed < not_before:
        return None
    if stall_plan and stall_plan[0] <= elapsed:
        return "stall"
    stall_coming = bool(stall_plan) and stall_plan[0] - elapsed < kill_every_s
    if kill_at <= elapsed <= last_kill and not stall_coming:
        return "kill"
    return None


class Faults(threading.Thread):
    """Carries out the fault schedule while the traffic runs, one window at a time, until
    :attr:`stopping` is set (it finishes the window under way)."""

    def __init__(self, chaos: Chaos, schedule: Schedule) -> None:
        super().__init__(daemon=True)
        self.chaos = chaos
        self.schedule = schedule
        self.stall_plan = [schedule.seconds * (n + 1) / (schedule.stalls + 1)
                           for n in range(schedule.stalls)]
        self.rng = random.Random(SEED)
        self.windows: list[Window] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the bench's thread
            self.error = exc

    def _run(self) -> None:
        started = time.time()
        kill_at = self._next_kill(0.0)
        not_before = 0.0
        last_kill = self.schedule.seconds * (1 - KILL_FREE_TAIL)
        while not self.stopping.is_set():  # set when the traffic ends
            self.chaos.cluster.restart_exited()
            elapsed = time.time() - started
            fault = next_fault(elapsed, not_before, kill_at, last_kill, self.stall_plan,
                               self.schedule.kill_every_s)
            if fault == "stall":
                self.stall_plan.pop(0)
                window = self._stall()
            elif fault == "kill":
                window = self._kill(self.rng.randrange(WORKERS))
                kill_at = self._next_kill(window.started_at - started)
            else:
                time.sleep(POLL_S)
                continue
            self._settle(window)
            not_before = (window.ended_at or time.time()) - started + QUIET_S

    def _next_kill(self, after: float) -> float:
        every = self.schedule.kill_every_s
        return after + every * self.rng.uniform(0.75, 1.25) if every else float("inf")

    def _kill(self, slot: int) -> Window:
        cluster = self.chaos.cluster
        window = Window("kill", cluster.current[slot].name, time.time())
        self.windows.append(window)
        cluster.kill(slot)
        window.replacement = cluster.start(slot).name
        window.fault_ended_at = time.time()
        return window

    def _stall(self) -> Window:
        window = Window("stall", "broker", time.time())
        self.windows.append(window)
        self.chaos.broker.pause()
        try:
            time.sleep(self.schedule.stall_s)  # the fault itself: a fixed length by definition
        finally:
            self.chaos.broker.resume()
        window.fault_ended_at = time.time()
        return window

    def _settle(self, window: Window) -> None:
        """Close the window: every worker ready, then the events published before that
        answered (back to waiting for readiness if a worker turns unready meanwhile)."""
        cluster, ledger = self.chaos.cluster, self.chaos.ledger
        while True:
            recovered = cluster.wait_ready(RECOVERY_TIMEOUT_S)
            if recovered is None:
                window.ended_at = time.time()
                window.note = f"not recovered within {RECOVERY_TIMEOUT_S:.0f} s"
                return
            window.recovered_at = recovered
            pending = ledger.unanswered()
            while pending and time.time() < recovered + SETTLE_MAX_S:
                if not cluster.ready():
                    break
                time.sleep(POLL_S)
                pending = [key for key in pending if not ledger.outcomes.get(key)]
            else:
                window.ended_at = time.time()
                if pending:
                    window.note = (f"{len(pending)} events published before recovery had no "
                                   f"outcome {SETTLE_MAX_S:.0f} s after it")
                return


class OffsetsWatch(threading.Thread):
    """Every OFFSETS_EVERY_S, the workers' group's committed offset and the end offset of each
    input partition, as the broker reports them (``points``: time.time(), committed, ends): a
    partition whose events went missing shows where its consumers started again."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(confluent_config(kafka_options(settings), **{
            "group.id": settings.group_id, "enable.auto.commit": False}))  # never joins
        self.partitions = [TopicPartition(settings.input_topic, n)
                           for n in range(settings.partitions)]
        self.points: list[tuple[float, list[int], list[int]]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(OFFSETS_EVERY_S):
            try:
                committed = [tp.offset for tp in self.consumer.committed(self.partitions,
                                                                           timeout=2)]
                ends = [self.consumer.get_watermark_offsets(tp, timeout=2, cached=False)[1]
                        for tp in self.partitions]
            except KafkaException:  # the broker frozen: a gap in the series
                continue
            self.points.append((time.time(), committed, ends))
        self.consumer.close()


class Chaos(Run):
    """One chaos run: :meth:`start` (collector and workers), optionally :meth:`probe`,
    :meth:`run` (traffic, faults, samples, then the drain) and :meth:`stop`."""

    def __init__(self, settings: Settings, traffic: Traffic, broker: EmbeddedBroker,
                 cluster: Cluster) -> None:
        super().__init__(settings, traffic, broker, SAMPLE_EVERY_S)
        self.cluster = cluster
        self.offsets = OffsetsWatch(settings)
        self.faults: Faults | None = None
        self.traffic_ended = 0.0
        self.ended = 0.0

    def start(self) -> None:
        self.collector.start()
        self.offsets.start()
        print(f"starting {WORKERS} workers", file=sys.stderr)
        self.cluster.start_all()

    def probe(self) -> dict:
        events = make_events(self.traffic, PROBE_EVENTS, "probe: making events")
        since = time.time()
        publish_events(self.settings, self.ledger, events)
        capacity = drain_rate(self.ledger, since, PROBE_EVENTS,
                              lambda: all(life.alive() for life in self.cluster.current),
                              f"probe: {WORKERS} workers draining")
        print(f"capacity on this mix: {capacity['images_per_s']:.0f} events/s ({WORKERS} "
              f"workers draining {PROBE_EVENTS} events); running at {CAPACITY_SHARE:.0%} of it",
              file=sys.stderr)
        return capacity

    def run(self, rate: float, schedule: Schedule) -> None:
        self.faults = Faults(self, schedule)
        self.series.start()  # the probe's latencies are not the traffic's
        seconds = schedule.seconds
        with Progress(int(rate * seconds), f"chaos at {rate:.1f}/s", enabled=wanted()) as bar:
            publisher = PacedPublisher(self.settings, self.traffic, self.ledger, rate, seconds,
                                       bar)
            publisher.start()
            self.faults.start()
            self.series.sample_while(lambda: publisher.is_alive() and self.faults.is_alive(),
                                     "traffic", bar)
            publisher.stopping.set()  # when the fault thread failed: raised below
            publisher.join()
        self.traffic_ended = time.time()
        self.achieved_rate = publisher.rate
        self.faults.stopping.set()
        self.series.sample_while(self.faults.is_alive, "drain", None)  # the last window closes
        self.series.sample_while(lambda: self.ledger.waiting(self.traffic_ended), "drain", None)
        for thread in (publisher, self.faults):
            if thread.error is not None:
                raise thread.error

    def stop(self) -> None:
        if self.faults is not None:
            self.faults.stopping.set()
            self.faults.join()
        self.cluster.stop_all()
        deadline = time.time() + 10   # what the workers sent before they stopped, read back
        while time.time() < min(deadline, (self.ledger.last_received_at or 0) + 2):
            time.sleep(0.2)
        self.collector.stop()
        self.offsets.stopping.set()
        self.offsets.join(timeout=10)
        self.ended = time.time()

    def sample(self) -> dict:
        """The chaos run's own fields of a sample: the open fault, each worker's lag and RSS,
        the broker's RSS."""
        workers = []
        for life in list(self.cluster.current):
            metrics = worker_metrics(life.worker.settings.web_port)
            workers.append({"slot": life.slot, "name": life.name, "rss_mb": rss_mb(life.pid),
                            "consumer_lag": metrics.get("lag")})
        now = time.time()
        open_windows = [w for w in (self.faults.windows if self.faults else []) if w.open_at(now)]
        lags = [w["consumer_lag"] for w in workers if w["consumer_lag"] is not None]
        return {"fault": f"{open_windows[0].kind} {open_windows[0].target}" if open_windows
                else None,
                "consumer_lag": sum(lags) if lags else None, "workers": workers,
                "broker_rss_mb": rss_mb(self.broker.pid)}

    def bar_label(self, sample: dict) -> str:
        return f"chaos: {sample['fault'] or 'no fault'}, {sample['outstanding']} outstanding"


# -- judging the outcomes

@dataclass
class Bucket:
    """What happened to the events of one window (or outside every window, or the whole run)."""
    events: int = 0
    lost: int = 0
    inconsistent: int = 0
    missed_copies: int = 0
    copies_checked: int = 0         # exact copies published after an original's verdict
    redelivered: int = 0
    latencies: list[float] = field(default_factory=list)
    variants_matchable: int = 0     # variants published after their source's verdict
    variants_matched: int = 0

    def summary(self) -> dict:
        rate = (self.variants_matched / self.variants_matchable if self.variants_matchable
                else None)
        return {"events": self.events, "lost": self.lost, "inconsistent": self.inconsistent,
                "missed_copies": self.missed_copies, "copies_checked": self.copies_checked,
                "redelivered": self.redelivered,
                "latency_ms": percentiles_ms(self.latencies) if self.latencies else None,
                "variants_matched": self.variants_matched,
                "variants_matchable": self.variants_matchable,
                "variant_match_rate": round(rate, 3) if rate is not None else None}


@dataclass
class Judgement:
    """Every event judged, in the buckets of the windows its life overlaps (``by_window``,
    in the windows' order) or ``outside``, and in ``whole``; up to 20 ``examples`` of each
    failure (lost, inconsistent, missed_copies) with their outcomes."""
    by_window: list[Bucket]
    outside: Bucket
    whole: Bucket
    examples: dict[str, list[dict]]


def judge(ledger: Ledger, windows: list[Window], traffic_started: float,
          ended: float) -> Judgement:
    """Judge every published event (see the module's docstring); latencies only of events
    published from ``traffic_started`` (the probe's queue is not latency)."""
    judgement = Judgement([Bucket() for _ in windows], Bucket(), Bucket(), defaultdict(list))
    same_bytes = _same_bytes(ledger)
    for key in ledger.order:
        got = ledger.outcomes.get(key, [])
        published = ledger.published_at[key]
        life_end = got[0].received_at if got else ended
        buckets = [judgement.by_window[n] for n, w in enumerate(windows)
                   if w.started_at <= life_end and published <= (w.ended_at or ended)]
        failures = [] if got else ["lost"]
        if len({(o.label, o.match) for o in got}) > 1:
            failures.append("inconsistent")
        kind = ledger.kinds[key]
        checked = kind == "exact" and bool(got) and _answered_before(
            ledger, [other for other in same_bytes[key] if other != key], published)
        if checked and any(o.label != "exact_duplicate" or o.match not in same_bytes[key]
                           for o in got):
            failures.append("missed_copies")
        source = ledger.sources.get(key)
        matchable = (kind == "variant" and bool(got) and source is not None
                     and _answered_before(ledger, [source], published))
        matched = matchable and got[0].label not in ("unique",) and \
            not got[0].label.startswith("rejected:")
        latency = next((o.latency_s for o in got if o.latency_s is not None), None)
        for bucket in (buckets or [judgement.outside]) + [judgement.whole]:
            bucket.events += 1
            for failure in failures:
                setattr(bucket, failure, getattr(bucket, failure) + 1)
            bucket.copies_checked += checked
            bucket.redelivered += max(0, len(got) - 1)
            bucket.variants_matchable += matchable
            bucket.variants_matched += matched
            if latency is not None and published >= traffic_started:
                bucket.latencies.append(latency)
        for failure in failures:
            if len(judgement.examples[failure]) < 20:
                judgement.examples[failure].append({
                    "key": key, "kind": kind, "published_at": published, "copies": source,
                    "outcomes": [o._asdict() for o in got]})
    judgement.examples = dict(judgement.examples)
    return judgement


def _same_bytes(ledger: Ledger) -> dict[str, list[str]]:
    """Each event's keys with the same bytes: an exact copy's family (its first event and
    every exact copy of it or of a copy); any other event alone, with its own copies."""
    root: dict[str, str] = {}
    family: dict[str, list[str]] = defaultdict(list)
    for key in ledger.order:
        source = ledger.sources.get(key)
        root[key] = root.get(source, key) if ledger.kinds[key] == "exact" and source else key
        family[root[key]].append(key)
    return {key: family[root[key]] for key in ledger.order}


def _answered_before(ledger: Ledger, keys: list[str], at: float) -> bool:
    """One of ``keys`` had a verdict (not a dead letter) back before ``at``."""
    return any(o.received_at < at and not o.label.startswith("rejected:")
               for key in keys for o in ledger.outcomes.get(key, []))


# -- results

def _results(chaos: Chaos, rate: float, schedule: Schedule, capacity: dict | None) -> dict:
    ledger = chaos.ledger
    windows = chaos.faults.windows if chaos.faults else []
    judged = judge(ledger, windows, chaos.started, chaos.ended)
    by_window, outside, whole = judged.by_window, judged.outside, judged.whole
    samples = chaos.samples
    rows = []
    for window, bucket in zip(windows, by_window):
        inside = [s for s in samples if window.open_at(s["at"])]
        rows.append({**_window_times(window, chaos.started), **bucket.summary(),
                     "max_consumer_lag": _max_lag(inside),
                     **(_restart(chaos, window) if window.kind == "kill" else {})})
    quiet = [s for s in samples if not any(w.open_at(s["at"]) for w in windows)]
    outside_row = {**outside.summary(), "max_consumer_lag": _max_lag(quiet)}
    rss = _rss_growth(chaos)
    unrecovered = [w.target for w in windows if w.recovered_at is None]
    measured = {"lost": whole.lost, "inconsistent": whole.inconsistent,
                "missed_copies": whole.missed_copies,
                "p99_outside_windows_ms": (outside_row["latency_ms"] or {}).get("p99"),
                "worker_rss_growth_last_half": rss["largest"]}
    failed = bool(whole.lost or whole.inconsistent or whole.missed_copies
                  or chaos.cluster.unexpected or unrecovered)
    return {
        "lost": whole.lost, "inconsistent": whole.inconsistent,
        "missed_copies": whole.missed_copies, "failed": failed,
        "benchmark": "chaos", "minutes": round(schedule.seconds / 60, 2), "workers": WORKERS,
        "faults": asdict(schedule),
        "capacity_probe": capacity, "capacity_share": CAPACITY_SHARE,
        "rate_per_s": {"target": round(rate, 1), "achieved": round(chaos.achieved_rate, 1)},
        "published": len(ledger.kinds), "verdicts": ledger.verdicts,
        "dead_letters": ledger.dead_letters, "redelivered": whole.redelivered,
        "windows": rows, "outside_windows": outside_row, "whole_run": whole.summary(),
        "kills": sum(w.kind == "kill" for w in windows),
        "stalls": sum(w.kind == "stall" for w in windows),
        "unexpected_exits": chaos.cluster.unexpected, "unrecovered_windows": unrecovered,
        "worker_rss": rss, "goals": GOALS, "measured": measured,
        "examples": judged.examples, "mix": MIX, "tenants": list(TENANTS),
        "bomb_tenant": BOMB_TENANT,
        "verdict_mix": {kind: dict(labels) for kind, labels in ledger.verdict_mix.items()},
        "dead_letter_reasons": dict(ledger.reasons), "series": samples,
        "input_offsets": [{"t_s": _rel(at, chaos.started), "committed": committed, "end": ends}
                          for at, committed, ends in chaos.offsets.points],
        "lives": [{"name": life.name, "started_s": _rel(life.started_at, chaos.started),
                   "ready_s": _rel(life.ready_at, chaos.started),
                   "ended_s": _rel(life.ended_at, chaos.started),
                   "exit_code": life.exit_code, "killed": life.killed}
                  for life in chaos.cluster.lives],
        "settings": {"batch_size": chaos.settings.batch_size, "shards": chaos.settings.shards,
                     "partitions": chaos.settings.partitions,
                     "group_timeouts_s": GROUP_TIMEOUT_S,
                     "snapshot_interval_s": SNAPSHOT_INTERVAL_S},
        "load_average_1m_at_end": round(os.getloadavg()[0], 2), "machine": machine(),
    }


def _rel(at: float | None, zero: float) -> float | None:
    return None if at is None else round(at - zero, 1)


def _window_times(window: Window, zero: float) -> dict:
    seconds = (window.ended_at - window.started_at) if window.ended_at else None
    return {"kind": window.kind, "target": window.target,
            "started_s": _rel(window.started_at, zero),
            "fault_ended_s": _rel(window.fault_ended_at, zero),
            "recovered_s": _rel(window.recovered_at, zero), "ended_s": _rel(window.ended_at, zero),
            "seconds": round(seconds, 1) if seconds is not None else None, "note": window.note}


def _restart(chaos: Chaos, window: Window) -> dict:
    """The replacement: how many outcomes it sent, and which shards it rebuilt from where."""
    answered = sum(1 for got in chaos.ledger.outcomes.values() for o in got
                   if o.worker == window.replacement)
    life = next(life for life in chaos.cluster.lives if life.name == window.replacement)
    try:
        log = life.log.read_text(errors="replace")
    except OSError:
        log = ""
    rebuilt = [{"shard": int(s), "from_offset": int(a), "to_offset": int(b)}
               for s, a, b in _REBUILDING.findall(log)]
    return {"replacement": window.replacement, "replacement_answered": answered,
            "shards_rebuilt": rebuilt}


def _max_lag(samples: list[dict]) -> float | None:
    lags = [s["consumer_lag"] for s in samples if s["consumer_lag"] is not None]
    return max(lags) if lags else None


def _rss_growth(chaos: Chaos) -> dict:
    """Each worker life's RSS growth over the last half of the traffic (see the docstring)."""
    half = chaos.started + (chaos.traffic_ended - chaos.started) / 2
    ready = {life.name: life.ready_at for life in chaos.cluster.lives}
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for sample in chaos.samples:
        for worker in sample["workers"]:
            ready_at = ready.get(worker["name"])
            if (sample["phase"] == "traffic" and sample["at"] >= half and ready_at
                    and sample["at"] >= ready_at + RSS_WARMUP_S and worker["rss_mb"]):
                points[worker["name"]].append((sample["at"], worker["rss_mb"]))
    lives = {name: {"from_mb": got[0][1], "to_mb": got[-1][1],
                    "seconds": round(got[-1][0] - got[0][0], 1),
                    "growth": round(got[-1][1] / got[0][1] - 1, 4)}
             for name, got in points.items() if got[-1][0] - got[0][0] >= RSS_MIN_SPAN_S}
    largest = max((life["growth"] for life in lives.values()), default=None)
    broker = [s["broker_rss_mb"] for s in chaos.samples if s["broker_rss_mb"]]
    return {"lives": lives, "largest": largest,
            "broker_mb": {"first": broker[0], "last": broker[-1]} if broker else None}


# -- tables

def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _p99(latency: dict | None) -> str:
    return "-" if not latency else f"{latency['p99']:.0f}"


def _share(matched: int, matchable: int) -> str:
    return f"{matched}/{matchable}" if matchable else "-"


def _windows_table(results: dict) -> str:
    """One row per fault window, then outside the windows and the whole run."""
    rows = []
    for n, w in enumerate(results["windows"], 1):
        what = f"{w['kind']} {w['target']}" + (f" -> {w['replacement']} "
                                               f"({w['replacement_answered']} answered)"
                                               if w["kind"] == "kill" else "")
        times = f"{w['started_s']} / {w['recovered_s']} / {w['ended_s']}"
        rows.append([f"{n}. {what}" + (f" ({w['note']})" if w["note"] else ""), times,
                     *_bucket_cells(w), _number(w["max_consumer_lag"])])
    out = results["outside_windows"]
    rows.append(["outside the windows", "-", *_bucket_cells(out), _number(out["max_consumer_lag"])])
    rows.append(["whole run", "-", *_bucket_cells(results["whole_run"]), "-"])
    return markdown_table(["window", "start / recovered / end s", "events", "lost",
                           "inconsistent", "missed copies (of checked)", "redelivered", "p99 ms",
                           "variants matched", "max lag"], rows)


def _bucket_cells(bucket: dict) -> list[str]:
    return [str(bucket["events"]), str(bucket["lost"]), str(bucket["inconsistent"]),
            f"{bucket['missed_copies']} of {bucket['copies_checked']}", str(bucket["redelivered"]),
            _p99(bucket["latency_ms"]),
            _share(bucket["variants_matched"], bucket["variants_matchable"])]


def _minute_table(per_minute: list[dict]) -> str:
    """The series, one row a minute (and the last sample): lag and each process's RSS."""
    rows = []
    for s in per_minute:
        rss = " / ".join(f"{w['rss_mb']:.0f}" if w["rss_mb"] else "-"
                         for w in sorted(s["workers"], key=lambda w: w["slot"]))
        rows.append([f"{s['t_s'] / 60:.1f} min", s["phase"], s["fault"] or "-",
                     str(s["published"]), str(s["verdicts"] + s["dead_letters"]),
                     str(s["outstanding"]), _number(s["consumer_lag"]), rss,
                     _number(s["broker_rss_mb"]), _p99(s["latency_ms"])])
    return markdown_table(["t", "phase", "fault", "published", "received", "outstanding",
                           "consumer lag", "worker RSS MB", "broker RSS MB", "p99 ms"], rows)


def _goals_table(results: dict) -> str:
    measured, goals = results["measured"], results["goals"]
    rows = []
    for name, goal in goals.items():
        value = measured[name]
        met = value is not None and value <= goal
        shown = "not measured" if value is None else (
            f"{value:.1%}" if name == "worker_rss_growth_last_half" else str(value))
        rows.append([name.replace("_", " "), f"<= {goal:.0%}" if isinstance(goal, float)
                     else f"<= {goal}" if goal else "0", shown,
                     "met" if met else ("-" if value is None else "MISSED")])
    unexpected = results["unexpected_exits"]
    rows.append(["worker exits", "as expected",
                 json.dumps(unexpected) if unexpected else "as expected",
                 "MISSED" if unexpected else "met"])
    return markdown_table(["goal", "target", "measured", ""], rows)


def _summary_rows(results: dict) -> list[tuple[str, str]]:
    probe, rate = results["capacity_probe"], results["rate_per_s"]
    rows = []
    if probe:
        rows.append(("capacity on this mix (probe)",
                     f"{probe['images_per_s']:.0f} events/s ({results['workers']} workers)"))
    out = results["outside_windows"]["latency_ms"] or {}
    rows += [
        ("rate target / achieved", f"{rate['target']} / {rate['achieved']} events/s"),
        ("published / verdicts / dead letters",
         f"{results['published']} / {results['verdicts']} / {results['dead_letters']}"),
        ("kills / broker stalls", f"{results['kills']} / {results['stalls']}"),
        ("lost / inconsistent / missed copies",
         f"{results['lost']} / {results['inconsistent']} / {results['missed_copies']}"),
        ("redelivered", str(results["redelivered"])),
        ("latency outside windows p50 / p99", f"{out.get('p50')} / {out.get('p99')} ms"),
        ("largest worker RSS growth, last half",
         "not measured (no worker life long enough)" if results["worker_rss"]["largest"] is None
         else f"{results['worker_rss']['largest']:.1%}"),
        ("load average (1 min) at the end", str(results["load_average_1m_at_end"])),
    ]
    return rows
