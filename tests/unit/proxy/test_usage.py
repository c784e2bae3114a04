"""usage_reply's figures for the child's process tree, with real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from elastic_proxy.proxy.supervisor import process_tree_usage


def test_a_process_that_ended_after_it_was_listed_is_left_out():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    listed = psutil.Process(ended.pid)  # listed while alive, like a checkpoint writer about to finish
    ended.wait()
    usage = process_tree_usage([psutil.Process(os.getpid()), listed])  # no NoSuchProcess
    assert set(usage) == {"kernel_cpu", "kernel_memory"}
    assert usage["kernel_memory"] > 10 * 2**20  # this interpreter's, still counted


def test_memory_is_summed_over_the_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        proc = psutil.Process(child.pid)
        while proc.memory_info().rss < 64 << 20:
            pass
        own = psutil.Process(os.getpid())
        both = process_tree_usage([own, proc])["kernel_memory"]
        assert both >= own.memory_info().rss + (60 << 20)
    finally:
        child.kill()
        child.wait()
