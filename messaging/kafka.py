"""Kafka client configuration shared by confluent-kafka (CLI tools) and Faust (the worker)."""
from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Collection

import faust
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from dupwatch.errors import UserError

# Room for the JSON envelope and base64 (4/3) around the largest accepted image.
_ENVELOPE_FACTOR = 1.4


# How long compaction keeps a changelog tombstone (a takedown) readable by rebuilding shards.
CHANGELOG_DELETE_RETENTION_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class KafkaOptions:
    """How a client reaches the cluster (the connection settings): the bootstrap servers, the
    security protocol with its SASL and TLS settings, whether librdkafka may log (only at
    ``--log-level debug``), and the largest image an event may carry (it sizes requests)."""
    bootstrap_servers: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str = field(repr=False)  # never logged
    ssl_cafile: str
    ssl_certfile: str
    ssl_keyfile: str
    client_logs: bool
    max_event_bytes: int


@dataclass(frozen=True)
class TopicOptions:
    """The topics a worker uses and how they are created (``ensure_topics``)."""
    input_topic: str
    verdict_topic: str
    dead_letter_topic: str
    control_topic: str
    index_topic_prefix: str
    partitions: int
    replication_factor: int
    shards: int


@dataclass(frozen=True)
class ShardTopics:
    """The sharded index's three topic names, from ``index_topic_prefix`` (see index/sharded.py):
    the compacted changelog of entries, the lookups sent to shards, the shards' answers."""
    changelog: str
    lookups: str
    answers: str

    @classmethod
    def of(cls, prefix: str) -> "ShardTopics":
        return cls(f"{prefix}.changelog", f"{prefix}.lookups", f"{prefix}.answers")



def max_message_bytes(max_event_bytes: int) -> int:
    return int(max_event_bytes * _ENVELOPE_FACTOR) + 64 * 1024


def confluent_config(kafka: KafkaOptions, **extra: Any) -> dict[str, Any]:
    """librdkafka properties for a producer, consumer or admin client."""
    protocol = kafka.security_protocol.upper()  # both clients' names are upper case
    config: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers,
                              "security.protocol": protocol,
                              # a broker closing idle connections is routine, not worth a log line
                              "log.connection.close": False}
    if not kafka.client_logs:  # the command reports what matters in its own words
        config["log_level"] = 0
    if "SASL" in protocol:
        config.update({"sasl.mechanism": kafka.sasl_mechanism.upper(),
                       "sasl.username": kafka.sasl_username,
                       "sasl.password": kafka.sasl_password})
    for setting, prop in (("ssl_cafile", "ssl.ca.location"),
                          ("ssl_certfile", "ssl.certificate.location"),
                          ("ssl_keyfile", "ssl.key.location")):
        if getattr(kafka, setting):
            config[prop] = getattr(kafka, setting)
    config.update(extra)
    return config


def faust_credentials(kafka: KafkaOptions) -> faust.types.auth.CredentialsT | None:
    """The same security settings in the form Faust (aiokafka) takes."""
    protocol = kafka.security_protocol.upper()
    context = _ssl_context(kafka) if "SSL" in protocol else None
    if "SASL" in protocol:
        return faust.SASLCredentials(username=kafka.sasl_username,
                                     password=kafka.sasl_password,
                                     mechanism=kafka.sasl_mechanism.upper(),
                                     ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _ssl_context(kafka: KafkaOptions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=kafka.ssl_cafile or None)
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile or None)
    return context


def ensure_topics(kafka: KafkaOptions, topics: TopicOptions, timeout_s: float = 30.0,
                  only: Collection[str] | None = None) -> None:
    """Create the topics dupwatch uses (``only`` those named) if missing; existing ones are
    kept as they are."""
    admin = AdminClient(confluent_config(kafka))
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [topic for topic in _topics(topics)
               if topic.topic not in existing and (only is None or topic.topic in only)]
    if not missing:
        return
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another worker won the race: fine
                raise UserError(f"cannot create topic {name}: {exc}") from None


def _topics(layout: TopicOptions) -> list[NewTopic]:
    replicas = layout.replication_factor
    topics = [NewTopic(name, layout.partitions, replicas) for name in
              (layout.input_topic, layout.verdict_topic, layout.dead_letter_topic)]
    # One partition: commands apply in the order they were given (a bank add, then a removal).
    topics.append(NewTopic(layout.control_topic, 1, replicas))
    if layout.shards > 0:
        names = ShardTopics.of(layout.index_topic_prefix)
        topics += [
            NewTopic(names.changelog, layout.shards, replicas, config={
                "cleanup.policy": "compact",
                "delete.retention.ms": str(CHANGELOG_DELETE_RETENTION_MS)}),
            NewTopic(names.lookups, layout.shards, replicas, config={"retention.ms": "3600000"}),
            NewTopic(names.answers, max(layout.shards, layout.partitions), replicas,
                     config={"retention.ms": "3600000"})]
    return topics


class BrokerUnreachable(Exception):
    """No broker answered: one line for the user, and exit status 2."""


BROKER_WAIT_S = 5.0  # long enough for a broker started a moment ago, short for a typo


def require_broker(kafka: KafkaOptions, wait_s: float = BROKER_WAIT_S) -> None:
    """Return once the cluster answers; else raise :class:`BrokerUnreachable` naming the
    address, what went wrong and what to try. Commands call it before any other Kafka work."""
    errors: list[KafkaError] = []
    admin = AdminClient(confluent_config(kafka, error_cb=errors.append))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            admin.list_topics(timeout=1)
            return
        except KafkaException:
            admin.poll(0)  # hands librdkafka's errors to error_cb
            if time.monotonic() >= deadline:
                raise BrokerUnreachable(_unreachable(kafka, errors)) from None


def _unreachable(kafka: KafkaOptions, errors: list[KafkaError]) -> str:
    address = kafka.bootstrap_servers
    codes = {error.code() for error in errors}
    reason = _reason(errors[-1]) if errors else f"no answer within {BROKER_WAIT_S:.0f} s"
    if KafkaError._AUTHENTICATION in codes:
        return (f"the Kafka broker at {address} refused to authenticate this client ({reason}); "
                "check --security-protocol, --sasl-mechanism, --sasl-username and "
                "--sasl-password (or their DUPWATCH_* variables)")
    if KafkaError._SSL in codes:
        return (f"no TLS connection to the Kafka broker at {address} ({reason}); check "
                "--security-protocol and --ssl-cafile, --ssl-certfile, --ssl-keyfile")
    return (f"no Kafka broker answers at {address} ({reason}). Start one on this machine with "
            "`dupwatch broker`, or give the address of yours with --bootstrap-servers "
            "(or DUPWATCH_BOOTSTRAP_SERVERS)")


def _reason(error: KafkaError) -> str:
    """librdkafka's message without its broker prefix and state suffix: 'Connection refused'."""
    text = re.sub(r"^\S+/(bootstrap|\d+): ", "", error.str())
    text = re.sub(r" \(after \d+ms in state \w+\)$", "", text)
    return text.split(" failed: ", 1)[-1]
