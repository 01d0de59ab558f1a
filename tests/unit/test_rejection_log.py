"""A rejected request's log line: every header value it shows is capped (X-Forwarded-For is
the client's to write, up to 8 KiB under gunicorn's limits), and no token appears."""

import logging

from service.edge import LOGGED_HEADER_CHARS, capped, log_rejection


def test_a_short_value_is_logged_whole_and_a_long_one_cut_with_what_was_left_out():
    assert capped(None) is None
    assert capped("10.0.0.1, 10.0.0.2") == "10.0.0.1, 10.0.0.2"
    exact = "a" * LOGGED_HEADER_CHARS
    assert capped(exact) == exact
    long = "203.0.113.7, " * 630  # ~8 KiB
    shown = capped(long)
    assert shown.startswith(long[:LOGGED_HEADER_CHARS])
    assert shown.endswith(f"... ({len(long) - LOGGED_HEADER_CHARS} more)")
    assert len(shown) < LOGGED_HEADER_CHARS + 32


def test_a_rejection_logs_a_capped_forwarded_for_and_path_and_no_token(caplog):
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.webhooks")
    environ = {"PATH_INFO": "/webhooks/" + "x" * 4000, "REMOTE_ADDR": "10.1.2.3",
               "QUERY_STRING": "token=jenkins-secret-in-query",
               "HTTP_X_GITLAB_TOKEN": "gitlab-secret-in-header",
               "HTTP_X_FORWARDED_FOR": "198.51.100.1, " * 600}
    log_rejection(environ, 401, "X-Gitlab-Token does not match", source="gitlab")
    [record] = caplog.records
    assert record.remote_addr == "10.1.2.3" and record.status == 401
    for field in ("forwarded_for", "endpoint"):
        assert len(getattr(record, field)) < LOGGED_HEADER_CHARS + 32
    text = str(vars(record))
    assert "jenkins-secret-in-query" not in text and "gitlab-secret-in-header" not in text
