"""Arguments refused by the parser (exit 2, naming why), never a traceback later: --log-level of
worker, reconcile and catch-up (a level's name in any case; logging's "Unknown level"), the
demo's counts (--pushes 0 was an IndexError)."""

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


@pytest.mark.parametrize("given, says", [("0", "0: at least 1"), ("-3", "-3: at least 1"),
                                         ("many", "'many' is not a whole number")])
@pytest.mark.parametrize("option", ["--pushes", "--nodes"])
def test_a_demo_of_no_pushes_or_nodes_is_refused(option, given, says, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["demo", option, given])

    assert exited.value.code == 2
    assert f"argument {option}: {says}" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["-5", "0", "nan"])
def test_a_catch_up_interval_not_above_0_is_refused(given, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["catch-up", "--interval", given])

    assert exited.value.code == 2
    assert f"argument --interval: {given}: must be above 0" in capsys.readouterr().err
