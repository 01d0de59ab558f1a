"""Fixtures shared by the whole suite: each starts the real part it stands for."""

import os

import pytest

os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

pytest_plugins = ["tests.support.redis_server", "tests.support.app", "tests.support.jenkins_fake",
                  "tests.support.kmock_cluster", "tests.support.gitlab_fake"]

# Hypothesis' per-example deadline (200 ms) measures the machine, not the code: on CI's two
# cores under four xdist workers an example of test_agent_name_is_always_a_dns_label... took
# longer and failed the test (DeadlineExceeded). The examples and their assertions stay.
from hypothesis import settings  # noqa: E402

settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


# `make test`'s order of the modules over its pytest workers: tests/support/schedule.py says why.
# optionalhook: a run without xdist (`-p no:xdist`) knows no such hook.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from tests.support.schedule import LongModulesSpread
    return LongModulesSpread(config, log)
