"""The liveness file and its probe (workers.telemetry.liveness): fresh passes, stale or missing fails,
saying why."""

import os
import time

from workers.telemetry import liveness


def test_a_beat_creates_and_touches_the_file_and_the_probe_passes(tmp_path, monkeypatch):
    path = tmp_path / "alive"
    monkeypatch.setenv(liveness.ENV, str(path))
    beat = liveness.from_env()  # touched once at start: the loop has not gone round yet
    assert path.exists() and liveness.main([str(path), "60"]) == 0
    os.utime(path, (time.time() - 120, time.time() - 120))
    beat._touched_at = float("-inf")  # past its once-a-second limit
    beat()
    assert liveness.stale_reason(str(path), 60) is None


def test_a_stale_file_fails_the_probe_naming_its_age(tmp_path, capsys):
    path = tmp_path / "alive"
    path.touch()
    os.utime(path, (time.time() - 300, time.time() - 300))
    assert liveness.main([str(path), "180"]) == 1
    assert "last touched 300s ago (more than 180s): the loop is wedged" in capsys.readouterr().err


def test_no_file_fails_the_probe(tmp_path, capsys):
    assert liveness.main([str(tmp_path / "none"), "180"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_without_the_setting_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(liveness.ENV, raising=False)
    assert liveness.from_env() is liveness.nothing


def test_a_max_age_that_is_no_number_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "alive"
    path.touch()
    assert liveness.main([str(path), "3m"]) == 2
    assert "MAX_AGE_SECONDS: '3m' is not a number of seconds" in capsys.readouterr().err
