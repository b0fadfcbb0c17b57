"""`dupwatch bench chaos` judges what came back: lost, inconsistent, missed copies, and which
fault window each event belongs to. A made-up ledger, no processes; the run itself:
tests/integration/test_chaos.py."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

from dupwatch.bench.chaos import Window, judge, next_fault
from dupwatch.bench.traffic import Ledger, Sent
from dupwatch.messaging.follow import Record

T0 = 1_000_000.0


def _send(ledger: Ledger, key: str, kind: str, at: float, source: str | None = None) -> None:
    ledger.published(Sent(kind, key.encode(), b"", source))
    ledger.published_at[key] = T0 + at


def _verdict(ledger: Ledger, key: str, at: float, label: str = "unique",
             match: str | None = None, submitted: float | None = None) -> None:
    tenant, image_id = key.split("/")
    submitted_at = T0 + (ledger.published_at[key] - T0 if submitted is None else submitted)
    doc = {"tenant": tenant, "image_id": image_id, "verdict": label,
           "match_id": match.split("/")[1] if match else None, "worker": "w",
           "submitted_at": _iso(submitted_at)}
    ledger.received(Record("verdicts", doc, T0 + at))


def _dead_letter(ledger: Ledger, key: str, at: float, reason: str) -> None:
    doc = {"key": base64.b64encode(key.encode()).decode(), "reason": reason, "worker": "w"}
    ledger.received(Record("dead-letters", doc, T0 + at))


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()


def test_lost_inconsistent_and_missed_copies_are_counted_by_their_rules() -> None:
    ledger = Ledger()
    _send(ledger, "s/orig", "fresh", 1.0)
    _verdict(ledger, "s/orig", 2.0)
    _send(ledger, "s/early", "exact", 1.5, source="s/orig")    # before orig's verdict: not checked
    _verdict(ledger, "s/early", 2.5)
    _send(ledger, "s/good", "exact", 3.0, source="s/orig")
    _verdict(ledger, "s/good", 3.5, "exact_duplicate", "s/early")  # same bytes: a right match
    _send(ledger, "s/missed", "exact", 3.1, source="s/good")   # a copy of a copy
    _verdict(ledger, "s/missed", 3.6)                          # unique: missed
    _send(ledger, "s/twice", "fresh", 3.2)
    _verdict(ledger, "s/twice", 3.7)
    _verdict(ledger, "s/twice", 9.0, "variant", "s/orig")      # re-delivered, answered otherwise
    _send(ledger, "s/again", "fresh", 3.3)
    _verdict(ledger, "s/again", 3.8)
    _verdict(ledger, "s/again", 9.1)                           # re-delivered, same answer
    _send(ledger, "s/bad", "bad", 3.4)
    _dead_letter(ledger, "s/bad", 3.9, "decode_failed")
    _send(ledger, "s/gone", "fresh", 3.5)                      # never answered
    _send(ledger, "s/edit", "variant", 3.6, source="s/orig")
    _verdict(ledger, "s/edit", 4.0, "near_duplicate", "s/orig")

    whole = judge(ledger, [], T0, T0 + 20).whole
    assert (whole.events, whole.lost, whole.inconsistent) == (9, 1, 1)
    assert (whole.missed_copies, whole.copies_checked) == (1, 2)
    assert whole.redelivered == 2
    assert (whole.variants_matched, whole.variants_matchable) == (1, 1)
    examples = judge(ledger, [], T0, T0 + 20).examples
    assert [e["key"] for e in examples["missed_copies"]] == ["s/missed"]
    assert [e["key"] for e in examples["lost"]] == ["s/gone"]
    assert [e["key"] for e in examples["inconsistent"]] == ["s/twice"]


def test_an_event_belongs_to_every_window_its_life_overlaps_else_outside() -> None:
    ledger = Ledger()
    _send(ledger, "s/before", "fresh", 1.0)
    _verdict(ledger, "s/before", 1.5)                          # outside
    _send(ledger, "s/across", "fresh", 4.0)
    _verdict(ledger, "s/across", 6.0)                          # answered inside the window
    _send(ledger, "s/inside", "fresh", 6.5)
    _verdict(ledger, "s/inside", 7.0)
    _send(ledger, "s/after", "fresh", 9.0)
    _verdict(ledger, "s/after", 9.4)                           # outside
    _send(ledger, "s/lost", "fresh", 2.0)                      # its life runs to the end
    window = Window("kill", "w0", T0 + 5, T0 + 5.1, T0 + 7.5, T0 + 8.0)

    judged = judge(ledger, [window], T0, T0 + 10)
    [inside] = judged.by_window
    assert (inside.events, inside.lost) == (3, 1)
    assert (judged.outside.events, judged.outside.lost) == (2, 0)
    assert judged.whole.events == 5
    assert sorted(round(s, 1) for s in inside.latencies) == [0.5, 2.0]


def test_latency_is_the_first_verdicts_and_the_probe_has_none() -> None:
    ledger = Ledger()
    _send(ledger, "s/probe", "fresh", 1.0)
    _verdict(ledger, "s/probe", 30.0)                          # a queued probe event
    _send(ledger, "s/paced", "fresh", 40.0)
    _verdict(ledger, "s/paced", 40.8)
    _verdict(ledger, "s/paced", 50.0)                          # its re-delivery: not latency
    judged = judge(ledger, [], T0 + 35, T0 + 60)
    assert [round(s, 1) for s in judged.whole.latencies] == [0.8]
    assert json.dumps(judged.whole.summary())  # the results are JSON


def test_a_kill_never_pushes_a_planned_stall_out_of_the_run() -> None:
    """The one-minute test's schedule (a kill every ~6 s, a stall planned at 30 s): its first
    kill's window closed at 29.2 s under load, a kill went then, and its window outlasted the
    traffic, so the run had no stall. Now the kill waits for the stall."""
    plan = [30.0]
    assert next_fault(29.2, 29.2, 13.0, 54.0, plan, 6.0) is None
    assert next_fault(30.0, 29.2, 13.0, 54.0, plan, 6.0) == "stall"
    # after the stall, kills go on; none before the previous window closed
    assert next_fault(50.0, 45.0, 13.0, 54.0, [], 6.0) == "kill"
    assert next_fault(50.0, 52.0, 13.0, 54.0, [], 6.0) is None
    # a kill well before the stall, and none in the traffic's kill-free tail
    assert next_fault(10.0, 0.0, 8.0, 54.0, plan, 6.0) == "kill"
    assert next_fault(55.0, 0.0, 8.0, 54.0, [], 6.0) is None
