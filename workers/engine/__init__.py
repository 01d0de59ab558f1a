"""The engine's own modules: the RQ tasks (provision, release, re-drive, a failed start), the
decisions against the live cluster (scheduling, caps, scale-up pods), the mover from the intake
and the spool's drainer, the reconcile loop and its repairs (lost agents, runs and triggers,
adopted and blocked builds, what failed builds leave in Jenkins), the catch-up from GitLab's
API, and what a task does with another release's arguments.

RQ names the tasks by their dotted paths from before this package: workers.tasks and
workers.failures keep those names (tests/fixtures/task_signatures.json).
"""
