"""A real browser for the status page: Debian's chromium, headless, started by the test with a
fresh profile each time; the DOM it built (--dump-dom) and a screenshot (--screenshot).

`make test` installs chromium (the Makefile's DEBIAN_PACKAGES); if it is still missing the
test fails and says so (it never skips). As root it needs --no-sandbox; the flags below keep it
from reaching the network on its own (updates, sync, field trials).
"""

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM_TIMEOUT_SECONDS = 60
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--disable-extensions")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run `make deps` (or `apt-get install -y "
                    "chromium`)")
    profile.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_SECONDS)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def dump_dom(url: str, tmp: Path) -> str:
    """The page's DOM as Chromium built it, serialised."""
    return chromium("--dump-dom", url, profile=tmp / "chromium-dom").stdout


def screenshot(url: str, path: Path, tmp: Path) -> Path:
    chromium(f"--screenshot={path}", "--window-size=1280,1800", "--hide-scrollbars", url,
             profile=tmp / "chromium-shot")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is no PNG"
    return path


class _Tables(HTMLParser):
    """Each table (by id): its rows, each a list of its cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.elements: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(tag)
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> _Tables:
    """Its tables (``.tables``) and every element's tag, in order (``.elements``)."""
    parser = _Tables()
    parser.feed(html)
    return parser
