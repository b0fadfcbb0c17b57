"""Where an event's image bytes come from when it names them by URI instead of carrying them.

An event's ``uri`` makes the worker read or fetch something on the sender's behalf, so each
kind is fenced in:

- ``file://`` only inside ``uri_roots``. The path is checked after ``..``, percent escapes and
  symlinks are resolved, then opened without following a last-moment symlink and checked to be
  a regular file on the open descriptor (a FIFO or device swapped in cannot block the worker).
- ``http(s)://`` only to hosts in ``fetch_allow_hosts``. We resolve the name ourselves, refuse
  it if any address is private, loopback, link-local, multicast, reserved or unspecified (IPv4
  inside IPv6 included) unless ``fetch_allow_private_networks`` names it, and connect to the
  very address we checked, so a second DNS answer cannot swap in another (DNS rebinding).
  Redirects are followed by hand, each hop checked like the first; the body is capped at
  ``max_event_bytes`` as it streams, and the whole fetch, retries included, at
  ``fetch_timeout_s``.

Policy refusals are ``fetch_refused`` and never retried; a source that fails is retried when
another attempt could help, then ``fetch_failed``.
"""
from __future__ import annotations

import functools
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import unquote_to_bytes, urljoin, urlsplit, urlunsplit

from dupwatch.imaging.watchdog import Overdue, Watchdog
from dupwatch.errors import UserError
from dupwatch.schemas import Reason, Rejected
from dupwatch.schemas.records import redact_urls


@dataclass(frozen=True)
class FetchOptions:
    """How event URIs are read (the ``uri_roots`` and ``fetch_*`` settings): file:// under
    ``uri_roots``; http(s) on allowed hosts within ``fetch_timeout_s``, at most
    ``max_event_bytes``; ``fetch_tenant_concurrency`` at once per tenant (fetch_pool.py)."""
    uri_roots: tuple[str, ...]
    max_event_bytes: int
    fetch_allow_hosts: tuple[str, ...]
    fetch_allow_private_networks: tuple[str, ...]
    fetch_timeout_s: float
    fetch_connect_timeout_s: float
    fetch_retries: int
    fetch_max_redirects: int
    fetch_tenant_concurrency: int


def read_uri(uri: str, options: FetchOptions, deadline: float | None = None) -> bytes:
    """The bytes an event's ``uri`` names, or :class:`Rejected` saying why not. An http(s)
    fetch ends by ``deadline`` (time.monotonic()), by default fetch_timeout_s from now."""
    scheme = uri.partition(":")[0].lower()
    if scheme == "file":
        return _read_file(uri, options.uri_roots, options.max_event_bytes)
    if scheme in ("http", "https"):
        return _fetch(uri, options, deadline or time.monotonic() + options.fetch_timeout_s)
    raise Rejected(Reason.FETCH_REFUSED,
                   f"only file:// and http(s):// URIs are supported, got {shown(uri)}")


def shown(uri: str) -> str:
    """``uri`` fit for a dead letter or a log: credentials and query masked, length capped."""
    text = redact_urls(uri.encode("utf-8", "replace")).decode("utf-8", "replace")
    return repr(text if len(text) <= 200 else text[:200] + "...")


# -- file://

def _read_file(uri: str, roots: Sequence[str], max_bytes: int) -> bytes:
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. an unclosed [ in the host part
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(uri)} is not a valid URI: {exc}") from None
    if parts.netloc not in ("", "localhost"):
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(uri)}: file:// URIs must name a local file")
    if not roots:
        raise Rejected(Reason.FETCH_REFUSED,
                       "file:// URIs are disabled: the worker has no uri_roots configured")
    name = os.fsdecode(unquote_to_bytes(parts.path))  # the file system's bytes, escapes undone
    if "\0" in name:
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(uri)} holds a NUL byte")
    path = Path(os.path.realpath(name))  # `..` and every symlink resolved before the check
    if not any(path.is_relative_to(os.path.realpath(root)) for root in roots):
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(uri)} is outside the configured uri_roots")
    try:
        # O_NOFOLLOW: a symlink put in place after the check is not followed; O_NONBLOCK: a
        # FIFO put there does not block the open (fstat below refuses it).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Rejected(Reason.FETCH_REFUSED, f"{shown(uri)} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(max_bytes + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise Rejected(Reason.FETCH_FAILED, f"cannot read {shown(uri)}: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise Rejected(Reason.TOO_LARGE, f"{shown(uri)} is over the limit of {max_bytes} bytes")
    return data


