"""The engine of ci-autoscaler: the pure core, the adapters, the RQ tasks and the loops
(``workers.engine``), the settings (``workers.config``), what the processes tell about
themselves (``workers.telemetry``), the simulator.

Nothing in ``workers`` imports ``service``; the core (``workers.core``) imports no I/O library.
The import-linter contracts in pyproject.toml check both.
"""
