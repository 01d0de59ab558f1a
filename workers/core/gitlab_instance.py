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


def instance_of(value: str | None) -> str:
    """An instance URL as compared: host (and port, and a relative root such as /gitlab) in
    lower case, no scheme, no trailing slash; "" for none. GitLab sends its base_url,
    "https://gitlab.example.com" or "https://example.com/gitlab"; a setting may omit the
    scheme."""
    text = (value or "").strip()
    text = text.split("://", 1)[1] if "://" in text else text  # no urllib in the core
    text = text.split("?", 1)[0].split("#", 1)[0]
    return text.rsplit("@", 1)[-1].rstrip("/").lower()  # never a user:pass@


def foreign(served: str, sent: str | None) -> str | None:
    """Why a push from instance `sent` (its X-Gitlab-Instance) is not this installation's,
    which serves `served` (CI_AUTOSCALER_GITLAB_INSTANCE); None if it is, or either is not
    known (GitLab before 15.5 sends no header)."""
    want, got = instance_of(served), instance_of(sent)
    if not want or not got or want == got:
        return None
    return f"push from GitLab instance {got[:200]!r}; this installation serves {want!r} " \
           "(CI_AUTOSCALER_GITLAB_INSTANCE)"
