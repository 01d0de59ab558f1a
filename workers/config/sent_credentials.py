"""The credentials a process sends in the forms they travel in, beyond the SecretStr settings'
own values (workers.config.settings: secret_values), so that a text quoting the request sent
(a proxy's or a front's refusal page, a library's error: workers.telemetry.logs) shows none.

- Jenkins' Basic header: python-jenkins has requests send `Authorization: Basic ` and the
  base64 of "JENKINS_USER:JENKINS_API_TOKEN", the two as latin-1 (requests.auth.
  _basic_auth_str). A page repeating the request's Authorization repeats that, in which the
  token's own text is not found.
- JENKINS_API_EXTRA_HEADERS' values (a proxy's credential: `X-Proxy-Token: ...`,
  `Proxy-Authorization: Bearer ...`): a plain setting, its values never shown (settings), but
  never blanked either. The values of the headers a credential goes in are told (a name with
  auth, token, secret, key, pass, cookie, session, signature, credential or jwt in it:
  Authorization, Proxy-Authorization, X-Proxy-Token, CF-Access-Client-Secret, X-Api-Key,
  Cookie), and the credential after a scheme word ("Bearer <token>") by itself too. Not every
  header's: a `Host: jenkins.internal` or an `Accept:` value blanked took the host out of
  every build link (a commit status's target_url) and words out of every text.
- A secret in a URL, percent-encoded as a client sends what a path may not hold as it is
  (RFC 3986's pchar: Ruby's URI, Java's URI for a token put in a hook's path), what a query's
  value may not (every reserved character), or a form's (space as '+'): gunicorn's access log
  and its "Error handling request" line show the URI as sent (RAW_URI), in which neither the
  secret's own text nor its latin-1 form (PATH_INFO's) is found.
"""

import base64
import re
from urllib.parse import quote, quote_plus

# RFC 3986 3.3: a path segment's characters besides the unreserved ones, and '/'
_PATH_SAFE = "/:@!$&'()*+,;="
# As core.redaction.Redactor: a shorter text is not searched for
_SHORTEST = 4

_CREDENTIAL_HEADER = re.compile(
    r"auth|token|secret|key|pass|cookie|session|signature|credential|jwt", re.I)


def sent_forms(*, jenkins_user: str, jenkins_token: str, extra_headers: str) -> list[str]:
    forms = []
    if jenkins_user and jenkins_token:
        try:
            pair = f"{jenkins_user}:{jenkins_token}".encode("latin-1")
        except UnicodeEncodeError:  # requests cannot send it either: nothing sent
            pair = b""
        if pair:
            forms.append(base64.b64encode(pair).decode("ascii"))
    for line in extra_headers.split("\n"):
        name, _colon, value = line.partition(":")
        value = value.strip()
        if value and _CREDENTIAL_HEADER.search(name):
            forms.append(value)
            *scheme, credential = value.split(None, 1)
            if scheme:
                forms.append(credential.strip())
    # A value of a few characters is no credential to hide: blanked as the status page blanks
    # any secret (service.status.Scrub, whatever its length), "X-Api-Key: 1" took every 1 out
    return [form for form in forms if len(form) >= _SHORTEST]


def url_forms(value: str) -> list[str]:
    """The value percent-encoded as a URL's path, query value or form carries it, those that
    differ from it."""
    # surrogateescape: a value from the environment keeps a byte that is no UTF-8 so (os.environ)
    encoded = {"encoding": "utf-8", "errors": "surrogateescape"}
    forms = dict.fromkeys((quote(value, safe=_PATH_SAFE, **encoded),
                           quote(value, safe="", **encoded),
                           quote_plus(value, safe="", **encoded)))
    return [form for form in forms if form != value]
