"""What of an error may be shown (a log field, Redis, the status page): our own errors' message,
which names the call and the status only; of any other exception, whose text may quote a
request or a value, only its type."""

from workers.core.errors import Overloaded, PermanentError, shown


def test_our_error_is_shown_with_its_type_and_message():
    assert shown(PermanentError("Jenkins answered HTTP 403 to read queue item 7")) == \
        "PermanentError: Jenkins answered HTTP 403 to read queue item 7"


def test_another_exception_is_shown_by_its_type_only():
    assert shown(KeyError("token s3cr3t")) == "KeyError"
    assert shown(ValueError("Authorization: Basic dXNlcjpzM2NyM3Q=")) == "ValueError"


def test_a_long_message_is_cut():
    assert shown(Overloaded("x" * 1000), limit=40) == "Overloaded: " + "x" * 28
