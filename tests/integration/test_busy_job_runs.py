"""A build's run looked for among a busy job's runs (JenkinsAdapter.find_queue_item): Jenkins
exports only a job's 100 newest runs as `builds` (Job.getNewBuilds), so a lookup that read
them (30 before) lost a run with more runs of its job since: the provision's retry triggered
the build again, a repair took it for cancelled. All runs made since the build's trigger are
read now (the newest 100 from `builds`, older ones in pages of `allBuilds`), and no further
back."""

import time

import requests

from tests.support.jenkins_fake import JenkinsFake
from workers.adapters.jenkins import RUNS_PAGE, JenkinsAdapter
from workers.adapters.retry import Backoff
from workers.core.ports import BuildState

JOB = "app/build"
AGENT = "CI_AUTOSCALER_AGENT"


def adapter_for(fake: JenkinsFake) -> JenkinsAdapter:
    return JenkinsAdapter(url=fake.url, user=fake.user or "", token=fake.token,
                          backoff=Backoff(attempts=1))


def runs_of_others(fake: JenkinsFake, count: int, *, at: float | None = None) -> None:
    """`count` runs of the job by other builds, started and finished (their Run's timestamp
    `at`, when given)."""
    for n in range(count):
        other = fake.queue_build(JOB, label="nightly", parameters={AGENT: f"other-{n}"})
        fake.finish_build(other.queue_id)
        if at is not None:
            other.run_at = at


def job_page(fake: JenkinsFake, tree: str) -> dict:
    answer = requests.get(f"{fake.url}/job/app/job/build/api/json", params={"tree": tree},
                          auth=(fake.user, fake.token), timeout=5)
    answer.raise_for_status()
    return answer.json()


def test_the_fake_exports_a_jobs_100_newest_runs_as_builds_and_all_as_all_builds(jenkins_fake):
    """As Jenkins: `builds` is cut at 100 before the tree's range applies; `allBuilds`, only
    when named, pages with {M,N} (Stapler's Range) through every run."""
    runs_of_others(jenkins_fake, 130)

    assert len(job_page(jenkins_fake, "builds[number]{0,200}")["builds"]) == 100
    assert job_page(jenkins_fake, "builds[number]{100,200}")["builds"] == []
    assert "allBuilds" not in requests.get(f"{jenkins_fake.url}/job/app/job/build/api/json",
                                           auth=(jenkins_fake.user, jenkins_fake.token),
                                           timeout=5).json()
    rest = job_page(jenkins_fake, "allBuilds[number,timestamp]{100,200}")["allBuilds"]
    assert [r["number"] for r in rest] == list(range(30, 0, -1))
    assert all(isinstance(r["timestamp"], int) for r in rest)


def test_a_run_with_more_than_100_runs_of_its_job_since_is_found(jenkins_fake):
    """The build ran, then 150 runs of other builds of the job: its run is found among those
    made since its trigger (before: None, and the build was triggered a second time)."""
    since = time.time()
    ours = jenkins_fake.queue_build(JOB, label="ours", parameters={AGENT: "cia-ours"})
    jenkins_fake.finish_build(ours.queue_id)
    runs_of_others(jenkins_fake, 150)
    adapter = adapter_for(jenkins_fake)

    assert adapter.find_queue_item(JOB, AGENT, "cia-ours", since=since) == ours.queue_id
    assert adapter.find_queue_item(JOB, AGENT, "cia-ours") is None  # no bound: newest page only


def test_runs_older_than_the_trigger_are_not_read(jenkins_fake):
    """Bounded cost: the runs older than the build's trigger (less the clock skew allowed)
    are not paged through, however many; the newest 100 come from `builds` (Jenkins iterates
    100 runs for it), only the older ones from `allBuilds` (which iterates all the job's)."""
    runs_of_others(jenkins_fake, 2 * RUNS_PAGE + 50, at=time.time() - 3600)
    since = time.time()
    runs_of_others(jenkins_fake, RUNS_PAGE + 10)
    before = len(jenkins_fake.requests_to("/job/app/job/build/api/json"))

    assert adapter_for(jenkins_fake).find_queue_item(JOB, AGENT, "cia-ours", since=since) is None
    pages = jenkins_fake.requests_to("/job/app/job/build/api/json")[before:]
    assert [p.query["tree"].split("[")[0] for p in pages] == ["builds", "allBuilds"]


def test_a_finished_run_whose_item_jenkins_forgot_is_told_among_150_newer_runs(jenkins_fake):
    """Jenkins forgot the build's queue item (5 minutes after it left the queue): its run is
    found by its queue id among the runs made since its trigger, and told finished (before:
    unknown, and the repairs never released the build)."""
    since = time.time()
    ours = jenkins_fake.queue_build(JOB, label="ours", parameters={AGENT: "cia-ours"})
    jenkins_fake.finish_build(ours.queue_id)
    runs_of_others(jenkins_fake, 150)
    jenkins_fake.forget_left_items()
    adapter = adapter_for(jenkins_fake)

    assert adapter.build_state(JOB, ours.queue_id, since=since) == \
        (BuildState.FINISHED, ours.number)
    assert adapter.build_state(JOB, ours.queue_id) == (BuildState.UNKNOWN, None)
