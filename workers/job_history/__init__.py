"""Each job sized from its own history (issue 21).

- ``watch``: while a build runs, its agent's PodMetrics samples and an OOM kill of its build
  container are written to Redis (workers.adapters.usage_store), from every worker's
  ClusterWatch (a sample once per metrics-server stamp).
- ``learn``: when the agent is released, the run is folded into its job's decaying
  histogram (workers.core.usage_history); an OOM kill raises the job's next memory, and with
  the template's ``retryOnOOM`` the build is started once more at that size.
- ``sized``: the template as the next build of a job should get it (workers.core.recommend).
"""
