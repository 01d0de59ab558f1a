"""Ctrl-C pressed while `ci-autoscaler demo` is still starting (importing the web app, RQ,
Kubernetes' client: seconds on a busy machine) ends it with exit 130 and a word, never a
KeyboardInterrupt traceback: a new user trying `make demo` and changing their mind got forty
lines of import stack. The SIGINT is sent, for real, as the demo's own module is imported."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A finder that sends this process SIGINT, as a terminal's Ctrl-C does, when service.demo is
# first imported (cli's `demo` imports it lazily), then lets the import go on.
INTERRUPT_DURING_IMPORT = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "service.demo":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
from service import cli
sys.exit(cli.main(["demo"]))
"""


def test_ctrl_c_while_the_demo_starts_ends_it_without_a_traceback():
    result = subprocess.run([sys.executable, "-c", INTERRUPT_DURING_IMPORT], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "interrupted" in result.stderr
