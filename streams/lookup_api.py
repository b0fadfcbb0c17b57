"""``POST /v1/lookup``: "is this image already known?", answered now, on the worker's web port.

The body is an image's bytes (``image/*`` or ``application/octet-stream``) or an image event
(``application/json``, the stream's schema, fetched under the stream's policy); ``?tenant=`` is
required, ``?top_k=`` optional. The worker runs its cascade against its store (every shard,
when sharded) and answers a verdict-shaped document marked ``"lookup": true``. A lookup never
indexes the image and never writes a verdict: indexes change only through the stream.

Security by default: the endpoint answers 404 until tokens are configured (``api_tokens``, or
``api_tokens_file`` from a Secret). Each request needs ``Authorization: Bearer TOKEN`` (401
without a valid one, 403 for a tenant the token may not use); tokens are compared in constant
time and never logged. Bounds: a body over ``max_event_bytes`` is refused (413) as soon as its
declared or read length passes the limit; at most ``lookup_queue`` lookups are taken at once,
others get 503 with Retry-After. Input the stream would dead-letter gets 422 with the same
reason code. The contract is :func:`openapi`, served at ``/v1/openapi.json``.
"""
from __future__ import annotations

import asyncio
import copy
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dupwatch.detectors import CascadeResult
from dupwatch.schemas import Reason, Rejected, schema
from dupwatch.settings import Settings
from dupwatch.pipeline import metrics
from dupwatch.streams.cascade_thread import CascadeThread
from dupwatch.streams.lookup_batches import LookupBatches
from dupwatch.pipeline.processor import Processor

TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # as the image event's schema says
# Tokens shorter than this are refused at start-up: guessable is as good as none.
MIN_TOKEN_CHARS = 16
RETRY_AFTER_S = 1
RAW_TYPES = ("image/", "application/octet-stream")
EVENT_TYPE = "application/json"


class TokenError(ValueError):
    """A token specification that cannot be used, and why (the token itself is never named)."""


@dataclass(frozen=True)
class Token:
    """One lookup token from ``api_tokens`` / ``api_tokens_file``: its secret (compared in constant
    time, never logged or shown) and the tenants it may look up in (None: every tenant)."""
    secret: bytes
    tenants: frozenset[str] | None  # None: every tenant


class Tokens:
    """Who may look up what: tokens, each for every tenant or for some."""

    def __init__(self, specs: list[str]) -> None:
        self._tokens = [_token(spec, number) for number, spec in enumerate(specs, 1)]

    @classmethod
    def of(cls, settings: Settings) -> "Tokens":
        specs = list(settings.api_tokens)
        if settings.api_tokens_file:
            try:
                lines = Path(settings.api_tokens_file).read_text().splitlines()
            except OSError as exc:
                raise TokenError(f"cannot read api_tokens_file {settings.api_tokens_file}: "
                                 f"{exc.strerror}") from None
            specs += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return cls(specs)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def tenants_of(self, authorization: str | None) -> frozenset[str] | None:
        """The tenants a request's ``Authorization`` header may look up in (None: all of
        them); ApiError 401 when it carries no known token. Every token is compared, in
        constant time, so the time taken says nothing about which one came close."""
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "send Authorization: Bearer TOKEN",
                           {"WWW-Authenticate": 'Bearer realm="dupwatch"'})
        offered = given.strip().encode()
        found = None
        for token in self._tokens:
            if hmac.compare_digest(token.secret, offered):
                found = token
        if found is None:
            raise ApiError(401, "unauthorized", "the bearer token is not valid",
                           {"WWW-Authenticate": 'Bearer realm="dupwatch", error="invalid_token"'})
        return found.tenants


def _token(spec: str, number: int) -> Token:
    secret, limited, tenants = spec.strip().partition(":")
    if len(secret) < MIN_TOKEN_CHARS or any(c.isspace() for c in secret):
        raise TokenError(f"lookup token #{number} is shorter than {MIN_TOKEN_CHARS} characters "
                         "or holds spaces: use a long random one (e.g. `openssl rand -hex 32`)")
    if not limited:
        return Token(secret.encode(), None)
    names = frozenset(t.strip() for t in tenants.split("|") if t.strip())
    if not names or not all(TENANT.match(name) for name in names):
        raise TokenError(f"lookup token #{number} names no valid tenant after ':' "
                         "(TOKEN:tenant1|tenant2)")
    return Token(secret.encode(), names)