# -- http(s)://

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRIED_STATUSES = frozenset({408, 429})  # and every 5xx
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# getaddrinfo cannot be interrupted: lookups past the fetch budget run on in the background.
_RESOLVER = Watchdog("DNS lookup", max_overdue=16)
_TLS = ssl.create_default_context()  # system CAs, host names checked
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Transient(Exception):
    """A failure another attempt may not meet: connection, timeout, HTTP 5xx, 408, 429."""


@dataclass(frozen=True)
class _Hop:
    """One request, checked: the URL, and the vetted addresses to connect to for its host."""
    url: str
    host: str
    port: int
    https: bool
    target: str  # path and query
    addresses: tuple[IPAddress, ...]


def _fetch(uri: str, options: FetchOptions, deadline: float) -> bytes:
    if not options.fetch_allow_hosts:
        raise Rejected(Reason.FETCH_REFUSED, "http(s) URIs are disabled: the worker has no "
                                             "fetch_allow_hosts configured")
    attempt = 1
    while True:
        try:
            return _follow_redirects(uri, options, deadline)
        except _Transient as failure:
            pause = 0.1 * 2 ** (attempt - 1)
            if attempt > options.fetch_retries or time.monotonic() + pause >= deadline:
                raise Rejected(Reason.FETCH_FAILED, f"{shown(uri)}: {failure} (gave up after "
                                                    f"{attempt} attempt(s))") from None
            time.sleep(pause)
            attempt += 1


def _follow_redirects(uri: str, options: FetchOptions, deadline: float) -> bytes:
    url = uri
    for _ in range(options.fetch_max_redirects + 1):
        body, location = _get(_checked_hop(url, options, deadline), options, deadline)
        if location is None:
            return body
        url = urljoin(url, location)
    raise Rejected(Reason.FETCH_FAILED,
                   f"{shown(uri)}: more than {options.fetch_max_redirects} redirects")


def _checked_hop(url: str, options: FetchOptions, deadline: float) -> _Hop:
    """``url`` if policy lets us fetch it, with its host's addresses, each one checked."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(url)} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(url)}: only http(s) URLs can be fetched")
    if parts.username is not None or parts.password is not None:
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(url)}: credentials in URLs are refused")
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    if any(ch <= " " or ch == "\x7f" for ch in target):
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(url)} holds spaces or control characters")
    host = (parts.hostname or "").rstrip(".")
    if not host_allowed(host, options.fetch_allow_hosts):
        raise Rejected(Reason.FETCH_REFUSED, f"{shown(url)}: host {host!r} is not in "
                                             "fetch_allow_hosts")
    port = port or (443 if scheme == "https" else 80)
    addresses = _resolve(host, port, deadline)
    allowed = _networks(options.fetch_allow_private_networks)
    for address in addresses:
        refusal = address_refusal(address, allowed)
        if refusal:
            raise Rejected(Reason.FETCH_REFUSED, f"{shown(url)}: {host} resolves to {address}, "
                                                 f"{refusal} (see fetch_allow_private_networks)")
    return _Hop(url, host, port, scheme == "https", target, addresses)


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """``host`` is listed, or a subdomain of a listed ``*.domain``; case and final dot ignored."""
    host = host.lower()
    for pattern in (p.lower().rstrip(".") for p in allowed):
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def address_refusal(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> str | None:
    """Why connecting to ``address`` is refused (it is not a public address), or None."""
    address = _delivered_to(address)
    if any(address in network for network in allowed):
        return None
    kinds = (("a loopback", address.is_loopback), ("a link-local", address.is_link_local),
             ("a multicast", address.is_multicast), ("an unspecified", address.is_unspecified),
             ("a reserved", address.is_reserved), ("a private", address.is_private),
             ("a non-public", not address.is_global))
    kind = next((kind for kind, matches in kinds if matches), None)
    if kind:
        return f"{kind} address"
    tunnelled = _tunnelled_to(address)
    inner = address_refusal(tunnelled, allowed) if tunnelled else None
    return f"which tunnels to {tunnelled}, {inner}" if inner else None


def _delivered_to(address: IPAddress) -> IPAddress:
    """The IPv4 address behind an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d)
    IPv6 address, which is where its packets end up; any other address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return address


