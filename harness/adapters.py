"""Adapter-only checkpoints: a run's trainable parameters (LoRA, PYRA modules, head; everything for full
fine-tuning) as one safetensors file, and their restoration onto a freshly adapted backbone.

The file holds every parameter with ``requires_grad`` under its qualified name, and in its header (string
metadata, ``safetensors.safe_open(path, "pt").metadata()`` or :func:`read_adapter_facts`) what rebuilding the
model needs: the run's method, compression level and backbone, the adapted model's ``architecture`` (the
backbone the weights belong to: a method may swap it, as a small-model baseline does), ``num_classes`` and
``img_size``, and every fact the method recorded with :func:`harness.record_info` (e.g. a searched schedule).

Facts that are not parameters but shape the computation (counts a search chose at adapt time) are put back by
the method itself: a method whose model carries such facts gives it an ``adaptbench_restore(facts)`` method
(``facts``: the file's header, strings), which :func:`load_adapter` calls. The core names no method.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import registry
from .adapt import ADAPTED_BY
from .errors import UserError
from .store import ADAPTER_SUFFIX, replace_atomically
from .vocabulary import NONE, is_uncompressed

if TYPE_CHECKING:
    from .config import RunConfig

FORMAT_KEY, FORMAT_VERSION = "adaptbench_adapter", "1"
RESTORE_HOOK = "adaptbench_restore"  # the adapted model's method that puts its non-parameter facts back


def _restore_hook(model: nn.Module) -> str:
    """Which restore hook the model carries ("" for none): the file records it, so a file whose facts need one
    is never loaded onto a model that would ignore them."""
    hook = getattr(model, RESTORE_HOOK, None)
    if not callable(hook):
        return ""
    return getattr(hook, "__qualname__", type(hook).__qualname__).rsplit("<locals>.", 1)[-1]


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _level(level: object) -> str:
    """A compression level as a header holds it (:func:`_text`); no compression, a Python caller's None (``null``
    in a header) included, is ``none``."""
    return NONE if is_uncompressed(level) or level == "null" else _text(level)


def model_facts(model: nn.Module) -> dict[str, str]:
    """What the adapted model itself says of its structure: architecture, classes, input size, the facts its
    method recorded, and its restore hook."""
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    facts = {key: _text(value) for key, value in getattr(model, "adaptbench_info", {}).items()}
    facts.update(architecture=getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__),
                 num_classes=_text(getattr(model, "num_classes", None)),
                 img_size=_text(img_size[0] if isinstance(img_size, (tuple, list)) else img_size),
                 restore_hook=_restore_hook(model))
    return facts


def save_adapter(model: nn.Module, path: Path, facts: dict) -> Path:
    """Write ``model``'s trainable parameters to ``path`` (safetensors, atomically) with ``facts`` (e.g. method,
    compression, backbone) and :func:`model_facts` in its header; returns ``path``.

    Save before :func:`harness.merge_for_inference`: merging folds LoRA into the frozen weights, and its
    parameters are gone."""
    path = Path(path)
    tensors = {name: param.detach().cpu().contiguous() for name, param in model.named_parameters()
               if param.requires_grad}
    metadata = {**model_facts(model), **{key: _text(value) for key, value in facts.items()},
                FORMAT_KEY: FORMAT_VERSION}
    replace_atomically(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
    return path


def run_facts(config: RunConfig) -> dict[str, object]:
    """What a run's adapter file says of the run that wrote it."""
    return {"method": config.method, "compression": config.compression, "backbone": config.backbone,
            "pretrained": config.pretrained, "weights_sha256": config.weights_sha256, "task": config.task,
            "seed": config.seed, "run_key": config.key}


def save_run_adapter(model: nn.Module, path: Path, config: RunConfig) -> dict:
    """The pipeline's hook: save the trained adapter of run ``config``; returns what its record says of it."""
    save_adapter(model, path, run_facts(config))
    return {"adapter_file": path.name, "adapter_mb": path.stat().st_size / 2 ** 20}