class ApiError(Exception):
    """A lookup answered with an error: the HTTP ``status``, a JSON ``body`` with a stable ``error``
    code and a ``detail`` (plus the dead-letter ``reason`` for rejected input), and any headers
    to send (WWW-Authenticate, Retry-After)."""
    def __init__(self, status: int, error: str, detail: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.body = {"error": error, "detail": detail}
        self.headers = dict(headers or {})

    @classmethod
    def rejected(cls, rejection: Rejected) -> "ApiError":
        """Input the stream would dead-letter: 422 with its reason (500 for our own fault)."""
        ours = rejection.reason is Reason.PROCESSING_FAILED
        error = cls(500 if ours else 422, "internal_error" if ours else "unprocessable",
                    rejection.detail)
        error.body["reason"] = rejection.reason.value
        return error


@dataclass(frozen=True)
class LookupRequest:
    """What a lookup request says before its body is read (query and headers), enough for
    :meth:`LookupService.admit` to refuse it cheaply; ``content_length`` in bytes, None when the
    client did not declare one."""
    tenant: str
    top_k: int | None
    content_type: str
    content_length: int | None


class LookupService:
    """Takes lookups in (bounded), prepares their images as the stream does, and runs them on
    the cascade's thread ahead of stream work, those waiting together (LookupBatches)."""

    def __init__(self, settings: Settings, processor: Processor, thread: CascadeThread,
                 tokens: Tokens) -> None:
        self.settings = settings
        self.processor = processor
        self.tokens = tokens
        self._batches = LookupBatches(processor, thread)
        self._taken = 0

    def admit(self, request: LookupRequest, authorization: str | None) -> None:
        """Every check that needs no body, cheapest and least revealing first."""
        if not self.tokens.enabled:
            raise ApiError(404, "lookup_disabled", "this worker has no lookup tokens configured "
                                                   "(api_tokens or api_tokens_file)")
        allowed = self.tokens.tenants_of(authorization)
        if not TENANT.match(request.tenant):
            raise ApiError(400, "bad_request", "the query needs tenant=NAME (letters, digits, "
                                               "'.', '_', '-'; at most 128)")
        if allowed is not None and request.tenant not in allowed:
            raise ApiError(403, "forbidden", f"this token may not look up in tenant {request.tenant}")
        if request.top_k is not None and not 0 <= request.top_k <= self.settings.search_k:
            raise ApiError(400, "bad_request", f"top_k must be 0..{self.settings.search_k} "
                                               "(the worker's search_k)")
        if not request.content_type.startswith(RAW_TYPES) and request.content_type != EVENT_TYPE:
            raise ApiError(415, "unsupported_media_type", "send image bytes (image/*) or an "
                                                          "image event (application/json)")
        if request.content_length is not None and request.content_length > self.settings.max_event_bytes:
            raise _too_large(self.settings.max_event_bytes)

    async def answer(self, request: LookupRequest, body: Any) -> dict[str, Any]:
        """The lookup's document; ``body`` is the request's stream (``read_limited``)."""
        if self._taken >= self.settings.lookup_queue:
            raise ApiError(503, "overloaded", f"this worker is answering {self._taken} lookups; "
                                              "try again shortly", {"Retry-After": str(RETRY_AFTER_S)})
        self._taken += 1
        metrics.LOOKUPS_IN_FLIGHT.set(self._taken)
        try:
            data = await read_limited(body, self.settings.max_event_bytes)
            return await self._look_up(request, data)
        finally:
            self._taken -= 1
            metrics.LOOKUPS_IN_FLIGHT.set(self._taken)

    async def _look_up(self, request: LookupRequest, data: bytes) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        pending = await loop.run_in_executor(
            None, lambda: self.processor.intake_lookup(
                request.tenant, data, is_event=request.content_type == EVENT_TYPE))
        if pending.preparing is not None:  # fetching and decoding, in the tenant's turn
            await asyncio.wait([asyncio.wrap_future(pending.preparing)])
        try:
            result = await asyncio.wrap_future(
                self._batches.submit(pending, request.tenant, request.top_k))
        except Rejected as rejection:
            raise ApiError.rejected(rejection) from None
        event = pending.event
        return lookup_document(result, image_id=event.image_id if event else None,
                               tenant=request.tenant, worker=self.settings.worker_name,
                               model_version=self.processor.cascade.model_version)


async def read_limited(stream: Any, limit: int) -> bytes:
    """The whole body from an aiohttp stream, or ApiError 413 as soon as it passes ``limit``."""
    chunks, size = [], 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    error = ApiError(413, "too_large", f"the body is over max_event_bytes ({limit} bytes)")
    error.body["reason"] = Reason.TOO_LARGE.value
    return error


def lookup_document(result: CascadeResult, *, image_id: str | None, tenant: str, worker: str,
                    model_version: str | None) -> dict[str, Any]:
    doc = result.to_verdict(image_id=image_id or "", tenant=tenant, worker=worker,
                            model_version=model_version).to_dict()
    doc["image_id"] = image_id
    doc.pop("submitted_at")
    doc["lookup"] = True
    return doc


def lookup_result_schema() -> dict[str, Any]:
    """The verdict's schema, for a lookup: marked ``lookup``, its image id only if the event
    had one, and no event metadata or submission time."""
    doc = copy.deepcopy(schema("verdict"))
    for name in ("$id", "examples"):
        doc.pop(name)
    # Inlined: a reference into $defs would resolve against the OpenAPI document that holds it.
    doc["properties"]["candidates"]["items"] = doc.pop("$defs")["candidate"]
    doc["title"] = "dupwatch lookup result"
    doc["description"] = ("What the cascade answers for an image now, against every image the "
                          "tenant's index holds; the image itself is not indexed.")
    props = doc["properties"]
    for name in ("metadata", "submitted_at"):
        props.pop(name)
    props["image_id"] = {"type": ["string", "null"],
                         "description": "The event's image_id; null for image bytes."}
    props["lookup"] = {"const": True, "description": "Always true: a lookup, not a verdict."}
    doc["required"] = [*doc["required"], "lookup"]
    return doc


_ERROR_SCHEMA = {
    "type": "object", "required": ["error", "detail"], "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "A stable code: unauthorized, forbidden, "
                  "bad_request, lookup_disabled, too_large, unsupported_media_type, "
                  "unprocessable, internal_error, overloaded."},
        "detail": {"type": "string", "description": "What happened and what to do, for people."},
        "reason": {"enum": [reason.value for reason in Reason],
                   "description": "413 and 422: the dead-letter reason the stream would give."}}}


