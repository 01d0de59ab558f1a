"""The order `make test` hands the test modules to its pytest workers (`-n 4 --dist loadscope`).

xdist's loadscope gives each worker a whole module, most tests first (--loadscope-reorder):
the long modules of one or a few tests (the 300-push concurrency test, the chaos test, the
operator modules' stacks) came last, and the run ended with one worker busy for minutes while
three sat idle. All of them first (aa3e5950, reverted in 5a5c3389) was slower still: four
operator modules started their Procfile stacks at once on two cores and starved each other.

So the long modules go out at most HEAVY_LANES at a time: while fewer of them are given to
workers and not finished, the next free worker takes the longest one waiting; otherwise it
takes the next of the others, in xdist's order (and a long one once none other is left). The
two modules in ALONE do not run beside each other while any other module waits (at the very
end one may start beside the other: xdist would otherwise leave a worker idle). The long ones
are thus spread over the run, each beside short modules, and none is left for its end. A
module's place is all this changes: each still runs whole, on one worker, its tests in their
order.

A module not named below is a short one. A wrong or missing figure costs time, never a test.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

# seconds: the module's tests among the 80 slowest of a full `make test` (--durations=80) on
# a machine shared with other work, 2026-12-07 (45 min there, 16 on CI), added up
LONG_MODULES: dict[str, float] = {
    "test_webhook_fuzz.py": 568, "test_concurrency_correctness.py": 527, "test_chaos.py": 418,
    "test_processes.py": 189, "test_issue19_operator.py": 173, "test_spool_outage.py": 173,
    "test_bench_provision.py": 167, "test_helm_reuse_history.py": 129,
    "test_worker_and_reconcile_processes.py": 115, "test_issue14_operator.py": 102,
    "test_redis_eviction.py": 87, "test_bench_ingest.py": 82, "test_no_loss_operator.py": 75,
    "test_bench_expiry.py": 66, "test_mixed_release_stack.py": 65, "test_warm_operator.py": 63,
    "test_silent_redis.py": 62, "test_process_redis_refusals.py": 62,
    "test_issue18_operator.py": 60, "test_placement_race.py": 58,
    "test_web_listen_address.py": 56, "test_reconcile_redis_outage.py": 52,
    "test_issue9_operator.py": 50, "test_spool_owner.py": 47, "test_issue20_operator.py": 45,
    "test_catchup.py": 44,
}
HEAVY_LANES = 2
# Not two of these at once while another module waits: each runs several `ci-autoscaler
# worker` processes, a reconcile loop and fault proxies flat out (started together beside two
# other modules, on a loaded machine, the chaos test waited 120 s for a provision in vain).
ALONE = {"test_concurrency_correctness.py", "test_chaos.py"}


def module_of(scope: str) -> str:
    """The file name of a loadscope work unit: tests/integration/test_x.py(::Class)."""
    return scope.split("::", 1)[0].rsplit("/", 1)[-1]


class LongModulesSpread(LoadScopeScheduling):
    """xdist's loadscope scheduling, but the next unit is chosen as the module doc says."""

    def _long(self, scope: str) -> float:
        return LONG_MODULES.get(module_of(scope), 0.0)

    def _long_running(self) -> list[str]:
        return [module_of(scope) for units in self.assigned_work.values()
                for scope, tests in units.items()
                if self._long(scope) and not all(tests.values())]

    def _next_scope(self) -> str:
        running = self._long_running()
        waiting_long = sorted((s for s in self.workqueue if self._long(s)), key=self._long,
                              reverse=True)
        may_start = [s for s in waiting_long
                     if not (module_of(s) in ALONE and ALONE.intersection(running))]
        if may_start and len(running) < HEAVY_LANES:
            return may_start[0]
        return next((s for s in self.workqueue if not self._long(s)), None) or (
            may_start or waiting_long)[0]

    def _assign_work_unit(self, node) -> None:
        # LoadScopeScheduling._assign_work_unit, with the unit chosen by _next_scope rather
        # than the first in the queue
        assert self.workqueue
        scope = self._next_scope()
        work_unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = work_unit
        collection = self.registered_collections[node]
        node.send_runtest_some([collection.index(nodeid)
                                for nodeid, completed in work_unit.items() if not completed])
