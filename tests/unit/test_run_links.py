"""workers.engine.run_links: a STARTED's full_url is the running build's link only under the
configured Jenkins URL (scheme, host, port and path); else the run's page is built from it."""

import pytest

from workers.engine.run_links import run_page

JENKINS = "https://ci.example.org/jenkins/"
BUILT = "https://ci.example.org/jenkins/job/team/job/app%20x/7/"


@pytest.mark.parametrize("full_url", [
    "https://ci.example.org/jenkins/job/team/job/app%20x/7/",
    "https://CI.example.org:443/jenkins/job/team/job/app%20x/7/",  # the same place
])
def test_under_jenkins_it_is_taken(full_url):
    assert run_page(full_url, JENKINS, "team/app x", 7) == full_url


@pytest.mark.parametrize("full_url", [
    "", "https://phish.example/", "http://ci.example.org/jenkins/job/x/7/",  # scheme
    "https://ci.example.org:8443/jenkins/job/x/7/",  # port
    "https://ci.example.org/jenkinsx/job/x/7/", "https://ci.example.org/other/",  # path
    "https://ci.example.org/jenkins/job/%2e%2e/%2E%2E/other/",  # dot segments
    "https://ci.example.org.phish.example/jenkins/", "https://ci.example.org@phish.example/",
    "https://ci.example.org:99999/jenkins/", "javascript:alert(1)", "not a url",
])
def test_elsewhere_the_run_s_page_is_built_from_jenkins_url(full_url):
    assert run_page(full_url, JENKINS, "team/app x", 7) == BUILT


def test_the_configured_url_s_user_part_is_never_recorded():
    assert run_page("https://phish.example/", "https://bot:s3cret@ci.example.org/", "app", 3) \
        == "https://ci.example.org/job/app/3/"


def test_without_a_jenkins_url_nothing_is_linked():
    assert run_page("https://ci.example.org/job/app/3/", "", "app", 3) == ""


PUBLIC = "https://jenkins.example.com/"
IN_CLUSTER = "http://jenkins.ci.svc:8080/"


def test_under_jenkins_public_url_it_is_taken_though_the_api_url_is_in_cluster():
    """The Notification plugin's full_url is under Jenkins' root URL, the public one; with
    JENKINS_URL an in-cluster Service, only JENKINS_PUBLIC_URL keeps the real link."""
    real = "https://jenkins.example.com/job/app/3/"
    assert run_page(real, IN_CLUSTER, "app", 3, PUBLIC) == real
    assert run_page(real, IN_CLUSTER, "app", 3) == "http://jenkins.ci.svc:8080/job/app/3/"


def test_a_forged_link_is_built_from_the_public_url_when_set():
    assert run_page("https://phish.example/", IN_CLUSTER, "app", 3, PUBLIC) \
        == "https://jenkins.example.com/job/app/3/"
