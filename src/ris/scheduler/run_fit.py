"""How long a lane's task will run, learned from the runs it finished: a fixed part (start-up,
text encoding, the VAE's decode, the result's write) and a part per unit of work
(TaskSpec.work: an image's steps times its pixels), fitted to the recent runs.

Dividing each run by its work alone ("seconds per unit") made a 2-step 64 px image, whose run
is nearly all fixed cost, teach 45 s per unit: a 40-step 512 px image behind it was told 30
minutes for 12 s. A least-squares line through (work, seconds) over exponentially weighted
moments (each run 0.2 of the estimate, as the lane's mean run time has always been kept)
keeps both parts. The prior is one run of one unit taking the initial estimate, outvoted as
runs come; while all the runs seen have one size the estimate is their mean (extrapolating
from one size is a guess either way, and a task's own progress corrects its ETA from its
first step).
"""

from __future__ import annotations

ALPHA = 0.2  # a run's weight in the moments (the last few runs count most)


class RunFit:
    """seconds ~ fixed + per_unit * work over the runs seen, exponentially weighted."""

    def __init__(self, initial_s: float, initial_work: float = 1.0) -> None:
        # Weighted means of work, seconds, work^2 and work*seconds; the prior as one run (of
        # `initial_work` units: a first observation's own size, where it is one).
        w = initial_work
        self._w, self._t, self._ww, self._wt = w, initial_s, w * w, w * initial_s

    def add(self, seconds: float, work: float) -> None:
        a, b = ALPHA, 1.0 - ALPHA
        self._w = b * self._w + a * work
        self._t = b * self._t + a * seconds
        self._ww = b * self._ww + a * work * work
        self._wt = b * self._wt + a * work * seconds

    @property
    def mean_s(self) -> float:
        """The weighted mean run, whatever its size."""
        return self._t

    def line(self) -> tuple[float, float]:
        """(fixed seconds, seconds per unit of work): a run of w units takes fixed + per_unit * w,
        n runs of W units in all n * fixed + per_unit * W."""
        mean_w, mean_t = self._w, self._t
        var = self._ww - mean_w * mean_w
        if var <= 1e-6 * max(mean_w * mean_w, 1e-12):
            return mean_t, 0.0  # one size so far: what it took
        per_unit = max(0.0, (self._wt - mean_w * mean_t) / var)
        fixed = mean_t - per_unit * mean_w
        if fixed < 0.0:  # the line through the origin instead: no negative start-up
            return 0.0, mean_t / mean_w
        return fixed, per_unit

    def estimate(self, work: float) -> float:
        """Seconds a run of `work` units is expected to take."""
        fixed, per_unit = self.line()
        return fixed + per_unit * work
