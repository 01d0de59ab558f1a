"""Reading the Jenkins build queue: which label an item waits for, from Jenkins' own words.

The queue API gives no label field; the reason an item waits (``why``) names it between
Jenkins' typographic quotes, in messages such as (hudson.model.Messages, core 2.x):
  "There are no nodes with the label ‘maven’"
  "Waiting for next available executor on ‘maven’"
  "All nodes of label ‘maven’ are offline"
  "‘maven-1’ is offline"
  "Jenkins doesn’t have label ‘maven’"
When exactly one node carries the label, Jenkins names that node instead of the label
("Waiting for next available executor on ‘NODE’", "‘NODE’ is offline":
hudson.model.Queue.BuildableItem.getCauseOfBlockage, BecauseNodeIsBusy/BecauseNodeIsOffline),
so a caller that knows which nodes carry its labels passes them (`carriers`).
The quoted text is a label expression; it is taken only when it is exactly one of our
templates' labels, or an agent name for that item's job (a Replay of one of our builds asks
for the agent that ran it), so a build for someone else's agents is never picked up (whether
an agent name is this installation's or another's sharing the Jenkins is for the caller to
tell: workers.engine.adoption).

Runs are named by URL in Jenkins' answers ("http://jenkins/job/folder/job/name/5/", or
relative "job/name/5/"): `run_of` and `job_of_url` read them.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.core.keys import is_agent_name_of
from workers.core.ports import QueueItem, RunRef

_QUOTED = re.compile(r"‘([^’]+)’")


def waiting_label(why: str, labels: Iterable[str],
                  carriers: Mapping[str, str] | None = None) -> str | None:
    """The one of `labels` that this queue item's reason names, if any; `carriers` maps the
    name of a node to the one of `labels` it carries (a reason names the node when it is that
    label's only one)."""
    wanted = set(labels)
    for quoted in _QUOTED.findall(why or ""):
        if quoted.strip() in wanted:
            return quoted.strip()
        if carriers and carriers.get(quoted.strip()) in wanted:
            return carriers[quoted.strip()]
    return None


def items_waiting_on(items: Iterable[QueueItem], labels: Iterable[str], *,
                     skip_parameter: str, carriers: Mapping[str, str] | None = None,
                     ) -> list[tuple[QueueItem, str]]:
    """The queue items that wait on one of our labels and were not triggered by us (ours carry
    `skip_parameter` and get their agent from the provision task), with the label each waits on;
    oldest item first. `carriers`: as for `waiting_label`."""
    labels = tuple(labels)
    found = []
    for item in sorted(items, key=lambda i: i.id):
        if skip_parameter in item.parameters:
            continue
        label = waiting_label(item.why, labels, carriers)
        if label is not None:
            found.append((item, label))
    return found


# The operators of a Jenkins label expression (hudson.model.labels.LabelExpression, parsed by
# Label.parseExpression: `!`, `&&`, `||`, `->`, `<->` and parentheses). A label name holds
# none of them (LabelAtom.escape quotes one that would), so quoted text with one is an
# expression. Jenkins names an expression label by its normal form, without spaces
# (LabelExpression.Binary: "maven&&jdk17"); a person's spaces are taken too.
_OPERATORS = re.compile(r"&&|\|\||<->|->|!|\(|\)")


def label_atoms(expression: str) -> tuple[str, ...]:
    """The labels a label expression names, in order (an atom may be "quoted")."""
    return tuple(atom.strip().strip('"') for atom in _OPERATORS.split(expression)
                 if atom.strip().strip('"'))


_TOKENS = re.compile(f"({_OPERATORS.pattern})")
# Jenkins' precedence, loosest first (LabelExpression.g4: <->, ->, ||, &&, then ! and
# parentheses); each binary operator left-associative
_BINARY = ("<->", "->", "||", "&&")


def wanted_atoms(expression: str) -> frozenset[str]:
    """The labels an expression asks a node to have: those under no negation (`!`, the left
    of `->`; both sides of `<->` count). `linux&&!maven` keeps a job off the maven nodes: it
    does not want maven. All of its labels when it does not parse."""
    tokens = [t.strip() for t in _TOKENS.split(expression) if t.strip()]
    at = 0

    def binary(level: int) -> tuple:
        nonlocal at
        if level == len(_BINARY):
            return unary()
        left = binary(level + 1)
        while at < len(tokens) and tokens[at] == _BINARY[level]:
            at += 1
            left = (_BINARY[level], left, binary(level + 1))
        return left

    def unary() -> tuple:
        nonlocal at
        if at >= len(tokens):
            raise ValueError("expression ends early")
        token, at = tokens[at], at + 1
        if token == "!":
            return ("!", unary())
        if token == "(":
            inner = binary(0)
            if at >= len(tokens) or tokens[at] != ")":
                raise ValueError("unbalanced parentheses")
            at += 1
            return inner
        if _OPERATORS.fullmatch(token):
            raise ValueError(f"operator {token} out of place")
        return ("atom", token.strip('"'))

    found: set[str] = set()

    def walk(node: tuple, positive: bool) -> None:
        kind = node[0]
        if kind == "atom":
            if positive:
                found.add(node[1])
        elif kind == "!":
            walk(node[1], not positive)
        elif kind == "->":  # a -> b is !a || b
            walk(node[1], not positive)
            walk(node[2], positive)
        elif kind == "<->":  # (a && b) || (!a && !b)
            for side in node[1:]:
                walk(side, True)
                walk(side, False)
        else:
            walk(node[1], positive)
            walk(node[2], positive)

    try:
        tree = binary(0)
        if at != len(tokens):
            raise ValueError("text after the expression")
    except (ValueError, RecursionError):  # (parentheses nested past Python's stack)
        return frozenset(label_atoms(expression))
    walk(tree, True)
    return frozenset(found)


@dataclass(frozen=True)
class UnservedItem:
    """A queue item not ours that waits on a label expression naming one of our labels:
    an agent is made only for an item waiting on exactly one template label, so this one
    waits for ever unless some other node satisfies the expression."""

    item: QueueItem
    expression: str
    ours: tuple[str, ...]  # the template labels it asks for (wanted_atoms)

    @property
    def reason(self) -> str:
        return (f"waits on the label expression ‘{self.expression}’; ci-autoscaler makes an "
                f"agent only for one label of a template ({', '.join(self.ours)}), never for "
                "an expression: restrict the job to one such label")


def items_waiting_on_expressions(items: Iterable[QueueItem], labels: Iterable[str], *,
                                 skip_parameter: str) -> list[UnservedItem]:
    """The queue items not triggered by us (ours carry `skip_parameter`) whose reason names a
    label expression with one of `labels` in it, oldest first. One of other labels only is
    another cloud's or agent's to serve."""
    wanted = set(labels)
    found = []
    for item in sorted(items, key=lambda i: i.id):
        if skip_parameter in item.parameters:
            continue
        for quoted in _QUOTED.findall(item.why or ""):
            if not _OPERATORS.search(quoted):
                continue
            # only labels it wants: one that merely rules ours out (`!maven`) is not ours
            asked = wanted_atoms(quoted)
            ours = tuple(dict.fromkeys(a for a in label_atoms(quoted)
                                       if a in wanted and a in asked))
            if ours:
                found.append(UnservedItem(item, quoted.strip(), ours))
                break
    return found


USER_CAUSE = "hudson.model.Cause$UserIdCause"


def queued_by_only(causes: tuple[tuple[str, str], ...], user: str) -> bool:
    """Whether `user`'s request alone queued an item (or its run), by its `causes`
    (QueueItem.causes, RunInfo.causes): only UserIdCauses naming that user (buildWithParameters with its API token: ParameterizedJobMixIn.getBuildCause).
    A person's Rebuild or Replay is their UserIdCause beside a RebuildCause or ReplayCause; a
    timer's, an upstream's or an SCM's item names no user. User ids compare without case:
    Jenkins' default IdStrategy.CASE_INSENSITIVE takes "Bot" for "bot"."""
    return bool(user and causes) and all(
        kind == USER_CAUSE and named.casefold() == user.casefold() for kind, named in causes)


def items_waiting_on_agents(items: Iterable[QueueItem]) -> list[tuple[QueueItem, str]]:
    """The queue items that wait on the label of one of our agents, as only a run of that
    agent's job would (a Replay or Rebuild copies CI_AUTOSCALER_AGENT), with that label;
    oldest item first. Whether the agent is gone, or another installation's, is for the
    caller to find out."""
    found = []
    for item in sorted(items, key=lambda i: i.id):
        for quoted in _QUOTED.findall(item.why or ""):
            if is_agent_name_of(quoted.strip(), item.job):
                found.append((item, quoted.strip()))
                break
    return found


_ESCAPED = re.compile(rb"%([0-9A-Fa-f]{2})")


def _unquote(text: str) -> str:
    return _ESCAPED.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode()).decode(
        errors="replace")


