"""The engine of ci-autoscaler: the pure core, the adapters, the RQ tasks, the simulator.

Nothing in ``workers`` imports ``service``; the core (``workers.core``) imports no I/O library.
The import-linter contracts in pyproject.toml check both.
"""
