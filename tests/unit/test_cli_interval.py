"""The reconcile loop's --interval: seconds above 0 and at most 120, since the alerts expect a
pass that often (CICapacityStateStale at 120 s, CIReconcileNotRunning at 300 s)."""

import pytest

from service.cli import parser


@pytest.mark.parametrize("given, taken", [("15", 15.0), ("0.3", 0.3), ("120", 120.0)])
def test_an_interval_within_the_bounds_is_taken(given, taken):
    assert parser().parse_args(["reconcile", "--interval", given]).interval == taken


@pytest.mark.parametrize("given, words", [("600", "at most 120"), ("0", "above 0"),
                                          ("-5", "above 0"), ("soon", "not a number")])
def test_an_interval_out_of_bounds_is_refused_naming_why(given, words, capsys):
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["reconcile", "--interval", given])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--interval" in err and words in err, err
