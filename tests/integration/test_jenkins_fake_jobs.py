"""The Jenkins fake's jobs behave as Jenkins core's (ParameterizedJobMixIn, SECURITY-170),
spoken to over real HTTP with basic auth and a crumb, as python-jenkins does."""

import re

import pytest
import requests

from tests.support.jenkins_fake import DEFAULT_JOB_PARAMETERS, JenkinsFake


def post(fake: JenkinsFake, path: str, **params: str) -> requests.Response:
    return requests.post(f"{fake.url}/{path}", params=params, auth=(fake.user, fake.token),
                         headers=fake.crumb_headers(), allow_redirects=False, timeout=5)


def get(fake: JenkinsFake, path: str, **params: str) -> requests.Response:
    return requests.get(f"{fake.url}/{path}", params=params, auth=(fake.user, fake.token),
                        timeout=5)


def test_a_job_without_parameter_definitions_answers_500_with_jenkins_error_page(jenkins_fake):
    jenkins_fake.add_job("plain", parameters=None)

    answer = post(jenkins_fake, "job/plain/buildWithParameters", GIT_COMMIT="abc")

    assert answer.status_code == 500
    assert "Oops!" in answer.text and re.search(r"Logging ID=[0-9a-f-]{36}", answer.text)
    # Jenkins logs the exception and shows it only with SHOW_STACK_TRACE on.
    assert "not parameterized" not in answer.text
    assert jenkins_fake.builds == []


def test_with_stack_traces_shown_the_error_page_says_this_build_is_not_parameterized():
    with JenkinsFake(show_stack_trace=True) as fake:
        fake.add_job("plain", parameters=None)

        answer = post(fake, "job/plain/buildWithParameters", GIT_COMMIT="abc")

    assert answer.status_code == 500
    assert "java.lang.IllegalStateException: This build is not parameterized!" in answer.text


def test_a_disabled_job_answers_409_not_buildable_with_its_full_name(jenkins_fake):
    jenkins_fake.add_job("team/app", disabled=True)

    answer = post(jenkins_fake, "job/team/job/app/buildWithParameters", GIT_COMMIT="abc")

    assert answer.status_code == 409
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.text.splitlines()[0] == "java.io.IOException: team/app is not buildable!"
    assert jenkins_fake.builds == []


def test_a_disabled_job_that_is_not_parameterized_answers_409_first(jenkins_fake):
    jenkins_fake.add_job("plain", parameters=None, disabled=True)

    assert post(jenkins_fake, "job/plain/buildWithParameters").status_code == 409


def test_an_unknown_job_answers_404(jenkins_fake):
    jenkins_fake.jobs = {"known"}

    assert post(jenkins_fake, "job/unknown/buildWithParameters", A="1").status_code == 404
    assert get(jenkins_fake, "job/unknown/api/json").status_code == 404
    assert post(jenkins_fake, "job/known/buildWithParameters").status_code == 201


