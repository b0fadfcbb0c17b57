"""The Faust app: input topic -> cascade (in batches, off the event loop) -> verdict topic.

Bad input goes to the dead-letter topic. Offsets are committed only after an event's verdict or
dead letter is acknowledged by the broker, and only up to the first event still in progress
(at-least-once; see streams/pipeline.py). With ``web_enabled`` the
worker serves ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` (see streams/health.py)
on ``web_port``, and ``POST /v1/lookup`` with its ``/v1/openapi.json`` (streams/lookup_api.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Iterable

import faust
from aiokafka.errors import IllegalStateError
from faust.types import TP
from faust.web import Request, Response, View

from dupwatch.schemas import DeadLetter, Verdict
from dupwatch.settings import Settings
from dupwatch.pipeline import metrics
from dupwatch.streams.cascade_thread import CascadeThread
from dupwatch.streams.health import PartitionProgress, readiness
from dupwatch.messaging.kafka import KafkaOptions, faust_credentials, max_message_bytes
from dupwatch.streams.lookup_api import ApiError, LookupRequest, LookupService, Tokens, openapi
from dupwatch.streams.pipeline import Pipeline, record_of
from dupwatch.streams.transport import App
from dupwatch.pipeline.processor import InputRecord, Processor
from dupwatch.index.sharded import ShardServer
from dupwatch.streams.worker_log import log_rebalances

log = logging.getLogger(__name__)

# How often the lag and index-size gauges are refreshed: alerts look at minutes, not seconds,
# and counting every tenant's index after each batch would cost the hot path.
GAUGE_REFRESH_S = 5.0


def create_app(settings: Settings, kafka: KafkaOptions, processor: Processor,
               executor: CascadeThread, datadir: Path, shards: ShardServer | None = None,
               tokens: Tokens | None = None) -> faust.App:
    """datadir: where Faust makes its (empty: tables live in memory) data folders; its default,
    '<group id>-data' under the working directory, left one behind wherever a worker ran."""
    app = App(
        settings.group_id,
        datadir=datadir,
        broker=[f"kafka://{server}" for server in settings.bootstrap_list],
        broker_credentials=faust_credentials(kafka),
        store="memory://",
        autodiscover=False,
        topic_disable_leader=True,
        # No Faust tables, so no standbys: with Faust's default of one, its assignor lets each
        # worker keep ceil(partitions / workers) and a restarted worker can get no partition
        # at all (4 partitions, 3 workers: 2 + 2 + 0); with none it balances (2 + 1 + 1).
        table_standby_replicas=0,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=max_message_bytes(kafka.max_event_bytes),
        producer_max_request_size=max_message_bytes(kafka.max_event_bytes),
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
    )
    progress = PartitionProgress(settings.input_topic)
    _add_agent(app, settings, processor, executor, progress)
    _add_control_agent(app, settings, processor, executor)
    _add_gauge_refresh(app, processor, executor, progress, shards)
    _add_probes(app, shards)
    _add_lookup(app, LookupService(settings, processor, executor, tokens or Tokens([])))
    log_rebalances(app)
    return app


def _add_agent(app: faust.App, settings: Settings, processor: Processor,
               executor: Executor, progress: PartitionProgress) -> None:
    images = app.topic(settings.input_topic, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    verdicts = _raw_topic(app, settings.verdict_topic)
    dead_letters = _raw_topic(app, settings.dead_letter_topic)

    async def deliver(records: list[InputRecord], outcomes: list[Verdict | DeadLetter]) -> None:
        sent = []
        for record, outcome in zip(records, outcomes, strict=True):
            topic = verdicts if isinstance(outcome, Verdict) else dead_letters
            sent.append(await topic.send(key=_key(record, outcome), value=outcome.to_json()))
        await asyncio.gather(*sent)  # on the broker before the events are acknowledged
        metrics.observe_outcomes(outcomes, time.time())
        progress.processed(records)

    @app.agent(images, name="dupwatch.detect")
    async def detect(stream: faust.StreamT) -> None:
        async with Pipeline(settings, processor, executor, deliver, stream.ack) as pipeline:
            async for events in stream.noack_take(settings.batch_size,
                                                  within=settings.batch_timeout_ms / 1000):
                metrics.count_consumed(len(events))
                await pipeline.add(events)


def _add_control_agent(app: faust.App, settings: Settings, processor: Processor,
                       executor: Executor) -> None:
    """Takedowns and bank loads, applied on the cascade's thread between batches."""
    commands = _raw_topic(app, settings.control_topic)
    dead_letters = _raw_topic(app, settings.dead_letter_topic)

    @app.agent(commands, name="dupwatch.control")
    async def control(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            record = record_of(event)
            outcome = await loop.run_in_executor(executor, processor.handle_control, record)
            if outcome is not None:
                await (await dead_letters.send(key=record.key, value=outcome.to_json()))
                metrics.observe_outcomes([outcome], time.time())


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of plain bytes: dupwatch encodes its own JSON records."""
    return app.topic(name, key_serializer="raw", value_serializer="raw")


def _add_gauge_refresh(app: faust.App, processor: Processor, executor: Executor,
                       progress: PartitionProgress, shards: ShardServer | None) -> None:
    @app.on_partitions_revoked.connect
    async def forget(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        progress.revoked(tp.partition for tp in revoked if tp.topic == progress.topic)

    @app.timer(interval=GAUGE_REFRESH_S)
    async def refresh_gauges() -> None:
        try:
            assigned = [tp for tp in app.consumer.assignment() if tp.topic == progress.topic]
            metrics.set_consumer_lag(progress.topic, await _lag(app, progress, assigned))
            if shards is not None:
                metrics.set_index_sizes({str(n): sizes for n, sizes in shards.sizes.items()})
                metrics.set_index_structures(
                    {str(n): s for n, s in shards.structures.items()},
                    {str(n): at for n, at in shards.snapshotted_at.items()})
        except Exception:  # an exception would end the timer for good; the next tick retries
            log.warning("could not refresh the lag and index-size gauges", exc_info=True)


async def _lag(app: faust.App, progress: PartitionProgress,
               assigned: Iterable[TP]) -> dict[int, int]:
    """Broker end offset minus the next offset to process, for each assigned partition.

    Before this worker has processed a partition's first record it uses the consumer's
    position, which runs ahead by whatever is fetched but not yet processed.
    """
    lag = {}
    for tp in assigned:
        end = app.consumer.highwater(tp)  # from the latest fetch; None before the first
        start = progress.next_offsets.get(tp.partition)
        if start is None:
            try:
                start = await app.consumer.position(tp)
            except IllegalStateError:  # revoked since assignment() was read; next time is right
                continue
        if end is not None and start is not None:
            lag[tp.partition] = max(0, end - start)
    return lag


def _add_probes(app: faust.App, shards: ShardServer | None) -> None:
    @app.page("/metrics")
    async def prometheus_metrics(web: View, request: Request) -> Response:
        body, content_type = metrics.exposition()
        return web.bytes(body, headers={"Content-Type": content_type})

    @app.page("/healthz")
    async def healthz(web: View, request: Request) -> Response:
        if shards is not None and shards.failure is not None:  # the orchestrator restarts it
            return web.json({"status": "failed", "reason": f"shard server: {shards.failure!r}"},
                            status=500)
        return web.json({"status": "alive"})

    @app.page("/readyz")
    async def readyz(web: View, request: Request) -> Response:
        checks = readiness(app, shards)
        ready = all(checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
        if shards is not None:
            body["hosted_shards"] = shards.hosted()
        return web.json(body, status=200 if ready else 503)


def _add_lookup(app: faust.App, service: LookupService) -> None:
    @app.page("/v1/lookup")
    class Lookup(View):
        async def post(self, request: Request) -> Response:
            started = time.perf_counter()
            lookup = LookupRequest(request.query.get("tenant", ""), _int_or_none(request.query.get("top_k")),
                                   request.content_type, request.content_length)
            try:
                service.admit(lookup, request.headers.get("Authorization"))
                answer, status, headers = await service.answer(lookup, request.content), 200, {}
            except ApiError as error:
                answer, status, headers = error.body, error.status, error.headers
            metrics.observe_lookup(status, time.perf_counter() - started)
            return self.json(answer, status=status, headers=headers)

    @app.page("/v1/openapi.json")
    async def lookup_openapi(web: View, request: Request) -> Response:
        return web.json(openapi())


def _int_or_none(text: str | None) -> int | None:
    """A query parameter as an integer (-1 when it is not one, which every check refuses)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return -1


def _key(record: InputRecord, outcome: Verdict | DeadLetter) -> bytes | None:
    if isinstance(outcome, Verdict):
        return f"{outcome.tenant}/{outcome.image_id}".encode()
    return record.key
