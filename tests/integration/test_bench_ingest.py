"""A short run of bench/ingest.py, so that the benchmark keeps working: both apps served by
gunicorn, loaded by wrk, every webhook answered, every 202 with its event stored in Redis and
every stored event made a job by the worker's mover; the full load measured in turns (two slices
each), the webhook's slices checked against Redis together."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_bench_runs_and_reports_both_apps_without_errors(tmp_path):
    out = tmp_path / "ingest.md"
    result = subprocess.run(
        [sys.executable, "bench/ingest.py", "--seconds", "1", "--warmup", "1", "--rounds", "1",
         "--connections", "8", "--slices", "2", "--profile", "20", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = out.read_text()
    rows = {m[1]: m[2] for m in re.finditer(r"^\| (baseline: bare Flask, 204|/webhooks/gitlab, "
                                           r"[a-z ,']+) \| (.*)$", text, re.M)}
    assert len(rows) == 4, text  # baseline, distinct, twice, with a mover alongside
    for name, row in rows.items():
        cells = [c.strip() for c in row.split("|")]
        assert int(cells[0]) > 0, (name, row)  # req/s at full load
        assert cells[5] == "0, 0", (name, row)  # errors: none; 202s stored, all made jobs
    assert "## Profile" in text and "webhooks.py" in text


def test_ingest_bench_refuses_what_would_fail_it_before_any_load(tmp_path):
    # Without the push fixture wrk's Lua script panicked and the bench died with a
    # CalledProcessError, wrk's own message swallowed; a missing --out directory was found only
    # after the whole run, its figures lost.
    import os

    def bench(*args: str, fixtures: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "bench/ingest.py", *args], cwd=ROOT,
                              env=os.environ | {"CI_AUTOSCALER_FIXTURES": str(fixtures)},
                              capture_output=True, text=True, timeout=60)

    no_fixture = bench("--out", str(tmp_path / "i.md"), fixtures=tmp_path)
    assert no_fixture.returncode == 2
    assert f"{tmp_path}/gitlab_push_real_lrz.json: no such file; set CI_AUTOSCALER_FIXTURES" \
        in no_fixture.stderr
    real = Path(os.environ.get("CI_AUTOSCALER_FIXTURES", ROOT.parent / "shared" / "fixtures"
                               / "webhooks"))
    no_dir = bench("--out", str(tmp_path / "gone" / "i.md"), fixtures=real)
    assert no_dir.returncode == 2
    assert f"--out {tmp_path}/gone/i.md: no directory {tmp_path}/gone" in no_dir.stderr
    assert "round 1" not in no_fixture.stdout + no_dir.stdout
