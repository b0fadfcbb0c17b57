"""The worker's Faust app, as configured: how its group shares the input partitions.

Built in-process (nothing connects until it starts); the assignment is Faust's own assignor
given the cluster as it stands after a rebalance, so no broker is needed."""
from __future__ import annotations

from pathlib import Path

from faust.assignor.client_assignment import CopartitionedAssignment
from faust.assignor.copartitioned_assignor import CopartitionedAssignor
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from dupwatch.settings import Settings
from dupwatch.streams.app import create_app
from dupwatch.streams.cascade_thread import CascadeThread
from dupwatch.wiring.kafka import kafka_options


def test_a_worker_that_joins_after_a_crash_gets_input_partitions(tmp_path: Path) -> None:
    """Three workers on four partitions; one crashed, the two left took two each, and its
    replacement joins. It must get one: with Faust's default of one table standby (dupwatch
    has no Faust tables) the assignor let each keep two and the replacement consumed nothing
    until the next crash (found by `dupwatch bench chaos`: the restarted worker answered none
    of the events after its restart)."""
    settings = Settings().replace(partitions=4)
    app = create_app(settings, kafka_options(settings), None,  # type: ignore[arg-type]
                     CascadeThread(), tmp_path)
    topics = {settings.input_topic}
    survivors_and_replacement = {
        "survivor-1": CopartitionedAssignment({0, 1}, set(), topics),
        "survivor-2": CopartitionedAssignment({2, 3}, set(), topics),
        "replacement": CopartitionedAssignment(set(), set(), topics),
    }
    assignment = CopartitionedAssignor(topics, survivors_and_replacement, settings.partitions,
                                       replicas=app.assignor.replicas).get_assignment()
    actives = {member: sorted(a.actives) for member, a in assignment.items()}
    assert actives["replacement"], actives
    assert sorted(len(partitions) for partitions in actives.values()) == [1, 1, 2], actives
    assert sorted(p for partitions in actives.values() for p in partitions) == [0, 1, 2, 3]


def test_the_worker_consumes_through_the_transport_that_rewinds_uncommitted_partitions(
        tmp_path: Path) -> None:
    """Faust's own aiokafka consumer leaves a partition nobody committed past the records it
    dropped at a rebalance (tests/integration/test_consumer_rewind.py); the worker must use
    streams/transport.py's instead."""
    settings = Settings()
    app = create_app(settings, kafka_options(settings), None,  # type: ignore[arg-type]
                     CascadeThread(), tmp_path)
    thread_class = type(app.consumer._thread)
    assert issubclass(thread_class, AIOKafkaConsumerThread)
    assert thread_class.seek_to_committed is not AIOKafkaConsumerThread.seek_to_committed
