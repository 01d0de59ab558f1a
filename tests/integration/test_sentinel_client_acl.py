"""The service's sentinel ACL user (REDIS_SENTINEL_USERNAME), beyond test_sentinel_auth.py:
the setting is checked at start-up, your own sentinels' user reaches every process, the
passwords the chart writes into sentinel.conf cannot break it, and on real processes
(Debian's redis-server and redis-sentinel 7.0, tests/support/sentinel.py, started with the
`requirepass` and `user` lines of the chart's sentinel.conf) the chart's user may change
nothing, while the web stores pushes through the sentinels as that user across a failover."""

import base64
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import helm_python
import pytest
import redis

from tests.integration.test_webhooks import gitlab
from tests.support.app import make_app
from tests.support.helm_chart import env_of, objects_of, one, option_sets, render_files
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.redis_server import free_port
from tests.support.sentinel import MASTER_NAME, SentinelSet
from workers.adapters.redis_state import RedisState
from workers.config.settings import Settings, load_settings
from workers.core.errors import ConfigError

SECRET = "s3cret-value-never-shown"
# What a sentinel must never do for the service's user, beyond FAILOVER, SET, REMOVE, MONITOR
# and CONFIG SET (test_sentinel_auth.py): RESET forgets the replicas and sentinels it knows,
# IS-MASTER-DOWN-BY-ADDR votes in (and with a run id starts) an election, ACL SETUSER would
# give the user everything, SHUTDOWN stops the sentinel. (SENTINEL subcommands:
# https://redis.io/docs/latest/operate/oss_and_stack/management/sentinel/#sentinel-commands.)
FORBIDDEN = (("SENTINEL", "RESET", "*"),
             ("SENTINEL", "IS-MASTER-DOWN-BY-ADDR", "127.0.0.1", "1", "1", "f" * 40),
             ("ACL", "SETUSER", "ci-autoscaler", "+@all"),
             ("SHUTDOWN",))
README = Path(__file__).resolve().parents[2] / "README.md"


def _bundled_of(values: dict, **sentinel) -> dict:
    """`values` with the bundled sentinels (and `sentinel`'s values)."""
    redis_values = values.get("redis", {})
    return values | {"redis": {**redis_values, "sentinel": {
        **redis_values.get("sentinel", {}), "enabled": True, **sentinel}}}


def _bundled(**sentinel) -> dict:
    return _bundled_of(option_sets()["redis-sentinel"], **sentinel)


def _external(**external) -> dict:
    values = option_sets()["external-redis"]
    return values | {"redis": {**values["redis"], "external": {
        **values["redis"]["external"], "sentinels": ["s-1.example:26379"],
        "sentinelMaster": "mymaster", "sentinelPassword": "s" * 32, **external}}}


def _sentinel_conf_auth(objs) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the `requirepass` and `user` lines of the chart's sentinel.conf with the Secret's
    passwords put in as the shell's heredoc does, the Secret by key)."""
    secret = {k: base64.b64decode(v).decode() for k, v in
              one(objs, "Secret", "redis")["data"].items()}
    pod = one(objs, "StatefulSet", "redis")["spec"]["template"]["spec"]
    sentinel = next(c for c in pod["containers"] if c["name"] == "sentinel")
    env = {name: secret[var["valueFrom"]["secretKeyRef"]["key"]]
           for name, var in env_of(sentinel).items() if "secretKeyRef" in var.get("valueFrom", {})}
    lines = []
    for line in sentinel["args"][0].splitlines():
        line = line.strip()
        if line.startswith(("requirepass ", "user ")):
            lines.append(re.sub(r"\$([A-Z_]+)", lambda m: env[m.group(1)], line))
    assert [line.split()[0] for line in lines] == ["requirepass", "user"], lines
    return tuple(lines), secret


@pytest.mark.parametrize("username, password, problem", [
    ("ci-autoscaler", None, "requires REDIS_SENTINEL_PASSWORD"),
    (f"two {SECRET}", SECRET, "no white space")])
