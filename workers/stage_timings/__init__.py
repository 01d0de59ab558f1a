"""Where a build's time goes: each stage recorded once in the build's record and observed once
into ci_autoscaler_build_stage_seconds (the stages: workers.core.stages).

``ledger.record`` is called where a stage happens (the mover, a provision, the release, the
agent online poll); ``scheduled.ScheduledWatch`` is the worker's pod listener that records a
pod bound to its node, once per build in each process.
"""
