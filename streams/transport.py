"""Faust's Kafka transport (aiokafka) with one change: when Faust rewinds its partitions to their
committed offsets, a partition that has none is rewound to its beginning.

Faust drops records it fetched but did not hand to a stream in several places: a rebalance
clears the streams' buffers, and records that arrive while its flow is stopped are thrown away.
It then relies on ``seek_to_committed`` to read them again. aiokafka's leaves a partition with no
committed offset (or offset 0) where it is, past the dropped records, so they were never read:
in `bench chaos` a worker killed before its first commit left a partition that its next owner
fetched from the start while still rebalancing, dropped, and then read from its end on; the 19
events published between the kill and the takeover got no outcome. From the beginning is what
the consumer's ``auto_offset_reset="earliest"`` promises a partition nobody committed.
"""
from __future__ import annotations

import logging
from typing import Mapping

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TransportT

log = logging.getLogger(__name__)


async def seek_to_committed_or_beginning(
        consumer: AIOKafkaConsumer) -> Mapping[TopicPartition, int | None]:
    """Every assigned partition to its committed offset, or to its beginning if it has none;
    the committed offsets, as aiokafka's ``seek_to_committed`` returns them."""
    committed = await consumer.seek_to_committed()
    never_committed = [tp for tp, offset in committed.items() if not offset]
    if never_committed:
        log.debug("no committed offset: reading %s from the beginning", never_committed)
        await consumer.seek_to_beginning(*never_committed)
    return committed


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed_or_beginning)

    async def _seek_to_committed_or_beginning(self) -> Mapping[TP, int]:
        return await seek_to_committed_or_beginning(self._ensure_consumer())  # type: ignore[return-value]


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, consuming through the consumer above."""

    Consumer = _Consumer


class App(faust.App):
    """A Faust app whose consumer is the one above (Faust picks a transport by the broker URL's
    scheme; this keeps ``kafka://`` and swaps the class)."""

    def _new_transport(self) -> TransportT:
        return Transport(self.conf.broker_consumer, self)