def test_a_sentinel_user_without_a_password_or_with_white_space_is_refused_by_name(
        monkeypatch, username, password, problem):
    """Without a password redis-py logs in as `default`: the user was silently unused, and
    every connect refused (WRONGPASS) only once the web took traffic."""
    monkeypatch.setenv("REDIS_SENTINELS", "127.0.0.1:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", MASTER_NAME)
    monkeypatch.setenv("REDIS_SENTINEL_USERNAME", username)
    if password is None:
        monkeypatch.delenv("REDIS_SENTINEL_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", password)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert any(p.startswith("REDIS_SENTINEL_USERNAME: ") and problem in p
               for p in err.value.problems), err.value.problems
    assert SECRET not in str(err.value.problems)
    assert Settings(redis_sentinels="127.0.0.1:26379", redis_sentinel_master=MASTER_NAME,
                    redis_sentinel_username="ci-autoscaler",
                    redis_sentinel_password="p").redis_sentinel_username == "ci-autoscaler"


def test_your_own_sentinels_user_is_given_to_every_process():
    objs = objects_of(render_files(_external(sentinelUsername="cia-discovery")))
    for component in ("web", "worker", "reconcile"):
        env = env_of(one(objs, "Deployment", component)["spec"]["template"]["spec"]
                     ["containers"][0])
        assert env["REDIS_SENTINEL_USERNAME"]["value"] == "cia-discovery", component
        assert "REDIS_SENTINEL_PASSWORD" in env, component
    plain = objects_of(render_files(_external()))
    web = one(plain, "Deployment", "web")["spec"]["template"]["spec"]["containers"][0]
    assert "REDIS_SENTINEL_USERNAME" not in env_of(web)  # their default user
    # No `user` line of sentinel.conf can name one with white space.
    with pytest.raises(helm_python.HelmError, match="sentinelUsername"):
        render_files(_external(sentinelUsername="two words"))
    # Every process would refuse to start (REDIS_SENTINEL_USERNAME requires the password).
    with pytest.raises(helm_python.HelmError,
                       match="redis.external.sentinelUsername: requires"):
        render_files(_external(sentinelUsername="cia-discovery", sentinelPassword=""))


@pytest.mark.parametrize("key", ["password", "clientPassword"])
@pytest.mark.parametrize("bad", ['a"b', "a\\b", "a\nb"])
def test_a_sentinel_password_that_would_break_sentinel_conf_is_refused(key, bad):
    """Both go into sentinel.conf between double quotes, where `\\` starts an escape and `"`
    ends the string (Redis's sdssplitargs): the sentinels would refuse to start, or hold
    another password than the processes'."""
    with pytest.raises(helm_python.HelmError, match=f"redis.sentinel.{key}"):
        render_files(_bundled(**{key: bad}))


@pytest.fixture
def client_password_set(tmp_path):
    """The chart's sentinels with a clientPassword of white space, `$`, `'` and `#`."""
    password = "it's a $HOME #pass-phrase"
    objs = objects_of(render_files(_bundled(clientPassword=password)))
    lines, secret = _sentinel_conf_auth(objs)
    assert secret["redis-sentinel-client-password"] == password
    redis_set = SentinelSet(tmp_path / "sentinel", sentinel_lines=lines,
                            sentinel_password=secret["redis-sentinel-password"]).start()
    yield redis_set, objs, password
    redis_set.stop()


def test_a_client_password_given_is_the_sentinel_users_for_every_process(client_password_set):
    redis_set, objs, password = client_password_set
    for component in ("web", "worker", "reconcile"):
        env = env_of(one(objs, "Deployment", component)["spec"]["template"]["spec"]
                     ["containers"][0])
        assert env["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == \
            "redis-sentinel-client-password", component
        user = env["REDIS_SENTINEL_USERNAME"]["value"]
    client = redis.Redis(port=redis_set.sentinel_ports[0], username=user, password=password,
                         socket_timeout=1, decode_responses=True)
    assert int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1]) == \
        redis_set.master.port


def test_the_readme_gives_the_charts_sentinel_user_line_for_your_own_sentinels():
    lines, secret = _sentinel_conf_auth(objects_of(render_files(_bundled())))
    user_line = lines[1].replace(f'">{secret["redis-sentinel-client-password"]}"', ">PASSWORD")
    assert f"`{user_line}`" in README.read_text().replace("\n", " ")


