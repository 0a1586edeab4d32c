"""``entropo launch CONFIG.yaml --address http://HEAD:8265 [key=value ...]``: training as a Ray job.

The job's entrypoint is ``python -m entropo.cli train CONFIG overrides`` (:data:`TRAIN_COMMAND`),
run by the cluster's job supervisor on the head node with ``RAY_ADDRESS`` set, so
:func:`entropo.trainer.cluster.connect` attaches to the cluster. The working directory (the
code, the config, local data) is uploaded in the job's ``runtime_env`` with ``env_vars``
(https://docs.ray.io/en/releases-2.49.0/cluster/running-applications/job-submission/sdk.html).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from entropo.launch import train_command

# Uploading these would be slow or useless: environments, VCS data, run outputs.
DEFAULT_EXCLUDES = (".git", ".venv", "venv", "runs", "wandb", "**/__pycache__", "*.pyc")
# After the log stream ends the job is terminal; its status may take a moment to show it.
STATUS_WAIT_S = 30.0
# Ray's job client does not take the address it is given when one of these is set
# (sdk.JobSubmissionClient: "always overridden by the RAY_API_SERVER_ADDRESS or RAY_ADDRESS
# environment variable"); --address is documented to win over them.
ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
# A TCP connect to a live head answers at once. Without this bound an address that drops
# packets waits for the OS's connect timeout (about 2 min on Linux), and Ray's GCS and Ray
# Client look-ups retry for 30-45 s before failing with a traceback.
CONNECT_TIMEOUT_S = 5.0
# Ports Ray assumes when the address names none (Ray Client 10001, GCS 6379).
DEFAULT_PORTS = {"http": 80, "https": 443, "ray": 10001, "": 6379}
# What to check when the cluster cannot be reached, by the address's scheme (default: the
# dashboard's http(s)).
_CHECK = {
    "ray": "check the head's Ray Client address and port (default 10001), or pass its dashboard, http://HEAD:8265",
    "": "check the head's GCS address and port (default 6379), or pass its dashboard, http://HEAD:8265",
}


class LaunchError(RuntimeError):
    """A launch that cannot be submitted as asked; the message says why."""


class JobClient(Protocol):
    """The part of ``ray.job_submission.JobSubmissionClient`` that launching uses."""

    def submit_job(self, *, entrypoint: str, runtime_env: dict[str, Any] | None = None,
                   submission_id: str | None = None) -> str: ...

    def tail_job_logs(self, job_id: str): ...

    def get_job_status(self, job_id: str): ...

    def get_job_info(self, job_id: str): ...

    def stop_job(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class JobRequest:
    """What to submit: the training command and what travels with it.

    Args:
        config: the YAML recipe (inside ``working_dir``), or None for the defaults.
        overrides: dotted ``key=value`` overrides.
        working_dir: uploaded to the cluster; the entrypoint runs in it.
        env: environment variables of the job (and of every actor it starts).
        excludes: ``.gitignore``-style patterns not uploaded.
        pip: extra pip packages installed for the job (runtime_env ``pip``).
        submission_id: a job id of your choice (Ray makes one otherwise).
    """

    config: str | None
    overrides: list[str] = field(default_factory=list)
    working_dir: str = "."
    env: dict[str, str] = field(default_factory=dict)
    excludes: tuple[str, ...] = DEFAULT_EXCLUDES
    pip: tuple[str, ...] = ()
    submission_id: str | None = None

    def entrypoint(self) -> str:
        return train_command(self._config_in_working_dir(), list(self.overrides))

    def runtime_env(self) -> dict[str, Any]:
        env: dict[str, Any] = {"working_dir": str(Path(self.working_dir).resolve()), "excludes": list(self.excludes)}
        if self.env:
            env["env_vars"] = dict(self.env)
        if self.pip:
            env["pip"] = list(self.pip)
        return env

    def _config_in_working_dir(self) -> str | None:
        """The config's path relative to the working directory (that is where the job runs), or
        a shipped recipe's bare name, which the job resolves in its own entropo."""
        if self.config is None:
            return None
        path, root = Path(self.config).resolve(), Path(self.working_dir).resolve()
        if not path.is_file():
            from entropo.config import ConfigError, resolve_recipe

            try:
                resolve_recipe(self.config)  # a shipped recipe: the job finds it by the same name
            except ConfigError as e:
                raise LaunchError(str(e)) from None
            return self.config
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            raise LaunchError(
                f"config {self.config} is outside --working-dir {root}: only the working directory is uploaded"
            ) from None


