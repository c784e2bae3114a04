"""A kernel that is ipykernel behind libzmq's own forwarder: the floor for any proxy process.

`proxy_overhead.py` runs it as the `zmq-device` variant. Each channel is a `zmq.proxy` loop in C
(ROUTER<->DEALER, XPUB<->XSUB), in its own thread, with no Python per message and no re-signing
(the child gets the client's key). Whatever it adds to a round trip is the cost of the extra
process hop itself on this machine: the thread wake-ups and socket copies that every
out-of-process proxy pays, elastic-proxy's supervisor included. It is a measuring device, not a
kernel to use: stdin does not find its way back, and nothing survives the child.

Usage (as a kernelspec argv): python bench/zmq_device_kernel.py {connection_file}
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import zmq
from jupyter_client.connect import write_connection_file

#: Client-facing socket type -> child-facing socket type, per channel.
CHANNELS = {"shell": (zmq.ROUTER, zmq.DEALER), "control": (zmq.ROUTER, zmq.DEALER),
            "stdin": (zmq.ROUTER, zmq.DEALER), "hb": (zmq.ROUTER, zmq.DEALER), "iopub": (zmq.XPUB, zmq.XSUB)}


def _url(info: dict, channel: str) -> str:
    return f"tcp://{info['ip']}:{info[channel + '_port']}"


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(connection_file: str) -> int:
    with open(connection_file) as f:
        info = json.load(f)
    context = zmq.Context()
    child_file = os.path.join(tempfile.mkdtemp(prefix="zmq-device-"), "child.json")
    # Ports the child binds, picked free by jupyter_client; the child keeps the client's key.
    _, child_info = write_connection_file(child_file, ip="127.0.0.1", key=info["key"].encode(),
                                          signature_scheme=info["signature_scheme"])
    pairs = []
    for channel, (front_kind, back_kind) in CHANNELS.items():
        front, back = context.socket(front_kind), context.socket(back_kind)
        front.bind(_url(info, channel))
        back.connect(_url(child_info, channel))
        pairs.append((front, back))
    child = subprocess.Popen([sys.executable, "-m", "ipykernel_launcher", "-f", child_file],
                             preexec_fn=_die_with_parent)
    for front, back in pairs:
        threading.Thread(target=zmq.proxy, args=(front, back), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    signal.signal(signal.SIGINT, lambda *_: child.send_signal(signal.SIGINT))
    code = child.wait()
    shutil.rmtree(os.path.dirname(child_file), ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[-1]))
