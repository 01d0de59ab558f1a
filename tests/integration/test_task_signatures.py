"""Every RQ task takes what each release that may run beside it sends (a rolling upgrade:
workers.engine.task_args), held against tests/fixtures/task_signatures.json, the signatures each
task had in the recorded releases (read with `git show <commit>:<file>`). A task's job names
it by dotted path, resolved as RQ's worker does (rq.utils.import_attribute, Job.func)."""

import ast
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest
from rq.utils import import_attribute

from workers.engine import jobs

ROOT = Path(__file__).resolve().parents[2]
TABLE = json.loads((ROOT / "tests/fixtures/task_signatures.json").read_text())["tasks"]
# What a release queues a task by: the constants naming them (workers/**/*.py)
_TASK_CONSTANT = re.compile(r'^[A-Z_]*TASK = "(workers(?:\.\w+)+)"', re.M)


def queued_task_names() -> set[str]:
    return {name for path in (ROOT / "workers").rglob("*.py")
            for name in _TASK_CONSTANT.findall(path.read_text())}


# The calls that queue an RQ job, and where each takes its task: (position, keyword)
_QUEUEING = {"enqueue": (0, "f"), "enqueue_call": (0, "func"), "enqueue_task": (0, "func"),
             "enqueue_in": (1, "func"), "enqueue_at": (1, "f"), "prepare_data": (0, "func"),
             "enqueue_once": (None, "func"), "enqueue_claimed": (None, "func"),
             "enqueue_claimed_many": (None, "func")}
# The state adapter's own calls pass on the `func` its callers gave (found above as theirs)
_PASSED_ON = {("workers/adapters/redis_state.py", "func")}


def queueing_sites() -> list[tuple[str, int, object]]:
    """(file, line, the task) of every call in workers/ and service/ that queues an RQ job,
    the task evaluated in its module: a dotted name, or a function (which RQ queues by its
    module and qualified name, rq.job.Job.func_name)."""
    sites = []
    for path in sorted([*(ROOT / "workers").rglob("*.py"), *(ROOT / "service").rglob("*.py")]):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in _QUEUEING):
                continue
            position, keyword = _QUEUEING[node.func.attr]
            given = {k.arg: k.value for k in node.keywords}.get(keyword)
            if given is None and position is not None and len(node.args) > position:
                given = node.args[position]
            assert given is not None, f"{where}:{node.lineno}: which task does it queue?"
            if (where, ast.unparse(given)) in _PASSED_ON:
                continue
            module = importlib.import_module(where[:-3].replace("/", "."))
            sites.append((where, node.lineno, eval(ast.unparse(given), vars(module))))
    return sites


def signature_text(func) -> str:
    """The parameters as the table writes them: a name, `name=` with a default, `*name`,
    `**name`; keyword-only ones after a bare `*`."""
    parts, starred = [], False
    for p in inspect.signature(func).parameters.values():
        if p.kind is p.KEYWORD_ONLY and not starred:
            parts.append("*")
            starred = True
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            starred = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        else:
            parts.append(p.name + ("=" if p.default is not p.empty else ""))
    return ", ".join(parts)


def parameters(text: str) -> list[tuple[str, bool]]:
    """(name, has a default) of the named parameters in a table row."""
    return [(part.rstrip("="), part.endswith("=")) for part in text.split(", ")
            if part and not part.startswith("*")]


def test_every_task_a_release_queues_is_recorded_as_it_is_now():
    """A task added, or a signature changed: update `now` in the table to what this prints,
    after reading the rule (README 'Development', rolling upgrades)."""
    now = {name: signature_text(import_attribute(name)) for name in sorted(queued_task_names())}
    recorded = {name: rows["now"] for name, rows in TABLE.items() if "now" in rows}
    assert recorded == now, "tests/fixtures/task_signatures.json 'now' rows:\n" + json.dumps(
        now, indent=2)


def test_every_task_queued_anywhere_is_in_the_table():
    """A job queued by a function object or a dotted name not held in a *TASK constant (which
    the test above reads) is held by the rule too: every call that queues a job names a task
    of the table, or its signature could change unguarded while old jobs wait in Redis."""
    sites = queueing_sites()
    assert len(sites) >= len(TABLE)  # the calls were found (the adapter's names, each task)
    for where, line, task in sites:
        name = task if isinstance(task, str) else f"{task.__module__}.{task.__qualname__}"
        assert name in TABLE, f"{where}:{line} queues {name}, not in task_signatures.json"


def test_the_worker_runs_every_task_and_no_other():
    """The worker's job class (workers.engine.jobs.TaskJob) refuses a job naming anything but
    these: a task queued now or by a recorded release that is missing there would be refused."""
    assert jobs.TASKS == set(TABLE) | queued_task_names()


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_recorded_task_name_still_resolves(name):
    """A moved task leaves an alias under every name a recorded release queued it by (as
    workers.tasks.redrive_waiting for workers.engine.redrive's): a job naming a gone function fails
    on RQ's import, its work lost."""
    assert callable(import_attribute(name))


@pytest.mark.parametrize("name, release", [(name, release) for name, rows in sorted(TABLE.items())
                                           for release in rows if release != "now"])
def test_a_task_takes_every_job_a_recorded_release_queues(name, release):
    """A job of that release binds to today's function with any of its parameters, given or
    left out; none of them was removed or renamed (a removed one would vanish into **newer,
    its meaning lost), and nothing added is required."""
    func = import_attribute(name)
    today = inspect.signature(func)
    old = parameters(TABLE[name][release])
    named = {p.name for p in today.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    assert {n for n, _ in old} <= named, f"{name} lost parameters {release} sends"
    today.bind(**{n: None for n, _ in old})  # every parameter given
    today.bind(**{n: None for n, default in old if not default})  # only the required ones
    # ... and by place: a job may hold positional arguments (replenish's template,
    # workers.warm.claim), which bind by position, so a parameter keeps its place
    by_place = today.bind(*[None] * len(old)).arguments
    assert list(by_place)[:len(old)] == [n for n, _ in old], f"{name} moved parameters"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_a_task_takes_a_newer_releases_arguments(name):
    """A newer release's new keyword argument does not fail the job on this one."""
    assert any(p.kind is p.VAR_KEYWORD
               for p in inspect.signature(import_attribute(name)).parameters.values())
