"""The pure recommender (issue 21): decaying histograms, p95 × margin, clamping, monotony,
bounded size, and OOM kills that raise the next default."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.core.models import PodTemplate
from workers.core.recommend import (CPU_STEP_MILLIS, MEMORY_STEP_BYTES, SizeSource,
                                    cpu_use, recommend)
from workers.core.usage_history import (BUCKET_RATIO, FIRST_MEMORY_BUCKET_BYTES, MAX_BUCKETS,
                                        Histogram, UsageHistory, bucket_end, bucket_of)

GIB = 2**30
MIB = 2**20
DAY = 24 * 3600.0
TEMPLATE = PodTemplate.model_validate({
    "cpu": {"min": "250m", "default": "1", "max": "4"},
    "memory": {"min": "512Mi", "default": "4Gi", "max": "16Gi"}})


def history_of(peaks, *, cpu=1000, start=0.0, every=60.0, half_life=DAY):
    history = UsageHistory()
    for i, peak in enumerate(peaks):
        history = history.add_build(peak_memory_bytes=peak, cpu_p90_millis=cpu,
                                    now=start + i * every, half_life_seconds=half_life)
    return history


def test_a_weight_halves_at_the_half_life():
    histogram = Histogram(FIRST_MEMORY_BUCKET_BYTES).add(GIB, 0.0, DAY)
    assert histogram.total() == 1.0
    assert abs(histogram.decayed(DAY, DAY).total() - 0.5) < 1e-9
    assert abs(histogram.decayed(3 * DAY, DAY).total() - 0.125) < 1e-9


def test_recent_builds_outweigh_old_ones_after_a_few_half_lives():
    """A job that peaked at 8 GiB a week ago and at 1 GiB since is sized by the recent
    builds: the old weights have halved seven times."""
    old = history_of([8 * GIB] * 10, half_life=DAY)
    recent = old
    for i in range(10):
        recent = recent.add_build(peak_memory_bytes=GIB, cpu_p90_millis=500,
                                  now=7 * DAY + i * 60, half_life_seconds=DAY)
    assert recommend(TEMPLATE, old).memory_bytes > 8 * GIB
    assert recommend(TEMPLATE, recent).memory_bytes < 1.3 * GIB
    # with a long half-life the old peaks still count at p95
    slow = history_of([8 * GIB] * 10, half_life=365 * DAY)
    for i in range(10):
        slow = slow.add_build(peak_memory_bytes=GIB, cpu_p90_millis=500,
                              now=7 * DAY + i * 60, half_life_seconds=365 * DAY)
    assert recommend(TEMPLATE, slow).memory_bytes > 8 * GIB


def test_p95_of_peaks_times_the_margin():
    """39 builds at 1 GiB and the latest at 3 GiB: the p95 is the 1 GiB bucket, times
    1.15."""
    history = history_of([GIB] * 39 + [3 * GIB], half_life=365 * DAY)
    memory = recommend(TEMPLATE, history).memory_bytes
    assert 1.15 * GIB <= memory <= 1.15 * GIB * BUCKET_RATIO + MEMORY_STEP_BYTES
    assert memory % MEMORY_STEP_BYTES == 0
    # two builds in twenty at 3 GiB put the p95 there
    history = history_of([GIB] * 18 + [3 * GIB] * 2, half_life=365 * DAY)
    assert recommend(TEMPLATE, history).memory_bytes >= 3 * 1.15 * GIB


def test_five_builds_near_1_2_gib_ask_about_1_4_gib():
    history = history_of([int(1.2 * GIB)] * 5, cpu=700)
    result = recommend(TEMPLATE, history)
    assert result.source is SizeSource.HISTORY
    assert 1.38 * GIB <= result.memory_bytes <= 1.5 * GIB
    assert 700 <= result.cpu_millis <= 700 * BUCKET_RATIO + CPU_STEP_MILLIS


def test_fewer_builds_than_the_minimum_keep_the_template_default():
    result = recommend(TEMPLATE, history_of([int(1.2 * GIB)] * 4))
    assert (result.cpu_millis, result.memory_bytes) == (1000, 4 * GIB)
    assert result.source is SizeSource.TEMPLATE


def test_one_build_after_a_quiet_week_is_not_five_builds_of_history():
    """Issue 21: a job is sized from its history "once it has enough history (default: 5
    builds)" of a histogram whose weights halve every half-life. The lifetime count said
    enough for ever: after a week without builds the old weights are 1/128 each, so the
    first new build held 96% of the weight and was the p95 alone; a light one (a build that
    failed early, a docs-only change) sized the next at its peak × 1.15, which the job's
    usual 2 GiB OOM-killed. Until the histogram again holds about two builds' weight, the
    job gets its template's default."""
    history = history_of([2 * GIB] * 10)
    assert recommend(TEMPLATE, history).memory_bytes >= 2 * 1.15 * GIB
    history = history.add_build(peak_memory_bytes=512 * MIB, cpu_p90_millis=300,
                                now=7 * DAY, half_life_seconds=DAY)
    result = recommend(TEMPLATE, history)
    assert (result.source, result.memory_bytes, result.cpu_millis) == \
        (SizeSource.TEMPLATE, 4 * GIB, 1000)
    assert result.builds == 11  # what it has seen is still said
    for i in range(1, 2):  # two builds' weight again: the history speaks
        history = history.add_build(peak_memory_bytes=2 * GIB, cpu_p90_millis=700,
                                    now=7 * DAY + i * 600, half_life_seconds=DAY)
    result = recommend(TEMPLATE, history)
    assert result.source is SizeSource.HISTORY and result.memory_bytes >= 2 * 1.15 * GIB


