"""Which command-line arguments are the supervisor's and which go to the child."""

from __future__ import annotations

import pytest

from elastic_proxy.proxy.app import split_child_arguments

KNOWN = {"f", "memory-limit", "no-restore", "child-kernel"}


@pytest.mark.parametrize("argv, ours, child", [
    (["-f", "c.json"], ["-f", "c.json"], []),
    (["-f", "c.json", "--profile-dir", "/tmp/p"], ["-f", "c.json"], ["--profile-dir", "/tmp/p"]),
    (["-f", "c.json", "--profile-dir=/tmp/p", "--no-restore"], ["-f", "c.json", "--no-restore"],
     ["--profile-dir=/tmp/p"]),
    (["--IPKernelApp.trio_loop", "-f", "c.json"], ["-f", "c.json"], ["--IPKernelApp.trio_loop"]),
    (["--SupervisorApp.storm_limit=3", "--memory-limit", "2G"], ["--SupervisorApp.storm_limit=3", "--memory-limit",
                                                                "2G"], []),
])
def test_split(argv, ours, child):
    assert split_child_arguments(argv, KNOWN) == (ours, child)