def read_adapter_facts(path: Path) -> dict[str, str]:
    """The header of an adapter file: the run's method, compression, backbone, the model's architecture,
    num_classes, img_size and its method's recorded facts (all strings)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            facts = handle.metadata() or {}
    except (OSError, SafetensorError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read adapter {path} ({reason}); pass a <run>{ADAPTER_SUFFIX} file a run "
                        f"wrote") from None
    if facts.get(FORMAT_KEY) != FORMAT_VERSION:
        raise UserError(f"{path} is not an adaptbench adapter (no '{FORMAT_KEY}' in its header); pass a "
                        f"<run>{ADAPTER_SUFFIX} file a run wrote")
    return facts


def _rebuild_hint(facts: dict[str, str]) -> str:
    """How to build the model the file fits; a recorded fact named like one of the method's options is passed as
    that option (a method records its choice under its option's name to make the rebuild exact)."""
    backbone = facts.get("backbone") or facts.get("architecture")
    try:
        spec = registry.get_method(facts.get("method", ""))
    except UserError:  # a plugin not loaded here: the hint names no options
        options = []
    else:  # the method's own options: not the model, the level (given already) or what the run hands it
        options = [name for name in inspect.signature(spec.fn).parameters
                   if name not in ("model", "compression", *spec.context)]
    chosen = "".join(f", {name}='{facts[name]}'" for name in options if name in facts)
    return (f"build the model it records first: harness.create_backbone('{backbone}', "
            f"{facts.get('num_classes')}, img_size={facts.get('img_size')}), then harness.adapt(model, "
            f"'{facts.get('method')}', '{facts.get('compression')}'{chosen}) with the run's options")


def _first_mismatch(model: nn.Module, tensors: dict[str, torch.Tensor], facts: dict[str, str]) -> str | None:
    """The first way the file does not fit the model, or None."""
    own = model_facts(model)
    for key, problem in (("architecture", "it holds weights of {} and the model is {}"),
                         ("img_size", "it was trained at {} px and the model takes {} px"),
                         ("num_classes", "it has {} classes and the model {}"),
                         ("restore_hook", "its restore hook is {} and the model's {} (adapted by another method?)")):
        if facts.get(key, "") != own[key]:
            return problem.format(facts.get(key) or "nothing", own[key] or "nothing")
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in params:
            return f"it holds parameter {name}, which the model has not"
        if tuple(tensor.shape) != tuple(params[name].shape):
            return (f"parameter {name} is {tuple(tensor.shape)} in the file, {tuple(params[name].shape)} in the "
                    f"model (other adapt options, e.g. a LoRA rank?)")
    missing = next((name for name, param in params.items() if param.requires_grad and name not in tensors), None)
    if missing is not None:
        return f"the model trains {missing}, which the file lacks"
    # The same parameters may compute another function: lora's file on a tome model, tome's low on its high. A
    # model with a restore hook gets its level's facts back from the file, so its own level does not count.
    adapted = getattr(model, ADAPTED_BY, None)
    if adapted is None:
        return None
    checked = {"method": (facts.get("method"), adapted["method"])}
    if not own["restore_hook"] and facts.get("compression"):
        checked["compression"] = (_level(facts["compression"]), _level(adapted["compression"]))
    for key, (recorded, applied) in checked.items():
        if recorded and recorded != applied:
            return f"it was trained with {key} {facts[key]} and the model was adapted with {applied}"
    return None


def load_adapter(model: nn.Module, path: Path) -> nn.Module:
    """Load the adapter file ``path`` (:func:`save_adapter`) onto ``model``, a freshly adapted backbone, and
    return it. The fresh model, from the file's header, with the run's frozen weights (the shipped or timm's
    pretrained ones, or the ``--weights`` file whose sha256 the header records; a random init is not the run's)::

        facts = harness.read_adapter_facts(path)
        model = harness.create_backbone(facts["backbone"], int(facts["num_classes"]), img_size=int(facts["img_size"]))
        model = harness.load_adapter(harness.adapt(model, facts["method"], facts["compression"]), path)

    A method that swaps the backbone (``architecture`` is then not ``backbone``'s) returns the swapped one again
    where its choice is deterministic; another choice is refused below, and a choice the method recorded under
    one of its option's names is passed as that option in the error's hint. Choices that are not parameters (a
    searched schedule) need not be made again the same way: the model's ``adaptbench_restore(facts)`` (module
    docstring) puts the saved ones back, so a method may document a cheaper way to adapt the fresh model.

    Strict: the file's architecture, input size, classes and restore hook must be the model's, every tensor in it
    must be a parameter of the model with the same shape, every trainable parameter of the model must be in it,
    and its method and level must be those :func:`harness.adapt` applied (the level only for a model without a
    restore hook, which puts the file's level back itself); otherwise a one-line :class:`UserError` names the first
    mismatch and how to build the right model.
    """
    path = Path(path)
    facts = read_adapter_facts(path)
    tensors = load_file(str(path))
    problem = _first_mismatch(model, tensors, facts)
    if problem is not None:
        raise UserError(f"adapter {path.name} (method {facts.get('method')}, compression {facts.get('compression')}) "
                        f"does not fit this model: {problem}; {_rebuild_hint(facts)}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    restore = getattr(model, RESTORE_HOOK, None)
    if callable(restore):
        restore(facts)
    return model
