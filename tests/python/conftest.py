"""Starts the real `prism-server` binary on an ephemeral loopback port for each test
that asks for it, and stops it (SIGTERM) afterwards."""
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("PRISM_SERVER_BIN", ROOT / "target" / "debug" / "prism-server"))


class Server:
    def __init__(self, config=None, env=None, args=()):
        args = [str(BINARY), "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", *args]
        if config:
            args += ["--config", str(config)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        self.log = []
        ready = threading.Event()
        self.url = None
        self.grpc_url = None

        def pump():
            for line in self.proc.stdout:
                self.log.append(line)
                g = re.search(r"listening for gRPC on (\S+)", line)
                if g:
                    self.grpc_url = g.group(1)
                m = re.search(r"listening on http://(\S+)", line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60) or self.url is None:
            self.stop()
            raise RuntimeError("prism-server did not start:\n" + "".join(self.log))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.returncode


@pytest.fixture
def prism():
    """A factory: `prism(config_path=None, env=None, args=())` starts a server; all are stopped at the end."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build -p prism-server`")
    servers = []

    def start(config=None, env=None, args=()):
        s = Server(config, env, args)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.stop() == 0, "prism-server exits cleanly on SIGTERM:\n" + "".join(s.log)


class Affine:
    """A one-layer model `y = w·x + b` (1 → 1) served from `affine.safetensors`, whose
    weights a test replaces as an update should: written beside the served file and
    renamed over it (the replicas still serving map the old one)."""

    def __init__(self, folder):
        self.folder = folder
        self.config = folder / "affine.toml"
        self.config.write_text("""
[[deployments]]
name = "affine"
[deployments.model]
weights = "affine.safetensors"
layers = [{ op = "linear", weight = "w", bias = "b" }]
inputs  = [{ name = "x", datatype = "FP32", shape = [-1, 1] }]
outputs = [{ name = "y", datatype = "FP32", shape = [-1, 1] }]
""")

    def write(self, scale, shift):
        fresh = self.folder / "affine.new"
        save_file({"w": np.array([[scale]], dtype=np.float32), "b": np.array([shift], dtype=np.float32)}, str(fresh))
        os.replace(fresh, self.folder / "affine.safetensors")


@pytest.fixture
def affine(tmp_path):
    """An [`Affine`] model in the test's folder, its weights y = 2x + 1."""
    model = Affine(tmp_path)
    model.write(2.0, 1.0)
    return model
