"""Jenkins' session as the adapter sees it: from the X-Jenkins-Session of every API page it
reads anyway (hudson.model.Api.setHeaders), so a look at it after a call costs no request;
an answer that says the session may be gone (no connection, a 503 while Jenkins loads) makes
the next look ask. Against the Jenkins fake over real HTTP."""

import pytest

from tests.integration.test_jenkins_restart import adapter_for
from workers.core.errors import Unavailable

FRESH = 5.0  # seconds: what a look takes from an answer of that age (jenkins_away.notice)


def session_reads(jenkins_fake) -> int:
    return len(jenkins_fake.requests_to("/api/json", "GET"))


def test_every_api_page_shows_the_session_and_a_look_after_one_asks_nothing(jenkins_fake):
    jenkins = adapter_for(jenkins_fake)
    assert jenkins.online_agents() == set()  # computer/api/json
    before = session_reads(jenkins_fake)

    assert jenkins.session(max_age=FRESH) == jenkins_fake.session
    assert session_reads(jenkins_fake) == before  # no request of its own
    assert jenkins.session() == jenkins_fake.session  # max_age 0: read now
    assert session_reads(jenkins_fake) == before + 1


def test_a_restart_s_new_session_is_what_the_next_answer_shows(jenkins_fake):
    jenkins = adapter_for(jenkins_fake)
    jenkins.online_agents()
    old = jenkins_fake.session
    jenkins_fake.go_down()
    with pytest.raises(Unavailable):  # no connection: the session seen may be gone
        jenkins.online_agents()
    jenkins_fake.come_up()
    with pytest.raises(Unavailable):  # its 503 while it loads: no session shown
        jenkins.online_agents()
    jenkins_fake.finish_loading()
    before = session_reads(jenkins_fake)

    assert jenkins.session(max_age=FRESH) == jenkins_fake.session != old  # asked anew
    assert session_reads(jenkins_fake) == before + 1


def test_an_outage_ends_with_the_same_session(jenkins_fake):
    jenkins = adapter_for(jenkins_fake)
    jenkins.online_agents()
    session = jenkins_fake.session
    jenkins_fake.cut_off()
    with pytest.raises(Unavailable):
        jenkins.online_agents()
    with pytest.raises(Unavailable):
        jenkins.session(max_age=FRESH)  # asked: not served from before the failure
    jenkins_fake.reachable()
    assert jenkins.session(max_age=FRESH) == session


def test_behind_a_proxy_that_strips_the_header_the_session_is_not_known(jenkins_fake):
    jenkins_fake.session_header = False
    jenkins = adapter_for(jenkins_fake)
    jenkins.online_agents()
    before = session_reads(jenkins_fake)
    assert jenkins.session(max_age=FRESH) == ""
    assert session_reads(jenkins_fake) == before
