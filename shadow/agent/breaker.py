"""The circuit breaker that keeps a dead agent from piling up work."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from shadow.errors import ConfigError

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive failures; open rejects calls for
    ``reset_after`` seconds, then half_open lets ONE trial call through; success closes,
    failure re-opens. Clock injected (callable returning monotonic seconds).

    A trial whose result is never recorded (its caller was cancelled) expires after
    ``reset_after`` seconds, when the next caller gets the trial instead, so the breaker
    cannot stay half-open for ever. A success in any state closes it: the agent answered.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_after < 0:
            raise ConfigError(f"reset_after must be 0 seconds or more, got {reset_after}")
        self.failure_threshold = failure_threshold
        self.reset_after = float(reset_after)
        self._clock = clock
        self._open = False
        self._failures = 0
        self._opened_at = 0.0
        self._trial_at: float | None = None  # when the half-open trial started

    @property
    def state(self) -> BreakerState:
        if not self._open:
            return "closed"
        if self._trial_at is None and self._clock() - self._opened_at < self.reset_after:
            return "open"
        return "half_open"

    @property
    def failures(self) -> int:
        """Consecutive failures recorded since the last success."""
        return self._failures

    @property
    def retry_after(self) -> float:
        """Seconds until a trial call is allowed (0 when closed or already due)."""
        if not self._open:
            return 0.0
        since = self._opened_at if self._trial_at is None else self._trial_at
        return max(0.0, self.reset_after - (self._clock() - since))

    def allow(self) -> bool:
        """May a call go to the agent now? In half_open, True for one trial caller only."""
        if not self._open:
            return True
        now = self._clock()
        since = self._opened_at if self._trial_at is None else self._trial_at
        if now - since < self.reset_after:
            return False
        self._trial_at = now
        return True

    def record_success(self) -> None:
        self._open = False
        self._failures = 0
        self._trial_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self._trial_at is not None or (
            not self._open and self._failures >= self.failure_threshold
        ):
            self._open = True
            self._opened_at = self._clock()
            self._trial_at = None
        # A late failure while open (a call that started before it opened) is counted but
        # does not push the trial further out.
