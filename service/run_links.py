"""The link to a running build's Jenkins run, from a STARTED notification.

The notification's `build.full_url` is the Notification plugin's (Jenkins' root URL and the
run's path), but its body is anyone's who holds the shared webhook token (issue 17): a forged
STARTED pointed the link GitLab shows while the build runs (its commit status's target) at
any site. It is taken only when it lies under the configured Jenkins URL (JENKINS_URL: same
scheme, host and port, its path below the URL's); else the run's page is built from that URL,
the build's job and the run's number (Jenkins' URL scheme: job/FOLDER/job/NAME/N/). The
build's end links the run's page as Jenkins' API names it (workers.run_confirm). Without a
configured Jenkins URL nothing is linked. A user part of either URL is never recorded.
"""

from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def run_page(full_url: str, jenkins_url: str, job: str, number: int) -> str:
    """The run's page to record: `full_url` if under `jenkins_url`, else the one built from
    it; "" without a `jenkins_url` (or a job)."""
    ours = _place(jenkins_url)
    if ours is None or not ours.host or ours.scheme not in _DEFAULT_PORTS:
        return ""
    link = _place(full_url) if full_url else None
    if link is not None and link[:3] == ours[:3] and not link.user_part \
            and _below(link.path, ours.path):
        return full_url
    path = "".join(f"job/{quote(part, safe='')}/" for part in job.split("/") if part)
    base = f"{ours.scheme}://{ours.netloc}{ours.path.rstrip('/')}/"
    return f"{base}{path}{number}/" if path else ""


class _Parsed(NamedTuple):
    scheme: str
    host: str
    port: int | None
    path: str
    netloc: str
    user_part: bool


def _place(url: str) -> _Parsed | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
        host = (parts.hostname or "").lower()
    except ValueError:  # a port out of range or not a number, a malformed IPv6 host
        return None
    netloc = parts.netloc.rpartition("@")[2]
    return _Parsed(scheme, host, port, parts.path, netloc,
                   parts.username is not None or parts.password is not None)


def _below(path: str, base: str) -> bool:
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        return False  # a dot segment leaves the prefix once the browser resolves it
    return (path.rstrip("/") + "/").startswith(base.rstrip("/") + "/")
