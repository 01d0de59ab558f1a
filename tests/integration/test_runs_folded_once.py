"""A build's run is folded into its job's history once, however many releases of its agent
there are (issue 21): its OOM kill, or its clean run.

The pod watch (workers.job_history.watch.OomWatch) marks the agent's run OOM-killed on every
event of the pod that shows the kill, unless the build's record has the kill already. An
event read just before the first release recorded the kill, and written just after that
release took the run, marks the run again; a second release of the same agent (a release
job retried after the provision lease refused it, a repair's release of the ended pod) then
found the mark and folded the kill a second time: oom_kills_total counted 2 for one kill (seen
through the Procfile's processes: tests/integration/test_history_operator.py, now and then).
A clean run the same way: metrics-server's last sample of the pod, polled after the first
release took the run, made the run anew, and the reconcile pass's release of the finished
build beside the notification's folded it as one more build (`recommend` read 6 builds for
5: tests/integration/test_procfile_features.py, now and then).
Here the interleavings are played in order, on a real Redis, with the module the release
calls.
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


CONFIG = one_template_config("""
        cpu: {min: 500m, default: "1", max: "2"}
        memory: {min: 512Mi, default: 1Gi, max: 8Gi}
        """)


def test_a_kill_marked_again_after_its_release_is_not_folded_twice(app_on_cluster):
    app = app_on_cluster(CONFIG, namespace="ci-agents")
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
    # the floor is twice what the killed pod asked in total: 1Gi and the agent's 256Mi
    assert (history.oom_kills, history.oom_floor_bytes) == (1, 2 * (GIB + 256 * 2**20))
    assert oom_kills(app) == 1


def test_a_sample_taken_after_the_release_is_not_folded_by_a_second_release(app_on_cluster):
    app_on_cluster(CONFIG, namespace="ci-agents")
    rt = runtime.current()
    usage = UsageStore(rt.state.redis, prefix=rt.settings.key_prefix)
    key, agent = "k-sampled-once", "cia-build-sampled-once"
    assert rt.state.add_build(key, {"received_at": time.time(), "job": "build",
                                    "template": "small", "memory_bytes": GIB, "agent": agent})
    assert usage.sample(agent, stamp="t1/15s", cpu_millis=700, memory_bytes=GIB)
    learn(rt, key, rt.state.get_build(key), agent)  # the notification's release
    assert usage.history("build", "small").builds == 1
    # the last sample polled again after the run was taken: new to the store once more
    assert usage.sample(agent, stamp="t1/15s", cpu_millis=700, memory_bytes=GIB)
    learn(rt, key, rt.state.get_build(key), agent)  # the reconcile pass's release
    assert usage.history("build", "small").builds == 1
