"""Secrets kept out of a text shown to people (the status page, GitLab's commit status, a
build's record, the logs): URL credentials and token-like words, and the secrets given."""

import re
from collections.abc import Iterable

_REDACTED = "[redacted]"
# user:password@ in a URL, and the forms tokens take in a text (a query parameter, a GitLab
# token prefix): never shown in a description, whatever the message around them. GitLab's
# own prefixes only (docs, "Token prefixes"): any gl<letters>- took an image name such as
# glue-service-runner out of the pull error it names.
_GITLAB_PREFIXES = "pat|dt|rt|cbt|ptt|ft|imt|oas|soat|ffct|agent|wt"
# The userinfo runs to the LAST '@' of the authority (which ends at the first '/', '?' or '#'),
# as urllib.parse.urlsplit (netloc.rpartition('@')) and redis-py's parse_url (urlparse) read it:
# a password holding a raw '@' (redis://:p@ss@host) is all of it taken, none of it shown. Up to
# the first '@' left its tail ("ss") in the text.
URL_USERINFO = re.compile(r"(?<=://)[^/?#\s]+@")
# A presigned URL's signature (S3 and R2 X-Amz-Signature, GCS X-Goog-Signature, CloudFront
# Signature, Azure SAS sig, Docker Hub's CDN verify) and its signer's credential: a registry
# redirects a layer's GET to one, and containerd's error names the URL it followed ('failed
# to copy: httpReadSeeker: failed open: failed to do request: Get "https://...?X-Amz-...
# &X-Amz-Signature=...": dial tcp ...'; docker/for-win#14702): until it expires, anyone who
# reads it (a GitLab commit status) can fetch a private image's layer.
_SIGNED = r"[\w-]*signature|sig|[\w-]*credential|verify"
_TOKEN_LIKE = re.compile(r"(?i)\b(gl(?:" + _GITLAB_PREFIXES + r")-[\w-]{8,}|"
                         r"(?:token|secret|password|private_token|access_token|"
                         + _SIGNED + r")=[^&\s]+)")


class Redactor:
    """`redact` with its secrets given once, for many texts (every field of every log line,
    workers.telemetry.logs): they are sorted once, and a text that holds no '@' (a URL's
    user:password@ needs one) is not searched for URL credentials, nor one with no '=' and no
    'gl'+'-' for token-like words (each form needs them)."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= 4}, key=len,
                                    reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, _REDACTED)
        if "@" in text:
            text = URL_USERINFO.sub(_REDACTED + "@", text)
        if "=" in text or ("-" in text and "gl" in text.lower()):
            text = _TOKEN_LIKE.sub(_REDACTED, text)
        return text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """The text without the given secrets, URL credentials or token-like words."""
    return Redactor(secrets)(text)



def cut(text: str, limit: int) -> str:
    """The text's first `limit` characters at most, never ending inside a word: a secret the
    limit fell in (a token, a URL with user:password@) is left out whole, not cut in two, of
    which the head stayed in the text where no later redaction could know it."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if not text[limit].isspace():
        head = re.sub(r"\S+\Z", "", head)
    return head.rstrip()
