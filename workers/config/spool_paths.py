"""The web's default spool directories (CI_AUTOSCALER_SPOOL_DIR unset): one of this user's,
installation's and Redis's own in the temp dir, the one shared by every installation of a host
in versions before the owner, and those earlier Redis settings left behind for adoption."""

import os
import re
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.config.settings import Settings


# The default spool directory of versions before the owner: one for every installation of a host.
LEGACY_SPOOL_PATH = os.path.join(tempfile.gettempdir(), "ci-autoscaler-spool")


def default_spool_path(settings: "Settings") -> str:
    installation = re.sub(r"[^A-Za-z0-9._-]", "_", settings.installation)
    return os.path.join(tempfile.gettempdir(), "-".join(filter(None, (
        "ci-autoscaler-spool", str(os.geteuid()), installation, settings.redis_fingerprint))))


def default_spool_paths(settings: "Settings") -> list[str]:
    """The default spool directories of this user and installation, for every Redis target
    (this one's among them if made): those of earlier Redis settings hold pushes nothing
    drains until adopted (`ci-autoscaler spool adopt`)."""
    own = os.path.basename(default_spool_path(settings))
    pattern = re.compile(re.escape(own[:-len(settings.redis_fingerprint)]) + "[0-9a-f]{12}")
    try:
        names = os.listdir(tempfile.gettempdir())
    except OSError:
        return []
    return sorted(os.path.join(tempfile.gettempdir(), name) for name in names
                  if pattern.fullmatch(name))
