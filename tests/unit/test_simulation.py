"""The simulator on a small trace: invariants that every run must keep, and determinism."""

import subprocess
import sys
from dataclasses import asdict

import pytest

from workers.sim.engine import Engine
from workers.sim.report import paired, summarise
from workers.sim.simulate import STRATEGIES, run
from workers.sim.strategies import Autoscaler, RequestsOnly
from workers.sim.traces import GI, NodeShape, _scenario, read_csv, write_csv


def small(seed: int = 5):
    """8 nodes, an hour of builds with a 10-minute burst far above capacity (by requests too)."""
    return _scenario("small", "test", seed=seed, load=0.5, duration=3600,
                     shapes=[NodeShape(4000, 16 * GI, 4), NodeShape(8000, 32 * GI, 4)],
                     burst=(1200, 600, 10.0), hot_fraction=0.25)


@pytest.fixture(scope="module")
def runs():
    scenario = small()
    out = {}
    for make in STRATEGIES:
        engine = Engine(scenario)
        strategy = make(engine)
        engine.run(strategy)
        out[make] = (engine, strategy)
    return scenario, out


def test_every_build_ends_finished_failed_with_a_reason_or_waiting(runs):
    scenario, out = runs
    assert len(scenario.builds) > 40
    for engine, _ in out.values():
        for b in engine.builds:
            assert b.status in ("finished", "failed", "waiting"), b
            if b.status == "failed":
                assert b.reason == "OOMKilled" and b.ended_at is not None
            if b.status == "finished":
                assert b.done_work >= b.spec.cpu_seconds and b.ended_at >= b.started_at


def test_no_node_is_ever_asked_for_more_than_it_has(runs):
    _, out = runs
    for make in (RequestsOnly, Autoscaler):
        engine, _ = out[make]
        for node in engine.nodes:
            assert node.peak_requested.fits_in(node.allocatable), node.name


def test_the_burst_makes_builds_wait_and_nodes_needed_rise(runs):
    _, out = runs
    engine, strategy = out[Autoscaler]
    summary = summarise(engine, strategy)
    assert strategy.first_unplaceable_at is not None
    assert summary.peak_nodes_needed and summary.peak_nodes_needed > 0
    assert summary.nodes_needed_after is not None and summary.nodes_needed_after <= 15
    assert summary.wait_max > 60


def test_the_same_seed_gives_the_same_numbers():
    first, _ = run(small(seed=9))
    again, _ = run(small(seed=9))
    other, _ = run(small(seed=10))
    assert [asdict(s) for s in first] == [asdict(s) for s in again]
    assert [asdict(s) for s in first] != [asdict(s) for s in other]


def test_traces_round_trip_through_csv(tmp_path):
    scenario = small()
    path = tmp_path / "t.csv"
    write_csv(scenario.builds, path)
    assert read_csv(path) == tuple(
        type(b)(round(b.arrival, 1), b.template, round(b.cpu_seconds, 1), b.cores,
                b.peak_memory_bytes, b.job) for b in scenario.builds)
    assert all(b.job for b in scenario.builds)


def test_a_broken_csv_is_refused_with_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("arrival_seconds,template,cpu_seconds,cores,peak_memory_bytes\n"
                    "1.0,small,300,2,1000\n2.0,small,lots,2,1000\n")
    with pytest.raises(ValueError, match=r"bad.csv:3"):
        read_csv(path)


def test_simulate_command_writes_table_and_plots(tmp_path):
    trace = tmp_path / "t.csv"
    write_csv(small().builds[:60], trace)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "service.cli", "simulate", "--trace",
                             str(trace), "--out", str(out), "--seed", "3"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr  # the progress bar
    table = (out / "t.md").read_text()
    for name in ("a. static agents", "b. pods, requests only", "c. ci-autoscaler",
                 "d. ci-autoscaler + history", "e. ci-autoscaler + warm agents"):
        assert name in table
    assert (out / "t-utilisation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "t-waits.png").stat().st_size > 1000


def test_turnaround_is_wait_plus_run_over_finished_builds_and_paired_over_both(runs):
    _, out = runs
    engine, strategy = out[Autoscaler]
    other, _ = out[RequestsOnly]
    summary = summarise(engine, strategy)
    finished = [b for b in engine.builds if b.status == "finished"]
    turns = sorted(b.ended_at - b.spec.arrival for b in finished)
    assert summary.turnaround_mean == pytest.approx(sum(turns) / len(turns))
    assert summary.turnaround_p50 in turns and summary.turnaround_p95 in turns
    for b in finished:  # push to result: the wait, then the run
        assert b.ended_at - b.spec.arrival == pytest.approx(
            (b.started_at - b.spec.arrival) + (b.ended_at - b.started_at))
    pair = paired(engine, other)
    both = {b.id for b in finished} & {b.id for b in other.builds if b.status == "finished"}
    assert pair.builds == len(both) > 0
    theirs = [b.ended_at - b.spec.arrival for b in other.builds if b.id in both]
    assert pair.mean[1] == pytest.approx(sum(theirs) / len(theirs))
    # a build one strategy lost (OOM) is left out of both sides
    lost = {b.id for b in other.builds if b.status == "failed"}
    assert not lost & both