def test_a_nightly_job_is_sized_from_its_history():
    """One build a day holds about two builds' weight (1 + 1/2 + 1/4 ...): asking five, as a
    first cut of the quiet-week rule did, left every job that builds less than about three
    times a day at its template's default for good."""
    history = history_of([])
    for day in range(10):
        history = history.add_build(peak_memory_bytes=2 * GIB, cpu_p90_millis=700,
                                    now=day * DAY, half_life_seconds=DAY)
    result = recommend(TEMPLATE, history)
    assert result.source is SizeSource.HISTORY and result.memory_bytes >= 2 * 1.15 * GIB


def test_the_result_is_clamped_into_min_and_max():
    big = recommend(TEMPLATE, history_of([100 * GIB] * 5, cpu=64_000))
    assert (big.cpu_millis, big.memory_bytes) == (1000, 16 * GIB)  # CPU: see below
    small = recommend(TEMPLATE, history_of([MIB] * 5, cpu=1))
    assert (small.cpu_millis, small.memory_bytes) == (250, 512 * MIB)


def test_cpu_from_history_only_goes_below_the_templates_default():
    """CPU is compressible: a job that uses 3 cores on a template whose default is 1 keeps
    asking for 1 (a bigger request holds cores that admission by requests counts, so fewer
    builds start under pressure); memory still follows its peaks up. A job that uses 300m
    asks for about that."""
    busy = recommend(TEMPLATE, history_of([6 * GIB] * 5, cpu=3000))
    assert busy.source is SizeSource.HISTORY
    assert busy.cpu_millis == TEMPLATE.cpu.default == 1000
    assert busy.memory_bytes > TEMPLATE.memory.default
    assert cpu_use(TEMPLATE, history_of([6 * GIB] * 5, cpu=3000)) >= 3000  # what it uses
    light = recommend(TEMPLATE, history_of([GIB] * 5, cpu=300))
    assert 300 <= light.cpu_millis <= 300 * BUCKET_RATIO + CPU_STEP_MILLIS


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=64_000))
def test_the_cpu_recommendation_is_never_above_the_default_nor_below_min(cpu):
    result = recommend(TEMPLATE, history_of([GIB] * 5, cpu=cpu))
    assert TEMPLATE.cpu.min <= result.cpu_millis <= TEMPLATE.cpu.default


peaks = st.lists(st.integers(min_value=1, max_value=64 * GIB), min_size=5, max_size=40)


@settings(max_examples=200, deadline=None)
@given(peaks, st.lists(st.integers(min_value=0, max_value=8 * GIB), min_size=40,
                       max_size=40))
