"""The WSGI entry point for gunicorn: the app built from the environment.

A bad config file or a missing token stops the process here, with the field and the reason.
gunicorn imports this module in each worker (no preload), so each worker starts its spool
drainer here (workers.spool_drain; one per pod drains at a time).
"""

import sys

from service.app import create_app, start_spool_drainer
from workers import logs
from workers.core.errors import ConfigError

logs.configure()
try:
    app = create_app()
except ConfigError as err:
    for problem in err.problems:
        print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)
start_spool_drainer(app)
