"""Settings -> the Kafka clients' options, and the clients built from them."""
from __future__ import annotations

from typing import Collection

from dupwatch.messaging import kafka
from dupwatch.messaging.follow import TopicReader
from dupwatch.messaging.kafka import KafkaOptions, TopicOptions
from dupwatch.messaging.publish import Publisher
from dupwatch.settings import Settings


def kafka_options(settings: Settings) -> KafkaOptions:
    return KafkaOptions(settings.bootstrap_servers, settings.security_protocol,
                        settings.sasl_mechanism, settings.sasl_username, settings.sasl_password,
                        settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile,
                        client_logs=settings.log_level == "debug",
                        max_event_bytes=settings.max_event_bytes)


def topic_options(settings: Settings) -> TopicOptions:
    return TopicOptions(settings.input_topic, settings.verdict_topic, settings.dead_letter_topic,
                        settings.control_topic, settings.index_topic_prefix, settings.partitions,
                        settings.replication_factor, settings.shards)


def kafka_publisher(settings: Settings, topic: str | None = None) -> Publisher:
    """A publisher to ``topic`` (default: the input topic)."""
    return Publisher(kafka_options(settings), topic or settings.input_topic)


def topic_reader(settings: Settings, topics: list[str], from_beginning: bool = True) -> TopicReader:
    return TopicReader(kafka_options(settings), topics, from_beginning)


def ensure_topics(settings: Settings, only: Collection[str] | None = None) -> None:
    kafka.ensure_topics(kafka_options(settings), topic_options(settings), only=only)


def require_broker(settings: Settings) -> None:
    kafka.require_broker(kafka_options(settings))
