"""Weight sync between a sender and a receiver whose parameters differ in dtype.

The learner runs bf16 on GPUs by default while a rollout model may hold fp32 (and the
reverse): the wire carries the sender's dtype and the receiver casts. Two gloo ranks run as
two threads of this process.
"""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from entropo.trainer import weight_sync


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(dtype: torch.dtype, seed: int) -> dict[str, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"embed.weight": (7, 4), "layer.0.q.weight": (4, 4), "layer.0.norm.weight": (4,), "head.bias": (3,)}
    return {k: torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for k, s in shapes.items()}


def _sync(sent: dict, received: dict, bucket_bytes: int) -> tuple[int, int]:
    """Broadcast ``sent`` into ``received`` over a fresh 2-rank group; (bytes sent, bytes received)."""
    sender = weight_sync.param_specs(iter(sent.items()))
    weight_sync.check_receiver(sender, weight_sync.param_specs(iter(received.items())))
    plan = weight_sync.SyncPlan.build(sender, bucket_bytes)
    port, result = _free_port(), {}

    def member(rank: int) -> None:
        group = weight_sync.init_sync_group("127.0.0.1", port, rank, 2, "gloo", timeout_s=60)
        if rank == 0:
            result[0] = weight_sync.send_weights(group, sent, plan)
        else:
            result[1] = weight_sync.receive_weights(group, received, plan)

    threads = [threading.Thread(target=member, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return result[0], result[1]


@pytest.mark.parametrize(("send_dtype", "recv_dtype"), [(torch.bfloat16, torch.float32),
                                                        (torch.float32, torch.bfloat16),
                                                        (torch.float32, torch.float32)])
def test_receiver_gets_the_senders_values_in_its_own_dtype(send_dtype, recv_dtype):
    sent, received = _params(send_dtype, seed=0), _params(recv_dtype, seed=1)
    # 7·4 + 4·4 = 44 elements fill the first bucket; the rest go into a second one
    bytes_sent, bytes_received = _sync(sent, received, bucket_bytes=44 * torch.empty((), dtype=send_dtype).element_size())
    numel = sum(p.numel() for p in sent.values())  # 54
    assert bytes_sent == bytes_received == numel * torch.empty((), dtype=send_dtype).element_size()
    for name, p in received.items():
        assert p.dtype == recv_dtype
        # exact: a bf16 value is an fp32 value; fp32 → bf16 is the same rounding as .to()
        assert torch.equal(p.detach(), sent[name].detach().to(recv_dtype)), name


def test_plan_buckets_split_by_size_and_dtype():
    specs = [weight_sync.ParamSpec("a", (10,), torch.float32), weight_sync.ParamSpec("b", (10,), torch.float32),
             weight_sync.ParamSpec("c", (2,), torch.bfloat16), weight_sync.ParamSpec("d", (30,), torch.float32)]
    plan = weight_sync.SyncPlan.build(specs, bucket_bytes=80)
    assert [[s.name for s in b] for b in plan.buckets] == [["a", "b"], ["c"], ["d"]]


def test_receiver_that_differs_in_shape_name_or_count_is_named():
    sender = [weight_sync.ParamSpec("embed.weight", (7, 4), torch.bfloat16),
              weight_sync.ParamSpec("head.bias", (3,), torch.bfloat16)]
    same_but_fp32 = [weight_sync.ParamSpec(s.name, s.shape, torch.float32) for s in sender]
    weight_sync.check_receiver(sender, same_but_fp32)
    with pytest.raises(ValueError, match=r"parameter 1 is 'head.bias' \[3\] on the learner but 'head.bias' \[4\]"):
        weight_sync.check_receiver(sender, [same_but_fp32[0], weight_sync.ParamSpec("head.bias", (4,), torch.float32)])
    with pytest.raises(ValueError, match="'embed.weight' .* 'lm_head.weight'"):
        weight_sync.check_receiver(sender, [weight_sync.ParamSpec("lm_head.weight", (7, 4), torch.float32),
                                            same_but_fp32[1]])
    with pytest.raises(ValueError, match=r"learner sends 2 parameters, the rollout model has 1; in one only: \['head.bias'\]"):
        weight_sync.check_receiver(sender, same_but_fp32[:1])
