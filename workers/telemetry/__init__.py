"""What the processes tell about themselves: the metric catalogue (``metrics``), what GET
/metrics answers (``exposition``, ``monotonic_counters``, ``redis_reads``), the JSON-lines logs
(``logs``, ``outage_log``) and the liveness file a pod's probe reads (``liveness``)."""
