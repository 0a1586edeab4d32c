"""Arguments and dispatch of ``entropo launch`` (wired into :mod:`entropo.cli`).

::

    entropo launch CONFIG.yaml --address http://HEAD:8265 [key=value ...]   # Ray job, follow logs
    entropo launch --stop JOB_ID --address http://HEAD:8265                  # stop it
    entropo launch --slurm --nodes N CONFIG.yaml [key=value ...] [--submit]  # write an sbatch script
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


class _IntermixedParser(argparse.ArgumentParser):
    """Options anywhere among the positionals: ``CONFIG.yaml --address X key=value``.

    argparse's plain ``parse_args`` stops the ``nargs="*"`` positional at the first option;
    ``parse_known_intermixed_args`` calls ``parse_known_args`` itself, hence the guard.
    """

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``entropo launch`` on the subparser ``p`` (made order-insensitive)."""
    p.__class__ = _IntermixedParser  # the subparser was made by add_subparsers' own class
    p.add_argument("args", nargs="*", help="an optional YAML recipe, then dotted overrides (as for train)")
    job = p.add_argument_group("Ray job (default)")
    job.add_argument("--address", help="the cluster's dashboard, e.g. http://HEAD:8265 "
                     "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    job.add_argument("--stop", metavar="JOB_ID", help="stop this job instead of submitting one")
    job.add_argument("--no-follow", action="store_true", help="print the job id and return without following logs")
    job.add_argument("--working-dir", default=".", help="uploaded with the job; the config must be inside (default: .)")
    job.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                     help="also leave this .gitignore-style pattern out of the upload (repeatable)")
    job.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="environment variable of the job and its actors (repeatable)")
    job.add_argument("--pip", action="append", default=[], metavar="PACKAGE",
                     help="pip package installed for the job (repeatable)")
    job.add_argument("--job-id", help="submission id of the job (Ray makes one otherwise)")
    slurm = p.add_argument_group("Slurm")
    slurm.add_argument("--slurm", action="store_true", help="write an sbatch script instead of submitting a Ray job")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes to allocate (default: 1)")
    slurm.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default: 0, none asked)")
    slurm.add_argument("--cpus-per-node", type=int, default=None, help="CPUs per node (default: Slurm's)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--time", help="time limit, e.g. 24:00:00")
    slurm.add_argument("--job-name", default=None, help="default: entropo-<config name>")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="shell line run before Ray starts, e.g. 'source .venv/bin/activate' (repeatable)")
    slurm.add_argument("--script", default=None, help="where to write the script (default: ./<job name>.sbatch)")
    slurm.add_argument("--submit", action="store_true", help="also run sbatch on the script")


def run(ns: argparse.Namespace) -> int:
    from entropo.config import split_args
    from entropo.launch.ray_job import LaunchError

    config, overrides = split_args(ns.args)
    try:
        if ns.slurm:
            return _slurm(ns, config, overrides)
        return _ray_job(ns, config, overrides)
    except (LaunchError, ValueError) as e:
        print(f"entropo: error: {e}", file=sys.stderr)  # as entropo train's errors
        return 2


def _ray_job(ns: argparse.Namespace, config: str | None, overrides: list[str]) -> int:
    from entropo.launch import ray_job

    if ns.stop:
        return ray_job.stop(ns.stop, ray_job.make_client(ns.address))
    _validate(config, overrides)
    env = {}
    for item in ns.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ray_job.LaunchError(f"--env '{item}' is not of the form KEY=VALUE")
        env[key] = value
    request = ray_job.JobRequest(config, overrides, ns.working_dir, env,
                                 (*ray_job.DEFAULT_EXCLUDES, *ns.exclude), tuple(ns.pip), ns.job_id)
    request.entrypoint()  # a config outside the working directory fails before connecting
    return ray_job.submit(request, ray_job.make_client(ns.address), follow=not ns.no_follow)


def _slurm(ns: argparse.Namespace, config: str | None, overrides: list[str]) -> int:
    from entropo.launch.slurm import SlurmRequest, write_script

    _validate(config, overrides)
    name = ns.job_name or f"entropo-{Path(config).stem if config else 'default'}"
    req = SlurmRequest(config, overrides, ns.nodes, ns.gpus_per_node, ns.cpus_per_node, ns.partition, ns.account,
                       ns.time, name, tuple(ns.setup))
    path = write_script(req, ns.script or f"{name}.sbatch")
    print(path)
    if not ns.submit:
        print(f"[launch] submit with: sbatch {path}", file=sys.stderr)
        return 0
    done = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    print((done.stdout + done.stderr).strip())
    return done.returncode


def _validate(config: str | None, overrides: list[str]) -> None:
    """Fail here, not minutes later on the cluster, when the config does not load."""
    from entropo.config import ConfigError, load_config
    from entropo.launch.ray_job import LaunchError

    try:
        load_config(config, overrides)
    except ConfigError as e:
        raise LaunchError(str(e)) from None
