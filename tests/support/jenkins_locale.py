"""The language of the Jenkins fake's queue reasons (`why`), as a real controller picks it.

Jenkins words a queue item's reason in the locale of the request that reads it:
`Queue.Item.getWhy` renders a Localizable through `LocaleProvider`, which Jenkins sets in
`WebAppMain.contextInitialized` to `Functions.getCurrentLocale()`: the Stapler request's
locale (`ServletRequest.getLocale`: the first language of `Accept-Language`, or the
servlet container's default, the JVM's, when the header is absent), else
`Locale.getDefault()`. A controller whose JVM runs in German (`LANG=de_DE.UTF-8` in its
container, `-Duser.language=de`) so answers a client that names no language in German. The
Locale plugin's "Ignore browser preference and force this language to all users"
(`ignoreAcceptLanguage`) makes every request the system locale's, whatever it asks
(jenkinsci/locale-plugin PluginImpl.start).

The German texts are those of core's hudson/model/Messages_de.properties (Queue.*,
AbstractProject.BuildInProgress), with the quotes that core's English ones put around a
label or node name.

Error pages are worded the same way: ComputerSet.doDoCreateItem refuses a node name that is
taken with a Failure of Messages.ComputerSet_SlaveAlreadyExists, in the request's locale (a
400 whose X-Error and page carry it). Modelled in Brazilian Portuguese, from core's
hudson/model/Messages_pt_BR.properties ("O agente chamado '{0}' já existe", ASCII quotes
where the English has typographic ones).
"""

import re

_GERMAN = [
    (re.compile(r"^Waiting for next available executor on ‘(.*)’$"),
     "Warte auf den nächsten freien Build-Prozessor auf ‘{0}’"),
    (re.compile(r"^Waiting for next available executor$"),
     "Warte auf den nächsten freien Build-Prozessor"),
    (re.compile(r"^All nodes of label ‘(.*)’ are offline$"),
     "Alle Knoten des Labels ‘{0}’ sind offline"),
    (re.compile(r"^There are no nodes with the label ‘(.*)’$"),
     "Es gibt keine Knoten mit dem Label ‘{0}’"),
    (re.compile(r"^‘(.*)’ is offline$"), "‘{0}’ ist offline"),
    (re.compile(r"^Jenkins is about to shut down$"), "Jenkins wird heruntergefahren"),
    (re.compile(r"^In the quiet period\. Expires in (.*)$"), "In Ruhe-Periode. Endet in {0}"),
    (re.compile(r"^Build #(\d+) is already in progress(.*)$"),
     "Build #{0} ist bereits in Arbeit{1}"),
]


_ERRORS = {
    "pt": [(re.compile(r"^Agent called ‘(.*)’ already exists$"),
            "O agente chamado '{0}' já existe")],
}


def error(text: str, language: str) -> str:
    """An English error page's message in `language` (only "pt" is modelled)."""
    for pattern, localized_text in _ERRORS.get(language, []):
        if m := pattern.match(text):
            return localized_text.format(*m.groups())
    return text


def request_language(accept_language: str | None, default: str, *, forced: bool) -> str:
    """The language a request's texts are in: the first of its Accept-Language, else the
    controller's default; the default whatever it asks when `forced` (the Locale plugin)."""
    if forced or not accept_language:
        return default
    first = accept_language.split(",")[0].split(";")[0].strip()
    return first.split("-")[0].split("_")[0].lower() or default


def reason(text: str | None, language: str) -> str | None:
    """An English reason in `language` ("en" and "de" are modelled)."""
    if text is None or language != "de":
        return text
    for pattern, german in _GERMAN:
        if m := pattern.match(text):
            return german.format(*m.groups())
    return text


def localized(body: dict, language: str) -> dict:
    """A queue answer (queue/api/json or queue/item/N/api/json) with its reasons in
    `language`."""
    if language == "en":
        return body
    if "items" in body:
        return {**body, "items": [localized(item, language) for item in body["items"]]}
    return {**body, "why": reason(body.get("why"), language)} if "why" in body else body
