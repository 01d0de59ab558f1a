"""The chart refuses a jenkins.url, jenkins.agentUrl, jenkins.publicUrl or gitlab.url with a
user:password@, as the processes do (workers.config.settings,
Settings._url_without_credentials): the schema let it through, `helm upgrade` succeeded, and
every web, worker and reconcile pod then exited at start ("JENKINS_URL must carry no
user:password@"), an upgrade of a release that had worked half rolled out. Refused by the
schema, the upgrade fails before any pod changes."""

import helm_python
import pytest

from tests.support.helm_chart import REQUIRED_VALUES, render_files
from workers.config.settings import load_settings
from workers.core.errors import ConfigError

KEYS = [("jenkins", "url", "JENKINS_URL"), ("jenkins", "agentUrl", "JENKINS_AGENT_URL"),
        ("jenkins", "publicUrl", "JENKINS_PUBLIC_URL"), ("gitlab", "url", "GITLAB_URL")]


def _with(section: str, key: str, url: str) -> dict:
    values = REQUIRED_VALUES | {section: {**REQUIRED_VALUES.get(section, {}), key: url}}
    if section == "gitlab":  # the catch-up's token, which gitlab.url asks for
        values["secrets"] = {**REQUIRED_VALUES["secrets"], "gitlabApiToken": "t" * 20}
    return values


@pytest.mark.parametrize("url", ["https://bot:t0ken@jenkins.example.com/",
                                 "http://bot@jenkins.example.com:8080",
                                 "https://bot:p@ss@jenkins.example.com"])
@pytest.mark.parametrize("section,key,variable", KEYS)
def test_a_url_with_credentials_is_refused_by_the_chart_as_by_the_processes(
        section, key, variable, url):
    with pytest.raises(ConfigError, match=variable):
        load_settings(**{variable.lower(): url})
    with pytest.raises(helm_python.HelmError, match=f"at '/{section}/{key}'.* does not match"):
        render_files(_with(section, key, url))


@pytest.mark.parametrize("url", ["https://jenkins.example.com/", "http://jenkins.ci.svc:8080",
                                 "https://jenkins.example.com/ci/?from=a@b",
                                 "https://jenkins.example.com#a@b"])
@pytest.mark.parametrize("section,key,variable", KEYS)
def test_an_at_past_the_host_is_taken_by_both(section, key, variable, url):
    load_settings(**{variable.lower(): url})
    render_files(_with(section, key, url))
