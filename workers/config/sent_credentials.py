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
"""

import base64
import re

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
    return forms
