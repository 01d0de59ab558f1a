"""What a Jenkins job must be for ci-autoscaler to start it, decided from the job's own
definition (its `job/NAME/api/json`). Jenkins refuses a disabled job (409 "… is not
buildable!") and a job with no parameter definitions (500 "This build is not parameterized!"),
and drops every parameter a job does not declare without a word (SECURITY-170): a job that
does not declare CI_AUTOSCALER_AGENT never runs on its agent, and one without
CI_AUTOSCALER_BUILD_KEY cannot be found again by a retried trigger. Pure: a definition and the
parameters in, a decision with its reason out.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from workers.core.hints import HINTS
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER

# The parameters every routed job must declare.
REQUIRED_PARAMETERS = (AGENT_PARAMETER, BUILD_KEY_PARAMETER)
# Jenkins' own words (jenkins.model.ParameterizedJobMixIn.doBuildWithParameters).
NOT_PARAMETERIZED = "This build is not parameterized!"
NOT_BUILDABLE = "is not buildable!"
# A Pipeline's parameters declared in its Jenkinsfile (`parameters {}`, or `properties([...])`)
# reach the job's definition only when a run of that Jenkinsfile executes, so a new Pipeline
# job, or one whose Jenkinsfile has just gained our parameters, has none of them yet
# (JENKINS-41929, open since 2017). Said in its refusal, since the fix is the operator's.
PIPELINE = "org.jenkinsci.plugins.workflow.job.WorkflowJob"
# Jobs whose builds run where the job's own label expression ("Restrict where this project
# can be run") says: AbstractProject.getAssignedLabel reads it as written, no parameter
# expanded in it (jenkins core hudson/model/AbstractProject.java: Jenkins.getLabel(
# assignedNode)); a queue item goes elsewhere only by a LabelAssignmentAction
# (Queue.Item.getAssignedLabel), which the NodeLabel Parameter plugin's Label and Node
# parameters add. A Pipeline's `agent { label params.CI_AUTOSCALER_AGENT }` reads a String one.
LABEL_FROM_JOB = frozenset({"hudson.model.FreeStyleProject", "hudson.maven.MavenModuleSet"})
# The parameter types (ParameterDefinition.getType: the class's simple name, exported) that put
# a build on the label or node they are given (the nodelabelparameter plugin's)
LABEL_PARAMETER_TYPES = frozenset({"LabelParameterDefinition", "NodeParameterDefinition"})
# JobProperties that put a build on a label computed at queue time, the build's parameters at
# hand: the Groovy Label Assignment plugin's QueueDecisionHandler runs the job's script with
# them bound and adds a LabelAssignmentAction of the label it returns (jenkinsci/groovy-label-
# assignment-plugin, GroovyLabelAssignmentProperty.assignLabel), so a String
# CI_AUTOSCALER_AGENT steers a freestyle job there (`return CI_AUTOSCALER_AGENT`)
LABEL_ASSIGNING_PROPERTIES = frozenset({
    "jp.ikedam.jenkins.plugins.groovy_label_assignment.GroovyLabelAssignmentProperty"})
PIPELINE_HINT = ("; a Pipeline's Jenkinsfile `parameters` reach its job only after a run of "
                 "that Jenkinsfile (JENKINS-41929): run the job once by hand, or declare them "
                 "in the job's configuration")


@dataclass(frozen=True)
class JobDefinition:
    """A job as Jenkins describes it: its full name ("folder/name", as Jenkins has it: a
    request finds the job by its name in any case), its class, whether it can be built (None:
    the item is no job, e.g. a folder), and the names of the parameters it declares (None: it
    has no parameter definitions at all)."""

    name: str
    kind: str = ""
    buildable: bool | None = True
    parameters: tuple[str, ...] | None = REQUIRED_PARAMETERS
    # The type of its CI_AUTOSCALER_AGENT definition ("StringParameterDefinition"); "" unknown
    agent_parameter_type: str = ""
    # The classes of its JobProperties (Job.getAllProperties, exported as `property`)
    properties: tuple[str, ...] = ()


class JobProblem(StrEnum):
    MISSING = "missing"  # no such job (or the item of that name is not a job)
    NOT_BUILDABLE = "not_buildable"  # disabled: Jenkins answers 409
    NOT_PARAMETERIZED = "not_parameterized"  # no parameter definitions: Jenkins answers 500
    UNDECLARED = "undeclared"  # declares parameters, but not the ones we must pass
    # a freestyle job whose CI_AUTOSCALER_AGENT is no Label parameter: its builds never run
    # on their agent (LABEL_FROM_JOB)
    AGENT_NOT_A_LABEL = "agent_not_a_label"


@dataclass(frozen=True)
class JobRefusal:
    """Why a build cannot be started on this job, for good; `parameters` the required ones it
    does not declare (UNDECLARED)."""

    job: str
    problem: JobProblem
    reason: str
    parameters: tuple[str, ...] = ()


def refusal(job: str, definition: JobDefinition | None) -> JobRefusal | None:
    """None when the job can take our builds; otherwise why not, in Jenkins' words where
    Jenkins has them."""
    if definition is None:
        return JobRefusal(job, JobProblem.MISSING, f"Jenkins has no job {job!r}")
    if definition.buildable is None:
        kind = definition.kind.rsplit(".", 1)[-1] or "item"
        return JobRefusal(job, JobProblem.MISSING, f"{job!r} in Jenkins is a {kind}, not a job")
    if not definition.buildable:
        return JobRefusal(job, JobProblem.NOT_BUILDABLE,
                          f"{definition.name} {NOT_BUILDABLE} (job {job!r} is disabled)")
    hint = PIPELINE_HINT if definition.kind == PIPELINE else ""
    if definition.parameters is None:
        return JobRefusal(job, JobProblem.NOT_PARAMETERIZED,
                          f"{NOT_PARAMETERIZED} (job {job!r} declares no parameters; it must "
                          f"declare {' and '.join(REQUIRED_PARAMETERS)}{hint})")
    missing = tuple(p for p in REQUIRED_PARAMETERS if p not in definition.parameters)
    if missing:
        return JobRefusal(job, JobProblem.UNDECLARED,
                          f"job {job!r} does not declare the parameter"
                          f"{'s' * (len(missing) > 1)} {', '.join(missing)}: Jenkins drops "
                          f"undeclared parameters, so its build would never run on our "
                          f"agent{hint}", parameters=missing)
    kind = definition.kind
    if kind in LABEL_FROM_JOB and definition.agent_parameter_type \
            and definition.agent_parameter_type not in LABEL_PARAMETER_TYPES \
            and LABEL_ASSIGNING_PROPERTIES.isdisjoint(definition.properties):
        return JobRefusal(job, JobProblem.AGENT_NOT_A_LABEL,
                          f"job {job!r} is a {kind.rsplit('.', 1)[-1]} whose {AGENT_PARAMETER} "
                          f"is a {definition.agent_parameter_type}: such a job runs where its "
                          "own label expression says, which takes no parameter, so its build "
                          "would never run on our agent; declare "
                          f"{AGENT_PARAMETER} as a Label parameter (NodeLabel Parameter "
                          "plugin), or make the job a Pipeline",
                          parameters=(AGENT_PARAMETER,))
    return None


def dropped(definition: JobDefinition, parameters: Iterable[str]) -> list[str]:
    """The parameters Jenkins will drop because the job does not declare them, size hints
    left out (ci-autoscaler reads those itself; passing them on is a courtesy)."""
    declared = set(definition.parameters or ())
    return sorted(p for p in parameters if p not in declared and p not in HINTS)
