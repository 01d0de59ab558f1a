"""The web listens on every address of the pod's IP families (workers.adapters.listen), as the
chart starts it: gunicorn bound 0.0.0.0, IPv4 only, so on an IPv6-only cluster the pod's one
address was never listened on. Real gunicorn processes, and for the kernel settings this host
does not have, a network namespace of their own (unshare -n, as root) where the test sets
net.ipv6.bindv6only: no socket call is faked."""

import shlex
import subprocess
import sys
import urllib.request

from tests.support.helm_chart import env_of, one, render
from tests.support.redis_server import free_port
from tests.support.web_process import GUNICORN, ROOT, web_env, web_process


def _chart_bind(port: int) -> str:
    """The web's CI_AUTOSCALER_BIND as the chart renders it, on `port`."""
    pod = one(render("default"), "Deployment", "web")["spec"]["template"]["spec"]
    web = next(c for c in pod["containers"] if c["name"] == "web")
    bind = env_of(web)["CI_AUTOSCALER_BIND"]["value"]
    assert bind.endswith(":8080"), bind
    return bind.removesuffix("8080") + str(port)


def _healthz(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def test_the_web_answers_on_ipv4_and_ipv6_as_the_chart_binds_it(redis_url, tmp_path):
    port = free_port()
    env = web_env(redis_url, CI_AUTOSCALER_BIND=_chart_bind(port))
    with web_process(GUNICORN, env, port, tmp_path / "web.log"):
        assert _healthz(f"http://127.0.0.1:{port}/healthz") == 200
        assert _healthz(f"http://[::1]:{port}/healthz") == 200


# In a namespace of its own: loopback up, IPv6 sockets IPv6-only (bindv6only 1, as some
# distributions set it), the web started as the chart does, then asked on both families.
NAMESPACED = """
set -e
ip link set lo up
sysctl -qw net.ipv6.bindv6only=1
{gunicorn} > {log} 2>&1 &
web=$!
trap 'kill $web; wait $web' EXIT
{python} - <<'PY'
import time, urllib.request
for family, url in (("ipv4", "http://127.0.0.1:{port}/healthz"),
                    ("ipv6", "http://[::1]:{port}/healthz")):
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            print(family, "ok")
            break
        except OSError as err:
            if time.monotonic() > deadline:
                print(family, "refused", err)
                break
            time.sleep(0.2)
PY
"""


def test_with_ipv6_only_sockets_the_web_listens_on_both_families(redis_url, tmp_path):
    """Where an IPv6 socket on [::] takes no IPv4 (bindv6only 1), [::] alone would leave IPv4
    unheard, and 0.0.0.0 alone IPv6: the web binds both. Redis is out of this namespace's reach:
    /healthz answers without it."""
    port = free_port()
    env = web_env(redis_url, CI_AUTOSCALER_BIND=_chart_bind(port))
    log = tmp_path / "web.log"
    script = NAMESPACED.format(gunicorn=GUNICORN, log=shlex.quote(str(log)),
                               python=shlex.quote(sys.executable), port=port)
    result = subprocess.run(["unshare", "-n", "sh", "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr + log.read_text()
    assert result.stdout.split("\n")[:2] == ["ipv4 ok", "ipv6 ok"], \
        result.stdout + log.read_text()
    assert f"Listening at: http://[::]:{port},http://0.0.0.0:{port} " in log.read_text()
