"""Which Jenkins jobs can take our builds, decided from the job's definition (pure)."""

import pytest

from workers.core.jenkins_jobs import (
    NOT_PARAMETERIZED, PIPELINE, REQUIRED_PARAMETERS, JobDefinition, JobProblem, dropped,
    refusal)

AGENT, KEY = REQUIRED_PARAMETERS


@pytest.mark.parametrize("definition, problem, words", [
    (None, JobProblem.MISSING, "Jenkins has no job 'team/app'"),
    (JobDefinition("team/app", kind="com.cloudbees.hudson.plugins.folder.Folder",
                   buildable=None), JobProblem.MISSING, "'team/app' in Jenkins is a Folder"),
    (JobDefinition("team/app", buildable=False), JobProblem.NOT_BUILDABLE,
     "team/app is not buildable!"),
    (JobDefinition("team/app", buildable=False, parameters=None), JobProblem.NOT_BUILDABLE,
     "is not buildable!"),  # Jenkins checks buildable first
    (JobDefinition("team/app", parameters=None), JobProblem.NOT_PARAMETERIZED,
     NOT_PARAMETERIZED),
    (JobDefinition("team/app", parameters=()), JobProblem.UNDECLARED,
     f"does not declare the parameters {AGENT}, {KEY}"),
    (JobDefinition("team/app", parameters=(AGENT, "GIT_COMMIT")), JobProblem.UNDECLARED,
     f"does not declare the parameter {KEY}:"),
])
def test_a_job_that_cannot_take_our_builds_is_refused_with_the_reason(definition, problem,
                                                                       words):
    refused = refusal("team/app", definition)

    assert refused is not None and refused.problem == problem
    assert words in refused.reason and refused.job == "team/app"


@pytest.mark.parametrize("parameters", [None, (), (KEY,)])
def test_a_pipeline_refused_for_its_parameters_is_told_to_run_once(parameters):
    # Its Jenkinsfile's parameters reach the job only after a run of it (JENKINS-41929).
    pipeline = refusal("app", JobDefinition("app", kind=PIPELINE, parameters=parameters))
    freestyle = refusal("app", JobDefinition("app", kind="hudson.model.FreeStyleProject",
                                             parameters=parameters))

    assert pipeline is not None and "run the job once by hand" in pipeline.reason
    assert freestyle is not None and "JENKINS-41929" not in freestyle.reason


def test_a_refusal_for_undeclared_parameters_names_them():
    refused = refusal("app", JobDefinition("app", parameters=(KEY,)))

    assert refused is not None and refused.parameters == (AGENT,)


def test_a_buildable_job_declaring_ours_is_not_refused():
    assert refusal("app", JobDefinition("app", parameters=(KEY, "X", AGENT))) is None


def test_dropped_parameters_are_the_undeclared_ones_without_the_size_hints():
    definition = JobDefinition("app", parameters=(AGENT, KEY, "GIT_COMMIT"))

    assert dropped(definition, [AGENT, KEY, "GIT_COMMIT", "GIT_BRANCH", "CI_AUTOSCALER_CPU",
                                "CI_AUTOSCALER_MEMORY", "A"]) == ["A", "GIT_BRANCH"]
    assert dropped(JobDefinition("app", parameters=None), ["A"]) == ["A"]


FREESTYLE = "hudson.model.FreeStyleProject"


@pytest.mark.parametrize("kind", [FREESTYLE, "hudson.maven.MavenModuleSet"])
def test_a_freestyle_job_whose_agent_parameter_is_a_string_is_refused_naming_the_fix(kind):
    """Such a job runs where its own label expression says (AbstractProject.getAssignedLabel
    expands no parameter in it): its build waited in Jenkins' queue while its agent idled."""
    refused = refusal("app", JobDefinition("app", kind=kind, parameters=(AGENT, KEY),
                                           agent_parameter_type="StringParameterDefinition"))

    assert refused is not None and refused.problem == JobProblem.AGENT_NOT_A_LABEL
    assert "is a StringParameterDefinition" in refused.reason
    assert "Label parameter (NodeLabel Parameter plugin)" in refused.reason
    assert refused.parameters == (AGENT,)


@pytest.mark.parametrize("kind, agent_type", [
    (FREESTYLE, "LabelParameterDefinition"), (FREESTYLE, "NodeParameterDefinition"),
    (FREESTYLE, ""),  # type not read: not refused on a guess
    (PIPELINE, "StringParameterDefinition")])  # agent { label params.CI_AUTOSCALER_AGENT }
def test_a_job_whose_agent_parameter_puts_the_build_on_its_agent_is_not_refused(kind,
                                                                                 agent_type):
    assert refusal("app", JobDefinition("app", kind=kind, parameters=(AGENT, KEY),
                                        agent_parameter_type=agent_type)) is None


GROOVY_LABEL = "jp.ikedam.jenkins.plugins.groovy_label_assignment.GroovyLabelAssignmentProperty"


def test_a_freestyle_job_whose_label_a_groovy_script_assigns_is_not_refused():
    """The Groovy Label Assignment plugin puts a freestyle build on the label its script returns
    (a LabelAssignmentAction added at queue time), the build's parameters bound in the script:
    `return CI_AUTOSCALER_AGENT` steers it by a String parameter. Refused, a job that ran on
    its agents stopped taking builds."""
    definition = JobDefinition("app", kind=FREESTYLE, parameters=(AGENT, KEY),
                               agent_parameter_type="StringParameterDefinition",
                               properties=("hudson.model.ParametersDefinitionProperty",
                                           GROOVY_LABEL))

    assert refusal("app", definition) is None
    other = JobDefinition("app", kind=FREESTYLE, parameters=(AGENT, KEY),
                          agent_parameter_type="StringParameterDefinition",
                          properties=("hudson.model.ParametersDefinitionProperty",))
    assert refusal("app", other).problem == JobProblem.AGENT_NOT_A_LABEL
