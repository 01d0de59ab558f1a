"""Simulated cluster and Jenkins: the second adapter of each port, for the embedded demo and
the simulator. They are driven by `tick(now)`, so the same objects run in real time (demo) or
virtual time (simulator)."""
