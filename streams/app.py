"""The Faust app: input topic -> cascade (in batches, off the event loop) -> verdict topic.

Bad input goes to the dead-letter topic. Offsets are committed only after a batch's verdicts
and dead letters are acknowledged by the broker (at-least-once).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import faust

from dupwatch.detectors import build_cascade
from dupwatch.schemas import DeadLetter, Verdict
from dupwatch.settings import Settings
from dupwatch.streams.kafka import ensure_topics, faust_credentials, max_message_bytes
from dupwatch.streams.processor import InputRecord, Processor

log = logging.getLogger(__name__)


def create_app(settings: Settings, processor: Processor,
               executor: ThreadPoolExecutor) -> faust.App:
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_list],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        autodiscover=False,
        topic_disable_leader=True,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=max_message_bytes(settings),
        producer_max_request_size=max_message_bytes(settings),
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
    )
    images = app.topic(settings.input_topic, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    verdicts = app.topic(settings.verdict_topic, key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(settings.dead_letter_topic, key_serializer="raw",
                             value_serializer="raw")

    @app.agent(images, name="dupwatch.detect")
    async def detect(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(settings.batch_size,
                                               within=settings.batch_timeout_ms / 1000):
            records = [_record(event) for event in events]
            # The cascade is CPU work: run it on its own thread so heartbeats keep flowing.
            outcomes = await loop.run_in_executor(executor, processor.handle_batch, records)
            sent = []
            for record, outcome in zip(records, outcomes):
                topic = verdicts if isinstance(outcome, Verdict) else dead_letters
                sent.append(await topic.send(key=_key(record, outcome), value=outcome.to_json()))
            await asyncio.gather(*sent)  # delivered before take_events acks the batch

    return app


def _record(event: faust.EventT) -> InputRecord:
    message = event.message
    return InputRecord(value=message.value or b"", key=message.key,
                       headers=list(message.headers or []), topic=message.topic,
                       partition=message.partition, offset=message.offset)


def _key(record: InputRecord, outcome: Verdict | DeadLetter) -> bytes | None:
    if isinstance(outcome, Verdict):
        return f"{outcome.tenant}/{outcome.image_id}".encode()
    return record.key


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT; save the indexes on the way out if configured."""
    ensure_topics(settings)
    cascade = build_cascade(settings)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dupwatch-cascade")
    app = create_app(settings, Processor(settings, cascade), executor)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        executor.shutdown(wait=True)
        state = settings.state_path()
        if state is not None:
            cascade.save(state)
            log.warning("saved index snapshot to %s", state)
