"""RQ's name of the task that workers.engine.failures holds: a job names its task by dotted
path (`workers.failures.fail_start`), and during a rolling upgrade a worker runs jobs that a
release before or after it queued (workers.engine.task_args). So this name stays, and the
code queues by it (workers.agent_starts.watch.FAIL_TASK), never by the function, whose module
is its new home (tests/fixtures/task_signatures.json; tests/integration/test_task_signatures.py).
"""

from workers.engine.failures import fail_start

__all__ = ["fail_start"]
