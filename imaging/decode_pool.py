"""Decodes in processes of their own, stopped for good at their time budget, fair across tenants.

Pillow decodes in C: no exception, signal or thread can stop a decode part way, and a decode can
cost minutes for a file of a few hundred KB (imaging/jpeg.py). So a worker decodes in child
processes, each capped by the operating system (CPU seconds just past the time budget, address
space ``decode_memory_mb`` above what it holds at start), and a decode still running at its
budget is ended by killing its process: its CPU and memory are back at once and a fresh process
takes its place. Children fork from a small server process that has imported Pillow once (not
from the worker, with its threads and Kafka clients), so a replacement is ready in milliseconds.

Fairness: decodes run as events come in, not as part of a batch, so an event never waits for
another event's decode, only for its own tenant's turn. Each tenant's images are decoded at
most ``processes`` at a time; the pool grows to twice ``processes`` while several tenants have
images, tenants taking turns for free processes (imaging/tenant_slots.py). A tenant whose
decode was stopped at its budget in the last OVERRUN_MEMORY_S seconds may have only
SUSPECT_WAITING images waiting or decoding: when it overruns, its images waiting beyond those are
dead-lettered, and so are its new ones past that, so a flood of slow images cannot fill the
worker's read-ahead window.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import resource
import signal
import threading
import time
import traceback
import weakref
from concurrent.futures import Future
from multiprocessing.connection import Connection

from PIL import Image

from dupwatch.imaging.image import DecodeLimits, ImageInput, bytes_summary, decode
from dupwatch.imaging.tenant_slots import TenantSlots
from dupwatch.schemas import Reason, Rejected

log = logging.getLogger(__name__)

# A tenant whose decode ran past its budget this recently may have at most SUSPECT_WAITING
# images waiting or decoding.
OVERRUN_MEMORY_S = 60
SUSPECT_WAITING = 8

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["dupwatch.imaging.image"])


class _Overrun(Exception):
    """The decode was still running at its budget."""


class _Decoder:
    """One decode process and the pipe to it."""

    def __init__(self, limits: DecodeLimits) -> None:
        self._conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_serve, args=(child, limits), daemon=True,
                                        name="dupwatch-decode")
        self.process.start()
        child.close()

    def decode(self, raw: bytes, budget_s: float | None) -> Image.Image:
        """The picture, Rejected, _Overrun, or EOFError/OSError when the process died."""
        self._conn.send_bytes(raw)
        if not self._conn.poll(budget_s):
            raise _Overrun
        answer = self._conn.recv()
        if answer[0] == "ok":
            return Image.frombytes(answer[1], answer[2], self._conn.recv_bytes())
        if answer[0] == "rejected":
            raise Rejected(Reason(answer[1]), answer[2])
        raise RuntimeError(f"the decode process failed:\n{answer[1]}")

    def stop(self) -> int | None:
        """Kill the process and reap it; its exit code (negative: the signal that ended it)."""
        self.process.kill()
        self.process.join()
        self._conn.close()
        return self.process.exitcode

    def close(self) -> None:
        """Let an idle process end by itself (it sees its pipe close)."""
        self._conn.close()


class DecodePool:
    """Decode processes for one worker (or one `dupwatch scan`)."""

    def __init__(self, limits: DecodeLimits, processes: int) -> None:
        self.limits = limits
        self.processes = max(1, processes)
        self._budget_s = limits.timeout_ms / 1000 if limits.timeout_ms else None
        self._lock = threading.Lock()
        self._idle: list[_Decoder] = []
        self._busy = 0
        self._overran: dict[str, float] = {}  # tenant -> when a decode of it was last stopped
        self._slots: TenantSlots[ImageInput] = TenantSlots(
            "decode", self.processes, 2 * self.processes, self._refusal)
        # Idle processes end when the pool is dropped (a worker's stay for its whole life).
        weakref.finalize(self, _close_all, self._idle)

    def submit(self, tenant: str, image: ImageInput) -> Future[ImageInput]:
        """Decode ``image`` in the tenant's turn. The future ends with the image once its
        outcome (pixels or Rejected, read with ``image.pixels``) is settled on it, or fails with
        Rejected when the tenant may not queue more."""
        def settle() -> ImageInput:
            started = time.perf_counter()
            try:
                outcome: Image.Image | Exception = self.decode(image.raw, tenant)
            except Exception as exc:  # Rejected, or a bug: raised to whoever reads the pixels
                outcome = exc
            image.settle(outcome, (time.perf_counter() - started) * 1000)
            return image
        return self._slots.submit(tenant, settle)

    def decode(self, raw: bytes, tenant: str = "") -> Image.Image:
        """One image, waiting on the calling thread: its pixels, or Rejected."""
        decoder = self._acquire()
        try:
            image = decoder.decode(raw, self._budget_s)
        except _Overrun:
            self._replace(decoder)
            self._overrun_by(tenant)
            raise Rejected(Reason.DECODE_TIMEOUT,
                           f"decoding took longer than {self.limits.timeout_ms} ms "
                           f"(decode_timeout_ms) and was stopped ({bytes_summary(raw)})") from None
        except (EOFError, OSError):
            raise self._died(decoder, raw, tenant) from None
        except BaseException:
            self._release(decoder)
            raise
        self._release(decoder)
        return image

    def _overrun_by(self, tenant: str) -> None:
        with self._lock:
            self._overran[tenant] = time.monotonic()
        self._slots.shed(tenant, SUSPECT_WAITING, self._suspect(tenant))

    def _refusal(self, tenant: str, held: int) -> Rejected | None:
        """(Under the slots' lock.) A tenant that just overran may not pile up more work."""
        with self._lock:
            overran = self._overran.get(tenant)
            if overran is not None and time.monotonic() - overran > OVERRUN_MEMORY_S:
                del self._overran[tenant]
                overran = None
        return None if overran is None or held < SUSPECT_WAITING else self._suspect(tenant)

    def _suspect(self, tenant: str) -> Rejected:
        return Rejected(Reason.DECODE_TIMEOUT, (
            f"not decoded: tenant {tenant}'s images ran past decode_timeout_ms "
            f"({self.limits.timeout_ms} ms) in the last {OVERRUN_MEMORY_S} s, and it already "
            f"has {SUSPECT_WAITING} images waiting or decoding; send it again later"))

    def _acquire(self) -> _Decoder:
        with self._lock:
            self._busy += 1
            while self._idle:
                decoder = self._idle.pop()
                if decoder.process.is_alive():
                    return decoder
                decoder.close()  # ended while idle (killed from outside): start another
        try:
            return _Decoder(self.limits)
        except BaseException:
            with self._lock:
                self._busy -= 1
            raise

    def _release(self, decoder: _Decoder) -> None:
        with self._lock:
            self._busy -= 1
            keep = len(self._idle) < self.processes
            if keep:
                self._idle.append(decoder)
        if not keep:
            decoder.close()  # the pool grew for several tenants; back to its usual size

    def _replace(self, decoder: _Decoder) -> int | None:
        """Kill an overrunning or broken process; start its replacement in the background."""
        code = decoder.stop()
        with self._lock:
            self._busy -= 1
        threading.Thread(target=self._warm_one, name="dupwatch-decode-start", daemon=True).start()
        return code

    def _warm_one(self) -> None:
        try:
            decoder = _Decoder(self.limits)
        except Exception:  # the next decode starts one itself, and says why if it cannot
            log.warning("could not start a decode process", exc_info=True)
            return
        self._release_new(decoder)

    def _release_new(self, decoder: _Decoder) -> None:
        with self._lock:
            keep = len(self._idle) + self._busy < self.processes
            if keep:
                self._idle.append(decoder)
        if not keep:
            decoder.close()

    def _died(self, decoder: _Decoder, raw: bytes, tenant: str) -> Rejected:
        """Why a decode process ended in the middle of a decode."""
        code = self._replace(decoder)
        if code == -signal.SIGXCPU:
            self._overrun_by(tenant)
            return Rejected(Reason.DECODE_TIMEOUT, f"decoding used more CPU time than "
                                                   f"decode_timeout_ms allows ({bytes_summary(raw)})")
        if code == -signal.SIGKILL:  # the kernel's out-of-memory killer, most likely
            return Rejected(Reason.TOO_LARGE, f"the decode process was killed (out of memory?) "
                                              f"({bytes_summary(raw)})")
        return Rejected(Reason.DECODE_FAILED, f"the decoder crashed (exit code {code}) on these "
                                              f"bytes ({bytes_summary(raw)})")


def _close_all(decoders: list[_Decoder]) -> None:
    for decoder in decoders:
        decoder.close()


# -- in the decode process

def _serve(conn: Connection, limits: DecodeLimits) -> None:
    """Bytes in, RGB pixels (or why not) out, until the pool closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the pool, which ends us
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file when SIGXCPU ends us
    _limit_memory(limits.memory_mb)
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        _limit_cpu(limits.timeout_ms)
        try:
            image = decode(raw, limits)
        except Rejected as error:
            conn.send(("rejected", error.reason.value, error.detail))
            continue
        except Exception:
            conn.send(("failed", traceback.format_exc()))
            continue
        conn.send(("ok", image.mode, image.size))
        conn.send_bytes(image.tobytes())


def _limit_cpu(timeout_ms: int) -> None:
    """From now on, at most the budget (rounded up) plus a second more of CPU time; the pool
    kills the process at the budget anyway, this holds if the pool itself stalls."""
    if not timeout_ms:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + timeout_ms / 1000) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.getrlimit(resource.RLIMIT_CPU)[1]))


def _limit_memory(megabytes: int) -> None:
    """Address space: what the process maps now plus ``megabytes``. A decode that needs more
    gets MemoryError from Pillow (dead-lettered too_large) instead of starving the machine."""
    if not megabytes:
        return
    try:
        with open("/proc/self/statm") as statm:  # in pages; the first is the whole mapping
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
    except OSError:  # not Linux: no measure of what is mapped, so no limit
        return
    limit = mapped + megabytes * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
