"""Agents on their way up: the room between a pod created and its agent online in Jenkins.

``watch`` fails a build from the watch event of an agent pod that cannot start (a fatal
container waiting reason, a failed init container, a pod ended or evicted before its agent
connected); ``online`` notices agents coming online (their start measured) and re-places,
then fails, the ones that never connect. Both fail a build through workers.engine.failures.
``jenkins_away`` keeps when Jenkins was last seen away (a restart): no agent can connect
meanwhile, so connect clocks start no earlier than that.
"""
