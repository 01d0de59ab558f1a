"""Which GitLab instance a webhook came from, and whether this installation serves it. Pure.

GitLab names itself in every webhook's `X-Gitlab-Instance` header: its configured external
URL, `Gitlab.config.gitlab.base_url` (gitlab-org/gitlab app/services/web_hook_service.rb,
Gitlab::WebHooks::GITLAB_INSTANCE_HEADER; sent since GitLab 15.5). Routes, build keys, the
catch-up and commit statuses know a project by its path only ("group/app"), and the
catch-up and commit statuses speak to one GitLab (GITLAB_URL): one installation serves one
GitLab instance. Two instances sending to it would share those paths: a route meant for one
instance's group/app builds the other's, and the other's statuses would go to the first's
group/app. So an installation told its instance (CI_AUTOSCALER_GITLAB_INSTANCE) ignores
pushes of any other; one not told warns when it sees a second.
"""

_DEFAULT_PORTS = {"http": ("80",), "https": ("443",)}  # a scheme-less setting: either


def instance_of(value: str | None) -> str:
    """An instance as compared: its host and port, in lower case, the port left out where it
    is its scheme's own (GitLab's base_url leaves it out there: Settings.base_url,
    on_standard_port?); "" for none. GitLab sends its base_url, scheme, host and port only,
    never the relative URL root: "https://example.com" for an external_url of
    "https://example.com/gitlab" (config/settings.rb build_base_gitlab_url, where
    build_gitlab_url adds relative_url_root). So a setting's path is no part of it: set to
    that external URL, every push was ignored as another instance's. A setting may omit the
    scheme."""
    text = (value or "").strip()
    scheme, sep, rest = text.partition("://")  # no urllib in the core
    scheme, rest = (scheme, rest) if sep else ("", text)
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    authority = authority.rsplit("@", 1)[-1].lower()  # never a user:pass@
    host, colon, port = authority.rpartition(":")
    if colon and host and port in _DEFAULT_PORTS.get(scheme.lower(), ("80", "443")):
        return host
    return authority


def foreign(served: str, sent: str | None) -> str | None:
    """Why a push from instance `sent` (its X-Gitlab-Instance) is not this installation's,
    which serves `served` (CI_AUTOSCALER_GITLAB_INSTANCE); None if it is, or either is not
    known (GitLab before 15.5 sends no header)."""
    want, got = instance_of(served), instance_of(sent)
    if not want or not got or want == got:
        return None
    return f"push from GitLab instance {got[:200]!r}; this installation serves {want!r} " \
           "(CI_AUTOSCALER_GITLAB_INSTANCE)"
