"""Event URIs: file:// stays inside uri_roots, http(s):// only reaches allowed public hosts.

The HTTP cases run against a real server on 127.0.0.1 (http.server in a thread). Loopback is
exactly what the SSRF rule refuses, so most tests allow it explicitly with
fetch_allow_private_networks, and one checks that it is refused without.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from dupwatch.wiring.cascade import build_cascade, build_processor, fetch_options
from dupwatch.schemas import DeadLetter, Reason, Rejected, Verdict
from dupwatch.settings import Settings
from dupwatch.pipeline.fetch_pool import Fetches
from dupwatch.pipeline.processor import InputRecord
from dupwatch.locations import samples_dir
from dupwatch.pipeline.fetch import address_refusal, host_allowed, read_uri

PHOTO = (samples_dir() / "originals" / "coffee.jpg").read_bytes()
LOOPBACK = ["127.0.0.0/8", "::1/128"]  # localhost may resolve to either


class _Handler(BaseHTTPRequestHandler):
    """Routes: /photo.jpg, /status/CODE, /flaky/NAME/FAILURES, /hops/N, /to?url=URL, /big,
    /big-unsized, /drip, /short."""
    hits: Counter = Counter()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits[self.path] += 1
        route, _, rest = self.path.lstrip("/").partition("/")
        if self.path.startswith("/to?url="):
            self._redirect(self.path.removeprefix("/to?url="))
        elif route == "photo.jpg":
            self._send(200, PHOTO)
        elif route == "status":
            self._send(int(rest), b"")
        elif route == "flaky":
            name, failures = rest.split("/")
            self._send(503 if self.hits[self.path] <= int(failures) else 200, PHOTO)
        elif route == "hops":  # N redirects, then the photo
            hops = int(rest)
            if hops:
                self._redirect(f"/hops/{hops - 1}")
            else:
                self._send(200, PHOTO)
        elif route == "big":
            self._send(200, b"\xff" * (PHOTO_LIMIT + 1))
        elif route == "big-unsized":  # no Content-Length: the size shows only while reading
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\xff" * (PHOTO_LIMIT + 1))
        elif route == "drip":  # a byte at a time: no single read ever times out
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif route == "short":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PHOTO)))
            self.end_headers()
            self.wfile.write(PHOTO[:100])

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the fetcher hung up, as it should
            pass

    def log_message(self, *args: object) -> None:
        pass


PHOTO_LIMIT = len(PHOTO) + 1000


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """http://127.0.0.1:PORT of a real HTTP server."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _settings(**changes) -> Settings:
    return Settings(max_event_bytes=PHOTO_LIMIT, fetch_allow_hosts=["127.0.0.1", "localhost"],
                    fetch_allow_private_networks=LOOPBACK, fetch_timeout_s=5.0).replace(**changes)


def _rejected(uri: str, settings: Settings) -> Rejected:
    with pytest.raises(Rejected) as caught:
        read_uri(uri, fetch_options(settings))
    return caught.value


# -- http(s)://

def test_an_allowed_host_is_fetched(server: str) -> None:
    assert read_uri(f"{server}/photo.jpg", fetch_options(_settings())) == PHOTO
    port = server.rsplit(":", 1)[1]
    # localhost: resolved by us
    assert read_uri(f"http://localhost:{port}/photo.jpg", fetch_options(_settings())) == PHOTO


