"""Token log-probabilities and full-vocabulary entropy, chunked to bound memory (docs/algorithms.md §3).

With ``z`` the logit vector ``[V]`` at the position that predicts label ``y`` and ``T`` the
rollout sampling temperature:

    z' = z / T,   lse = logsumexp(z'),   log p_v = z'_v − lse
    logp = log p_y
    H    = − Σ_v p_v log p_v  =  lse − Σ_v p_v z'_v           (since Σ_v p_v = 1)

and, for the backward pass (``1[·]`` the indicator),

    ∂logp / ∂z_b = (1[b = y] − p_b) / T
    ∂H    / ∂z_b = − p_b (log p_b + H) / T

Source: the Shannon entropy of the tempered policy, the definition every entropy-control
paper implemented here uses (e.g. Cui et al., arXiv 2505.22617). Official code: verl ``entropy_from_logits`` (``lse − Σ softmax·z``),
https://github.com/volcengine/verl/blob/03c8cca18/verl/utils/torch_functional.py, and its
later ``entropy_from_logits_with_chunking`` in the same file, which chunks the forward pass
only.

Deviations and conventions:
- verl's chunked function chunks the forward only; under autograd the softmax each chunk
  saves for backward still adds up to ``[rows, V]``. :class:`_ChunkedLogpEntropy` saves only a reference to the logits and
  three floats per row, and recomputes the softmax chunk by chunk in backward, so the extra
  memory in both passes is a few ``[chunk_size, V]`` buffers (the gradient itself, one
  ``[rows, V]`` tensor, is an output and unavoidable).
- verl computes ``H = lse − Σ softmax·z'``. We compute ``H = − Σ p log p`` with
  ``log p = z' − lse`` instead: the same number in exact arithmetic, but in fp32 verl's form
  subtracts two numbers of size ``lse`` and loses up to 1.2e-4 against an fp64
  reference (V = 32,000, logits of std ≈ 4), where ``− Σ p log p`` stays within 2e-6.
- Arithmetic runs in ``promote(logits.dtype, float32)``: bf16/fp16 logits are upcast one chunk
  at a time, float64 stays float64 (used by the gradient check). Outputs are in that dtype;
  the gradient w.r.t. the logits has the logits' dtype.
- Vocabulary entries with logit ``−inf`` (masked vocabulary) have ``p = 0`` and contribute
  exactly 0 to ``H`` and its gradient. A row whose logits are all ``−inf`` has no
  distribution and gives NaN. Labels must lie in ``[0, V)``; there is no ignore index.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

DEFAULT_CHUNK_SIZE = 256
"""Rows per chunk. At Qwen's V = 151,936 one fp32 ``[256, V]`` buffer is 148 MiB (39M
elements) and a chunk holds two of them at once. On 2 CPU cores (4096 × 151,936 logits) 64 to
1024 rows took 2.1–2.7 s forward and 5.4–8.3 s forward + backward, 256 being the fastest for
the latter; not measured on GPU (benchmarks/entropy_memory.py)."""

LOGP_FLOOR = -1.0e4
"""Lower clamp on ``log p`` inside the entropy term. ``exp`` underflows to exactly 0 far above
it (below about −104 in fp32 and −745 in fp64), so no entry with ``p > 0`` is changed; it only
turns ``log p = −inf`` of masked vocabulary entries into a finite number, so that
``p · log p = 0 · finite = 0`` instead of ``0 · (−inf) = NaN``."""


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision and fp32 inputs, fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def _row_views(x: torch.Tensor) -> list[torch.Tensor]:
    """2-D ``[r, V]`` views of ``x`` that cover its flattened rows in row-major order, without
    copying (a non-viewable slice such as ``logits[:, :-1]`` is split along its leading dims)."""
    if x.dim() == 1:
        return [x.unsqueeze(0)]
    try:
        return [x.view(-1, x.shape[-1])]
    except RuntimeError:
        return [v for sub in x.unbind(0) for v in _row_views(sub)]


def _chunks(logits: torch.Tensor, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first flattened row, [c, V] view)`` for chunks of at most ``chunk_size`` rows."""
    offset = 0
    for rows in _row_views(logits):
        for s in range(0, rows.shape[0], chunk_size):
            chunk = rows[s : s + chunk_size]
            yield offset + s, chunk
        offset += rows.shape[0]


