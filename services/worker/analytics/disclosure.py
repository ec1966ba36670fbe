"""The privacy rule every result obeys: no number may rest on fewer than `min_group_size` rows.

Rows never reach the researcher, only aggregates; an aggregate over one row (a group of one, a
cluster of one, a histogram bin holding one value) is that row. So every analysis either refuses a
job whose shape can only give small groups (k-means with k > rows / min_group_size, a version with
fewer rows than the minimum) or suppresses the small groups it finds, saying how many it left out.

The minimum is the operator's: DATACOOP_WORKER_MIN_GROUP_SIZE (default 10). A job offer that
carries the version's k-anonymity `k` raises it to that k where it is larger.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.worker.column_types import DEFAULT_MIN_GROUP_SIZE

__all__ = ["DEFAULT_MIN_GROUP_SIZE", "MIN_GROUP_SIZE_ENV", "configured_min_group_size", "min_group_size_for"]

MIN_GROUP_SIZE_ENV = "DATACOOP_WORKER_MIN_GROUP_SIZE"


def configured_min_group_size(environ: Mapping[str, str] | None = None) -> int:
    """DATACOOP_WORKER_MIN_GROUP_SIZE as a whole number >= 1 (default 10); ValueError naming the
    variable and what to set otherwise."""
    raw = (os.environ if environ is None else environ).get(MIN_GROUP_SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_MIN_GROUP_SIZE
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MIN_GROUP_SIZE_ENV}={raw!r} is not a whole number >= 1; set the fewest rows a "
                         f"reported group may rest on (default {DEFAULT_MIN_GROUP_SIZE}), or unset it")
    return value


def min_group_size_for(offer: Mapping[str, object], configured: int) -> int:
    """The minimum for one job: the operator's, or the version's k where the offer carries a larger one."""
    k = offer.get("k")
    return max(configured, k) if isinstance(k, int) and not isinstance(k, bool) else configured