def make_client(address: str | None) -> JobClient:
    """A ``JobSubmissionClient`` for the dashboard at ``address``.

    Args:
        address: ``http(s)://HEAD:8265`` (the dashboard), ``ray://HEAD:10001`` (Ray Client)
            or ``HEAD:6379`` (GCS), from which Ray looks the dashboard up; ``auto``; None
            reads ``RAY_API_SERVER_ADDRESS`` / ``RAY_ADDRESS``, else a local cluster.

    Raises:
        LaunchError: the cluster cannot be reached or refuses the client; one line naming
            the address, the cause and what to check. An unreachable host fails within
            :data:`CONNECT_TIMEOUT_S`, before Ray's own 30-45 s retries.
    """
    chosen = address or os.environ.get(ADDRESS_VARS[0]) or os.environ.get(ADDRESS_VARS[1])
    if chosen and chosen != "auto":
        _probe(chosen)
    from ray.exceptions import AuthenticationError, RayError
    from ray.job_submission import JobSubmissionClient

    if use_token_auth():
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        with _without_address_vars(address):
            return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise LaunchError(f"the Ray cluster at {chosen} refused the job client ({_first_line(e)}); set RAY_AUTH_TOKEN "
                          "or copy the head's ~/.ray/auth_token here") from None
    except (ConnectionError, RuntimeError, ValueError, RayError) as e:
        if not chosen or chosen == "auto":
            raise LaunchError(f"no Ray cluster found ({_first_line(e)}); pass --address http://HEAD:8265, "
                              "the head's dashboard") from None
        raise LaunchError(_unreachable(chosen, _first_line(e))) from None


def _probe(address: str) -> None:
    """Fail fast, in one line, when nothing listens at ``address``'s host and port."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    parts = urllib.parse.urlsplit("//" + rest)
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(scheme.lower())
    except ValueError:  # a port that is not a number: Ray's own parser says so
        return
    if not host or port is None:  # another scheme (a job-manager plugin): Ray's to resolve
        return
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except TimeoutError:
        raise LaunchError(_unreachable(address, f"no answer in {CONNECT_TIMEOUT_S:g} s")) from None
    except OSError as e:
        raise LaunchError(_unreachable(address, (e.strerror or str(e)).lower())) from None


def _unreachable(address: str, cause: str) -> str:
    scheme = address.partition("://")[0].lower() if "://" in address else ""
    check = _CHECK.get(scheme, "check the head's dashboard address and port (default 8265; "
                               "`ray status` on the head shows whether the cluster is up)")
    return f"cannot reach the Ray cluster at {address} ({cause}); {check}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].rstrip(".") if text else type(e).__name__


@contextlib.contextmanager
def _without_address_vars(address: str | None):
    """Hide :data:`ADDRESS_VARS` while the client is made, when ``address`` is given."""
    saved = {k: os.environ.pop(k) for k in ADDRESS_VARS if address and k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def use_token_auth() -> bool:
    """Whether to send the Ray auth token: ``RAY_AUTH_MODE`` when set; otherwise when a token is
    at hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), as ``ray.init``
    decides for itself. Ray 2.60's job client sends no token unless ``RAY_AUTH_MODE=token``,
    and clusters started by Ray 2.60 ask for one by default."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def submit(request: JobRequest, client: JobClient, follow: bool = True, out: TextIO | None = None) -> int:
    """Submit; with ``follow``, stream the logs and return 0 iff the job SUCCEEDED."""
    out = out or sys.stdout
    job_id = client.submit_job(entrypoint=request.entrypoint(), runtime_env=request.runtime_env(),
                               submission_id=request.submission_id)
    print(f"[launch] submitted job {job_id}: {request.entrypoint()}", file=out, flush=True)
    if not follow:
        print(f"[launch] logs: ray job logs -f {job_id}    stop: entropo launch --stop {job_id} --address ...",
              file=out, flush=True)
        return 0
    try:
        asyncio.run(_tail(client, job_id, out))
    except KeyboardInterrupt:
        print(f"\n[launch] stopped following; job {job_id} keeps running "
              f"(entropo launch --stop {job_id} --address ... stops it)", file=out, flush=True)
        return 130
    status = _final_status(client, job_id)
    message = getattr(client.get_job_info(job_id), "message", "") or ""
    print(f"[launch] job {job_id} {status}" + (f": {message}" if message else ""), file=out, flush=True)
    return 0 if status == "SUCCEEDED" else 1


def stop(job_id: str, client: JobClient, out: TextIO | None = None) -> int:
    """Ask the cluster to stop ``job_id``; 0 when it was running and is being stopped."""
    out = out or sys.stdout
    stopped = client.stop_job(job_id)
    status = _status_name(client.get_job_status(job_id))
    print(f"[launch] job {job_id}: {'stop requested' if stopped else 'was not running'} (status {status})",
          file=out, flush=True)
    return 0 if stopped else 1


async def _tail(client: JobClient, job_id: str, out: TextIO) -> None:
    async for lines in client.tail_job_logs(job_id):
        out.write(lines)
        out.flush()


def _final_status(client: JobClient, job_id: str) -> str:
    deadline = time.monotonic() + STATUS_WAIT_S
    status = _status_name(client.get_job_status(job_id))
    while status in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(0.5)
        status = _status_name(client.get_job_status(job_id))
    return status


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))
