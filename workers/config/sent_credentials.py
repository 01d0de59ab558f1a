"""The credentials a process sends in the forms they travel in, beyond the SecretStr settings'
own values (workers.config.settings: secret_values), so that a text quoting the request sent
(a proxy's or a front's refusal page, a library's error: workers.telemetry.logs) shows none.

- Jenkins' Basic header: python-jenkins has requests send `Authorization: Basic ` and the
  base64 of "JENKINS_USER:JENKINS_API_TOKEN", the two as latin-1 (requests.auth.
  _basic_auth_str). A page repeating the request's Authorization repeats that, in which the
  token's own text is not found.
- JENKINS_API_EXTRA_HEADERS' values (a proxy's credential: `X-Proxy-Token: ...`,
  `Proxy-Authorization: Bearer ...`): a plain setting, its values never shown (settings), but
  never blanked either. Its header values are told (nothing tells a credential's header from
  another's), and the credential after a scheme word ("Bearer <token>") by itself too.
"""

import base64


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
        _name, _colon, value = line.partition(":")
        value = value.strip()
        if value:
            forms.append(value)
            *scheme, credential = value.split(None, 1)
            if scheme:
                forms.append(credential.strip())
    return forms
