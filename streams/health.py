"""What a worker's probes report, and how far behind its input partitions it is.

``/healthz``: the process is up and its event loop answers (Kubernetes' liveness probe).
``/readyz``: the worker is consuming. It builds its cascade (decode limits, stages, any
embedding model, index snapshots) before its web server starts, so a worker that answers has
loaded them; what is left to wait for is the consumer group: joined at least once and not in
the middle of a rebalance. A worker with no partitions (more workers than partitions) is
ready: it is a standby. With a sharded index two checks join them: "shards assigned" (the
worker has joined the shard group and no rebalance of it is under way) and "shards caught up"
(false while a shard this worker was given is still being rebuilt from its snapshot and the
changelog).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

from dupwatch.pipeline.processor import InputRecord


class GroupMember(Protocol):
    """The part of a Faust app that says where its consumer group stands."""
    rebalancing: bool
    rebalancing_count: int


class ShardHost(Protocol):
    """The part of a shard server that says where its group stands and whether its shards
    have caught up."""
    assigned: bool
    ready: bool


def readiness(app: GroupMember, shards: ShardHost | None = None) -> dict[str, bool]:
    """Each readiness condition and whether it holds; ready when all do."""
    checks = {"joined_consumer_group": app.rebalancing_count > 0,
              "not_rebalancing": not app.rebalancing}
    if shards is not None:
        checks["shards_assigned"] = shards.assigned
        checks["shards_caught_up"] = shards.ready
    return checks


@dataclass
class PartitionProgress:
    """The next offset to process in each input partition, as far as this worker has got.

    Offsets are dropped when partitions are revoked: another worker may take them further,
    and a stale offset would overstate the lag if they come back.
    """
    topic: str
    next_offsets: dict[int, int] = field(default_factory=dict)

    def processed(self, records: Iterable[InputRecord]) -> None:
        for record in records:
            if record.topic == self.topic and record.partition is not None \
                    and record.offset is not None:
                done = record.offset + 1
                self.next_offsets[record.partition] = max(
                    done, self.next_offsets.get(record.partition, done))

    def revoked(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.next_offsets.pop(partition, None)