def _tunnelled_to(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 end point a 6to4 or Teredo address encodes."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    return address.sixtofour or (address.teredo[1] if address.teredo else None)


@functools.cache
def _networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
    except ValueError as exc:
        raise Rejected(Reason.FETCH_REFUSED, f"setting fetch_allow_private_networks is not a "
                                             f"list of networks: {exc}") from None


def _resolve(host: str, port: int, deadline: float) -> tuple[IPAddress, ...]:
    try:
        infos = _RESOLVER.call(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                               _remaining(deadline))
    except Overdue as exc:
        raise _Transient(str(exc)) from None
    except socket.gaierror as exc:
        raise _Transient(f"cannot resolve {host}: {exc.strerror}") from None
    except UnicodeError:  # a label IDNA cannot encode
        raise Rejected(Reason.FETCH_REFUSED, f"{host!r} is not a valid host name") from None
    return tuple(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


def _get(hop: _Hop, options: FetchOptions, deadline: float) -> tuple[bytes, str | None]:
    """One GET: (body, None), or (b"", location) for a redirect."""
    live: list[socket.socket] = []  # the connection's socket, once there is one
    connection = _PinnedConnection(hop, lambda: _connect(hop, options, deadline, live))
    # The total bound, even against a server that drips one byte at a time: at the deadline
    # the socket is shut down, which ends a read (or TLS handshake) blocked on it.
    cutoff = threading.Timer(_remaining(deadline), _shut_down, [live])
    cutoff.start()
    try:
        connection.request("GET", hop.target, headers={"Accept": "image/*",
                                                        "User-Agent": "dupwatch"})
        with connection.getresponse() as response:
            return _answer(response, hop, options, deadline)
    except ssl.SSLError as exc:
        if time.monotonic() < deadline:  # a certificate or protocol failure: not transient
            raise Rejected(Reason.FETCH_FAILED,
                           f"{shown(hop.url)}: TLS failed: {exc.reason or exc}") from None
        raise _Transient(f"no complete answer within {options.fetch_timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline:
            raise _Transient(f"no complete answer within {options.fetch_timeout_s:g} s") from None
        raise _Transient(f"{type(exc).__name__}: {exc}") from None
    finally:
        cutoff.cancel()
        connection.close()
        for sock in live:  # one whose TLS handshake failed never became the connection's
            sock.close()


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP or HTTPS over a socket that ``open_socket`` connects to an address checked in
    advance, never to a fresh DNS answer for the host; Host header and TLS use the name."""

    def __init__(self, hop: _Hop, open_socket: Callable[[], socket.socket]) -> None:
        super().__init__(hop.host, hop.port)
        if hop.https:
            self.default_port = 443  # so the Host header leaves out a default :443
        self._open_socket = open_socket

    def connect(self) -> None:
        self.sock = self._open_socket()


def _connect(hop: _Hop, options: FetchOptions, deadline: float,
             live: list[socket.socket]) -> socket.socket:
    """A socket to the first of the hop's checked addresses that answers, TLS on for https."""
    error: OSError = ConnectionError("no address to connect to")
    for address in hop.addresses:
        timeout = min(options.fetch_connect_timeout_s, _remaining(deadline))
        try:
            sock = socket.create_connection((str(address), hop.port), timeout)
            break
        except OSError as exc:
            error = exc
    else:
        raise error
    sock.settimeout(_remaining(deadline))
    if hop.https:
        sock = _TLS.wrap_socket(sock, server_hostname=hop.host, do_handshake_on_connect=False)
    live.append(sock)
    if hop.https:
        sock.do_handshake()  # after live.append: the cutoff can end a handshake that drags on
    return sock


def _shut_down(live: list[socket.socket]) -> None:
    for sock in live:
        try:  # the plain socket's shutdown, also under TLS: it unblocks a read in progress
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def _answer(response: http.client.HTTPResponse, hop: _Hop, options: FetchOptions,
            deadline: float) -> tuple[bytes, str | None]:
    status = f"HTTP {response.status} {response.reason[:80]}"
    if response.status in _REDIRECTS:
        location = response.getheader("Location")
        if not location:
            raise Rejected(Reason.FETCH_FAILED, f"{shown(hop.url)}: {status} without a Location")
        return b"", location
    if response.status >= 500 or response.status in _RETRIED_STATUSES:
        raise _Transient(status)
    if response.status != 200:
        raise Rejected(Reason.FETCH_FAILED, f"{shown(hop.url)}: {status}")
    return _body(response, hop, options.max_event_bytes, deadline), None


def _body(response: http.client.HTTPResponse, hop: _Hop, max_bytes: int,
          deadline: float) -> bytes:
    """The response body, refused as soon as it is known to exceed ``max_bytes``."""
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise Rejected(Reason.TOO_LARGE, f"{shown(hop.url)} is {declared} bytes, the limit is "
                                         f"{max_bytes}")
    chunks, size = [], 0
    while chunk := response.read1(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise Rejected(Reason.TOO_LARGE,
                           f"{shown(hop.url)} sent more than the limit of {max_bytes} bytes")
        if time.monotonic() >= deadline:
            raise TimeoutError
        chunks.append(chunk)
    if time.monotonic() >= deadline or response.length:  # cut off, or closed early: read1
        raise http.client.IncompleteRead(b"".join(chunks), response.length)  # ends quietly
    return b"".join(chunks)


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)
