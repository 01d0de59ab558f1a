"""A gunicorn worker SIGKILLed (the OOM killer, a timeout) while it writes the pod's counter
offsets leaves the last whole state, never an empty or cut file: a lost offset shows the
counter's drop to Prometheus as a reset (workers.telemetry.monotonic_counters)."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.telemetry.monotonic_counters import LOCK_FILE, STATE_FILE, TEMP_FILE

SERIES = 50_000  # a few MB of JSON: each write takes a while to kill it in

# A worker that serves scrapes without end, each one reading and writing every offset.
WORKER = """
import sys
from workers.telemetry.monotonic_counters import MonotonicCounters
counters = MonotonicCounters(sys.argv[1])
first = True
while True:
    with counters.held() as offsets:
        for i in range(int(sys.argv[2])):
            offsets.apply(f'["m", ["{i}"], "total"]', 0.0 if first else 1.0)
    if first:
        print("written", flush=True)
        first = False
"""


def _killed_mid_scrape(directory: Path) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(directory), str(SERIES)],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "written\n"  # a whole state exists from here on
        time.sleep(random.uniform(0, 0.2))  # the kill lands anywhere in the loop
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()


def test_a_worker_killed_while_writing_offsets_never_loses_them(tmp_path):
    for attempt in range(25):
        _killed_mid_scrape(tmp_path)
        text = (tmp_path / STATE_FILE).read_text(encoding="utf-8")
        state = json.loads(text)  # a cut file raises; an empty one too
        assert len(state) == SERIES, attempt
        assert all(len(pair) == 2 for pair in state.values()), attempt
    names = {path.name for path in tmp_path.iterdir()}
    assert not [name for name in names if name.endswith(".db")], names  # gunicorn removes *.db
    assert names <= {STATE_FILE, LOCK_FILE, TEMP_FILE}, names
