"""Whether a push asks for no build, by GitLab's push options or its commit's message. Pure.

`git push -o ci.skip` asks GitLab for no CI/CD pipeline of the push, and `-o
integrations.skip_ci` asks the CI/CD integrations (Jenkins' among them) for no build
(doc/topics/git/commit.md, "Push options for GitLab CI/CD" and "for integrations"). GitLab
keeps each as a hash member set to true (Gitlab::PushOptions: an option with no value is
true) and sends it in the push's `push_options`. ci-autoscaler stands where GitLab CI or the
Jenkins integration would, and already reads `ci.variable` (workers.core.hints): a push with
either is answered "ignored", and builds nothing; so is one whose commit's message holds
`[skip ci]` or `[ci skip]` (any case, `-` or `_` for the space: GitLab's SKIP_PATTERN; the
Jenkins GitLab plugin's `[ci-skip]` is one of them), which a release job's version bump pushed
back commonly carries. GitLab's own sample push, which a system
hook's "Test" sends (Gitlab::DataBuilder::Push::SAMPLE_DATA: project gitlab/gitlab, a commit
no repository holds), carries ``ci.skip`` too, so a test delivery starts no build.
"""

import re
from collections.abc import Mapping
from typing import Any

# (option, hash path in push_options): what GitLab itself reads (Gitlab::Ci::Pipeline::Chain::
# Skip#skipped?: push_options.skips_ci?, Gitlab::PushOptions: dig(:ci, :skip).present?;
# Git::BaseHooksService#execute_project_hooks: integrations.skip_ci, for integrations)
SKIP_OPTIONS = (("ci.skip", ("ci", "skip")), ("integrations.skip_ci", ("integrations", "skip_ci")))


def _present(value: Any) -> bool:
    """Ruby's `present?`: nil, false, an empty or blank string and an empty hash are not."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (Mapping, list)):
        return bool(value)
    return True


def skip_option(push_options: Any) -> str | None:
    """The push option that asks for no build ("ci.skip", "integrations.skip_ci"), or None."""
    for name, (group, key) in SKIP_OPTIONS:
        options = push_options.get(group) if isinstance(push_options, Mapping) else None
        if isinstance(options, Mapping) and _present(options.get(key)):
            return name
    return None


# Gitlab::Ci::Pipeline::Chain::Skip::SKIP_PATTERN, matched against the pipeline's commit message
SKIP_PATTERN = re.compile(r"\[(ci[ _-]skip|skip[ _-]ci)\]", re.IGNORECASE)


def message_skips(message: Any) -> bool:
    """Whether a commit message asks for no build ([skip ci], [ci skip], ...)."""
    return isinstance(message, str) and SKIP_PATTERN.search(message) is not None


def head_message(commits: Any, sha: str) -> str | None:
    """The message of commit `sha` among a push's `commits` (GitLab lists the newest 20, and
    none for a branch made at a commit it had), or None."""
    if not isinstance(commits, list):  # GitLab before 9 sent "" for none
        return None
    for commit in commits:
        if isinstance(commit, Mapping) and commit.get("id") == sha:
            message = commit.get("message")
            return message if isinstance(message, str) else None
    return None
