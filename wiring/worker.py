"""A worker: Settings -> its sharded store's options, and the worker built from them."""
from __future__ import annotations

import faulthandler
import signal
import socket
import tempfile
from pathlib import Path
from typing import Callable

import faust

from dupwatch.errors import ConfigError, UserError
from dupwatch.index import LocalStore
from dupwatch.index.sharded import (
    ShardClient, ShardOptions, ShardServer, check_shard_count, refuse_in_memory_snapshot,
)
from dupwatch.pipeline import metrics
from dupwatch.settings import Settings
from dupwatch.streams.app import create_app
from dupwatch.streams.cascade_thread import CascadeThread
from dupwatch.streams.lookup_api import TokenError, Tokens
from dupwatch.streams.worker_log import configure_logging, log_start
from dupwatch.wiring.cascade import build_cascade, build_processor
from dupwatch.wiring.kafka import ensure_topics, kafka_options


def shard_options(settings: Settings) -> ShardOptions:
    """A worker's store (only workers have one: ``scan`` keeps its index in memory)."""
    if settings.shards < 1:
        raise ConfigError(f"shards must be at least 1, got {settings.shards} (--shards): a "
                          "worker keeps its index in changelog-backed shards; one worker hosts "
                          "them all")
    return ShardOptions(settings.group_id, settings.worker_name, settings.index_topic_prefix,
                        settings.shards, settings.session_timeout_s,
                        settings.rebalance_timeout_s, settings.search_threads,
                        settings.state_path(), settings.snapshot_interval_s,
                        settings.lookup_retry_s)


def shard_server(settings: Settings, new_store: Callable[[], LocalStore]) -> ShardServer:
    return ShardServer(shard_options(settings), kafka_options(settings), new_store)


def shard_client(settings: Settings, local: ShardServer | None = None) -> ShardClient:
    return ShardClient(shard_options(settings), kafka_options(settings), local)


def run_worker(settings: Settings) -> None:
    """Run one worker until SIGTERM/SIGINT.

    The worker keeps its index in the changelog-backed shards (index/sharded.py): it hosts the
    shards Kafka assigns it (all of them when it is alone) and looks images up across all
    shards, in-process for its own. The cascade (and so any model) is loaded before the web
    server starts: a worker that answers its probes has it. Raises WorkerFailed (exit status
    70) if the shard server's thread died.
    """
    store, connection = shard_options(settings), kafka_options(settings)
    # `kill -USR1` prints every thread's stack: a hang's cause
    faulthandler.register(signal.SIGUSR1)
    if settings.web_enabled:
        _check_web_port(settings.web_port)
    if store.state_dir is not None:
        refuse_in_memory_snapshot(store.state_dir)
    configure_logging(settings)
    ensure_topics(settings)
    check_shard_count(store, connection)
    cascade = build_cascade(settings, on_embedding_batch=metrics.observe_embedding_batch)
    log_start(settings, cascade)
    if cascade.model_version:
        metrics.set_model_version(cascade.model_version)
    try:
        tokens = Tokens.of(settings)
    except TokenError as error:
        raise UserError(str(error)) from None
    shards = ShardServer(store, connection, cascade.new_local_store).start()
    cascade.store = client = ShardClient(store, connection, local=shards)
    executor = CascadeThread()
    cascade.pause_point = executor.run_urgent  # lookups waiting go between a batch's steps
    faust_dir = tempfile.TemporaryDirectory(prefix="dupwatch-faust-")
    app = create_app(settings, connection, build_processor(settings, cascade), executor,
                     Path(faust_dir.name), shards, tokens)
    worker = faust.Worker(app, quiet=True, override_logging=False)
    worker.spinner = None  # it writes cursor codes, even into a file
    try:
        worker.execute_from_commandline()  # ends by raising SystemExit, status 0 after a stop
    finally:
        client.closing = True  # a lookup waiting for a shard on a dead worker gives up
        executor.shutdown(wait=True)
        client.close()
        shards.stop()  # snapshots its shards into state_dir
        faust_dir.cleanup()
        shards.check_alive()  # its WorkerFailed replaces that SystemExit: exit status 70


def _check_web_port(port: int) -> None:
    """Fail with a plain message, not Faust's traceback, when another process has the port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds it
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise UserError(
                f"web port {port} is not free ({exc.strerror}): another worker may be "
                "using it. Give this one --web-port N (DUPWATCH_WEB_PORT), or --web-enabled "
                "false to run without metrics and probes.") from None
