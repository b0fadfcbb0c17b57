"""Kafka client configuration shared by confluent-kafka (CLI tools) and Faust (the worker)."""
from __future__ import annotations

import ssl
from typing import Any

import faust
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from dupwatch.settings import Settings

# Room for the JSON envelope and base64 (4/3) around the largest accepted image.
_ENVELOPE_FACTOR = 1.4


def max_message_bytes(settings: Settings) -> int:
    return int(settings.max_event_bytes * _ENVELOPE_FACTOR) + 64 * 1024


def confluent_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka properties for a producer, consumer or admin client."""
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers,
                              "security.protocol": settings.security_protocol,
                              # a broker closing idle connections is routine, not worth a log line
                              "log.connection.close": False}
    if "SASL" in settings.security_protocol:
        config.update({"sasl.mechanism": settings.sasl_mechanism,
                       "sasl.username": settings.sasl_username,
                       "sasl.password": settings.sasl_password})
    for setting, prop in (("ssl_cafile", "ssl.ca.location"),
                          ("ssl_certfile", "ssl.certificate.location"),
                          ("ssl_keyfile", "ssl.key.location")):
        if getattr(settings, setting):
            config[prop] = getattr(settings, setting)
    config.update(extra)
    return config


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The same security settings in the form Faust (aiokafka) takes."""
    protocol = settings.security_protocol
    context = _ssl_context(settings) if "SSL" in protocol else None
    if "SASL" in protocol:
        return faust.SASLCredentials(username=settings.sasl_username,
                                     password=settings.sasl_password,
                                     mechanism=settings.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.ssl_certfile:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
    return context


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create the input, verdict and dead-letter topics if missing (existing ones are kept)."""
    admin = AdminClient(confluent_config(settings))
    names = [settings.input_topic, settings.verdict_topic, settings.dead_letter_topic]
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [NewTopic(name, settings.partitions, settings.replication_factor)
               for name in names if name not in existing]
    if not missing:
        return
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another worker won the race: fine
                raise SystemExit(f"dupwatch: cannot create topic {name}: {exc}") from None
