"""gunicorn settings for the web process; flat values plus the two hooks multiprocess metrics need.

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


def on_starting(server):
    """Wipe the metrics files of an earlier run (an emptyDir survives a container restart)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
