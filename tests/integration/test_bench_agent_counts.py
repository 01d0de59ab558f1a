"""A short run of bench/agent_counts.py, so that the benchmark keeps working: the baseline
reads every live build's record a scrape, the kept counts none, or those written since."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_agent_counts_bench_runs_and_a_scrape_reads_no_record_after_a_recount(tmp_path):
    out = tmp_path / "agent_counts.md"
    result = subprocess.run(
        [sys.executable, "bench/agent_counts.py", "--builds", "100", "300", "--scrapes", "3",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {(int(m[1].replace(",", "")), m[2]): int(m[3].replace(",", ""))
            for m in re.finditer(r"^\| ([\d,]+) \| ([^|]+?) \| [\d.]+ \| [\d,]+ \| ([\d,]+) \|",
                                 out.read_text(), re.M)}
    for builds in (100, 300):
        assert rows[builds, "baseline: every record"] == builds
        assert rows[builds, "counts, 0% written since"] == 0
        assert rows[builds, "counts, 1% written since"] <= builds // 100 + 1