def test_undeclared_parameters_are_dropped_without_a_word_and_defaults_fill_the_rest(
        jenkins_fake):
    jenkins_fake.add_job("app", parameters={"CI_AUTOSCALER_AGENT": "", "MODE": "fast"})

    answer = post(jenkins_fake, "job/app/buildWithParameters", CI_AUTOSCALER_AGENT="agent-1",
                  CI_AUTOSCALER_BUILD_KEY="k1", GIT_COMMIT="abc")

    assert answer.status_code == 201
    queue_id = int(answer.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    [build] = jenkins_fake.builds
    assert build.parameters == {"CI_AUTOSCALER_AGENT": "agent-1", "MODE": "fast"}
    item = get(jenkins_fake, f"queue/item/{queue_id}/api/json").json()
    assert {p["name"]: p["value"] for p in item["actions"][0]["parameters"]} == \
        build.parameters


def test_requests_differing_only_in_dropped_parameters_fold_into_one_queue_item(jenkins_fake):
    jenkins_fake.add_job("app", parameters=["CI_AUTOSCALER_AGENT"])

    first = post(jenkins_fake, "job/app/buildWithParameters", CI_AUTOSCALER_AGENT="a", X="1")
    second = post(jenkins_fake, "job/app/buildWithParameters", CI_AUTOSCALER_AGENT="a", X="2")

    assert first.headers["Location"] == second.headers["Location"]
    assert len(jenkins_fake.builds) == 1


def test_the_job_page_serves_parameter_definitions_buildable_and_disabled(jenkins_fake):
    jenkins_fake.add_job("app", parameters={"CI_AUTOSCALER_AGENT": "", "MODE": "fast"})
    jenkins_fake.add_job("off", disabled=True)

    page = get(jenkins_fake, "job/app/api/json").json()
    off = get(jenkins_fake, "job/off/api/json").json()

    assert (page["buildable"], page["disabled"], off["buildable"], off["disabled"]) == \
        (True, False, False, True)
    [prop] = page["property"]
    assert prop["_class"] == "hudson.model.ParametersDefinitionProperty"
    mode = prop["parameterDefinitions"][1]
    assert mode == {"_class": "hudson.model.StringParameterDefinition",
                    "defaultParameterValue": {"_class": "hudson.model.StringParameterValue",
                                              "name": "MODE", "value": "fast"},
                    "description": "", "name": "MODE", "type": "StringParameterDefinition"}


def test_the_job_page_honours_tree_as_jenkins_does(jenkins_fake):
    jenkins_fake.add_job("app", parameters=["CI_AUTOSCALER_AGENT", "GIT_COMMIT"])

    page = get(jenkins_fake, "job/app/api/json",
               tree="buildable,property[parameterDefinitions[name,type]]").json()

    assert page == {"_class": "org.jenkinsci.plugins.workflow.job.WorkflowJob",
                    "buildable": True, "property": [{
                        "_class": "hudson.model.ParametersDefinitionProperty",
                        "parameterDefinitions": [
                            {"_class": "hudson.model.StringParameterDefinition",
                             "name": "CI_AUTOSCALER_AGENT", "type": "StringParameterDefinition"},
                            {"_class": "hudson.model.StringParameterDefinition",
                             "name": "GIT_COMMIT", "type": "StringParameterDefinition"}]}]}


def test_a_job_that_is_not_parameterized_has_no_parameters_property(jenkins_fake):
    jenkins_fake.add_job("plain", parameters=None)

    page = get(jenkins_fake, "job/plain/api/json",
               tree="property[parameterDefinitions[name]]").json()

    assert page["property"] == []


def test_jobs_in_folders_and_the_folder_itself(jenkins_fake):
    jenkins_fake.add_job("team/sub/app", parameters=["CI_AUTOSCALER_AGENT"])

    folder = get(jenkins_fake, "job/team/api/json").json()
    job = get(jenkins_fake, "job/team/job/sub/job/app/api/json").json()
    answer = post(jenkins_fake, "job/team/job/sub/job/app/buildWithParameters",
                  CI_AUTOSCALER_AGENT="a")

    assert folder["_class"] == "com.cloudbees.hudson.plugins.folder.Folder"
    assert [j["name"] for j in folder["jobs"]] == ["sub"]
    assert job["fullName"] == "team/sub/app"
    assert answer.status_code == 201 and jenkins_fake.builds[0].job == "team/sub/app"
    assert post(jenkins_fake, "job/team/buildWithParameters").status_code == 404


def test_a_job_renamed_while_its_item_waits_builds_it_under_the_new_name(jenkins_fake):
    jenkins_fake.add_job("team/app")
    post(jenkins_fake, "job/team/job/app/buildWithParameters", CI_AUTOSCALER_AGENT="a",
         delay="0sec")
    [item] = jenkins_fake.builds

    jenkins_fake.rename_job("team/app", "app-legacy")

    assert get(jenkins_fake, "job/team/job/app/api/json").status_code == 404
    page = get(jenkins_fake, f"queue/item/{item.queue_id}/api/json").json()
    assert page["task"]["url"] == f"{jenkins_fake.url}/job/team/job/app-legacy/"
    jenkins_fake.start_build(item.queue_id)
    assert get(jenkins_fake, "job/team/job/app-legacy/1/api/json").status_code == 200
    with pytest.raises(AssertionError, match="while it is building"):  # Job.checkRename
        jenkins_fake.rename_job("team/app-legacy", "app")


@pytest.mark.parametrize("parameter", sorted(DEFAULT_JOB_PARAMETERS))
def test_a_job_nobody_declared_takes_the_readme_jenkinsfile_parameters(jenkins_fake, parameter):
    answer = post(jenkins_fake, "job/build/buildWithParameters", **{parameter: "v", "OTHER": "x"})

    assert answer.status_code == 201
    assert jenkins_fake.builds[0].parameters[parameter] == "v"
    assert "OTHER" not in jenkins_fake.builds[0].parameters
