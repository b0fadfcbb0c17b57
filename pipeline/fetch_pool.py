"""Fetches of event URIs that never hold a partition hostage.

Each fetch runs on a thread (it waits on the network, not the CPU) and ends, with the bytes or a
Rejected, within ``fetch_timeout_s`` of being asked for: time spent waiting for a slot counts,
so every event's fetch runs on its own clock. A tenant runs at most ``fetch_tenant_concurrency``
fetches at once; its further ones wait for its own slots, never for other tenants', and past
TENANT_WAITING_LIMIT waiting or running, its new ones are refused at once. So one tenant's
slow sources (slow-loris servers, huge bodies on a slow link) cost that tenant only.
"""
from __future__ import annotations

import time
from concurrent.futures import Future

from dupwatch.imaging.tenant_slots import TenantSlots
from dupwatch.schemas import Reason, Rejected
from dupwatch.pipeline.fetch import FetchOptions, read_uri

# Threads for all tenants' fetches together; started as needed. Enough for 16 tenants fetching
# at the default concurrency at once; each holds at most one body (max_event_bytes).
FETCH_THREADS = 256
# A tenant's fetches waiting or running at once, beyond which its new ones are dead-lettered:
# one tenant's flood of slow URIs must not fill the worker's memory or its read-ahead.
TENANT_WAITING_LIMIT = 256


class Fetches:
    """The processor's fetches of event URIs, on threads shared fairly by tenants (see the module
    docstring). ``fetch`` never blocks: its future ends with the bytes, or with Rejected
    (fetch_failed, fetch_refused), within ``fetch_timeout_s`` of the call. Thread-safe."""
    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self._slots: TenantSlots[bytes] = TenantSlots(
            "fetch", options.fetch_tenant_concurrency, FETCH_THREADS, _refuse_past_limit)

    def fetch(self, tenant: str, uri: str) -> Future[bytes]:
        """The bytes ``uri`` names, when fetched (or Rejected), within fetch_timeout_s."""
        deadline = time.monotonic() + self.options.fetch_timeout_s
        return self._slots.submit(tenant, lambda: self._read(tenant, uri, deadline))

    def _read(self, tenant: str, uri: str, deadline: float) -> bytes:
        if time.monotonic() >= deadline:
            raise Rejected(Reason.FETCH_FAILED, (
                f"not fetched within fetch_timeout_s ({self.options.fetch_timeout_s:g} s): it "
                f"waited all that time for tenant {tenant}'s other fetches "
                f"({self._slots.per_tenant} at once, fetch_tenant_concurrency)"))
        return read_uri(uri, self.options, deadline)


def _refuse_past_limit(tenant: str, held: int) -> Rejected | None:
    if held < TENANT_WAITING_LIMIT:
        return None
    return Rejected(Reason.FETCH_FAILED, f"not fetched: tenant {tenant} already has "
                                         f"{TENANT_WAITING_LIMIT} fetches waiting or running; "
                                         "send it again later")
