"""--log-level of worker, reconcile and catch-up: a level's name in any case, else refused by the
parser (exit 2, naming the choices), never logging's "Unknown level" traceback."""

import pytest

from service.cli import parser


@pytest.mark.parametrize("command", ["worker", "reconcile", "catch-up"])
def test_a_level_in_lower_case_is_taken(command):
    assert parser().parse_args([command, "--log-level", "debug"]).log_level == "DEBUG"


def test_a_level_that_is_none_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["worker", "--log-level", "verbose"])

    assert exited.value.code == 2
    assert "invalid choice: 'VERBOSE' (choose from 'DEBUG', 'INFO'" in capsys.readouterr().err
