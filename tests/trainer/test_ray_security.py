"""The local Ray instance a run starts, and the run's actors, listen on 127.0.0.1 only; the
instance refuses callers without its token (issue 17, item 9).

The module starts the instance as ``entropo train`` does (:func:`entropo.trainer.cluster.connect`
with the default config: no ``trainer.ray_address``), then what a run starts on it: the
:class:`~entropo.trainer.cluster.Cluster` (a learner rank with its DeepSpeed group, a rollout
worker, the weight-sync group between them) and a reward worker (started through
``entropo.worker_env``). It reads the listening TCP sockets of every process the instance
added (psutil, which reads /proc/net/tcp{,6}). The session's instance (``ray_session``) is
shut down first and started again afterwards.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

psutil = pytest.importorskip("psutil")

RAY_PROCESSES = ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::LearnerRank",
                 "ray::RolloutWorker", "ray::RewardWorker")
"""Processes that listen (Ray 2.60, ``include_dashboard=False``; the dashboard head process is
started but serves nothing). Each worker has Ray's gRPC server; learner rank 0 also hosts the
stores of its DeepSpeed group and of the weight-sync group, and gloo listens in every member."""


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
def run_instance(tmp_path_factory, tiny_model_dir):
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
    cfg = load_config(overrides=[f"model.path={tiny_model_dir}", f"trainer.output_dir={tmp_path_factory.mktemp('run')}",
                                 "learner.ranks=1", "rollout.workers=1", "reward.workers=1"])
    connect(cfg)
    try:
        yield ray, cfg, before, own_before
    finally:
        ray.shutdown()
        if was_up:
            start_local_ray()


def test_every_port_of_the_instance_and_the_run_listens_on_loopback(run_instance):
    """Every listening socket of the local Ray instance and of a run's actors (GCS, raylet, agents, driver, learner, rollout and reward workers, the stores and gloo) is on 127.0.0.1."""
    from entropo.rewards import RewardManager
    from entropo.trainer.cluster import Cluster

    ray, cfg, before, own_before = run_instance
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    cluster = Cluster(cfg)  # the learner's DeepSpeed group and the weight-sync group are up when it returns
    rewards = RewardManager(cfg.reward)
    try:
        rewards.ready()
        me = psutil.Process()
        found: dict[str, set] = {"driver": listening(me) - own_before}
        for p in me.children(recursive=True):
            if p.pid not in before:
                found[f"{p.pid} {label(p)}"] = listening(p)
    finally:
        rewards.close()
        cluster.shutdown()
    table = "\n".join(f"{who}: {sorted(socks)}" for who, socks in found.items())
    exposed = {who: [s for s in socks if not is_loopback(s[0])] for who, socks in found.items()}
    assert not any(exposed.values()), f"listening beyond loopback:\n{table}"
    names = " ".join(who for who, socks in found.items() if socks)
    for name in RAY_PROCESSES:
        assert name in names, f"{name} not found listening (did a process name change?):\n{table}"
    assert found["driver"], table  # the driver's own gRPC server
    learner = next(socks for who, socks in found.items() if "LearnerRank" in who)
    assert len(learner) >= 4, table  # Ray's server, two stores, gloo


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