def _holders(obj: dict, secret_name: str) -> bool:
    """Whether an object refers to the sentinels' requirepass (any `key:` reference to it,
    secretKeyRef or KEDA's secretTargetRef alike) or takes the whole Redis Secret (envFrom,
    a volume)."""
    def walk(node) -> bool:
        if isinstance(node, dict):
            if node.get("key") == "redis-sentinel-password":
                return True
            if node.get("secretRef", {}).get("name") == secret_name:
                return True
            if node.get("secret", {}).get("secretName") == secret_name:
                return True
            return any(walk(v) for v in node.values())
        return isinstance(node, list) and any(walk(v) for v in node)
    return walk(obj)


def test_no_deployment_or_job_of_any_option_set_holds_the_sentinels_full_password():
    """requirepass may SENTINEL FAILOVER, SET or REMOVE: only the Redis pods hold it, in every
    documented option set with the bundled sentinels (Deployments, Jobs, CronJobs, KEDA)."""
    checked = 0
    for name, values in option_sets().items():
        if values.get("redis", {}).get("enabled") is False:
            continue
        objs = objects_of(render_files(_bundled_of(values)))
        secret = one(objs, "Secret", "redis")
        admin = base64.b64decode(secret["data"]["redis-sentinel-password"]).decode()
        for obj in objs:
            if obj["kind"] == "Secret":
                continue
            if obj["kind"] == "StatefulSet" and obj["metadata"]["name"].endswith("-redis"):
                assert _holders(obj, secret["metadata"]["name"]), name  # the test's reach
                continue
            assert not _holders(obj, secret["metadata"]["name"]), (name, obj["kind"],
                                                                   obj["metadata"]["name"])
            assert admin not in json.dumps(obj), (name, obj["kind"], obj["metadata"]["name"])
            checked += obj["kind"] in ("Deployment", "Job", "CronJob")
    assert checked >= 3 * 8, checked


@pytest.fixture
def chart_set(tmp_path):
    """The chart's sentinels as the redis-sentinel option set renders them, and the user and
    password the chart gives the web."""
    objs = objects_of(render_files(_bundled()))
    lines, secret = _sentinel_conf_auth(objs)
    web = env_of(one(objs, "Deployment", "web")["spec"]["template"]["spec"]["containers"][0])
    credentials = (web["REDIS_SENTINEL_USERNAME"]["value"],
                   secret[web["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"]])
    redis_set = SentinelSet(tmp_path / "sentinel", sentinel_lines=lines,
                            sentinel_password=secret["redis-sentinel-password"]).start()
    yield redis_set, credentials
    redis_set.stop()


def test_the_services_sentinel_user_can_neither_reset_vote_grant_itself_nor_shut_down(
        chart_set):
    redis_set, (user, password) = chart_set
    full = redis_set.sentinel_client(redis_set.sentinel_ports[0], decode_responses=True)
    rules = full.acl_getuser(user)
    for port in redis_set.sentinel_ports:
        # RESP2, as redis-cli speaks it: a plain AUTH, then each command as it is.
        client = redis.Redis(port=port, username=user, password=password, socket_timeout=1,
                             protocol=2, decode_responses=True)
        for command in FORBIDDEN:
            with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
                client.execute_command(*command)
        assert client.ping()  # not shut down
    master = full.sentinel_master(MASTER_NAME)
    assert master["num-other-sentinels"] == len(redis_set.sentinel_ports) - 1  # not reset
    assert redis_set.master_port() == redis_set.master.port
    assert full.acl_getuser(user) == rules  # not granted more


