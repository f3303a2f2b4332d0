"""The server process as an operator meets it: signals and exit codes."""
import signal
import subprocess

import pytest

from conftest import BINARY


def test_a_sigterm_sent_the_moment_it_listens_stops_it_cleanly():
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: build it with `cargo build -p prism-server`")
    # The parent ignores SIGTERM, as some supervisors do, and the child inherits that: the
    # server must have its own handler in place before it says it listens. The disposition
    # is set here around the spawn, not in a preexec_fn: that forces a fork() that runs
    # the atfork handlers of libraries this process has loaded (grpcio's, from the gRPC
    # tests, aborted a child before exec once).
    for _ in range(5):
        before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            p = subprocess.Popen(
                [str(BINARY), "--http-addr", "127.0.0.1:0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        finally:
            signal.signal(signal.SIGTERM, before)
        log = []
        for line in p.stdout:
            log.append(line)
            if "listening on" in line:
                p.send_signal(signal.SIGTERM)
                break
        try:
            assert p.wait(20) == 0, "".join(log)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        log.extend(p.stdout)
        assert any("stopped" in line for line in log), "".join(log)
