"""When the service tries again what did not work: a failed replica, a removal Ray refused.

A pure schedule. A replica whose placement group failed, or that could not be placed again
after its node was lost, is tried again after `RetryBackoff.delay_s` of its run of failures:
``first_s``, then twice that, and so on up to ``longest_s``. A failure ``reset_after_s`` after
the latest try (the time a try takes to fail, a group's ready timeout, is not quiet time
before it) starts again from ``first_s``. The same schedule paces the
service's catch-up (removals Ray refused, records the store refused) when no message arrives
to carry it.
"""

from __future__ import annotations

from dataclasses import dataclass

from placement_actors.domain.errors import InvalidSpecError
from placement_actors.domain.validation import check_timeout

__all__ = ["RetryBackoff"]

_MAX_DOUBLINGS = 60
"""``2 ** failures`` is never computed past this (any cap is reached long before)."""


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    """Exponential backoff between tries: ``first_s``, doubled per failure, at most ``longest_s``.

    Attributes:
        first_s: the wait before the first try again.
        longest_s: the longest wait, however many tries failed.
        reset_after_s: a failure this long after the latest try starts again from ``first_s``.

    Raises:
        InvalidSpecError: a value is not a number of seconds in (0, one day], or ``first_s`` is
            longer than ``longest_s``.
    """

    first_s: float = 5.0
    longest_s: float = 300.0
    reset_after_s: float = 600.0

    def __post_init__(self) -> None:
        """Check each value, and that the waits grow up to their cap."""
        check_timeout(self.first_s, "first_s")
        check_timeout(self.longest_s, "longest_s")
        check_timeout(self.reset_after_s, "reset_after_s")
        if self.first_s > self.longest_s:
            msg = (
                f"first_s ({self.first_s:g}) must not be longer than longest_s ({self.longest_s:g})"
            )
            raise InvalidSpecError(msg, field="first_s")

    def delay_s(self, failures: int) -> float:
        """The wait before the next try, after ``failures`` tries in a row failed (at least 1)."""
        doublings = min(max(failures, 1) - 1, _MAX_DOUBLINGS)
        return min(self.first_s * 2.0**doublings, self.longest_s)

    def failures_now(self, failures: int, latest_try_s: float | None, now_s: float) -> int:
        """Failures in a row, this one counted: ``failures`` before it, and one more.

        ``latest_try_s`` is when the latest try was due (``None``: none yet); a failure more
        than ``reset_after_s`` after it is the first of a new run.
        """
        if latest_try_s is None or now_s - latest_try_s > self.reset_after_s:
            return 1
        return failures + 1