def test_loopback_is_refused_unless_its_network_is_allowed(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    fetched = _Handler.hits["/photo.jpg"]
    for uri in (f"{server}/photo.jpg", f"http://localhost:{port}/photo.jpg"):
        error = _rejected(uri, _settings(fetch_allow_private_networks=[]))
        assert error.reason == Reason.FETCH_REFUSED
        assert "a loopback address" in error.detail and "fetch_allow_private_networks" in error.detail
    assert _Handler.hits["/photo.jpg"] == fetched  # refused before connecting


def test_http_is_off_without_an_allowlist_and_other_hosts_are_refused(server: str) -> None:
    assert _rejected(f"{server}/photo.jpg", _settings(fetch_allow_hosts=[])).reason == Reason.FETCH_REFUSED
    error = _rejected("http://images.example.org/a.jpg", _settings())
    assert error.reason == Reason.FETCH_REFUSED and "not in fetch_allow_hosts" in error.detail
    assert _rejected("gopher://127.0.0.1/x", _settings()).reason == Reason.FETCH_REFUSED


@pytest.mark.parametrize("hops, reason", [(3, None), (4, Reason.FETCH_FAILED)])
def test_redirects_are_followed_up_to_the_limit(server: str, hops: int, reason: Reason | None) -> None:
    settings = _settings(fetch_max_redirects=3)
    if reason is None:
        assert read_uri(f"{server}/hops/{hops}", fetch_options(settings)) == PHOTO
    else:
        error = _rejected(f"{server}/hops/{hops}", settings)
        assert error.reason == reason and "more than 3 redirects" in error.detail


@pytest.mark.parametrize("target, words", [
    ("http://images.example.org", "not in fetch_allow_hosts"),
    ("http://169.254.169.254", "a link-local address"),   # the cloud metadata service
    ("file:///etc", "only http(s) URLs"),
])
def test_each_redirect_hop_is_checked_like_the_first(server: str, target: str, words: str) -> None:
    settings = _settings(fetch_allow_hosts=["127.0.0.1", "169.254.169.254"])
    error = _rejected(f"{server}/to?url={target}/passwd", settings)
    assert error.reason == Reason.FETCH_REFUSED and words in error.detail


@pytest.mark.parametrize("path", ["big", "big-unsized"])
def test_a_body_over_max_event_bytes_is_too_large(server: str, path: str) -> None:
    assert _rejected(f"{server}/{path}", _settings()).reason == Reason.TOO_LARGE


def test_a_dripping_server_is_cut_off_at_the_time_budget(server: str) -> None:
    started = time.monotonic()
    error = _rejected(f"{server}/drip", _settings(fetch_timeout_s=1.0))
    elapsed = time.monotonic() - started
    assert error.reason == Reason.FETCH_FAILED and "within 1 s" in error.detail
    assert elapsed < 30  # generous: the drip alone would take 100 s


def test_transient_failures_are_retried_then_dead_lettered(server: str) -> None:
    assert read_uri(f"{server}/flaky/a/2", fetch_options(_settings(fetch_retries=2))) == PHOTO
    assert _Handler.hits["/flaky/a/2"] == 3
    error = _rejected(f"{server}/flaky/b/9", _settings(fetch_retries=1))
    assert error.reason == Reason.FETCH_FAILED
    assert "HTTP 503" in error.detail and "2 attempt(s)" in error.detail
    assert _Handler.hits["/flaky/b/9"] == 2
    assert _rejected(f"{server}/short", _settings(fetch_retries=0)).reason == Reason.FETCH_FAILED


def test_a_client_error_is_not_retried(server: str) -> None:
    error = _rejected(f"{server}/status/404", _settings(fetch_retries=3))
    assert error.reason == Reason.FETCH_FAILED and "HTTP 404" in error.detail
    assert _Handler.hits["/status/404"] == 1


def test_tls_to_a_server_that_does_not_speak_it_fails_without_retries(server: str) -> None:
    error = _rejected(server.replace("http:", "https:") + "/photo.jpg", _settings())
    assert error.reason == Reason.FETCH_FAILED and "TLS failed" in error.detail


def test_credentials_in_a_url_are_refused_and_never_shown(server: str) -> None:
    uri = server.replace("http://", "http://bob:hunter2@") + "/photo.jpg?sig=s3cr3t"
    error = _rejected(uri, _settings())
    assert error.reason == Reason.FETCH_REFUSED
    assert "hunter2" not in error.detail and "s3cr3t" not in error.detail


@pytest.mark.parametrize("address", [
    "10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
    "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::1",  # 6to4 around 127.0.0.1
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), ()) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "64:ff9b::5db8:d822"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), ()) is None


def test_allowed_networks_open_exactly_themselves() -> None:
    allowed = (ipaddress.ip_network("10.1.0.0/16"),)
    assert address_refusal(ipaddress.ip_address("10.1.2.3"), allowed) is None
    assert address_refusal(ipaddress.ip_address("::ffff:10.1.2.3"), allowed) is None
    assert address_refusal(ipaddress.ip_address("10.2.0.1"), allowed) is not None


def test_host_allowlist_matching() -> None:
    allowed = ["img.example.com", "*.cdn.example.net"]
    assert host_allowed("IMG.example.com", allowed) and host_allowed("a.b.cdn.example.net", allowed)
    assert not host_allowed("cdn.example.net", allowed)
    assert not host_allowed("evilimg.example.com", allowed)
    assert not host_allowed("img.example.com.evil.org", allowed)


# -- file://

