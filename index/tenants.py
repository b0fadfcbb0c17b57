"""One index per tenant, so an image is only ever compared with its own tenant's images."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

I = TypeVar("I")


class TenantIndexes(Generic[I]):
    """One stage's indexes, one per tenant, made on first add with ``new_index`` and read back with
    ``load_index``; a store keeps one per stage. Not thread-safe, like the indexes it holds."""
    def __init__(self, new_index: Callable[[], I], load_index: Callable[[Path], I]) -> None:
        self._new_index = new_index
        self._load_index = load_index
        self._by_tenant: dict[str, I] = {}

    def existing(self, tenant: str) -> I | None:
        """The tenant's index, or None if it has never had an entry (searching creates nothing)."""
        return self._by_tenant.get(tenant)

    def for_tenant(self, tenant: str) -> I:
        """The tenant's index, created empty on first use."""
        index = self._by_tenant.get(tenant)
        if index is None:
            index = self._by_tenant[tenant] = self._new_index()
        return index

    def tenants(self) -> Iterator[tuple[str, I]]:
        return iter(sorted(self._by_tenant.items()))

    def save(self, path: Path) -> None:
        """One sub-directory per tenant (tenant names are restricted to safe file names)."""
        for tenant, index in self._by_tenant.items():
            index.save(path / tenant)  # type: ignore[attr-defined]

    def load(self, path: Path) -> None:
        """Replace the in-memory indexes with those saved under ``path``, if any."""
        if not path.is_dir():
            return
        self._by_tenant = {sub.name: self._load_index(sub)
                           for sub in sorted(path.iterdir()) if sub.is_dir()}
