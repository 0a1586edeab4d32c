"""``reward.fns`` entries: parsing, loading custom functions, and calling conventions.

Entry syntax (one string, so it works in YAML lists and dotted overrides alike)::

    [label=]target[*weight]

    math                        built-in, weight 1, logged as reward/math/mean
    format*0.1                  built-in with weight 0.1
    my_pkg.rewards:score        module:function (imported; the driver's cwd is on the path)
    rewards/gsm8k.py:compute_score*2
                                path/to/file.py:function (relative to the cwd; the
                                file imports modules beside it)
    strict=rewards/a.py:score   an explicit label (needed when two entries share a name)

``weight`` is a float literal after the last ``*``; the label defaults to the built-in name
or the function's name. Labels must be unique. Programmatic callers may also pass a mapping
``{"fn": target, "weight": w, "name": label}``.

Custom functions are called in the convention their signature shows (checked when the
entry is loaded, so a wrong one fails at start-up naming the entry):

- verl: ``compute_score(data_source, solution_str, ground_truth, extra_info=None)`` → float
  or dict with ``"score"``; called per sample with keyword arguments.
- TRL: ``f(prompts, completions, **kwargs)`` → list of float (or None); called on a chunk of
  samples with the keywords TRL's ``GRPOTrainer`` passes (:func:`trl_kwargs`): ``prompts``,
  ``completions`` (chat messages for a conversational dataset), ``completion_ids``, every
  dataset column but the prompt as a list (e.g. ``solution``) and ``trainer_state``; only
  the parameters it accepts unless it takes ``**kwargs``.
- native: ``f(sample)`` (one required positional parameter) → float, dict or None.
- native group: ``@group_reward``-decorated ``f(samples)`` → one result per sample.

Any of them may be ``async def``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from entropo.rewards.api import GROUP_LEVEL_ATTR, Sample
from entropo.rewards.registry import RewardContext
from entropo.rewards.registry import get as get_builtin

CLUSTERS_TARGET = "@answer_clusters"
"""The internal group entry that only clusters answers (``reward.cluster_answers``)."""

VERL_PARAMS = ("data_source", "solution_str", "ground_truth")
_LABEL = re.compile(r"[A-Za-z_][\w.\-]*")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class RewardSpecError(ValueError):
    """A ``reward.fns`` entry that cannot be used; the message names the entry."""


@dataclass(frozen=True)
class FnSpec:
    """One parsed ``reward.fns`` entry.

    Attributes:
        label: metric/component name.
        target: a built-in name, ``module:function`` or ``/abs/path.py:function``.
        weight: multiplies the score in the total reward.
        raw: the entry as written (for messages).
    """

    label: str
    target: str
    weight: float
    raw: str

    @property
    def is_builtin(self) -> bool:
        return ":" not in self.target and not self.target.startswith("@")


def parse_entry(entry: str | Mapping[str, Any]) -> FnSpec:
    """Parse one ``reward.fns`` entry (syntax in the module docstring).

    Args:
        entry: the string, or a mapping with ``fn`` and optional ``weight`` / ``name``.

    Returns:
        The spec, with a file path made absolute.

    Raises:
        RewardSpecError: an empty target, a bad label or weight.
    """
    if isinstance(entry, Mapping):
        raw = str(dict(entry))
        target, weight, label = str(entry.get("fn", "")).strip(), entry.get("weight", 1.0), entry.get("name")
    else:
        raw = str(entry)
        text, label = raw.strip(), None
        head, eq, rest = text.partition("=")
        if eq and _LABEL.fullmatch(head.strip()):
            label, text = head.strip(), rest.strip()
        weight = 1.0
        body, star, tail = text.rpartition("*")
        if star:
            if not _FLOAT.fullmatch(tail.strip()):
                raise RewardSpecError(f"reward.fns entry '{raw}': weight '{tail}' after '*' is not a number")
            text, weight = body.strip(), float(tail)
        target = text
    if not target:
        raise RewardSpecError(f"reward.fns entry '{raw}': no function given")
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise RewardSpecError(f"reward.fns entry '{raw}': weight {weight!r} is not a number") from None
    if ":" in target:
        module, _, func = target.rpartition(":")
        if not module or not func.isidentifier():
            raise RewardSpecError(f"reward.fns entry '{raw}': expected module:function or path.py:function")
        if _is_path(module):
            target = f"{os.path.abspath(os.path.expanduser(module))}:{func}"
        label = label or func
    else:
        label = label or target
    if not _LABEL.fullmatch(label):
        raise RewardSpecError(f"reward.fns entry '{raw}': label '{label}' must be a plain name")
    return FnSpec(label=label, target=target, weight=weight, raw=raw)


def parse_entries(entries: list) -> list[FnSpec]:
    """Parse all entries; duplicate labels raise, asking for an explicit ``label=``."""
    specs = [parse_entry(e) for e in entries]
    seen: dict[str, str] = {}
    for s in specs:
        if s.label in seen:
            raise RewardSpecError(f"reward.fns entries '{seen[s.label]}' and '{s.raw}' are both named "
                                  f"'{s.label}'; give one a label: 'other={s.raw}'")
        seen[s.label] = s.raw
    return specs


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


# ---------------------------------------------------------------------------------------
# loading


def load_function(spec: FnSpec) -> Callable:
    """Import the custom function of a spec.

    Args:
        spec: a non-built-in spec.

    Returns:
        The callable.

    Raises:
        RewardSpecError: the module or file is missing, fails to import, or has no such
            callable.
    """
    module_name, _, func = spec.target.rpartition(":")
    try:
        if _is_path(module_name):
            if not os.path.isfile(module_name):
                raise FileNotFoundError(f"no file {module_name}")
            key = "entropo_reward_" + hashlib.sha1(module_name.encode()).hexdigest()[:12]
            module = sys.modules.get(key)
            if module is None:
                # A reward file imports the modules beside it, as it would run as a script;
                # the directory stays on the path for imports made inside calls.
                folder = os.path.dirname(module_name)
                if folder not in sys.path:
                    sys.path.insert(0, folder)
                ispec = importlib.util.spec_from_file_location(key, module_name)
                module = importlib.util.module_from_spec(ispec)
                sys.modules[key] = module  # dataclasses and pickling look modules up here
                try:
                    ispec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(key, None)
                    raise
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except Exception as e:
        raise RewardSpecError(f"reward.fns entry '{spec.raw}': cannot load {module_name}: "
                              f"{type(e).__name__}: {e}") from e
    fn = getattr(module, func, None)
    if fn is None or not callable(fn):
        raise RewardSpecError(f"reward.fns entry '{spec.raw}': {module_name} has no function '{func}'")
    return fn


def _is_async(fn: Callable) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # a callable object: look at its class's __call__
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)


@dataclass
class Loaded:
    """A callable ready to score, in one of three shapes.

    Attributes:
        spec: the entry.
        level: ``sample`` (``fn(sample)``), ``batch`` (``fn(samples)`` on any chunk, one
            result per sample: TRL) or ``group`` (``fn(samples of one group)``).
        convention: ``builtin``, ``native``, ``verl``, ``trl`` or ``internal``.
        fn: the adapted callable (may return a coroutine when ``is_async``).
        is_async: whether calls return coroutines.
    """

    spec: FnSpec
    level: str
    convention: str
    fn: Callable
    is_async: bool


def adapt(spec: FnSpec, fn: Callable) -> Loaded:
    """Detect the convention of a custom function and wrap it (module docstring).

    Args:
        spec: its entry (for messages).
        fn: the function.

    Returns:
        The adapted function.

    Raises:
        RewardSpecError: the signature fits no convention.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise RewardSpecError(f"reward.fns entry '{spec.raw}': cannot read its signature ({e})") from None
    params = sig.parameters
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    required = [p for p in params.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    is_async = _is_async(fn)

    def accepts(name: str) -> bool:
        return name in params or var_kw

    if getattr(fn, GROUP_LEVEL_ATTR, False):
        if len(required) != 1:
            raise RewardSpecError(f"reward.fns entry '{spec.raw}': a @group_reward takes one parameter "
                                  f"(the group's samples), got {sig}")
        return Loaded(spec, "group", "native", fn, is_async)
    if all(name in params for name in VERL_PARAMS):
        extra = {n for n in ("extra_info",) if accepts(n)}

        def verl(sample: Sample):
            kwargs = dict(data_source=sample.data_source, solution_str=sample.response,
                          ground_truth=sample.ground_truth)
            if extra:
                kwargs["extra_info"] = sample.extra_info
            return fn(**kwargs)

        _check_required(spec, sig, required, set(VERL_PARAMS) | extra)
        return Loaded(spec, "sample", "verl", verl, is_async)
    if "completions" in params and ("prompts" in params or var_kw):

        def trl(samples: list[Sample]):
            kwargs = trl_kwargs(samples)
            return fn(**{k: v for k, v in kwargs.items() if var_kw or k in params})

        return Loaded(spec, "batch", "trl", trl, is_async)
    positional = [p for p in required if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) == 1 and len(positional) == 1:
        return Loaded(spec, "sample", "native", fn, is_async)
    raise RewardSpecError(
        f"reward.fns entry '{spec.raw}': cannot tell the calling convention of {getattr(fn, '__name__', fn)}{sig}; "
        "expected verl compute_score(data_source, solution_str, ground_truth, extra_info), "
        "TRL f(prompts, completions, **kwargs), native f(sample) or @group_reward f(samples)"
    )


def trl_kwargs(samples: list[Sample]) -> dict[str, Any]:
    """The keyword arguments TRL's ``GRPOTrainer`` gives a reward function, for these samples.

    ``prompts``: the dataset's prompts (chat messages for a conversational dataset, else the
    text); ``completions``: ``[{"role": "assistant", "content": text}]`` per sample when the
    prompt is conversational, else the text; ``completion_ids``; every dataset column except
    the prompt and ``completion`` as a list (missing entries None); ``trainer_state``.
    Columns TRL does not have come last and never shadow a dataset column: ``ground_truth``,
    ``data_source``, ``extra_info`` (our row fields) and each ``extra_info`` key all samples
    share.
    """
    kwargs: dict[str, Any] = {}
    shared = set.intersection(*(set(s.extra_info) for s in samples)) if samples else set()
    for key in sorted(shared):
        kwargs[key] = [s.extra_info[key] for s in samples]
    kwargs.update(ground_truth=[s.ground_truth for s in samples], data_source=[s.data_source for s in samples],
                  extra_info=[s.extra_info for s in samples])
    names = list(dict.fromkeys(k for s in samples for k in s.columns))
    for key in names:
        kwargs[key] = [s.columns.get(key) for s in samples]
    kwargs["prompts"] = [s.prompt if s.messages is None else s.messages for s in samples]
    kwargs["completions"] = [s.response if s.messages is None else [{"role": "assistant", "content": s.response}]
                             for s in samples]
    kwargs["completion_ids"] = [list(s.response_ids) for s in samples]
    kwargs["trainer_state"] = samples[0].trainer_state if samples else None
    return kwargs


def _check_required(spec: FnSpec, sig: inspect.Signature, required: list, given: set[str]) -> None:
    missing = [p.name for p in required if p.name not in given]
    if missing:
        raise RewardSpecError(f"reward.fns entry '{spec.raw}': parameters {missing} of {sig} have no value "
                              "in the verl convention")


def load(spec: FnSpec, options: Mapping[str, Any], ctx: RewardContext) -> Loaded:
    """Build the callable of one entry: a built-in (with its options) or a custom function.

    Args:
        spec: the entry.
        options: built-in name -> its options object (missing names use defaults).
        ctx: the reward context.

    Returns:
        The loaded entry.

    Raises:
        RewardSpecError: unknown built-in, a failing built-in set-up, or a bad custom function.
    """
    from entropo.rewards.registry import make_options

    if spec.target == CLUSTERS_TARGET:
        from entropo.rewards.configs import EMPOConfig
        from entropo.rewards.empo import build_clusters

        o = options.get("empo") or EMPOConfig()
        return Loaded(spec, "group", "internal", build_clusters(ctx, o.answer, o.check_timeout_s), False)
    if spec.is_builtin:
        try:
            b = get_builtin(spec.target)
        except KeyError as e:
            raise RewardSpecError(f"reward.fns entry '{spec.raw}': {e.args[0]}") from None
        try:
            fn = b.build(make_options(b, options.get(b.name)), ctx)
        except Exception as e:
            raise RewardSpecError(f"reward.fns entry '{spec.raw}': {e}") from e
        return Loaded(spec, b.level, "builtin", fn, _is_async(fn))
    return adapt(spec, load_function(spec))
