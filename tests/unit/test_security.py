"""Kafka TLS and SASL settings reach both clients; secrets never reach logs or dead letters.

A real worker turned down by the broker: tests/integration/test_security.py."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaClient
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from dupwatch.wiring.cascade import build_cascade, build_processor
from dupwatch.settings import Settings
from dupwatch.messaging.kafka import confluent_config, faust_credentials
from dupwatch.wiring.kafka import kafka_options
from dupwatch.pipeline.processor import InputRecord

PASSWORD = "kafka-pw-7f3a91"


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory) -> tuple[str, str]:
    """(certificate, key): a self-signed client certificate, which also serves as the CA."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no certificate to test TLS with")
    folder = tmp_path_factory.mktemp("pem")
    cert, key = folder / "client.pem", folder / "client.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=dupwatch",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def _secured(pem_files: tuple[str, str], **changes) -> Settings:
    cert, key = pem_files
    return Settings(bootstrap_servers="127.0.0.1:9", security_protocol="SASL_SSL",
                    sasl_mechanism="SCRAM-SHA-512", sasl_username="dupwatch",
                    sasl_password=PASSWORD, ssl_cafile=cert, ssl_certfile=cert,
                    ssl_keyfile=key).replace(**changes)


def _aiokafka_client(settings: Settings) -> dict:
    """What Faust hands aiokafka, after aiokafka's own client has accepted it."""
    auth = credentials_to_aiokafka_auth(faust_credentials(kafka_options(settings)))

    async def build() -> None:
        AIOKafkaClient(bootstrap_servers=settings.bootstrap_servers, **auth)

    asyncio.run(build())
    return auth


@pytest.mark.parametrize("protocol, mechanism", [
    ("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "SCRAM-SHA-256"), ("SASL_PLAINTEXT", "PLAIN"),
    ("sasl_ssl", "scram-sha-512"),  # as typed into an env var
])
def test_sasl_reaches_both_kafka_clients(pem_files, protocol: str, mechanism: str) -> None:
    settings = _secured(pem_files, security_protocol=protocol, sasl_mechanism=mechanism)
    config = confluent_config(kafka_options(settings))
    assert (config["security.protocol"], config["sasl.mechanism"], config["sasl.username"],
            config["sasl.password"]) == (protocol.upper(), mechanism.upper(), "dupwatch", PASSWORD)
    Producer(config)  # librdkafka validates every property and loads the PEM files
    auth = _aiokafka_client(settings)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_username"],
            auth["sasl_plain_password"]) == (protocol.upper(), mechanism.upper(), "dupwatch", PASSWORD)
    assert (auth["ssl_context"] is not None) == ("SSL" in protocol.upper())


def test_mutual_tls_reaches_both_kafka_clients(pem_files) -> None:
    cert, key = pem_files
    settings = _secured(pem_files, security_protocol="SSL")
    config = confluent_config(kafka_options(settings))
    assert config["security.protocol"] == "SSL" and "sasl.password" not in config
    assert (config["ssl.ca.location"], config["ssl.certificate.location"],
            config["ssl.key.location"]) == (cert, cert, key)
    Producer(config)
    auth = _aiokafka_client(settings)
    assert auth["security_protocol"] == "SSL"
    assert [c["subject"] for c in auth["ssl_context"].get_ca_certs()] == [((("commonName", "dupwatch"),),)]


def test_settings_never_print_the_password() -> None:
    settings = Settings.load(env={"DUPWATCH_SASL_PASSWORD": PASSWORD})
    assert settings.sasl_password == PASSWORD
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    sasl = kafka_options(settings.replace(security_protocol="SASL_PLAINTEXT"))
    assert "kafka-pw" not in repr(faust_credentials(sasl))


def test_url_credentials_stay_out_of_dead_letters_and_logs(tmp_path: Path, caplog) -> None:
    settings = Settings(stages=["sha256"], sasl_password=PASSWORD, uri_roots=[str(tmp_path)],
                        fetch_allow_hosts=["127.0.0.1", "images.example.org"])
    processor = build_processor(settings, build_cascade(settings))
    uris = ["http://bob:hunter2-pw@images.example.org/a.jpg",
            "https://127.0.0.1/a.jpg?X-Amz-Credential=AKIA-key&X-Amz-Signature=sig-0d1e",
            "http://not-allowed.example.com/a.jpg?token=tok-77aa",
            f"file://{tmp_path}/missing.jpg?sig=sig-file-3c"]
    with caplog.at_level(logging.DEBUG):
        letters = processor.handle_batch(
            [InputRecord(json.dumps({"image_id": f"i{n}", "uri": uri}).encode(), key=b"k")
             for n, uri in enumerate(uris)])
    written = b" ".join(letter.to_json() for letter in letters)
    excerpts = b" ".join(base64.b64decode(letter.excerpt) for letter in letters)
    for secret in ("hunter2-pw", "AKIA-key", "sig-0d1e", "tok-77aa", "sig-file-3c", PASSWORD):
        assert secret.encode() not in written + excerpts, secret
        assert secret not in caplog.text, secret
    assert all(letter.reason.value.startswith("fetch_") for letter in letters)
