"""`ci-autoscaler spool list|adopt --dir DIR` (docs/runbooks.md, CIWebhookSpoolStranded step 3):
a DIR that is no directory is an error, not an empty spool: a mistyped path printed no rows
and "0 push(es) ... adopted", exit 0, while the stranded pushes stayed where they were."""

import pytest

from service.cli import main
from tests.support.web_process import web_env


@pytest.mark.parametrize("action", [["list"], ["adopt", "--other-redis"]])
def test_a_spool_dir_that_does_not_exist_is_named_and_fails(action, tmp_path, monkeypatch,
                                                             capsys):
    for name, value in web_env("redis://127.0.0.1:1/0",
                               CI_AUTOSCALER_SPOOL_DIR=str(tmp_path / "own")).items():
        monkeypatch.setenv(name, value)
    mistyped = tmp_path / "spool-of-the-old-redis"

    assert main(["spool", *action, "--dir", str(mistyped)]) == 1

    out = capsys.readouterr()
    assert out.err == f"error: --dir {mistyped}: no such directory\n"
    assert out.out == ""