def same_job(one: str, other: str) -> bool:
    """Whether two full job names ("folder/name") name one Jenkins job: in any case, as
    Jenkins finds items (Jenkins.items, cloudbees-folder's AbstractFolder.items:
    CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER)). A route naming "Build" triggers
    "build", whose queue items and runs name it as Jenkins has it. (A folder loaded from
    disk, after a restart, finds its items in their exact case only: AbstractFolder.onLoad
    takes loadChildren's CopyOnWriteMap.Tree<>(); see run_confirm._running_as.)"""
    return bool(one) and one.lower() == other.lower()


def job_of_url(url: str) -> str:
    """The job's full name ("folder/name") in a job's or run's URL, absolute or relative;
    "" if it names none. (Parsed here: the core imports no URL library.)"""
    path = (url or "").split("?", 1)[0].split("#", 1)[0]
    if "://" in path:
        rest = path.split("://", 1)[1]
        path = rest[rest.find("/"):] if "/" in rest else ""
    parts = [_unquote(p) for p in path.split("/")]
    names, i = [], 0
    while i < len(parts) - 1:
        if parts[i] == "job" and parts[i + 1]:
            names.append(parts[i + 1])
            i += 2
        else:
            i += 1
    return "/".join(names)


def run_of_url(url: str) -> RunRef | None:
    """The run a run's URL names ("job/folder/job/name/5/", absolute or relative): a Pipeline
    node block's queue item names so the run it is part of (its task's `url`,
    ExecutorStepExecution.PlaceholderTask.getUrl: the run's getUrl); None for a job's URL."""
    path = (url or "").split("?", 1)[0].split("#", 1)[0]
    parts = [p for p in path.split("/") if p]
    job = job_of_url(url)
    if not job or len(parts) < 3 or parts[-3] != "job" or not parts[-1].isdigit():
        return None
    return RunRef(job, int(parts[-1]))


def run_of(executable: Any) -> RunRef | None:
    """The run an executor runs, or a queue item left the queue as (its `executable`): a build,
    or a Pipeline node block's PlaceholderExecutable, which names its run by `number` and `url`
    (workflow-durable-task-step ExecutorStepExecution); None if it names no run."""
    if not isinstance(executable, dict):
        return None
    job, number = job_of_url(str(executable.get("url") or "")), executable.get("number")
    if not job or not isinstance(number, int) or isinstance(number, bool):
        return None
    return RunRef(job, number)


# The fields a build's record holds the times it was (or may have been) triggered in
TRIGGER_TIMES = ("trigger_attempted_at", "triggered_at", "retrigger_attempted_at")


def first_triggered(build: Mapping[str, str]) -> float | None:
    """When the build's first trigger was attempted (Unix time), from its record: no run of
    its job made before that is its own (Jenkins.find_queue_item's `since`); None when the
    record holds no such time."""
    times = []
    for name in TRIGGER_TIMES:
        try:
            times.append(float(build.get(name) or ""))
        except ValueError:
            continue
    return min(times) if times else None
