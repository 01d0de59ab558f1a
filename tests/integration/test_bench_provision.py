"""A short run of bench/provision.py, so that the benchmark keeps working: redis-server, kmock
behind the latency proxy, the Jenkins fake, the Procfile's web and worker processes; every push
triggered once, in the serial baseline, in the design before issue 19 (its commit's own web and
worker, from git archive) and with a concurrent worker."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/provision.py", "--pushes", "8", "--seconds", "0",
         "--baseline-pushes", "2", "--nodes", "3", "--concurrency", "4",
         "--cases", "one worker", "--timeout", "120", "--out", str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


def _has_commit(commit: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
                          capture_output=True).returncode == 0


def test_provision_bench_runs_the_baseline_and_a_concurrent_worker(tmp_path):
    out = tmp_path / "provision.md"
    expected = [("serial", "1", "1", "2"), ("before issue 19", "1", "1", "2"),
                ("one worker", "1", "4", "8")]
    if _has_commit("4ddd807"):
        result = _bench(out)
    else:
        # A shallow clone has no earlier commit to run: the bench says so and what to do,
        # and runs the other cases with that one left out.
        refused = _bench(out)
        assert refused.returncode != 0 and "not in this clone" in refused.stderr, \
            refused.stderr[-2000:]
        result = _bench(out, "--before", "none")
        expected.pop(1)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = re.findall(r"^\| 1 \| (serial|before issue 19|one worker) \| (\d+) \| (\d+) \| "
                      r"(\d+) \|(.*)$", out.read_text(), re.M)
    assert [(name, workers, threads, pushes) for name, workers, threads, pushes, _ in rows] == \
        expected
    for *_, rest in rows:
        cells = [c.strip() for c in rest.split("|")]
        assert float(cells[4]) > 0  # builds/s, with every push triggered once (else it fails)


def test_provision_bench_runs_each_worker_case_against_a_commits_tree_too(tmp_path):
    """--against: the worker case again from a commit's tree (here this checkout's HEAD), with
    its ratios; --keep leaves each case's directory, with the Redis commands a build."""
    out, keep = tmp_path / "provision.md", tmp_path / "kept"
    result = _bench(out, "--before", "none", "--against", "HEAD", "--keep", str(keep))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = out.read_text()
    rows = re.findall(r"^\| 1 \| ([^|]+) \| (\d+) \| (\d+) \| (\d+) \|", text, re.M)
    assert [r[0] for r in rows] == ["serial", "one worker", "one worker @ HEAD"]
    assert "CASE @ HEAD: the case's web and worker of commit HEAD" in text
    assert "commit none" not in text  # no case before issue 19: not described
    assert re.search(r"round 1, one worker: builds/s x[\d.]+, workers' CPU a build x[\d.]+",
                     text)
    commands = (keep / "round-0-case-2" / "redis-commands.txt").read_text()
    assert re.search(r"^ +[\d.]+ hset$", commands, re.M)
