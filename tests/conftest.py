"""Fixtures shared by the whole suite: each starts the real part it stands for."""

import os

os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

pytest_plugins = ["tests.support.redis_server", "tests.support.app", "tests.support.jenkins_fake",
                  "tests.support.kmock_cluster", "tests.support.gitlab_fake"]
