"""Starts the real `prism-server` binary on an ephemeral loopback port for each test
that asks for it, and stops it (SIGTERM) afterwards."""
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("PRISM_SERVER_BIN", ROOT / "target" / "debug" / "prism-server"))


class Server:
    def __init__(self, config=None):
        args = [str(BINARY), "--http-addr", "127.0.0.1:0"]
        if config:
            args += ["--config", str(config)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log = []
        ready = threading.Event()
        self.url = None

        def pump():
            for line in self.proc.stdout:
                self.log.append(line)
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
    """A factory: `prism(config_path=None)` starts a server; all are stopped at the end."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build -p prism-server`")
    servers = []

    def start(config=None):
        s = Server(config)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.stop() == 0, "prism-server exits cleanly on SIGTERM:\n" + "".join(s.log)
