"""URL credentials taken out of a text as real URL parsers read them (workers.core.redaction):
the userinfo runs to the last '@' before the host, so a password holding a raw '@' is taken
whole, none of its tail left behind. A text cut short keeps no head of a word; the Redactor of
every log line gives what every search made gives."""

from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, strategies as st
from redis.connection import parse_url

from workers.core.commit_status import wanted
from workers.core import redaction
from workers.core.redaction import cut, redact

# Each URL's password has a raw '@', which redis-py and urllib accept: both take the userinfo
# up to the LAST '@' of the authority (urllib.parse.urlsplit: netloc.rpartition('@'); redis-py's
# parse_url reads urlparse's username and password).
URLS = [
    ("redis://:p@ss@redis.example.com:6379/0", "p@ss"),
    ("rediss://ci:p@ss@w0rd@redis.example.com:6380/1", "p@ss@w0rd"),
    ("redis://default:s3@cr@t@127.0.0.1:6379", "s3@cr@t"),
    ("redis+sentinel://:sent@nel@sentinel-0.example.com:26379/cia-master", "sent@nel"),
    ("unix://:p@ss@/run/redis/redis.sock?db=0", "p@ss"),
    ("https://ci:to@ken@jenkins.example.com/job/app/7/", "to@ken"),
    ("http://robot:hunter@2@registry.example.com?x=1", "hunter@2"),
]


@pytest.mark.parametrize("url, password", URLS)
def test_the_parsers_read_the_password_to_the_last_at(url, password):
    """What the redaction must match: the password as the real parsers take it."""
    assert unquote(urlsplit(url).password) == password
    if url.startswith(("redis://", "rediss://")):
        assert parse_url(url)["password"] == password


@pytest.mark.parametrize("url, password", URLS)
def test_a_password_with_an_at_is_redacted_whole(url, password):
    scheme, _, rest = url.partition("://")
    shown = f"{scheme}://[redacted]@{rest[len(urlsplit(url).netloc.rpartition('@')[0]) + 1:]}"
    out = redact(f"Error 111 connecting to {url}. Connection refused.")
    assert out == f"Error 111 connecting to {shown}. Connection refused."


@pytest.mark.parametrize("text", [
    "https://jenkins.example.com/job/app/7/ by alice@example.com",
    "redis://redis.example.com:6379/0 (contact ops@example.com)",
    "https://gitlab.example.com?ref=a@b",
    "pulled quay.io/org/tool@sha256:" + "3f" * 32,
])
def test_an_at_past_the_host_is_left(text):
    assert redact(text) == text


def test_a_build_link_with_an_at_in_its_password_loses_all_of_its_userinfo():
    """The target_url of a GitLab commit status: Jenkins' build link without user:token@."""
    status = wanted({"project": "group/app", "sha": "3f" * 20, "job": "build",
                     "delivery": "gitlab:abc", "status": "running", "ref": "refs/heads/main",
                     "build_url": "https://ci:to@ken@jenkins.example.com/job/build/7/"},
                    nodes_needed=0)
    assert status is not None
    assert status.target_url == "https://jenkins.example.com/job/build/7/"


@pytest.mark.parametrize("text, limit, kept", [
    ("short enough", 20, "short enough"),
    ("cut between words here", 13, "cut between"),
    ("cut inside token-9f8e7d6c5b4a then more", 20, "cut inside"),
    ("see http://ci:hunter22@jenkins.example/job/x", 30, "see"),
    ("oneverylongwordwithnospace", 10, ""),
])
def test_a_cut_never_leaves_the_head_of_a_word(text, limit, kept):
    """What a text cut short keeps (GitLab's message, a library's first line): never the head
    of a secret the limit fell in, which no redaction of the whole secret would find later."""
    assert cut(text, limit) == kept


_PIECES = ["http://", "https://ci:", "hunter22", "@", "jenkins.example", "/job/x", "?", "&",
           "token=", "X-Amz-Signature=", "glpat-", "GLPAT-", "gl", "-", "abcdef0123456789",
           "=", " ", "\n", "s3cret-value", "11d4e0c2b7a95f3e81c6a2d9b0f4e7c315", "é"]


@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join),
       st.lists(st.sampled_from(["s3cret-value", "hunter22", "abc", "",
                                 "11d4e0c2b7a95f3e81c6a2d9b0f4e7c315"]), max_size=3))
def test_the_redactor_that_skips_searches_agrees_with_every_search_made(text, secrets):
    """Redactor (every log line's every field) skips the URL search for a text with no '@' and
    the token search for one with neither '=' nor 'gl' and '-': what it gives is what every
    replacement and both searches made unconditionally give."""
    reference = text
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        reference = reference.replace(secret, "[redacted]")
    reference = redaction.URL_USERINFO.sub("[redacted]@", reference)
    reference = redaction._TOKEN_LIKE.sub("[redacted]", reference)
    assert redaction.Redactor(secrets)(text) == reference == redact(text, secrets)
