"""Warm agents (issue 22): per template, agents kept connected and idle at the template's
default size, so that a build starts at once on one instead of waiting 10-30 s for a pod.

``agents`` starts and retires one warm agent (the same placement, reservations and pod as a
build's; a Jenkins node whose label is its own name); ``pool`` is the pass beside the
reconcile loop that brings each pool to its target (workers.core.warm_pool) and gives idle
agents up while builds wait; ``claim`` is what a provision asks first (one atomic claim in
Redis, workers.adapters.warm_store); ``tasks`` are the RQ tasks queued after a claim (start
the replacement) and when a build must wait (give idle agents up, then re-drive).
"""