def test_the_recommendation_is_monotone_in_observed_peaks(values, extra):
    higher = [v + e for v, e in zip(values, extra)]
    low, high = recommend(TEMPLATE, history_of(values)), recommend(TEMPLATE,
                                                                   history_of(higher))
    assert high.memory_bytes >= low.memory_bytes


@settings(max_examples=200, deadline=None)
@given(peaks)
def test_the_recommendation_never_falls_below_the_p95_peak_within_limits(values):
    result = recommend(TEMPLATE, history_of(values, every=0.0))  # equal weights
    ordered = sorted(values)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    assert result.memory_bytes >= min(TEMPLATE.memory.max, p95)
    assert TEMPLATE.memory.min <= result.memory_bytes <= TEMPLATE.memory.max


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**50), min_size=1, max_size=3000))
def test_history_is_bounded_in_size(values):
    history = history_of(values, every=1.0)
    assert len(history.memory.weights) <= MAX_BUCKETS
    assert len(json.dumps(history.to_dict())) < 40_000


def test_decayed_buckets_are_dropped():
    history = history_of([GIB * (1 + i) for i in range(30)], every=1.0)
    later = history.add_build(peak_memory_bytes=GIB, cpu_p90_millis=100, now=60 * DAY,
                              half_life_seconds=DAY)
    assert len(later.memory.weights) == 1


def test_the_stored_form_round_trips_and_garbage_is_no_history():
    history = history_of([GIB, 2 * GIB, 3 * GIB, GIB, GIB, GIB]).add_oom_kill(
        memory_limit_bytes=GIB, max_bytes=16 * GIB)
    again = UsageHistory.from_dict(json.loads(json.dumps(history.to_dict())))
    assert again == history
    for garbage in (None, "x", {"m": "x", "n": "many"}, {"m": {"w": {"-1": 3, "a": 1}}}):
        parsed = UsageHistory.from_dict(garbage)
        assert parsed.builds == 0 and parsed.memory.total() == 0


def test_an_oom_kill_at_least_doubles_the_next_default_up_to_max():
    history = history_of([int(1.2 * GIB)] * 5)
    before = recommend(TEMPLATE, history).memory_bytes
    killed = history.add_oom_kill(memory_limit_bytes=before, max_bytes=16 * GIB)
    after = recommend(TEMPLATE, killed)
    assert after.memory_bytes >= 2 * before and after.source is SizeSource.OOM
    assert killed.oom_kills == 1
    again = killed.add_oom_kill(memory_limit_bytes=after.memory_bytes, max_bytes=16 * GIB)
    again = again.add_oom_kill(memory_limit_bytes=8 * GIB, max_bytes=16 * GIB)
    assert recommend(TEMPLATE, again).memory_bytes == 16 * GIB


def test_an_oom_kill_before_any_history_doubles_the_template_default():
    killed = UsageHistory().add_oom_kill(memory_limit_bytes=4 * GIB, max_bytes=16 * GIB)
    assert recommend(TEMPLATE, killed).memory_bytes == 8 * GIB


def test_the_oom_floor_gives_way_after_enough_clean_builds():
    killed = history_of([GIB] * 5).add_oom_kill(memory_limit_bytes=2 * GIB,
                                                  max_bytes=16 * GIB)
    for i in range(4):
        killed = killed.add_build(peak_memory_bytes=int(1.5 * GIB), cpu_p90_millis=500,
                                  now=1000.0 + i, half_life_seconds=DAY)
        assert recommend(TEMPLATE, killed).memory_bytes >= 4 * GIB
    killed = killed.add_build(peak_memory_bytes=int(1.5 * GIB), cpu_p90_millis=500,
                              now=2000.0, half_life_seconds=DAY)
    result = recommend(TEMPLATE, killed)
    assert result.source is SizeSource.HISTORY and result.memory_bytes < 4 * GIB
    assert result.memory_bytes >= 1.5 * GIB * 1.15


def test_buckets_are_exponential():
    assert bucket_of(0, MIB) == 0 and bucket_of(MIB, MIB) == 0
    for value in (3 * MIB, GIB, 100 * GIB):
        index = bucket_of(value, MIB)
        assert bucket_end(index - 1, MIB) <= value < bucket_end(index, MIB)
