"""The local Ray instance a run starts listens on 127.0.0.1 only and refuses callers without
its token (issue 17, item 9).

The module starts the instance as ``entropo train`` does (:func:`entropo.trainer.cluster.connect`
with the default config: no ``trainer.ray_address``), then the kinds of Ray worker a run
starts: an actor with a ``runtime_env`` (as learner ranks and rollout workers are started), a
reward worker (started through ``entropo.worker_env``), a plain task. It reads the listening TCP
sockets of every process the instance added (psutil, which reads /proc/net/tcp{,6}). The
session's instance (``ray_session``) is shut down first and started again afterwards.
"""

from __future__ import annotations

import ipaddress
import os
import time

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

psutil = pytest.importorskip("psutil")

RAY_PROCESSES = ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
"""Processes of a local instance that listen (Ray 2.60, ``include_dashboard=False``; the
dashboard head process is started but serves nothing). Each worker adds its own gRPC server."""


def listening(proc) -> set[tuple[str, int]]:
    try:
        return {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:  # ended meanwhile
        return set()


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:  # ::ffff:127.0.0.1, a dual-stack socket
        addr = addr.ipv4_mapped
    return addr.is_loopback


def label(proc) -> str:
    try:
        cmd = proc.cmdline()
        return cmd[0].rsplit("/", 1)[-1] if cmd and cmd[0].startswith("/") and len(cmd[0]) > 30 else " ".join(cmd)[:60]
    except psutil.Error:
        return "?"


@pytest.fixture(scope="module")
def run_instance(tmp_path_factory):
    ray = pytest.importorskip("ray")
    from entropo.config import load_config
    from entropo.trainer.cluster import connect
    from tests.conftest import start_local_ray

    was_up = ray.is_initialized()
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    own_before = listening(me)
    cfg = load_config(overrides=["reward.workers=1", f"trainer.output_dir={tmp_path_factory.mktemp('run')}"])
    connect(cfg)
    try:
        yield ray, cfg, before, own_before
    finally:
        ray.shutdown()
        if was_up:
            start_local_ray()


def start_run_workers(ray, cfg) -> list:
    """One of each kind of Ray worker a run starts, up and answering."""
    from entropo.rewards import RewardManager
    from entropo.trainer.cluster import actor_env
    from entropo.trainer.placement import Slot

    @ray.remote
    class Actor:
        def pid(self) -> int:
            return os.getpid()

    @ray.remote
    def task() -> int:
        return os.getpid()

    actor = Actor.options(num_cpus=0.5, runtime_env={"env_vars": actor_env(cfg, Slot(0, 0, 0.5, 0.0), True)}).remote()
    rewards = RewardManager(cfg.reward)
    rewards.ready()
    ray.get([actor.pid.remote(), task.remote()])
    return [actor, rewards]


def test_every_port_of_the_local_instance_listens_on_loopback(run_instance):
    """Every listening socket of the local Ray instance (GCS, raylet, agents, driver, workers) is on 127.0.0.1."""
    ray, cfg, before, own_before = run_instance
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    keep = start_run_workers(ray, cfg)
    time.sleep(1.0)  # a worker's gRPC server is up once it answered; the agents' are up since init
    me = psutil.Process()
    found: dict[str, set] = {"driver": listening(me) - own_before}
    for p in me.children(recursive=True):
        if p.pid not in before:
            found[f"{p.pid} {label(p)}"] = listening(p)
    table = "\n".join(f"{who}: {sorted(socks)}" for who, socks in found.items())
    exposed = {who: [s for s in socks if not is_loopback(s[0])] for who, socks in found.items()}
    assert not any(exposed.values()), f"listening beyond loopback:\n{table}"
    names = " ".join(who for who, socks in found.items() if socks)
    for name in RAY_PROCESSES:
        assert name in names, f"{name} not found listening (did Ray's process names change?):\n{table}"
    assert found["driver"], table  # the driver's own gRPC server
    workers = [who for who, socks in found.items() if socks and ("ray::" in who and "Agent" not in who)]
    assert len(workers) >= 3, table  # actor, reward worker, task worker
    keep[1].close()


def test_the_instance_refuses_callers_without_its_token(run_instance):
    """A call to the local Ray instance without its token, or with a wrong one, is refused (token authentication is on)."""
    grpc = pytest.importorskip("grpc")
    ray = run_instance[0]
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._raylet import AuthenticationTokenLoader
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    assert is_token_auth_enabled()
    address = ray._private.worker.global_worker.node.gcs_address
    gcs = next(p for p in psutil.Process().children(recursive=True) if p.name() == "gcs_server")
    assert gcs.environ().get("RAY_AUTH_MODE") == "token"  # the server's own setting
    token = AuthenticationTokenLoader.instance().get_token_for_http_header()
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)

        def call(metadata):
            return stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), metadata=metadata, timeout=30)

        for metadata in (None, [("authorization", "Bearer not-the-token")]):
            with pytest.raises(grpc.RpcError) as refused:
                call(metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(call(list(token.items())).node_info_list) == 1  # the same call with the token is answered
