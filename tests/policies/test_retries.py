import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from placement_actors import InvalidSpecError
from placement_actors.policies.retries import RetryBackoff


@pytest.mark.parametrize(
    ("failures", "wait_s"),
    [
        (1, 5.0),  # the first try again waits first_s
        (2, 10.0),
        (3, 20.0),
        (6, 160.0),
        (7, 300.0),  # 320 is past the cap
        (10**9, 300.0),  # however many failed
        (0, 5.0),  # no failure yet counts as the first
    ],
)
def test_each_failure_in_a_row_doubles_the_wait_up_to_its_cap(failures: int, wait_s: float) -> None:
    assert RetryBackoff(first_s=5, longest_s=300).delay_s(failures) == wait_s


@given(
    first_s=st.floats(min_value=0.001, max_value=100),
    longest_s=st.floats(min_value=100, max_value=86_400),
    failures=st.integers(min_value=1, max_value=10**6),
)
def test_a_wait_never_shrinks_and_stays_between_first_and_longest(
    first_s: float, longest_s: float, failures: int
) -> None:
    backoff = RetryBackoff(first_s=first_s, longest_s=longest_s)
    wait = backoff.delay_s(failures)
    assert first_s <= wait <= longest_s
    assert backoff.delay_s(failures + 1) >= wait


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"first_s": 0}, "first_s"),
        ({"first_s": -1}, "first_s"),
        ({"first_s": math.nan}, "first_s"),
        ({"longest_s": math.inf}, "longest_s"),
        ({"reset_after_s": "10"}, "reset_after_s"),
        ({"first_s": True}, "first_s"),
        ({"first_s": 60, "longest_s": 30}, "first_s"),  # the waits would shrink
    ],
)
def test_a_backoff_out_of_range_is_refused_naming_its_field(
    settings: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        RetryBackoff(**settings)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("failures", "latest_try_s", "now_s", "counted"),
    [
        (0, None, 100.0, 1),  # the first failure
        (3, 90.0, 100.0, 4),  # soon after the latest try: one more in the run
        (3, 90.0, 690.0, 4),  # exactly reset_after_s later: still the same run
        (3, 90.0, 690.5, 1),  # quiet for longer: a new run
        (8, 1_000.0, 700.0, 9),  # the try is not due yet: the run goes on
    ],
)
def test_a_failure_long_after_the_latest_try_starts_a_new_run(
    failures: int, latest_try_s: float | None, now_s: float, counted: int
) -> None:
    backoff = RetryBackoff(first_s=5, longest_s=300, reset_after_s=600)
    assert backoff.failures_now(failures, latest_try_s, now_s) == counted


def test_a_try_that_takes_its_whole_ready_timeout_to_fail_keeps_the_run_going() -> None:
    """Tries that each fail 300 s after they were made reach the cap and stay there."""
    backoff = RetryBackoff(first_s=5, longest_s=900, reset_after_s=600)
    failures, due, now, waits = 0, None, 0.0, []
    for _ in range(10):
        failures = backoff.failures_now(failures, due, now)
        waits.append(backoff.delay_s(failures))
        due = now + waits[-1]
        now = due + 300  # the try's group fails after a 300 s ready timeout
    assert waits == [5, 10, 20, 40, 80, 160, 320, 640, 900, 900]
