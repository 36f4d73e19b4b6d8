"""How many CPUs this process may use: what a pod's CPU limit allows, not the node's core count.

`os.cpu_count()` counts the node's cores: a render task limited to 4 CPUs on a 64-core node would fork
64 workers that the kernel then throttles to 4 CPUs' worth of time. The limit is the cgroup's CPU quota
(cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up to whole CPUs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may run on (its affinity), capped by its cgroup's CPU limit; at least 1."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(cgroup)
    return max(1, min(cpus, limit) if limit else cpus)


def cgroup_cpu_limit(cgroup: Path = CGROUP) -> int | None:
    """Whole CPUs the cgroup's quota allows (rounded up), or None without a quota."""
    v2 = cgroup / "cpu.max"
    if v2.is_file():
        return cpu_limit_of_cpu_max(v2.read_text())
    quota, period = cgroup / "cpu" / "cpu.cfs_quota_us", cgroup / "cpu" / "cpu.cfs_period_us"
    if quota.is_file() and period.is_file():
        return cpu_limit_of_quota(int(quota.read_text()), int(period.read_text()))
    return None


def cpu_limit_of_cpu_max(text: str) -> int | None:
    """cgroup v2 `cpu.max`: "QUOTA PERIOD" in microseconds, QUOTA "max" for none."""
    quota, _, period = text.strip().partition(" ")
    return None if quota == "max" else cpu_limit_of_quota(int(quota), int(period or 100_000))


def cpu_limit_of_quota(quota_us: int, period_us: int) -> int | None:
    """A CFS quota per period (v1: -1 for none) as whole CPUs."""
    return None if quota_us <= 0 or period_us <= 0 else math.ceil(quota_us / period_us)
