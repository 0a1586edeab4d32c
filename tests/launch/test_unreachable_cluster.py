"""``entropo launch`` against an address where no Ray cluster answers: one line, exit 2, fast.

Nothing listens on a port that was just bound and released, so connecting is refused at once;
no Ray cluster is started. Before the probe in :func:`entropo.launch.ray_job.make_client`,
an ``http://`` address printed a ~95-line traceback, and ``HOST:PORT`` / ``ray://`` ones
retried for 30-45 s first.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from entropo.cli import main

ROOT = Path(__file__).resolve().parents[2]
# Import and config loading take ~3 s on the 2-core test machine; Ray's retries took 30-45 s.
FAST_S = 15.0


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _launch_env(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # make_client may set it otherwise


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("entropo: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("form", "check"), [
    ("http://127.0.0.1:{port}", "check the head's dashboard address and port"),
    ("127.0.0.1:{port}", "check the head's GCS address and port"),
    ("ray://127.0.0.1:{port}", "check the head's Ray Client address and port"),
])
def test_unreachable_address_is_one_line_and_fast(closed_port, capsys, form, check):
    address = form.format(port=closed_port)
    started = time.monotonic()
    code = main(["launch", "configs/grpo.yaml", "--address", address])
    assert time.monotonic() - started < FAST_S
    assert code == 2
    err = _one_line_error(capsys)
    assert f"cannot reach the Ray cluster at {address} (connection refused); {check}" in err


def test_stop_against_an_unreachable_address(closed_port, capsys):
    assert main(["launch", "--stop", "raysubmit_abc", "--address", f"http://127.0.0.1:{closed_port}"]) == 2
    assert "cannot reach the Ray cluster" in _one_line_error(capsys)


def test_address_flag_wins_over_the_environment(closed_port, monkeypatch, capsys):
    # Ray's client would take RAY_ADDRESS over its address argument; --address is to win.
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")
    address = f"http://127.0.0.1:{closed_port}"
    assert main(["launch", "configs/grpo.yaml", "--address", address]) == 2
    err = _one_line_error(capsys)
    assert f"at {address} " in err and ":9" not in err


def test_environment_address_is_used_without_the_flag(closed_port, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{closed_port}")
    assert main(["launch", "configs/grpo.yaml"]) == 2
    assert f"at http://127.0.0.1:{closed_port} " in _one_line_error(capsys)


def test_a_server_that_is_not_ray_is_one_line(capsys):
    """Something listens, accepts and hangs up: Ray's client raises; still one line."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    done = threading.Event()

    def hang_up():
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    address = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        assert main(["launch", "configs/grpo.yaml", "--address", address]) == 2
    finally:
        done.set()
        thread.join()
        server.close()
    err = _one_line_error(capsys)
    assert f"cannot reach the Ray cluster at {address} (" in err and "dashboard address and port" in err
