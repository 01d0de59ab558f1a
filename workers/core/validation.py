"""The rules a push's fields must pass before they become a build: a sha, a ref and a project
path bounded and well-formed, as git and GitLab themselves would have them. Pure.

A field that fails is not an error of the sender's: GitLab disables a hook that gets 4xx
answers, so the webhook answers such a push 200 "ignored" with the reason (service.webhooks).
The rules narrow what a pusher can put into a build; they cannot make a field safe to paste
into a shell: git allows `$ ( ) ; |` and backquotes in branch names. Jenkinsfiles read the
parameters from the environment, in single quotes (README, "A Jenkinsfile for the agent label").
"""

import re

# SHA-1 (40) or SHA-256 (64) object names, lower case; no length between the two
SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
MAX_REF_BYTES = 255
MAX_PROJECT_PATH_BYTES = 255
MAX_USER_BYTES = 255
# git check-ref-format: no control character (below 0x20, or DEL), space, ~ ^ : ? * [ or \
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
# GitLab's path of a group or project: letters, digits, _ . and - (Gitlab::PathRegex), segments
# joined by /, none starting with - (Gitlab::PathRegex)
_PROJECT_SEGMENT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.\-]*")
_USER_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")


def _too_long(text: str, limit: int) -> bool:
    return len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit


def sha_problem(sha: str) -> str | None:
    """Why `sha` is not a commit's object name, or None."""
    if SHA.fullmatch(sha):  # fullmatch: "$" would take a trailing newline
        return None
    shown = sha[:16] + "..." if len(sha) > 16 else sha
    return f"sha {shown!r} is not 40 or 64 lower-case hex digits"


def ref_problem(ref: str) -> str | None:
    """Why `ref` is not a full ref name git's check-ref-format would take (and at most
    MAX_REF_BYTES long), or None. Rules from git's Documentation/git-check-ref-format.txt."""
    if _too_long(ref, MAX_REF_BYTES):
        return f"ref is longer than {MAX_REF_BYTES} bytes"
    if not ref.startswith("refs/") or ref.count("/") < 2:
        return "ref is not a full ref name (refs/heads/... or refs/tags/...)"
    if match := _REF_FORBIDDEN.search(ref):
        return f"ref holds {match.group()!r}, which git does not allow in a ref name"
    if ".." in ref or "@{" in ref or "//" in ref:
        return "ref holds '..', '@{' or '//', which git does not allow in a ref name"
    if ref.endswith(("/", ".")):
        return "ref ends with '/' or '.', which git does not allow"
    for part in ref.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return "a ref component starts with '.' or ends with '.lock', which git does not allow"
    return None


def project_problem(path: str) -> str | None:
    """Why `path` is not a GitLab project path (namespace/.../project, at most
    MAX_PROJECT_PATH_BYTES long), or None."""
    if _too_long(path, MAX_PROJECT_PATH_BYTES):
        return f"project path is longer than {MAX_PROJECT_PATH_BYTES} bytes"
    parts = path.split("/")
    if len(parts) < 2 or not all(_PROJECT_SEGMENT.fullmatch(p) for p in parts) \
            or any(p in (".", "..") for p in parts):
        shown = path[:64] + "..." if len(path) > 64 else path
        return f"project path {shown!r} is not a GitLab path (namespace/project)"
    return None


def user_problem(user: str) -> str | None:
    if _too_long(user, MAX_USER_BYTES):
        return f"user name is longer than {MAX_USER_BYTES} bytes"
    if _USER_FORBIDDEN.search(user):
        return "user name holds a control character"
    return None


# A route's globs (fnmatch) are matched against what a push carries: its full ref and its
# project's path_with_namespace. A glob that no such value can match makes a dead route, and
# every push meant for it is answered "ignored", so the config file refuses it.
_GLOB_CHARS = "*?["
_FULL_REFS = ("refs/heads/", "refs/tags/")


def _literal_head(glob: str) -> str:
    """The part of a glob before its first wildcard."""
    return glob[:min((glob.find(c) for c in _GLOB_CHARS if c in glob), default=len(glob))]


def ref_glob_problem(glob: str) -> str | None:
    """Why no push's ref can match this route glob, or None. GitLab's push and tag push events
    carry full refs (docs.gitlab.com, "Webhook events": "ref": "refs/heads/master")."""
    head = _literal_head(glob)
    if any(ref.startswith(head) or head.startswith(ref) for ref in _FULL_REFS):
        return None
    return (f"{glob!r} can match no push: GitLab sends full refs: refs/heads/main for a "
            "branch, refs/tags/v1.0 for a tag")


def job_name_problem(job: str) -> str | None:
    """Why a route's Jenkins job name names no job, or None. A job in a folder is
    "folder/name" (REALITY.md "Folders": python-jenkins makes job/folder/job/name of it), so
    a name with an empty part (a leading, trailing or doubled '/', as a path copied from a
    job's URL has) or a whole URL is no job: python-jenkins asked for job/folder/job/name/job//
    (404, every build failed) and the notifications of the job, whose URL names "folder/name",
    were refused as another job's."""
    if "://" not in job and all(part.strip() for part in job.split("/")):
        return None
    return (f"{job!r} names no Jenkins job: a job is its full name, \"folder/name\" for a job "
            "in a folder, without a URL, a leading or trailing '/' or an empty folder")


def push_problem(*, sha: str, ref: str, project: str, user: str) -> str | None:
    """Why a push with these fields is not built (the webhook answers it "ignored" with this
    reason), or None. The catch-up holds the heads GitLab lists to the same rule: git takes a
    ref of any length whose parts each fit a file name, and one the webhook refused as too
    long was built by the catch-up, its record then set aside by the mover."""
    return sha_problem(sha) or ref_problem(ref) or project_problem(project) \
        or user_problem(user)


def project_glob_problem(glob: str) -> str | None:
    """Why no push's project path can match this route glob, or None. A path never has a
    scheme, a leading or trailing '/', nor ends in '.git' (Gitlab::PathRegex: a path "cannot
    end in '.git' or '.atom'"); and it always has a namespace: a glob with neither a '/' nor
    a glob character ("app" for "team/app") matches none, and the catch-up asked GitLab for
    it (404) every pass."""
    if "://" not in glob and not glob.startswith("/") and not glob.endswith(("/", ".git")) \
            and ("/" in glob or any(c in glob for c in _GLOB_CHARS)):
        return None
    return (f"{glob!r} can match no push: GitLab names a project by a project path "
            "(group/project, its path_with_namespace), without its URL, a leading or "
            "trailing '/' or '.git'")
