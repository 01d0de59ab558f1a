"""The WSGI entry point for gunicorn: the app built from the environment.

A bad config file or a missing token stops the process here, with the field and the reason.
gunicorn's master checks both before its first worker (service/gunicorn.conf.py), and its
workers load the master's checked copy of the file (service.startup.snapshot), so a file
changed in place under a running web does not reach them. A worker that meets an error all the
same (the copy removed, and the file broken) exits with gunicorn's WORKER_BOOT_ERROR, on which
the master halts: any other code, and it starts another worker, for ever. gunicorn imports this module in each worker (no preload), so each worker starts its spool
drainer here (workers.engine.spool_drain; one per pod drains at a time).
"""

import os
import sys

from service.app import create_app, start_spool_drainer
from workers.telemetry import logs
from workers.core.errors import ConfigError

logs.configure()
try:
    app = create_app()
except ConfigError as err:
    for problem in err.problems:
        print(f"error: {problem}", file=sys.stderr)
    # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR; the arbiter sets SERVER_SOFTWARE.
    sys.exit(3 if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/") else 2)
start_spool_drainer(app)
