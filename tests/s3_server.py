"""A real S3 API server on loopback for the S3 tests and bench/migrate_bench.py.

`MotoServer` runs moto's standalone server (`moto[server]`) in its own process. `FaultGateway`
is a real TCP relay in front of it that the tests use to make S3 misbehave the way a network
and a cloud provider do: `down()` refuses connections and resets those open (the server is
gone), `up()` brings the port back, `answer(503)` makes every request get that HTTP status
(throttling, an outage) until `relay()`. Nothing in s3fs is mocked: the clients talk HTTP to
the gateway's port, which stays the same throughout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoServer:
        env = {**os.environ, **CREDENTIALS}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                          aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=bucket)


def client_env(endpoint: str) -> dict[str, str]:
    """What a kernel (or any botocore client) needs to use the server: the standard AWS settings."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}


_STATUS_TEXT = {500: "Internal Server Error", 503: "Slow Down"}
_CODES = {500: "InternalError", 503: "SlowDown"}


class FaultGateway:
    """A TCP relay on `listen_host:port` to the server at `target`, with faults on demand."""

    def __init__(self, target: tuple[str, int], listen_host: str = "127.0.0.1", port: int | None = None):
        self.target = target
        self.host = listen_host
        self.port = port or free_port(listen_host)
        self.status: int | None = None  # an HTTP status every request gets, or None to relay
        self.requests_failed = 0
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def up(self) -> FaultGateway:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        """The server is gone: new connections are refused, open ones reset."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._reset_all()

    def answer(self, status: int) -> None:
        """Every request from now on gets `status` (connections open now are reset first)."""
        self.status = status
        self._reset_all()

    def relay(self) -> None:
        self.status = None

    def _reset_all(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:
                client.close()
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.status is not None:
            self._fail(client, self.status)
            return
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        with self._lock:
            self._connections.update((client, upstream))
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def _fail(self, client: socket.socket, status: int) -> None:
        """Read the request's head, answer with an S3 error document, close."""
        with contextlib.suppress(OSError):
            client.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    break
                head += chunk
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{_CODES.get(status, "InternalError")}'
                    f"</Code><Message>injected by the test gateway</Message></Error>").encode()
            client.sendall(f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\n"
                           f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
                           "Connection: close\r\n\r\n".encode() + body)
        self.requests_failed += 1
        with contextlib.suppress(OSError):
            client.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(1 << 20)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
