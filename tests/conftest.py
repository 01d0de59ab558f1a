"""Fixtures shared by the whole suite: each starts the real part it stands for."""

import os

os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

pytest_plugins = ["tests.support.redis_server", "tests.support.app", "tests.support.jenkins_fake",
                  "tests.support.kmock_cluster", "tests.support.gitlab_fake"]

# The longest modules, longest first (module sums of `--durations` in a full run on 2 cores,
# 2026-12-07). `make test` runs `--dist loadscope --no-loadscope-reorder`: a module goes to
# the next free pytest worker in this order, then the rest in collection order (the short
# unit modules last). xdist's own order (most tests first) started these modules of few,
# long tests last, and the run ended with one worker busy for minutes and three idle. Order
# only: a name not here (or gone) runs in its place in the collection.
LONGEST_FIRST = (
    "test_issue19_operator.py", "test_worker_and_reconcile_processes.py",
    "test_no_loss_operator.py", "test_concurrency_correctness.py", "test_issue20_operator.py",
    "test_issue14_operator.py", "test_warm_operator.py", "test_history_operator.py",
    "test_chaos.py", "test_issue9_operator.py", "test_issue18_operator.py", "test_processes.py",
    "test_webhook_fuzz.py", "test_issue15_operator.py", "test_reconcile_bounded.py",
    "test_spool_outage.py", "test_bench_provision.py", "test_counter_offsets_killed.py",
    "test_issue3_operator.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as is
