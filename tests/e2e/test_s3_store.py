"""Checkpoints through S3: a real S3 API server (moto's standalone server) on loopback, real
kernels through jupyter_client, s3fs unmocked.

Each "host" has its own HOME, Jupyter data and runtime dirs, working dir and blob cache, and
its own copy of the shared HMAC secret (as a Kubernetes secret mounted on two pods). The server
sits behind tests/s3_server.FaultGateway, a TCP relay the fault tests stop, restart or make
answer 500/503. Where the machine allows it (root and `ip netns`), the two-host test also runs
each host's kernel in its own network namespace, reaching S3 over a veth pair. The tests marked
s3_slow run with `make test-s3`, not in `make test`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from jupyter_client import KernelManager

from tests.e2e.harness import KERNEL_NAME, run, stdout_of
from tests.s3_server import CREDENTIALS, FaultGateway, MotoServer, client_env, make_bucket

pytestmark = [pytest.mark.timeout(240), pytest.mark.s3]

BUCKET = "checkpoints"
NOTEBOOK = "work/analysis.ipynb"
WAIT = ("print(__import__('elastic_proxy.inner_agent', fromlist=['_']).get_agent(get_ipython())"
        ".checkpointer.wait(120))")
STATE_CELLS = [
    "import numpy as np\nbig = np.random.default_rng().random(1_000_000)",
    "table = {'a': [1, 2, 3], 'b': {'c': 'text'}}\nwords = ['x'] * 1000",
    "class Point:\n    def __init__(self, x):\n        self.x = x\np = Point(big[:10].copy())",
    "big[12345] = -1.0\ntable['a'].append(4)",
]
DIGEST = ("import hashlib, pickle\nprint(hashlib.sha256(big.tobytes()).hexdigest(), repr(table), len(words),"
          " type(p).__name__, p.x.tolist())")


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        make_bucket(server.endpoint, BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway(s3: MotoServer) -> Iterator[FaultGateway]:
    gate = FaultGateway(("127.0.0.1", s3.port)).up()
    yield gate
    gate.down()


@dataclass
class Host:
    """One machine of the cluster, as far as a kernel can tell."""

    root: Path
    endpoint: str
    secret: bytes
    netns: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    secret_in_env: bool = False  # ELASTIC_PROXY_SECRET (a secretKeyRef) rather than a mounted file

    def __post_init__(self) -> None:
        for sub in ("home/work", "data"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # short: ipc socket paths (the netns hosts' transport) must fit in 107 bytes
        self.runtime = Path(tempfile.mkdtemp(prefix="ep-"))
        secret_file = self.root / "secret"
        secret_file.write_bytes(self.secret)
        secret_file.chmod(0o600)
        self.log = self.root / "kernel.log"

    @property
    def cache(self) -> Path:
        return self.root / "data" / "elastic-proxy" / "blob-cache"

    def env(self, prefix: str) -> dict[str, str]:
        home = self.root / "home"
        keep = {k: v for k, v in os.environ.items()
                if k in ("PATH", "LANG", "JUPYTER_PATH", "JUPYTER_CONFIG_DIR", "JUPYTER_PLATFORM_DIRS")}
        return {
            **keep,
            **client_env(self.endpoint),
            "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
            "HOME": str(home),
            "JUPYTER_DATA_DIR": str(self.root / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "IPYTHONDIR": str(self.root / "ipython"),
            "JPY_SESSION_NAME": str(home / NOTEBOOK),  # what jupyter_server 2.x sets: an absolute path
            "ELASTIC_PROXY_STORE": f"s3://{BUCKET}/{prefix}",
            **({"ELASTIC_PROXY_SECRET": self.secret.hex()} if self.secret_in_env
               else {"ELASTIC_PROXY_SECRET_FILE": str(self.root / "secret")}),
            **self.extra_env,
        }

    @contextlib.contextmanager
    def kernel(self, prefix: str, kernel_name: str = KERNEL_NAME) -> Iterator[tuple[KernelManager, object]]:
        km = KernelManager(kernel_name=kernel_name, transport="ipc" if self.netns else "tcp",
                           connection_file=str(self.runtime / f"k-{uuid.uuid4().hex[:8]}.json"))
        with open(self.log, "ab") as log:
            km.start_kernel(env=self.env(prefix), cwd=str(self.root / "home" / "work"), stdout=log, stderr=log)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=90)
            yield km, kc
        finally:
            kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=True)


def ok(kc, code: str, timeout: float = 120) -> str:
    reply, outputs = run(kc, code, timeout=timeout)
    assert reply["status"] == "ok", (code, reply, outputs)
    return stdout_of(outputs)


def all_text(outputs: list[dict]) -> str:
    return json.dumps([m["content"] for m in outputs])


def kill_host(km: KernelManager) -> None:
    """SIGKILL every process of the host's kernel at once: supervisor, child, checkpoint writers."""
    top = psutil.Process(km.provisioner.process.pid)
    procs = [top, *top.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def build_state(kc) -> str:
    for cell in STATE_CELLS:
        ok(kc, cell)
    assert ok(kc, WAIT).strip() == "True"
    return ok(kc, DIGEST)


def store_of(host: Host, prefix: str):
    """The test's own view of the store (the same secret), to check every generation."""
    from elastic_proxy.store import open_store

    options = {"key": CREDENTIALS["AWS_ACCESS_KEY_ID"], "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
               "endpoint_url": host.endpoint}
    saved = os.environ.get("ELASTIC_PROXY_CACHE")
    os.environ["ELASTIC_PROXY_CACHE"] = "off"
    try:
        return open_store(NOTEBOOK, f"s3://{BUCKET}/{prefix}", secret_file=str(host.root / "secret"),
                          storage_options=options)
    finally:
        if saved is None:
            os.environ.pop("ELASTIC_PROXY_CACHE")
        else:
            os.environ["ELASTIC_PROXY_CACHE"] = saved


def assert_every_generation_sound(host: Host, prefix: str) -> int:
    """Every manifest verifies and every blob it names is there and matches its hash."""
    store = store_of(host, prefix)
    manifests = store.generations(check_blobs=True)
    assert manifests, "nothing was committed"
    for manifest in manifests:
        assert manifest.valid, (manifest.generation, manifest.problem)
        assert store.verify(manifest) == [], manifest.generation
    return len(manifests)


def two_hosts(tmp_path: Path, endpoint_a: str, endpoint_b: str | None = None, **extra: str) -> tuple[Host, Host]:
    secret = os.urandom(32)
    return (Host(tmp_path / "host-a", endpoint_a, secret, extra_env=dict(extra)),
            Host(tmp_path / "host-b", endpoint_b or endpoint_a, secret, extra_env=dict(extra), secret_in_env=True))


def migrate(host_a: Host, host_b: Host, prefix: str, how: str, kernel_name: str = KERNEL_NAME) -> str:
    """Host A builds the state and dies (or shuts down); host B restores it. Returns what B showed."""
    with host_a.kernel(prefix, kernel_name) as (km, kc):
        before = build_state(kc)
        if how == "sigkill":
            kill_host(km)
        else:
            km.shutdown_kernel(now=False)
    assert not host_b.cache.exists() or not any(host_b.cache.iterdir())
    with host_b.kernel(prefix, kernel_name) as (_, kc):
        reply, outputs = run(kc, DIGEST)
        assert reply["status"] == "ok", (reply, outputs)
        assert stdout_of(outputs) == before
        assert "restored" in all_text(outputs)
        assert "True" in ok(kc, "print(big[12345] == -1.0 and table['a'][-1] == 4)")
        _, status = run(kc, "%elastic status")
        _, listing = run(kc, "%elastic checkpoints")
    assert_every_generation_sound(host_a, prefix)
    return all_text(outputs + status + listing)


@pytest.mark.parametrize("how", ["sigkill", pytest.param("shutdown", marks=pytest.mark.s3_slow)])
def test_a_session_moves_to_another_host_through_s3(tmp_path, gateway, s3, how):
    host_a, host_b = two_hosts(tmp_path, gateway.endpoint)
    prefix = f"move-{how}-{uuid.uuid4().hex[:6]}"
    shown = migrate(host_a, host_b, prefix, how)
    blobs_on_b = list(host_b.cache.rglob("*"))
    assert any(p.is_file() for p in blobs_on_b), "host B's restore did not fill its cache"
    assert_no_secret_in([shown.encode(), host_a.log.read_bytes(), host_b.log.read_bytes(),
                         *manifests_of(s3, prefix)], host_a.secret)


def manifests_of(s3: MotoServer, prefix: str) -> list[bytes]:
    import s3fs

    fs = s3fs.S3FileSystem(key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=s3.endpoint, skip_instance_cache=True)
    found = [fs.cat_file(p) for p in fs.find(f"{BUCKET}/{prefix}") if p.endswith(".json")]
    assert found
    return found


def assert_no_secret_in(texts: list[bytes], hmac_secret: bytes) -> None:
    """Neither the AWS credentials nor the signing secret (raw or hex) in any of them."""
    for text in texts:
        for secret in (CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode(), CREDENTIALS["AWS_ACCESS_KEY_ID"].encode(),
                       hmac_secret, hmac_secret.hex().encode()):
            assert secret not in text


CHECKPOINTER = "ck = __import__('elastic_proxy.inner_agent', fromlist=['_']).get_agent(get_ipython()).checkpointer\n"


@pytest.mark.s3_slow
def test_upload_survives_the_server_going_away_and_coming_back(tmp_path, gateway):
    host_a, host_b = two_hosts(tmp_path, gateway.endpoint, AWS_MAX_ATTEMPTS="2")
    prefix = f"down-{uuid.uuid4().hex[:6]}"
    with host_a.kernel(prefix) as (km, kc):
        before = build_state(kc)
        ok(kc, "big2 = np.random.default_rng().random(8_000_000)")  # 64 MB: the writer uploads a while
        in_flight = ok(kc, CHECKPOINTER + "print(ck.status()['in_flight'] is not None)")
        gateway.down()
        assert in_flight.strip() == "True", "the upload ended before the server went away"
        reply, outputs = run(kc, "big3 = big2[:5].copy()", timeout=180)
        assert reply["status"] == "ok"
        reply, shown = run(kc, CHECKPOINTER + "ck.wait(150)\nprint(ck.status()['last_error'])", timeout=180)
        assert reply["status"] == "ok"
        assert "Errno" in stdout_of(shown), all_text(shown)  # the failure, as the store reported it
        told = all_text(outputs + shown)
        assert "checkpoint failed, the previous one is kept" in told, told  # and the user was told, once
        good = assert_every_generation_sound_offline(host_a, prefix, gateway)
        gateway.up()
        ok(kc, "z = 1")
        assert ok(kc, WAIT).strip() == "True"
        after = ok(kc, DIGEST)
        assert after == before
        digest2 = ok(kc, "print(hashlib.sha256(big2.tobytes()).hexdigest())")
        kill_host(km)
    assert assert_every_generation_sound(host_a, prefix) > good
    with host_b.kernel(prefix) as (_, kc):
        assert ok(kc, DIGEST) == before
        assert ok(kc, "print(hashlib.sha256(big2.tobytes()).hexdigest())") == digest2


def assert_every_generation_sound_offline(host: Host, prefix: str, gateway: FaultGateway) -> int:
    """The same check while the gateway is down: through a second gateway to the same server."""
    side = FaultGateway(gateway.target).up()
    try:
        return assert_every_generation_sound(Host(host.root, side.endpoint, host.secret), prefix)
    finally:
        side.down()


@pytest.mark.s3_slow
@pytest.mark.parametrize("status", [503, 500])
def test_a_throttling_or_failing_server_for_a_while(tmp_path, gateway, status):
    host_a, host_b = two_hosts(tmp_path, gateway.endpoint)
    prefix = f"http{status}-{uuid.uuid4().hex[:6]}"
    with host_a.kernel(prefix) as (km, kc):
        build_state(kc)
        gateway.answer(status)
        ok(kc, "extra = np.arange(2_000_000)\ntable['late'] = True")
        time.sleep(3.0)
        gateway.relay()
        ok(kc, "w = 2")
        assert ok(kc, WAIT).strip() == "True"
        before = ok(kc, DIGEST + "\nprint(int(extra.sum()), table.get('late'), w)")
        kill_host(km)
    assert gateway.requests_failed > 0
    assert_every_generation_sound(host_a, prefix)
    with host_b.kernel(prefix) as (_, kc):
        assert ok(kc, DIGEST + "\nprint(int(extra.sum()), table.get('late'), w)") == before


def test_a_corrupted_disk_cache_is_never_loaded(tmp_path, gateway):
    host_a, _ = two_hosts(tmp_path, gateway.endpoint)
    prefix = f"cache-{uuid.uuid4().hex[:6]}"
    with host_a.kernel(prefix) as (km, kc):
        before = build_state(kc)
        kill_host(km)
    entries = sorted(p for p in host_a.cache.rglob("*") if p.is_file())
    assert len(entries) > 10
    for path in entries:  # every cached blob damaged: flipped bytes or cut short
        data = bytearray(path.read_bytes())
        if len(data) > 100:
            data[len(data) // 2] ^= 0xFF
        else:
            data = data[:-1]
        path.write_bytes(bytes(data))
    with host_a.kernel(prefix) as (_, kc):
        reply, outputs = run(kc, DIGEST)
        assert reply["status"] == "ok" and stdout_of(outputs) == before, all_text(outputs)
        assert "restored" in all_text(outputs)
    import blake3

    newest = store_of(host_a, prefix).latest()
    needed = {address for ref in newest.groups().values() if ref is not None for address, _ in ref.blobs()}
    damaged_and_needed = [p for p in entries if p.name in needed]
    assert damaged_and_needed, "no blob of the restored generation was damaged: the test proves nothing"
    for path in damaged_and_needed:  # the restore fetched them again from S3 and cached good copies
        assert blake3.blake3(path.read_bytes()).hexdigest() == path.name


def test_two_kernels_writing_one_session_are_detected(tmp_path, gateway):
    host_a, host_b = two_hosts(tmp_path, gateway.endpoint)
    prefix = f"twice-{uuid.uuid4().hex[:6]}"
    with host_a.kernel(prefix) as (_, kc_a):
        build_state(kc_a)
        with host_b.kernel(prefix) as (_, kc_b):
            ok(kc_b, DIGEST)  # B took over the session: it restored A's state
            ok(kc_b, "only_b = 'b'")
            assert ok(kc_b, WAIT).strip() == "True"
            ok(kc_a, "only_a = 'a'")
            ok(kc_a, WAIT)
            _, outputs = run(kc_a, "only_a2 = 'a2'")
            text = all_text(outputs) + ok(kc_a, "print(__import__('elastic_proxy.inner_agent', fromlist=['_'])"
                                                ".get_agent(get_ipython()).checkpointer.status()['last_error'])")
            assert "another kernel is writing the session" in text, text
    store = store_of(host_a, prefix)
    newest = store.latest()
    assert "only_b" in newest["variables"] and "only_a" not in newest["variables"]
    assert all("only_a" not in m["variables"] for m in store.generations() if m.valid)
    assert_every_generation_sound(host_a, prefix)


@pytest.mark.s3_slow
def test_a_restore_streamed_from_s3_reports_its_progress_in_bytes(tmp_path, gateway):
    import numpy as np

    from elastic_proxy.inner_agent.restore import PROGRESS_STEP_BYTES, _byte_progress

    host, _ = two_hosts(tmp_path, gateway.endpoint)
    prefix = f"progress-{uuid.uuid4().hex[:6]}"
    value = np.random.default_rng().random(96 * 2**20 // 8)  # 96 MiB in one group
    ref = store_of(host, prefix).put_group({"value": value})
    reader = store_of(host, prefix)  # another process's view: no cache, every byte from S3
    said: list[tuple[str, int, int]] = []
    loaded = reader.load_group(ref, on_bytes=_byte_progress(lambda *a: said.append(a), 0, ref.size))
    assert np.array_equal(loaded["value"], value)
    assert len(said) >= ref.size // PROGRESS_STEP_BYTES - 1 >= 2, said
    assert [d for _, d, _ in said] == sorted(d for _, d, _ in said) and said[-1][1] <= ref.size
    assert reader._backend.prefetcher.bytes_fetched >= value.nbytes


# ---- separate network namespaces ---------------------------------------------------------------

def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip netns)"
    probe = f"epprobe{os.getpid() % 10000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextlib.contextmanager
def namespace_with_veth(name: str, index: int) -> Iterator[str]:
    """A network namespace whose only way out is a veth pair to 10.77.<index>.1 on this side."""
    host_side, ns_side = f"ep{index}h{os.getpid() % 1000}", f"ep{index}n{os.getpid() % 1000}"
    host_ip, ns_ip = f"10.77.{index}.1", f"10.77.{index}.2"
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_side, "type", "veth", "peer", "name", ns_side],
        ["ip", "link", "set", ns_side, "netns", name],
        ["ip", "addr", "add", f"{host_ip}/24", "dev", host_side],
        ["ip", "link", "set", host_side, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/24", "dev", ns_side],
        ["ip", "netns", "exec", name, "ip", "link", "set", ns_side, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        yield host_ip
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def netns_kernelspec(kernel_prefix: Path, namespace: str) -> str:
    kernels = kernel_prefix / "share" / "jupyter" / "kernels"
    spec = json.loads((kernels / KERNEL_NAME / "kernel.json").read_text())
    spec["argv"] = ["ip", "netns", "exec", namespace, *spec["argv"]]
    name = f"elastic-{namespace}"
    (kernels / name).mkdir(parents=True, exist_ok=True)
    (kernels / name / "kernel.json").write_text(json.dumps(spec))
    return name


@pytest.mark.s3_slow
def test_two_hosts_in_separate_network_namespaces(tmp_path, s3, kernel_prefix):
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000}"
    with namespace_with_veth(f"epA{tag}", 201) as ip_a, namespace_with_veth(f"epB{tag}", 202) as ip_b:
        gate_a = FaultGateway(("127.0.0.1", s3.port), listen_host=ip_a).up()
        gate_b = FaultGateway(("127.0.0.1", s3.port), listen_host=ip_b).up()
        try:
            host_a, host_b = two_hosts(tmp_path, gate_a.endpoint, gate_b.endpoint)
            host_a.netns, host_b.netns = f"epA{tag}", f"epB{tag}"
            spec_a = netns_kernelspec(kernel_prefix, host_a.netns)
            spec_b = netns_kernelspec(kernel_prefix, host_b.netns)
            prefix = f"netns-{uuid.uuid4().hex[:6]}"
            with host_a.kernel(prefix, spec_a) as (km, kc):
                reach = ok(kc, "import socket\ntry:\n    socket.create_connection(('127.0.0.1', "
                               f"{s3.port}), timeout=2)\n    print('loopback reachable')\n"
                               "except OSError:\n    print('isolated')")
                assert reach.strip() == "isolated"  # only the veth leads to the S3 server
                before = build_state(kc)
                kill_host(km)
            with host_b.kernel(prefix, spec_b) as (_, kc):
                assert ok(kc, DIGEST) == before
        finally:
            gate_a.down()
            gate_b.down()
