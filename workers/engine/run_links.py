"""The link to a running build's Jenkins run, from a STARTED notification.

The notification's `build.full_url` is the Notification plugin's (Jenkins' root URL and the
run's path), but its body is anyone's who holds the shared webhook token (issue 17): a forged
STARTED pointed the link GitLab shows while the build runs (its commit status's target) at
any site. It is taken only when it lies under the configured Jenkins URL (JENKINS_PUBLIC_URL, Jenkins'
root URL as users open it, or JENKINS_URL: same scheme, host and port, its path below the
URL's); else the run's page is built from the first of them set, the build's job and the
run's number (Jenkins' URL scheme: job/FOLDER/job/NAME/N/). With JENKINS_URL an in-cluster
address and no JENKINS_PUBLIC_URL, the real link (under Jenkins' public root URL) is replaced
by one no browser outside the cluster opens: set JENKINS_PUBLIC_URL. The
build's end links the run's page as Jenkins' API names it (workers.engine.run_confirm). Without a
configured Jenkins URL nothing is linked. A user part of either URL is never recorded.
"""

from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def run_page(full_url: str, jenkins_url: str, job: str, number: int,
             public_url: str = "") -> str:
    """The run's page to record: `full_url` if under `public_url` (Jenkins' own root URL, as
    users open it: JENKINS_PUBLIC_URL) or `jenkins_url` (the API's, often an in-cluster
    address no browser reaches), else the one built from the first of them set; "" without
    either (or a job)."""
    bases = [p for p in (_place(public_url), _place(jenkins_url))
             if p is not None and p.host and p.scheme in _DEFAULT_PORTS]
    if not bases:
        return ""
    link = _place(full_url) if full_url else None
    if link is not None and not link.user_part and any(
            link[:3] == ours[:3] and _below(link.path, ours.path) for ours in bases):
        return full_url
    ours = bases[0]
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
