"""Running provisions at once: an RQ worker that runs several jobs in a pool of threads
(`pool_worker`), and the independent calls of one job run side by side (`side`).

A provision or a release is a chain of HTTP round trips to Jenkins and Kubernetes; the worker
process waits on the network, not on its CPU, so threads overlap those waits. The guarantees
that make this correct are the ones that already hold between worker processes: the atomic
Redis reservations and caps (workers.adapters.capacity_store) and the per-build lease
(workers.engine.tasks.provision_lease).
"""
