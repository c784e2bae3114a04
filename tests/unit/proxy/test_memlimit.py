"""The child's memory limit: size parsing and cgroup discovery as pure logic, then real cgroups and a
real RLIMIT_AS with real processes that allocate more than they may."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from elastic_proxy.proxy.memlimit import (
    BASE_DIR_NAME,
    CgroupLocation,
    MemoryLimit,
    memory_cgroup_locations,
    parse_mountinfo,
    parse_size,
)

MiB = 1 << 20

# A hybrid host like this one: memory on v1, v2 mounted with no controllers.
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/abc
1:cpu:/
0::/
"""
# A unified host (systemd, cgroup v2 only), optional mount fields present.
V2_MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
V2_CGROUP = "0::/user.slice/user-1000.slice/session-3.scope\n"


def _child(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], **kwargs)


ALLOCATE = "import sys; data = b'x' * ({size}); sys.stdout.write('allocated'); sys.stdout.flush()"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("2G", 2 << 30),
        ("2g", 2 << 30),
        ("512M", 512 * MiB),
        ("512MiB", 512 * MiB),
        ("512mb", 512 * MiB),
        ("64KiB", 64 << 10),
        ("1T", 1 << 40),
        ("1.5G", 3 << 29),
        (" 100 B ", 100),
    ],
)
def test_parse_size_accepts_bytes_and_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "2X", "-1G", "2 G B", "0", "0M", "1e9", "two gigs"])
def test_parse_size_rejects_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_size(text)


def test_mountinfo_parsing_unescapes_and_reads_controllers() -> None:
    text = r"50 31 0:40 / /mnt/my\040cgroups rw - cgroup cgroup rw,memory,cpu" + "\n" + V2_MOUNTINFO
    mounts = parse_mountinfo(text)
    assert [(m.version, m.mount_point) for m in mounts] == [(1, "/mnt/my cgroups"), (2, "/sys/fs/cgroup")]
    assert mounts[0].controllers == {"rw", "memory", "cpu"}


