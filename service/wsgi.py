"""The WSGI entry point for gunicorn: the app built from the environment.

A bad config file or a missing token stops the process here, with the field and the reason.
"""

import sys

from service.app import create_app
from workers import logs
from workers.core.errors import ConfigError

logs.configure()
try:
    app = create_app()
except ConfigError as err:
    for problem in err.problems:
        print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)
