"""RQ's names of the tasks that workers.engine.tasks holds: a job names its task by dotted
path (`workers.tasks.provision_agent`, `workers.tasks.release_agent`,
`workers.tasks.redrive_waiting`), and during a rolling upgrade a worker runs jobs that a
release before or after it queued (workers.engine.task_args). So these names stay, and the
code queues by them (the *_TASK constants), never by the function, whose module is its new
home (tests/fixtures/task_signatures.json; tests/integration/test_task_signatures.py).
"""

from workers.engine.tasks import provision_agent, redrive_waiting, release_agent

__all__ = ["provision_agent", "redrive_waiting", "release_agent"]
