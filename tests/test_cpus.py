"""The CPUs a process may use: a pod's CPU limit (its cgroup quota), not the node's core count."""

import os

import pytest

from components.core.cpus import cgroup_cpu_limit, cpu_limit_of_cpu_max, cpu_limit_of_quota, usable_cpus


@pytest.mark.parametrize("text, cpus", [("max 100000\n", None), ("400000 100000\n", 4), ("150000 100000", 2),
                                        ("50000 100000", 1), ("200000", 2)])
def test_a_cgroup_v2_cpu_max_reads_as_whole_cpus(text, cpus):
    assert cpu_limit_of_cpu_max(text) == cpus


def test_a_cgroup_v1_quota_reads_as_whole_cpus():
    assert cpu_limit_of_quota(-1, 100_000) is None  # no limit
    assert cpu_limit_of_quota(250_000, 100_000) == 3


def test_a_pod_limited_to_fewer_cpus_than_the_node_has_uses_its_limit(tmp_path):
    """The cgroup files as a pod with `limits: {cpu: "1"}` sees them (v2, then v1)."""
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1 and usable_cpus(tmp_path) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) is None and usable_cpus(v1) == len(os.sched_getaffinity(0))
    assert cgroup_cpu_limit(tmp_path / "none") is None
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))  # this machine's own cgroup
