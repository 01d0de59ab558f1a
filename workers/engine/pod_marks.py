"""What a provision writes on the build's record about its pod (moved from
workers.engine.tasks)."""

# Written before a provision creates the build's pod: only a build that has it can have one.
POD_ATTEMPTED = "pod_attempted_at"
# Written with it: the placement of the pod being made (scheduling.planned). A retry that
# finds the pod (its create's answer lost: a timeout, a 500 on its way back) writes it on the
# record as the create's success would have; without it, the build's node, size and candidates
# were nowhere (the status page, the unschedulable repair's nodes to leave out, its OOM kill's
# size).
POD_PLANNED = "pod_planned"
# What an attempt that may have made the pod leaves in the record (the last three: records
# written before POD_ATTEMPTED was).
_POD_MARKS = (POD_ATTEMPTED, "pod_created_at", "node", "trigger_attempted_at")
# What says a pod was made, or may have been, under the build's current agent name: with no
# pod now, the build is placed again under a new name (workers.engine.agent_names).
_PLACED_MARKS = (POD_ATTEMPTED, "pod_created_at", "node")
# What the last placement (or warm agent) did to the build's size, shown until it is placed
# again: a new placement at its default records nothing (scheduling.place), and the old
# `pressure` or `headroom` was shown beside the new pod's size
_SIZE_MARKS = ("size_moved",)