def openapi() -> dict[str, Any]:
    """The lookup API's OpenAPI 3.1 document (tests check the worker against it)."""
    def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = {"description": description, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        if headers:
            answer["headers"] = headers
        return answer

    image_body = {"schema": {"type": "string", "format": "binary"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "dupwatch lookup", "version": "1",
                 "description": __doc__.split("\n\n")[0]},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"LookupResult": lookup_result_schema(), "Error": _ERROR_SCHEMA,
                        "ImageEvent": {k: v for k, v in schema("image_event").items()
                                       if k not in ("$id", "examples")}}},
        "security": [{"bearer": []}],
        "paths": {"/v1/lookup": {"post": {
            "operationId": "lookup",
            "summary": "Is this image already known? Never indexes it.",
            "parameters": [
                {"name": "tenant", "in": "query", "required": True,
                 "schema": {"type": "string", "pattern": TENANT.pattern},
                 "description": "The tenant whose images to compare with."},
                {"name": "top_k", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0},
                 "description": "Candidates to list, at most the worker's search_k (default: "
                                "the worker's top_k)."}],
            "requestBody": {"required": True, "content": {
                "image/*": image_body, "application/octet-stream": image_body,
                "application/json": {"schema": {"$ref": "#/components/schemas/ImageEvent"}}}},
            "responses": {
                "200": {"description": "The lookup's answer.", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/LookupResult"}}}},
                "400": error("A query parameter is missing or invalid."),
                "401": error("No bearer token, or an unknown one.",
                             {"WWW-Authenticate": {"schema": {"type": "string"}}}),
                "403": error("The token may not look up in this tenant."),
                "404": error("Lookups are off: the worker has no tokens configured."),
                "413": error("The body is over max_event_bytes."),
                "415": error("The body is neither image bytes nor an image event."),
                "422": error("Not an image the cascade can read (reason: the dead-letter code)."),
                "500": error("The lookup failed inside the worker (reason processing_failed)."),
                "503": error("Too many lookups at once; retry after Retry-After seconds.",
                             {"Retry-After": {"schema": {"type": "integer"}}}),
            }}}},
    }