@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): a uri_roots directory with a photo in it, and a secret beside it."""
    root, outside = tmp_path / "uploads", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (root / "photo.jpg").write_bytes(PHOTO)
    (outside / "secret.jpg").write_bytes(PHOTO)
    return root, outside


def test_a_file_inside_the_roots_is_read(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    settings = _settings(uri_roots=[str(root)])
    assert read_uri((root / "photo.jpg").as_uri(), fetch_options(settings)) == PHOTO
    os.symlink(root / "photo.jpg", root / "alias.jpg")  # a link that stays inside is fine
    assert read_uri((root / "alias.jpg").as_uri(), fetch_options(settings)) == PHOTO


@pytest.mark.parametrize("make_uri", [
    lambda root, outside: f"file://{root}/../private/secret.jpg",
    lambda root, outside: f"file://{root}/%2e%2e/private/secret.jpg",
    lambda root, outside: f"file://{root}/%2E%2E%2Fprivate%2Fsecret.jpg",
    lambda root, outside: f"file://{root}/link-out/secret.jpg",       # symlinked directory
    lambda root, outside: f"file://{root}/secret-link.jpg",           # symlinked file
    lambda root, outside: f"file://{root}-sibling/photo.jpg",         # a name that only starts alike
    lambda root, outside: f"file://{root}/photo.jpg%00.png",
    lambda root, outside: f"file://otherhost{root}/photo.jpg",
    lambda root, outside: f"file://{root}",                           # a directory
    lambda root, outside: f"file://{root}/fifo",                      # would block a plain open
], ids=["dotdot", "encoded-dotdot", "encoded-slashes", "dir-symlink", "file-symlink", "sibling",
        "nul", "remote-host", "directory", "fifo"])
def test_escapes_from_the_roots_are_refused(roots: tuple[Path, Path], make_uri) -> None:
    root, outside = roots
    os.symlink(outside, root / "link-out")
    os.symlink(outside / "secret.jpg", root / "secret-link.jpg")
    os.mkfifo(root / "fifo")
    (root.parent / "uploads-sibling").mkdir()
    (root.parent / "uploads-sibling" / "photo.jpg").write_bytes(PHOTO)
    error = _rejected(make_uri(root, outside), _settings(uri_roots=[str(root)]))
    assert error.reason == Reason.FETCH_REFUSED, error.detail


def test_file_limits_and_failures(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    (root / "big.jpg").write_bytes(b"\xff" * (PHOTO_LIMIT + 1))
    settings = _settings(uri_roots=[str(root)])
    assert _rejected((root / "big.jpg").as_uri(), settings).reason == Reason.TOO_LARGE
    assert _rejected((root / "gone.jpg").as_uri(), settings).reason == Reason.FETCH_FAILED
    assert _rejected((root / "photo.jpg").as_uri(), _settings()).reason == Reason.FETCH_REFUSED


# -- through the processor: the bad URI costs its own event only

def test_a_poison_uri_is_dead_lettered_and_the_next_event_still_gets_its_verdict(server: str) -> None:
    settings = _settings(stages=["sha256", "phash"], fetch_retries=2, fetch_timeout_s=1.5,
                         max_event_bytes=2 * len(PHOTO))  # room for the inline base64 photo
    processor = build_processor(settings, build_cascade(settings))

    def event(image_id: str, **source) -> InputRecord:
        return InputRecord(json.dumps({"image_id": image_id, **source}).encode(), offset=len(image_id))

    outcomes = processor.handle_batch([
        event("always-503", uri=f"{server}/flaky/c/99"),
        event("dripping", uri=f"{server}/drip"),
        event("metadata-service", uri="http://169.254.169.254/latest/meta-data"),
        event("good", data=base64.b64encode(PHOTO).decode()),
        event("good-by-uri", uri=f"{server}/photo.jpg"),
    ])
    reasons = [o.reason if isinstance(o, DeadLetter) else o.verdict.value for o in outcomes]
    assert reasons == [Reason.FETCH_FAILED, Reason.FETCH_FAILED, Reason.FETCH_REFUSED,
                       "unique", "exact_duplicate"]
    assert _Handler.hits["/flaky/c/99"] == 3
    assert isinstance(outcomes[-1], Verdict) and outcomes[-1].match_id == "good"


def test_a_tenants_slow_sources_hold_only_its_own_fetch_slots(server: str) -> None:
    fetches = Fetches(fetch_options(_settings(fetch_timeout_s=1.0, fetch_retries=0,
                                              fetch_tenant_concurrency=2)))
    dripped = _Handler.hits["/drip"]
    slow = [fetches.fetch("slow", f"{server}/drip") for _ in range(6)]
    good = fetches.fetch("other", f"{server}/photo.jpg")  # behind six slow ones, not behind them
    assert good.result(timeout=30) == PHOTO
    reasons = [_failure(future) for future in slow]
    assert reasons[:2] == ["cut off"] * 2  # the tenant's two slots
    # The others waited for those two, on their own clocks: by the time a slot freed, theirs
    # had run out (or all but a moment of it, spent resolving the host), so they never
    # connected (or were cut off).
    assert set(reasons[2:]) <= {"waited for its tenant", "ran out resolving", "cut off"}
    # The two slots reached the server; a fetch let in later with a moment left may be cut off
    # before its request arrives (seen under load), never one that waited throughout.
    assert dripped + 2 <= _Handler.hits["/drip"] <= dripped + reasons.count("cut off")


def _failure(future) -> str:
    error = future.exception(timeout=30)
    assert isinstance(error, Rejected) and error.reason == Reason.FETCH_FAILED, error
    if "within 1 s" in error.detail:
        return "cut off"
    if "DNS lookup did not finish within" in error.detail:  # the moment left after waiting
        return "ran out resolving"
    return "waited for its tenant" if "tenant slow's other fetches" in error.detail else error.detail