def _scaled(chunk: torch.Tensor, temperature: float) -> tuple[torch.Tensor, bool]:
    """``z' = z / T`` in the compute dtype, and whether it is a fresh buffer (safe to modify in
    place) rather than ``chunk`` itself (fp32/fp64 input at ``T = 1``)."""
    z = chunk.to(_compute_dtype(chunk.dtype))
    if temperature != 1.0:
        return z / temperature, True
    return z, z is not chunk


def _forward_chunk(
    chunk: torch.Tensor, y: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(logp, lse, H)`` ``[c]`` of one ``[c, V]`` chunk. A function of its own so that its
    ``[c, V]`` temporaries are freed before the next chunk allocates its own."""
    z, fresh = _scaled(chunk, temperature)  # [c, V]
    z_y = z.gather(-1, y[:, None])  # [c, 1]
    z_max = z.amax(dim=-1, keepdim=True)  # [c, 1]
    shifted = z.sub_(z_max) if fresh else z - z_max  # [c, V]
    p = shifted.exp()  # [c, V], unnormalised
    sum_exp = p.sum(dim=-1, keepdim=True)  # [c, 1]
    lse = z_max + sum_exp.log()  # [c, 1]
    logp = (z_y - lse).squeeze(-1)
    if not with_entropy:
        return logp, lse.squeeze(-1), None
    p.div_(sum_exp)
    log_p = shifted.sub_(sum_exp.log()).clamp_(min=LOGP_FLOOR)  # [c, V]
    entropy = -(p.mul_(log_p).sum(dim=-1))
    return logp, lse.squeeze(-1), entropy


def _forward(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, chunk_size: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flat ``(logp, lse, H)``, each ``[R]`` for the ``R`` flattened rows, computed chunk by chunk."""
    num_rows = labels.numel()
    y_flat = labels.reshape(-1)
    out_kw = {"dtype": _compute_dtype(logits.dtype), "device": logits.device}
    logp = torch.empty(num_rows, **out_kw)
    lse = torch.empty(num_rows, **out_kw)
    entropy = torch.empty(num_rows, **out_kw) if with_entropy else None
    for s, chunk in _chunks(logits, chunk_size):
        e = s + chunk.shape[0]
        logp[s:e], lse[s:e], entropy_c = _forward_chunk(chunk, y_flat[s:e], temperature, with_entropy)
        if entropy is not None:
            entropy[s:e] = entropy_c
    return logp, lse, entropy


def _grad_chunk(
    chunk: torch.Tensor,
    y: torch.Tensor,
    temperature: float,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    g_logp: torch.Tensor | None,
    g_ent: torch.Tensor | None,
) -> torch.Tensor:
    """``∂L/∂z`` ``[c, V]`` of one chunk, from ``[c, 1]`` saved ``lse``, ``H`` and upstream grads."""
    z, fresh = _scaled(chunk, temperature)  # [c, V]
    log_p = z.sub_(lse) if fresh else z - lse  # [c, V]
    if g_ent is None:
        # ∂/∂z' = g_logp · (1[b=y] − p_b)
        g = log_p.exp_().mul_(-g_logp)  # [c, V]
    else:
        # ∂/∂z' = g_logp · (1[b=y] − p_b) − g_ent · p_b (log p_b + H)
        log_p.clamp_(min=LOGP_FLOOR)
        p = log_p.exp()  # [c, V]
        g = log_p.add_(entropy).mul_(g_ent)
        if g_logp is not None:
            g.add_(g_logp)
        g.mul_(p).neg_()
    if g_logp is not None:
        g.scatter_add_(-1, y[:, None], g_logp)
    if temperature != 1.0:
        g.div_(temperature)  # chain rule through z' = z / T
    return g


class _ChunkedLogpEntropy(torch.autograd.Function):
    """Autograd wrapper that saves the logits by reference and recomputes softmax in backward."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, chunk_size, with_entropy):
        logp, lse, entropy = _forward(logits, labels, temperature, chunk_size, with_entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)
        if entropy is None:
            ctx.save_for_backward(logits, labels, lse)
            return logp, None
        ctx.save_for_backward(logits, labels, lse, entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        logits, labels, lse, *maybe_entropy = ctx.saved_tensors
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None
        entropy = maybe_entropy[0] if maybe_entropy else None
        if entropy is None:
            grad_entropy = None
        y_flat = labels.reshape(-1)
        lse = lse[:, None]  # [R, 1]
        entropy = None if entropy is None else entropy[:, None]
        g_logp = None if grad_logp is None else grad_logp.reshape(-1, 1).to(lse.dtype)
        g_ent = None if grad_entropy is None else grad_entropy.reshape(-1, 1).to(lse.dtype)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_rows = grad.view(-1, logits.shape[-1])  # [R, V]
        for s, chunk in _chunks(logits, ctx.chunk_size):
            e = s + chunk.shape[0]
            grad_rows[s:e] = _grad_chunk(
                chunk,
                y_flat[s:e],
                ctx.temperature,
                lse[s:e],
                None if entropy is None else entropy[s:e],
                None if g_logp is None else g_logp[s:e],
                None if g_ent is None else g_ent[s:e],
            )
        return grad, None, None, None, None


def logprobs_and_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each label and the full-vocabulary entropy, chunked over rows.

    Memory beyond the logits and the outputs is a few ``[chunk_size, V]`` buffers in the
    forward and in the backward pass (gradients flow to ``logits`` through both outputs).
    When grad is disabled or ``logits`` does not require grad, no graph is built.

    Args:
        logits: ``[..., V]`` (e.g. ``[N, T, V]``), any float dtype; bf16/fp16 are upcast to
            fp32 one chunk at a time. Not modified; must not be modified in place before
            backward (autograd's version check raises if it is).
        labels: ``[...]`` int64 token ids in ``[0, V)``, the leading shape of ``logits``.
        temperature: rollout sampling temperature ``T > 0``; logits are divided by it.
        chunk_size: rows (flattened leading positions) per chunk; ``DEFAULT_CHUNK_SIZE`` = 256.
        with_entropy: compute ``H``; when False, skip all entropy work and return None for it.

    Returns:
        ``(logp, entropy)``, each ``[...]`` in ``promote(logits.dtype, float32)``;
        ``entropy`` is None when ``with_entropy`` is False.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != logits.shape[:-1] {tuple(logits.shape[:-1])}")
    temperature = float(temperature)
    if torch.is_grad_enabled() and logits.requires_grad:
        logp, entropy = _ChunkedLogpEntropy.apply(logits, labels, temperature, chunk_size, with_entropy)
    else:
        logp, _, entropy = _forward(logits.detach(), labels, temperature, chunk_size, with_entropy)
    shape = labels.shape
    return logp.view(shape), None if entropy is None else entropy.view(shape)


def naive_logprobs_and_entropy(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-tensor reference for :func:`logprobs_and_entropy` (several ``[..., V]`` temporaries).

    Uses the definition ``H = − Σ p log p`` with ``log p = z' − logsumexp(z')`` and plain
    autograd. (Not ``torch.log_softmax``: its fp32 CPU kernel in torch 2.13 drifts from an fp64
    reference by up to 3e-5 in ``log p`` and 7e-5 in ``H`` at V = 151,936, logits of std 4,
    against 3e-6 and 5e-6 for this form.)

    Args:
        logits: ``[..., V]``, any float dtype (computed in ``promote(dtype, float32)``).
        labels: ``[...]`` int64 token ids in ``[0, V)``.
        temperature: rollout sampling temperature ``T > 0``.

    Returns:
        ``(logp, entropy)``, each ``[...]``.
    """
    z = logits.to(_compute_dtype(logits.dtype)) / temperature  # [..., V]
    log_p = z - torch.logsumexp(z, dim=-1, keepdim=True)  # [..., V]
    logp = log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()  # [..., V]
    # Masked vocab entries have p = 0 and log p = −inf; their term p log p is 0, not NaN.
    entropy = -(p * log_p.masked_fill(p == 0, 0.0)).sum(dim=-1)
    return logp, entropy
