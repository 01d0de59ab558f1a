"""The pure core: plain values in, plain values (decisions as data) out.

No module here imports flask, redis, rq, kubernetes, jenkins, prometheus_client or yaml, nor
does any I/O, so the core is tested fast and reused unchanged by the simulator.
"""
