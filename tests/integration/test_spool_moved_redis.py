"""Redis moved while pushes wait in the spool: the outage that fills the spool is when an
operator replaces a sentinel, renames Redis's host or switches to Sentinel. The spooled pushes
still reach the installation's intake: through the same owner (the sentinel list is not part
of it), or by `ci-autoscaler spool adopt` (another address: the rows name the old one); a
default spool directory left behind under the old address is named at start.

Real redis-server and redis-sentinel processes, the web app (service.app), its drainer, the
spool on real SQLite files, and the command as a process of its own.
"""

import logging
import os
import subprocess
import sys
import tempfile

import orjson
import pytest

from tests.integration.test_spool import push
from tests.integration.test_spool_owner import drain, in_intake
from tests.support.app import make_app, make_settings
from tests.support.redis_server import RedisServer, free_port
from tests.support.sentinel import MASTER_NAME, sentinel_set  # noqa: F401 (a fixture)
from tests.support.web_process import ROOT, web_env
from workers.adapters.spool import Spool

INSTALLATION = "prod/ci-autoscaler"


@pytest.fixture
def temp_dir(monkeypatch, tmp_path):
    """The machine's temp dir, where default spools are, made the test's own."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def test_pushes_spooled_before_the_sentinels_were_replaced_are_drained_after(
        sentinel_set, tmp_path):  # noqa: F811
    """Every sentinel the web knew is gone (the outage); the operator replaces them with new
    ones watching the same master and restarts the web with the new REDIS_SENTINELS. The rows
    spooled before named the old sentinel list in their owner: foreign to the restarted web,
    never drained (GitLab does not send them again)."""
    spool_dir = str(tmp_path / "spool")
    gone = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    common = dict(installation=INSTALLATION, spool_dir=spool_dir,
                  redis_sentinel_master=MASTER_NAME)
    before = make_app("redis://127.0.0.1:1/0", redis_sentinels=gone, **common)
    assert push(before.test_client(), "push-1").json["status"] == "spooled"
    before.extensions["ci_autoscaler"].spool.close()

    after = make_app("redis://127.0.0.1:1/0", redis_sentinels=sentinel_set.addresses, **common)
    assert after.extensions["ci_autoscaler"].spool.others() == {}
    assert drain(after) == 1
    assert in_intake(after) == ["gitlab:push-1"]
