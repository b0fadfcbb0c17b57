"""What a worker says about itself: one line when it starts, one per rebalance.

Plain text, the same on a terminal and in a file: Faust's colours, spinner and cursor codes
are left out. dupwatch's own lines follow ``log_level``; Faust and aiokafka only warn, unless
``log_level`` is debug.
"""
from __future__ import annotations

import logging
import sys
from collections import defaultdict
from typing import Any

import faust
from faust.types import TP

from dupwatch.detectors import Cascade
from dupwatch.settings import Settings

log = logging.getLogger(__name__)

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    debug = settings.log_level.lower() == "debug"
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("dupwatch").setLevel(settings.log_level.upper())


def log_start(settings: Settings, cascade: Cascade) -> None:
    snapshots = (f"snapshots in {settings.state_dir}" if settings.state_dir
                 else "no --state-dir: a restarted shard replays its whole changelog")
    store = (f"{settings.shards} shards over the changelog {settings.index_topic_prefix}.changelog "
             f"({snapshots}; vector index {settings.vector_index}; the shards this worker hosts "
             "are logged as they are assigned)")
    log.info("worker %s starting: broker %s, group %s, topics %s -> %s (dead letters %s, control "
             "%s), stages %s, model %s, store %s, web port %s; joining the group takes up to "
             "%.0f s", settings.worker_name, settings.bootstrap_servers, settings.group_id,
             settings.input_topic, settings.verdict_topic, settings.dead_letter_topic,
             settings.control_topic, ",".join(settings.stages), cascade.model_version or "none",
             store, settings.web_port if settings.web_enabled else "off",
             settings.rebalance_timeout_s)


def log_rebalances(app: faust.App) -> None:
    @app.on_partitions_assigned.connect
    async def assigned(app: faust.App, assigned: set[TP], **kwargs: Any) -> None:
        log.info("rebalance: this worker now consumes %s", _partitions(assigned) or "nothing")

    @app.on_partitions_revoked.connect
    async def revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        log.info("rebalance under way%s", f": giving up {_partitions(revoked)}" if revoked
                 else " (this worker joins the group)")


def _partitions(tps: set[TP]) -> str:
    by_topic: dict[str, list[int]] = defaultdict(list)
    for tp in tps:
        by_topic[tp.topic].append(tp.partition)
    return ", ".join(f"{topic} {sorted(parts)}" for topic, parts in sorted(by_topic.items()))
