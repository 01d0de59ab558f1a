"""A short run of bench/expiry.py, so that the benchmark keeps working: with expiry, no build
state or agents entry is left after the reconcile pass; without, every build's stays."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def rows(text: str, section: str) -> list[list[int]]:
    body = text.split(f"### {section}\n", 1)[1].split("\n\n", 1)[0]
    return [[int(c.replace(",", "").replace("+", "")) for c in line.strip("|").split("|")]
            for line in body.splitlines() if re.match(r"^\| [\d,]+ \|", line)]


def test_expiry_bench_runs_and_leaves_no_build_state_with_expiry_on(tmp_path):
    out = tmp_path / "expiry.md"
    # 40 builds in batches of 20, two checkpoints: what is checked is that every build's state
    # goes with expiry and stays without, at each checkpoint, not the memory curve of many
    # builds (the bench's own run). 200 builds took 50 s quiet and timed out (300 s) under load.
    result = subprocess.run(
        [sys.executable, "bench/expiry.py", "--builds", "40", "--every", "20", "--batch", "20",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = out.read_text()
    on, off = rows(text, "expiry on"), rows(text, "expiry off")
    assert [r[0] for r in on] == [r[0] for r in off] == [20, 40]
    for builds, memory, _delta, _keys, left, agents, expired in on:
        assert (left, agents, expired) == (0, 0, 20), text
    for builds, memory, _delta, _keys, left, agents, expired in off:
        assert (left, agents, expired) == (builds, builds, 0), text
    assert on[-1][1] < off[-1][1]  # used_memory