def test_locations_on_a_hybrid_host_find_the_v1_memory_cgroup_first() -> None:
    locations = memory_cgroup_locations(HYBRID_CGROUP, HYBRID_MOUNTINFO)
    assert locations == [
        CgroupLocation(1, Path("/sys/fs/cgroup/memory/process_api/abc"), Path("/sys/fs/cgroup/memory")),
        CgroupLocation(2, Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/unified")),
    ]


def test_locations_on_a_v2_host() -> None:
    assert memory_cgroup_locations(V2_CGROUP, V2_MOUNTINFO) == [
        CgroupLocation(
            2,
            Path("/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope"),
            Path("/sys/fs/cgroup"),
        )
    ]


def test_locations_respect_the_mount_root_of_a_container() -> None:
    mountinfo = "60 50 0:32 /docker/c1 /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
    inside = memory_cgroup_locations("4:memory:/docker/c1/sub\n", mountinfo)
    assert inside == [
        CgroupLocation(1, Path("/sys/fs/cgroup/memory/sub"), Path("/sys/fs/cgroup/memory"))
    ]
    assert memory_cgroup_locations("4:memory:/other\n", mountinfo) == []


def test_no_cgroup_mounts_means_no_locations() -> None:
    assert memory_cgroup_locations(HYBRID_CGROUP, "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n") == []


def test_v2_file_handling_on_a_fake_tree(tmp_path: Path) -> None:
    """cgroup v2 is not mounted with memory on this host: check on plain files that we pick the
    parent when our own cgroup holds processes, enable memory for the base, and write the limits."""
    root = tmp_path / "cg"
    own = root / "user.slice" / "session.scope"
    own.mkdir(parents=True)
    (root / "user.slice" / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "user.slice" / "cgroup.subtree_control").write_text("memory pids\n")
    (own / "cgroup.controllers").write_text("memory pids\n")
    (own / "cgroup.subtree_control").mkdir()  # writing here fails, like EBUSY for a cgroup with processes
    base = root / "user.slice" / BASE_DIR_NAME
    base.mkdir()  # as a kernel makes it: with an empty control file
    (base / "cgroup.subtree_control").write_text("")

    limit = MemoryLimit.in_cgroup_v2(CgroupLocation(2, own, root), "kernel-1", 64 * MiB)
    assert limit.mechanism == "cgroup-v2"
    assert limit.cgroup == base / f"{os.getpid()}-kernel-1"
    assert (base / "cgroup.subtree_control").read_text() == "+memory"
    assert (limit.cgroup / "memory.max").read_text() == str(64 * MiB)
    (limit.cgroup / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n")
    (limit.cgroup / "memory.current").write_text("1234\n")
    assert limit.oom_kill_count() == 2
    assert limit.usage_bytes() == 1234


def test_create_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="cgroup name"):
        MemoryLimit.create(64 * MiB, "../escape")
    with pytest.raises(ValueError, match="more than 0"):
        MemoryLimit.create(0, "kernel")


@pytest.fixture
def cgroup_limit():
    """A real 64 MiB cgroup for one test; skipped only where no memory cgroup is writable."""
    limit = MemoryLimit.create(64 * MiB, f"test-{uuid.uuid4().hex[:12]}")
    if limit.mechanism == "rlimit":
        pytest.skip(f"no writable memory cgroup on this host: {limit.warning}")
    yield limit
    limit.remove()


def test_cgroup_limit_files_hold_the_limit(cgroup_limit: MemoryLimit) -> None:
    assert cgroup_limit.warning is None
    if cgroup_limit.mechanism == "cgroup-v1":
        assert int((cgroup_limit.cgroup / "memory.limit_in_bytes").read_text()) == 64 * MiB
        memsw = cgroup_limit.cgroup / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert int(memsw.read_text()) == 64 * MiB
    else:
        assert int((cgroup_limit.cgroup / "memory.max").read_text()) == 64 * MiB


def test_child_over_the_limit_is_oom_killed_and_counted(cgroup_limit: MemoryLimit) -> None:
    before = cgroup_limit.oom_kill_count()
    child = _child(ALLOCATE.format(size=512 * MiB), preexec_fn=cgroup_limit.preexec, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert out == b""
    assert cgroup_limit.oom_kill_count() > before


def test_child_under_the_limit_runs_inside_the_cgroup(cgroup_limit: MemoryLimit) -> None:
    code = ALLOCATE.format(size=32 * MiB) + "; sys.stdin.read()"
    child = _child(code, preexec_fn=cgroup_limit.preexec, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.read(len("allocated")) == b"allocated"
    procs = (cgroup_limit.cgroup / "cgroup.procs").read_text().split()
    usage = cgroup_limit.usage_bytes()
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    assert procs == [str(child.pid)]
    assert 32 * MiB <= usage <= 64 * MiB
    assert cgroup_limit.oom_kill_count() == 0


def test_remove_deletes_the_cgroup_and_the_empty_base(cgroup_limit: MemoryLimit) -> None:
    child = _child("pass", preexec_fn=cgroup_limit.preexec)
    assert child.wait(timeout=30) == 0
    other = MemoryLimit.create(64 * MiB, f"test-{uuid.uuid4().hex[:12]}")
    cgroup_limit.remove()
    assert not cgroup_limit.cgroup.exists()
    assert other.cgroup.parent.exists(), "the base is shared while another child uses it"
    with other:
        pass
    assert not other.cgroup.exists()
    base = other.cgroup.parent
    # Another supervisor on this machine (a second test run) may hold a cgroup there: then it stays.
    assert not base.exists() or any(p.is_dir() for p in base.iterdir()), "an empty base is removed"


def test_create_replaces_an_empty_cgroup_of_the_same_name(cgroup_limit: MemoryLimit) -> None:
    name = cgroup_limit.cgroup.name.split("-", 1)[1]
    assert cgroup_limit.cgroup.name == f"{os.getpid()}-{name}"
    (cgroup_limit.cgroup / "memory.limit_in_bytes").write_text(str(16 * MiB))
    again = MemoryLimit.create(64 * MiB, name)
    assert again.cgroup == cgroup_limit.cgroup
    assert int((again.cgroup / "memory.limit_in_bytes").read_text()) == 64 * MiB


def test_create_sweeps_empty_leaves_of_dead_supervisors_only(cgroup_limit: MemoryLimit) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    base = cgroup_limit.cgroup.parent
    dead_owner, live_owner = base / f"{finished.pid}-0", base / "1-0"
    dead_owner.mkdir()
    live_owner.mkdir()
    try:
        with MemoryLimit.create(64 * MiB, "sweeper"):
            assert not dead_owner.exists()
            assert live_owner.exists()
            assert cgroup_limit.cgroup.exists()
    finally:
        live_owner.rmdir()


def test_rlimit_fallback_gives_memory_error_not_a_kill() -> None:
    limit = MemoryLimit.with_rlimit(256 * MiB, "testing the fallback")
    assert limit.mechanism == "rlimit"
    assert limit.warning.startswith("testing the fallback; ")
    over = _child(ALLOCATE.format(size=512 * MiB), preexec_fn=limit.preexec, stderr=subprocess.PIPE)
    _, err = over.communicate(timeout=60)
    assert over.returncode == 1
    assert b"MemoryError" in err
    under = _child(ALLOCATE.format(size=32 * MiB), preexec_fn=limit.preexec, stdout=subprocess.PIPE)
    assert under.communicate(timeout=60)[0] == b"allocated"
    assert under.returncode == 0
    assert limit.oom_kill_count() == 0
    assert limit.usage_bytes() is None
