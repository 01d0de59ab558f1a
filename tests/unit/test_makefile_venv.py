"""`make demo` and `make test` on a fresh Debian machine: Debian's python3 makes no virtualenv
until python3-venv is installed (Debian leaves ensurepip out of python3.11 and ships it in
python3.11-venv), so `python3 -m venv` fails there, printing what the shim below prints (the
venv module's own message, Lib/venv/__init__.py _setup_pip on Debian). The Makefile installs
the package then and makes the virtualenv; apt-get is a fake that records what it was asked."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A python3 of Debian's before python3.11-venv: `-m venv` fails until the package is there.
PYTHON_SHIM = """#!/bin/sh
if [ "$1" = "-c" ]; then exec python3 "$@"; fi
if [ "$1 $2" = "-m venv" ]; then
  if [ ! -e "$MARKER" ]; then
    mkdir -p "$3/bin"
    cat >&2 <<'MSG'
The virtual environment was not successfully created because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install python3.11-venv
MSG
    exit 1
  fi
  mkdir -p "$3/bin"
  printf '#!/bin/sh\\nexit 0\\n' > "$3/bin/pip"; chmod +x "$3/bin/pip"
  exit 0
fi
exit 3
"""
APT_GET = """#!/bin/sh
echo "$*" >> "$APT_LOG"
case "$*" in *install*) touch "$MARKER";; esac
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_make_venv_installs_debians_venv_package_when_python_cannot_make_one(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = _script(bin_dir / "python3-debian", PYTHON_SHIM)
    _script(bin_dir / "apt-get", APT_GET)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "MARKER": str(tmp_path / "venv-package-installed"),
           "APT_LOG": str(tmp_path / "apt.log")}
    venv = tmp_path / "venv"
    result = subprocess.run(["make", "--no-print-directory", "venv", f"PYTHON={python}",
                             f"VENV={venv}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (venv / ".installed").exists()
    version = subprocess.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    installs = [line for line in (tmp_path / "apt.log").read_text().splitlines()
                if "install" in line]
    assert len(installs) == 1 and installs[0].endswith(f"python{version}-venv"), installs
