"""POST /v1/lookup on a real worker process, over a real broker, asked over real HTTP."""
from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from dupwatch.index.codec import shard_of
from dupwatch.schemas import ImageEvent
from dupwatch.settings import Settings
from dupwatch.streams.app import GAUGE_REFRESH_S
from dupwatch.index.sharded import SIZES_EVERY_S

# How stale the index-size gauges may be: the shard thread counts its indexes every
# SIZES_EVERY_S, the web server copies the counts into the gauges every GAUGE_REFRESH_S.
SIZES_WAIT_S = 4 * (SIZES_EVERY_S + GAUGE_REFRESH_S)  # a deadline only: the waits end on an event
MARKS = "mark-"  # the tenants of _sizes_after_marks's images
from dupwatch.messaging.broker import free_port
from dupwatch.messaging.follow import TopicReader
from dupwatch.wiring.kafka import ensure_topics, kafka_publisher, topic_reader
from dupwatch.cli.lookup import LookupClient, LookupFailed
from dupwatch.messaging.publish import file_events
from dupwatch.imaging.samples import Sample, in_upload_order
from dupwatch.streams.worker_process import WorkerProcess

ALL = "all-tenants-" + "a" * 24
OTHER_ONLY = "other-only-" + "b" * 24
MAX_BYTES = 1_000_000


