"""`dupwatch bench chaos`, briefly: a worker killed and the broker frozen under traffic, and
nothing lost, answered inconsistently or missed.

The schedule is seeded: the first kill comes at about 7 s (--kill-every 6, +-25 %), the stall
is planned half-way (30 s), no kill starts in the 6 s before it, and it goes as soon as the
window before it has closed (every worker ready again, the backlog answered) and traffic
still runs: a kill's window took 20-36 s here at load 4-10. Everything the bench waits for is an event (a /readyz answer, an outcome read
back); the only fixed lengths are the faults themselves.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_a_short_chaos_run_loses_nothing_and_the_restarted_worker_answers(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    result = subprocess.run([sys.executable, "-m", "dupwatch", "bench", "chaos",
                             "--minutes", "1", "--rate", "4", "--kill-every", "6",
                             "--stalls", "1", "--stall-seconds", "8", "--out", str(out)],
                            capture_output=True, text=True, timeout=400)
    report = json.loads(out.read_text()) if out.exists() else {}
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:],
                                    report.get("examples"), report.get("unexpected_exits"))
    assert (report["lost"], report["inconsistent"], report["missed_copies"]) == (0, 0, 0)
    kills = [w for w in report["windows"] if w["kind"] == "kill"]
    stalls = [w for w in report["windows"] if w["kind"] == "stall"]
    assert kills and stalls, report["windows"]
    assert all(w["recovered_s"] is not None for w in report["windows"])
    # the first kill's replacement joined and answered events afterwards
    assert kills[0]["replacement_answered"] > 0, kills[0]
    # every event is in the whole run's count, with an outcome
    assert report["whole_run"]["events"] == report["published"]
    # each process's RSS over time: the first sample (before any fault) has all of them
    first = report["series"][0]
    assert first["fault"] is None and first["broker_rss_mb"]
    assert len(first["workers"]) == 3 and all(w["rss_mb"] for w in first["workers"])
    assert "| window |" in result.stdout and "outside the windows" in result.stdout
