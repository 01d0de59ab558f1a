"""One OOM kill is folded once, however many releases of its agent there are (issue 21).

The pod watch (workers.job_history.watch.OomWatch) marks the agent's run OOM-killed on every
event of the pod that shows the kill, unless the build's record has the kill already. An
event read just before the first release recorded the kill, and written just after that
release took the run, marks the run again; a second release of the same agent (a release
job retried after the provision lease refused it, a repair's release of the ended pod) then
found the mark and folded the kill a second time: oom_kills_total counted 2 for one kill (seen
through the Procfile's processes: tests/integration/test_history_operator.py, now and then).
Here the interleaving is played in order, on a real Redis, with the module the release calls.
"""

import time

from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import one_template_config
from workers import runtime
from workers.adapters.usage_store import UsageStore
from workers.job_history.learn import learn

GIB = 2**30


def oom_kills(app) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "ci_autoscaler_oom_kills_total" and s.labels["template"] == "small")


def test_a_kill_marked_again_after_its_release_is_not_folded_twice(app_on_cluster):
    app = app_on_cluster(one_template_config("""
        cpu: {min: 500m, default: "1", max: "2"}
        memory: {min: 512Mi, default: 1Gi, max: 8Gi}
        """), namespace="ci-agents")
    rt = runtime.current()
    usage = UsageStore(rt.state.redis, prefix=rt.settings.key_prefix)
    key, agent = "k-folded-once", "cia-build-folded-once"
    assert rt.state.add_build(key, {"received_at": time.time(), "job": "build",
                                    "template": "small", "memory_bytes": GIB, "agent": agent})
    usage.oom_killed(agent, memory_limit_bytes=GIB + 256 * 2**20)  # the watch's first mark
    learn(rt, key, rt.state.get_build(key), agent)  # the first release folds it
    assert rt.state.get_build(key).get("oom_killed_bytes")
    usage.oom_killed(agent, memory_limit_bytes=GIB + 256 * 2**20)  # a late event's mark
    learn(rt, key, rt.state.get_build(key), agent)  # a second release of the agent
    history = usage.history("build", "small")
    assert (history.oom_kills, history.oom_floor_bytes) == (1, 2 * GIB)
    assert oom_kills(app) == 1