class _Source(BaseHTTPRequestHandler):
    """/held: headers and one byte of a body, then nothing until ``release`` is set;
    ``requested`` is set once the worker has asked for it."""
    release = threading.Event()
    requested = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requested.set()
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"\xff")
        self.wfile.flush()
        self.release.wait(120)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Worker:
    settings: Settings
    process: WorkerProcess
    source_url: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def client(self, token: str = ALL) -> LookupClient:
        return LookupClient(self.url, token)

    def look_up(self, sample: Sample | bytes, tenant: str = "shop", token: str = ALL,
                content_type: str = "image/jpeg", **query: Any) -> dict[str, Any]:
        data = sample if isinstance(sample, bytes) else sample.file.path.read_bytes()
        client = self.client(token)
        try:
            return client.look_up(data, tenant, content_type, **query)
        finally:
            client.close()

    def status_of(self, data: bytes, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        try:
            return 200, self.look_up(data, **kwargs)
        except LookupFailed as failure:
            return failure.status, failure.body

    def get(self, path: str) -> bytes:
        return _get(self.settings.web_port, path)

    def index_sizes(self) -> dict[tuple[str, str], float]:
        """Entries per stage and tenant, over every index shard the worker holds."""
        sizes: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for sample in family.samples if family.name == "dupwatch_index_entries" else []:
                key = (sample.labels["stage"], sample.labels["tenant"])
                sizes[key] = sizes.get(key, 0) + sample.value
        return sizes


def _get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    return connection.getresponse().read()


def _publish(settings: Settings, events: list[ImageEvent]) -> None:
    publisher = kafka_publisher(settings)
    for event in events:
        publisher.publish(event)
    publisher.close()


def _await_verdicts(reader: TopicReader, count: int) -> list[dict]:
    records = list(reader.records(max_records=count, idle_timeout_s=180))
    assert len(records) == count, f"{count - len(records)} events got no verdict"
    return [record.document for record in records]


@pytest.fixture(scope="module")
def worker(bootstrap_servers: str, tmp_path_factory, samples: list[Sample]) -> Iterator[Worker]:
    """One worker whose stream indexed the originals for tenant shop and the first original
    for tenant other; lookups take one at a time (lookup_queue 1) so 503 can be provoked."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Source)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run = uuid.uuid4().hex[:8]
    settings = Settings().replace(
        bootstrap_servers=bootstrap_servers, input_topic=f"l{run}.images",
        verdict_topic=f"l{run}.verdicts", dead_letter_topic=f"l{run}.dead-letters",
        group_id=f"dupwatch-lookup-{run}", index_topic_prefix=f"l{run}.index",
        control_topic=f"l{run}.control", partitions=2, rebalance_timeout_s=6.0,
        session_timeout_s=6.0, worker_name="lookup-test", web_port=free_port(), top_k=3,
        api_tokens=[ALL, f"{OTHER_ONLY}:other"], lookup_queue=1, max_event_bytes=MAX_BYTES,
        fetch_allow_hosts=["127.0.0.1"], fetch_allow_private_networks=["127.0.0.0/8"],
        fetch_retries=0, fetch_timeout_s=60.0)
    ensure_topics(settings)
    log = tmp_path_factory.mktemp("lookup") / "worker.log"
    originals, _ = in_upload_order(samples)
    originals = [s for s in originals if s.role == "original"]
    try:
        with WorkerProcess(settings, log) as process, \
                topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
            process.wait_ready()
            _publish(settings, list(file_events([s.file for s in originals], "shop"))
                     + list(file_events([originals[0].file], "other")))
            _await_verdicts(reader, len(originals) + 1)
            yield Worker(settings, process, f"http://127.0.0.1:{server.server_address[1]}", log)
    finally:
        _Source.release.set()
        server.shutdown()
        server.server_close()
        print(f"----- worker log\n{log.read_text()[-5000:]}")


def _copies(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.role == "copy"]


def _unrelated(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.role == "unrelated"]


def test_copies_of_indexed_images_are_found_with_the_right_match(worker: Worker, samples) -> None:
    for sample in _copies(samples):
        answer = worker.look_up(sample)
        assert answer["lookup"] is True and answer["tenant"] == "shop"
        assert answer["verdict"] == sample.expected_verdict, sample.file.image_id
        if sample.expected_verdict != "unique":
            assert answer["match_id"] == sample.source, sample.file.image_id
            assert answer["candidates"][0]["image_id"] == sample.source


def test_unrelated_images_are_unique(worker: Worker, samples) -> None:
    for sample in _unrelated(samples)[:-1]:  # the last one is the next test's
        answer = worker.look_up(sample)
        assert answer["verdict"] == "unique" and answer["match_id"] is None, sample.file.image_id


def test_the_same_lookup_twice_never_matches_itself_and_indexes_nothing(worker: Worker,
                                                                        samples) -> None:
    probe, mark = _unrelated(samples)[-1], samples[0].file.path.read_bytes()
    before = _sizes_after_marks(worker, "before", mark)  # every wave the fixture published
    assert before.get(("sha256", "shop")) == 8 and before.get(("sha256", "other")) == 1, before
    for _ in range(3):
        assert worker.look_up(probe)["verdict"] == "unique"
    assert _sizes_after_marks(worker, "after", mark) == before
    # The stream finds nothing of the lookups either; after it indexes the image, a lookup
    # finds it by its bytes.
    with topic_reader(worker.settings, [worker.settings.verdict_topic]) as reader:
        _publish(worker.settings, [ImageEvent("probe", "shop", probe.file.path.read_bytes())])
        verdict = next(record.document for record in reader.records(idle_timeout_s=180)
                       if record.document["image_id"] == "probe")
    assert verdict["verdict"] == "unique"
    answer = worker.look_up(probe)
    assert answer["verdict"] == "exact_duplicate" and answer["match_id"] == "probe"


def _sizes_after_marks(worker: Worker, name: str, photo: bytes) -> dict[tuple[str, str], float]:
    """The index-size gauges (without the marks' tenants) once they count a mark image published
    now to every shard, for tenant mark-``name``: each shard applies its changelog in order, so
    that count holds everything indexed before the marks (where a fixed wait could only hope so)."""
    shards, tenant = worker.settings.shards, f"{MARKS}{name}"
    ids: dict[int, str] = {}
    for number in range(100 * shards):
        ids.setdefault(shard_of(tenant, f"{tenant}-{number}", shards), f"{tenant}-{number}")
    # distinct bytes (a suffix the decoder ignores), so each mark is an entry of its own
    _publish(worker.settings, [ImageEvent(image_id, tenant, photo + image_id.encode())
                               for image_id in ids.values()])
    deadline = time.monotonic() + SIZES_WAIT_S
    while (sizes := worker.index_sizes()).get(("sha256", tenant)) != len(ids):
        assert time.monotonic() < deadline, f"the gauges never counted the marks: {sizes}"
        time.sleep(0.5)
    return {key: value for key, value in sizes.items() if not key[1].startswith(MARKS)}


def test_tenants_never_mix(worker: Worker, samples) -> None:
    first = samples[0]  # indexed for tenant other too
    second_original = next(s for s in samples if s.role == "original" and s is not first)
    copy_of_first = next(s for s in _copies(samples) if s.source == first.file.image_id
                         and s.transform == "exact")
    copy_of_second = next(s for s in _copies(samples) if s.source == second_original.file.image_id
                          and s.transform == "exact")
    in_other = worker.look_up(copy_of_first, tenant="other", token=OTHER_ONLY)
    assert in_other["verdict"] == "exact_duplicate" and in_other["match_id"] == first.file.image_id
    assert worker.look_up(copy_of_second, tenant="other")["verdict"] == "unique"
    assert worker.look_up(copy_of_second, tenant="nobody")["verdict"] == "unique"


def test_an_image_event_is_fetched_and_checked_as_the_stream_would(worker: Worker,
                                                                   samples) -> None:
    copy = next(s for s in _copies(samples) if s.transform == "resize")
    event = ImageEvent("upload-7", "shop", copy.file.path.read_bytes()).to_json()
    answer = worker.look_up(event, content_type="application/json", top_k=1)
    assert answer["image_id"] == "upload-7" and answer["match_id"] == copy.source
    assert len(answer["candidates"]) == 1
    untagged = json.dumps({"image_id": "u", "data": base64.b64encode(
        copy.file.path.read_bytes()).decode()}).encode()  # no tenant: the request's
    assert worker.look_up(untagged, content_type="application/json")["match_id"] == copy.source
    status, body = worker.status_of(ImageEvent("x", "other", b"123").to_json(),
                                    content_type="application/json")
    assert status == 422 and body["reason"] == "schema_invalid" and "tenant" in body["detail"]
    status, body = worker.status_of(ImageEvent("x", "shop", uri="file:///etc/passwd").to_json(),
                                    content_type="application/json")
    assert (status, body["reason"]) == (422, "fetch_refused")


def test_401_403_and_bad_requests(worker: Worker, samples) -> None:
    photo = samples[0].file.path.read_bytes()
    status, body = worker.status_of(photo, token="not-a-token-of-this-worker")
    assert status == 401 and body["error"] == "unauthorized"
    connection = http.client.HTTPConnection("127.0.0.1", worker.settings.web_port, timeout=30)
    connection.request("POST", "/v1/lookup?tenant=shop", body=photo,
                       headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    assert response.status == 401 and response.getheader("WWW-Authenticate").startswith("Bearer")
    response.read()
    assert worker.status_of(photo, tenant="shop", token=OTHER_ONLY)[0] == 403
    assert worker.status_of(photo, tenant="other", token=OTHER_ONLY)[0] == 200
    assert worker.status_of(photo, tenant="shop", top_k=99)[0] == 400
    assert worker.status_of(photo, content_type="text/plain")[0] == 415
    assert ALL not in worker.log.read_text() and OTHER_ONLY not in worker.log.read_text()


def test_413_before_the_body_is_read_whole(worker: Worker) -> None:
    # Declares a gigabyte and sends none of it: the answer comes at once.
    connection = http.client.HTTPConnection("127.0.0.1", worker.settings.web_port, timeout=30)
    connection.putrequest("POST", "/v1/lookup?tenant=shop")
    for name, value in (("Authorization", f"Bearer {ALL}"), ("Content-Type", "image/jpeg"),
                        ("Content-Length", str(10**9))):
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["reason"] == "too_large"
    connection.close()
    # Chunked, so no length is declared: refused once what came in passes the limit.
    connection = http.client.HTTPConnection("127.0.0.1", worker.settings.web_port, timeout=30)
    chunks = (b"\xff" * 65536 for _ in range(MAX_BYTES // 65536 + 2))
    connection.request("POST", "/v1/lookup?tenant=shop", body=chunks, encode_chunked=True,
                       headers={"Authorization": f"Bearer {ALL}", "Content-Type": "image/jpeg"})
    response = connection.getresponse()
    assert response.status == 413
    assert worker.status_of(b"\xff" * MAX_BYTES)[1].get("reason") == "decode_failed"  # at the limit


@pytest.mark.parametrize("data, reason", [
    (b"just some text", "decode_failed"), (b"", "decode_failed"),
    (b"%PDF-1.7\n" + b"0" * 100, "unsupported_format")])
def test_422_says_the_dead_letter_reason(worker: Worker, data: bytes, reason: str) -> None:
    status, body = worker.status_of(data)
    assert status == 422 and body["reason"] == reason


def test_503_with_retry_after_when_lookups_are_full(worker: Worker, samples) -> None:
    _Source.requested.clear()
    _Source.release.clear()  # set by an earlier worker's teardown (the other broker's run)
    held = ImageEvent("held", "shop", uri=f"{worker.source_url}/held").to_json()
    first: dict[str, Any] = {}
    holder = threading.Thread(target=lambda: first.update(zip(
        ("status", "body"), worker.status_of(held, content_type="application/json"))))
    holder.start()
    # Probe only once the held lookup is fetching, so it holds the one place: a probe sent
    # earlier could take the place first and leave the held lookup the 503.
    assert _Source.requested.wait(30), f"the worker never fetched the held source: {first}"
    connection = http.client.HTTPConnection("127.0.0.1", worker.settings.web_port, timeout=30)
    connection.request("POST", "/v1/lookup?tenant=shop", body=samples[0].file.path.read_bytes(),
                       headers={"Authorization": f"Bearer {ALL}", "Content-Type": "image/jpeg"})
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 503 and body["error"] == "overloaded", first
    assert int(response.getheader("Retry-After")) >= 1
    _Source.release.set()
    holder.join(60)
    assert first["status"] == 422 and first["body"]["reason"] == "fetch_failed"
    assert worker.status_of(samples[0].file.path.read_bytes())[0] == 200  # the place is free


def test_the_served_openapi_document_describes_what_the_worker_answers(worker: Worker,
                                                                     samples) -> None:
    document = json.loads(worker.get("/v1/openapi.json"))
    operation = document["paths"]["/v1/lookup"]["post"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["tenant"]["required"] and not parameters["top_k"]["required"]
    assert set(operation["requestBody"]["content"]) == {
        "image/*", "application/octet-stream", "application/json"}
    photo = samples[0].file.path.read_bytes()
    answers = [worker.status_of(photo), worker.status_of(photo, top_k=0),
               worker.status_of(photo, token="wrong-token-wrong-token"),
               worker.status_of(photo, tenant="shop", token=OTHER_ONLY),
               worker.status_of(photo, tenant="bad/tenant"), worker.status_of(b"nope"),
               worker.status_of(photo, content_type="text/plain"),
               worker.status_of(b"\0" * (MAX_BYTES + 1))]
    assert {status for status, _ in answers} == {200, 400, 401, 403, 413, 415, 422}
    for status, body in answers:
        documented = operation["responses"][str(status)]["content"]["application/json"]["schema"]
        root = {**documented, "components": document["components"]}
        errors = [e.message for e in Draft202012Validator(root).iter_errors(body)]
        assert not errors, (status, errors)
    # Every status the worker answers is documented, and no documented one is left untested
    # but the three no test can provoke on a healthy worker with tokens (404, 500) or provokes
    # here (503, in its own test).
    assert set(operation["responses"]) - {str(s) for s, _ in answers} == {"404", "500", "503"}
    text = worker.get("/metrics").decode()
    counts = {s.labels["status"]: s.value for family in text_string_to_metric_families(text)
              if family.name == "dupwatch_lookup_requests" for s in family.samples}
    assert all(counts.get(str(status), 0) >= 1 for status, _ in answers)


def test_the_cli_prints_answers_and_says_by_its_status_whether_any_matched(worker: Worker,
                                                                            samples) -> None:
    copy = next(s for s in _copies(samples) if s.transform == "exact")
    unrelated = _unrelated(samples)[0]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DUPWATCH_")},
           "DUPWATCH_TOKEN": ALL}

    def lookup(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dupwatch", "lookup", *args, "--url",
                               worker.url, "--tenant", "shop"], env=env, capture_output=True,
                              text=True, timeout=300)

    found = lookup(str(copy.file.path), str(unrelated.file.path), "--format", "jsonl")
    assert found.returncode == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert [r["verdict"] for r in rows] == ["exact_duplicate", "unique"]
    assert rows[0]["match_id"] == copy.source and rows[0]["file"] == str(copy.file.path)
    none = lookup(str(unrelated.file.path))
    assert none.returncode == 1 and "unique" in none.stdout
    env["DUPWATCH_TOKEN"] = OTHER_ONLY
    refused = lookup(str(unrelated.file.path))
    assert refused.returncode == 2 and "HTTP 403" in refused.stdout


def test_with_shards_a_lookup_on_either_worker_finds_images_the_other_holds(
        stream_settings: Settings, worker_factory, tmp_path: Path, samples) -> None:
    """Two workers over a two-shard index: each hosts one shard, and a lookup on either one
    fans out to both (the slowest test here: it runs last)."""
    run = uuid.uuid4().hex[:8]
    settings = stream_settings.replace(
        shards=2, index_topic_prefix=f"t{run}.index", control_topic=f"t{run}.control",
        lookup_retry_s=3.0, api_tokens=[ALL])
    ensure_topics(settings)
    workers = [worker_factory(settings.replace(worker_name=name, state_dir=str(tmp_path / name)),
                              name) for name in ("w0", "w1")]
    for process in workers:
        process.wait_ready()
    originals = [s for s in samples if s.role == "original"]
    with topic_reader(settings, [settings.verdict_topic, settings.dead_letter_topic]) as reader:
        _publish(settings, list(file_events([s.file for s in originals], "shop")))
        _await_verdicts(reader, len(originals))
    exact = {s.source: s for s in _copies(samples) if s.transform == "exact"}
    for process in workers:
        url = f"http://127.0.0.1:{process.settings.web_port}"
        hosted = set(json.loads(_get(process.settings.web_port, "/readyz"))["hosted_shards"])
        assert len(hosted) == 1  # two workers, two shards: one each
        elsewhere = 0
        client = LookupClient(url, ALL)
        for original in originals:
            answer = client.look_up(exact[original.file.image_id].file.path.read_bytes(),
                                    "shop", "image/jpeg")
            assert answer["match_id"] == original.file.image_id, (url, original.file.image_id)
            elsewhere += shard_of("shop", original.file.image_id, 2) not in hosted
        client.close()
        assert elsewhere > 0  # some of what it found is held by the other worker only