def test_the_web_stores_pushes_through_the_sentinels_as_that_user_across_a_failover(
        chart_set):
    """The web as the chart configures it (REDIS_SENTINEL_USERNAME and the client password):
    test_sentinel_auth.py drives a bare client; here the web's own pool, which must find the
    new master through the sentinels as that user once the old one dies."""
    redis_set, (user, password) = chart_set
    # REDIS_URL's host is not used with sentinels: port 1 answers nothing.
    # redis_min_replicas=0: this set has one replica, promoted below, and a push waiting for a
    # replica (with Sentinel by default) is spooled while the new master has none; what is
    # checked here is that the web finds the new master as that user
    sentinels = dict(redis_sentinels=redis_set.addresses, redis_sentinel_master=MASTER_NAME,
                     redis_sentinel_username=user, redis_sentinel_password=password,
                     redis_min_replicas=0)
    RedisState(redis_set.master.client()).intake.load_functions()  # as a worker does at start
    client = make_app("redis://127.0.0.1:1/0", **sentinels).test_client()
    push = gitlab(client, **{"Idempotency-Key": "acl-1"})
    assert push.status_code == 202 and push.json["status"] == "queued", push.json
    assert redis_set.master.client().llen("cia:intake") == 1

    assert redis_set.master.client().wait(1, 5000) == 1  # the replica has it
    redis_set.master.kill()
    wait_until(lambda: redis_set.master_port() == redis_set.replica.port, timeout=30,
               what="the sentinels promoting the replica")
    tries = iter(range(1000))

    def queued() -> bool:  # a push while the web's pool still knows the old master spools
        n = next(tries) + 1  # not 0: forty zeros are a deleted branch
        body = fixture("gitlab_push_real_lrz.json")
        body.update(after=f"{n:040x}", checkout_sha=f"{n:040x}")
        answer = gitlab(client, json.dumps(body), **{"Idempotency-Key": f"acl-after-{n}"})
        assert answer.status_code == 202, answer.json
        return answer.json["status"] == "queued"
    wait_until(queued, timeout=15, what="the web storing a push in the new master")
    assert redis_set.replica.client().llen("cia:intake") >= 2  # the first, and that one


def test_the_sentinels_start_with_passwords_of_quotes_dollars_and_hashes(tmp_path):
    """`sentinel auth-pass NAME $REDIS_PASSWORD` was written unquoted: the schema lets
    redis.password hold a `'` (it refuses only `"`, `\\` and white space), which starts a
    quoted string anywhere in an unquoted word of Redis's config (sdssplitargs), so every
    sentinel refused its config ("Unbalanced quotes") and the chart's Sentinel never came up.
    The chart's own heredoc is run by a real `sh` and its sentinel.conf by a real
    redis-sentinel."""
    password = "it's-$HOME-1"
    # and the sentinels' own passwords with white space, `$(...)`, a backquote and `#`: the
    # heredoc expands each once, sentinel.conf keeps each whole between its quotes
    admin, client_password = "ad min $(id) `id` #1", "cli ent $HOME 'x' #2"
    objs = objects_of(render_files(_bundled_of(
        option_sets()["redis-sentinel"] | {"redis": {
            **option_sets()["redis-sentinel"]["redis"], "password": password}},
        password=admin, clientPassword=client_password)))
    lines, secret = _sentinel_conf_auth(objs)
    assert secret["redis-password"] == password
    pod = one(objs, "StatefulSet", "redis")["spec"]["template"]["spec"]
    script = next(c for c in pod["containers"] if c["name"] == "sentinel")["args"][0]
    heredoc = re.search(r"^\s*cat > /tmp/sentinel.conf <<EOF\n.*?^\s*EOF$", script,
                        re.S | re.M).group(0)
    conf, port = tmp_path / "sentinel.conf", free_port()
    env = {"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": password,
           "REDIS_SENTINEL_PASSWORD": secret["redis-sentinel-password"],
           "REDIS_SENTINEL_CLIENT_PASSWORD": secret["redis-sentinel-client-password"]}
    subprocess.run(["sh", "-c", "self=127.0.0.1\nmaster=127.0.0.1\n" + textwrap.dedent(
        heredoc).replace("/tmp/sentinel.conf", str(conf))], env=env, check=True, timeout=10)
    text = conf.read_text().replace("port 26379\n", f"port {port}\nbind 127.0.0.1\n")
    conf.write_text(text)
    proc = subprocess.Popen([shutil.which("redis-sentinel"), str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = redis.Redis(port=port, password=secret["redis-sentinel-password"],
                             socket_timeout=1, decode_responses=True)

        def up():
            assert proc.poll() is None, proc.stdout.read()
            try:
                return client.ping()
            except redis.ConnectionError:
                return False
        wait_until(up, timeout=10, what="the chart's sentinel answering PING")
        # and it holds the Redis password as given, to log in to the Redis pods with
        auth_pass = re.search(r"^sentinel auth-pass (\S+) (.*)$", text, re.M)
        assert client.sentinel_master(auth_pass.group(1))["name"] == auth_pass.group(1)
        assert auth_pass.group(2) == f'"{password}"'
        user = redis.Redis(port=port, username="ci-autoscaler", password=client_password,
                           socket_timeout=1, decode_responses=True)
        assert user.sentinel_get_master_addr_by_name(auth_pass.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
