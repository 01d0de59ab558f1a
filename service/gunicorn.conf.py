"""gunicorn settings for the web process; flat values plus the one hook multiprocess metrics need.

PROMETHEUS_MULTIPROC_DIR must be set to an empty directory by the start script (the Procfile
and the container do it), so counters add up across workers.
"""

import os

from prometheus_client import multiprocess

bind = os.environ.get("CI_AUTOSCALER_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
timeout = 30
graceful_timeout = 25
keepalive = 5
accesslog = None
errorlog = "-"


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
