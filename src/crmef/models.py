"""Loading and saving the paper's network (:class:`FusionNet`): safetensors weights plus a JSON model card.

A model is two files side by side:

- ``<name>.safetensors`` — the network's ``state_dict`` (float32 tensors), read with
  :func:`safetensors.torch.load_file` only (no pickle, so a user's file cannot run code).
- ``<name>.json`` — the model card, a JSON object::

    {
      "name": "mine",                          # short name (str)
      "genotype": {"srsm": [[...]], "drm": [...], "dasm": null | [...]},   # Genotype.to_dict()
      "channels": 16,                          # feature width C (int)
      "cascades": 2,                           # SRSM stages per exposure (int)
      "head": "retinex",                       # "retinex" or "direct"
      "eps": 0.001,                            # optional, Retinex illumination floor
      "training": {...},                       # free-form: data, reference, schedule, git rev
      "metrics": {...}                         # free-form: measured quality (PSNR, SSIM, ...)
    }

Only ``genotype``, ``channels``, ``cascades`` and ``head`` are needed to build the network;
``training`` and ``metrics`` are documentation and are carried as given.

``crmef train`` writes such pairs; :func:`load_model` takes a path to the ``.safetensors`` file
(its card is the sibling ``.json``) or to the ``.json`` card (its weights are the sibling
``.safetensors``). No FusionNet is shipped: the shipped models (``general``, ``aligned``) are
engine models (:mod:`crmef.engine`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from crmef.engine import ENGINE_MODELS
from crmef.errors import InputError
from crmef.nets.fusion import FusionNet, NetConfig
from crmef.space import Genotype
from crmef.utils import atomic_path, atomic_write_text

MODEL_CHOICES = (f"{', '.join(ENGINE_MODELS)} (the engine), an engine card .json, or a .safetensors from "
                 "crmef train (the paper's network, its .json card beside it)")
"""What ``--model`` takes, for error messages."""
CARD_REQUIRED = ("genotype", "channels", "cascades", "head")
"""Model-card keys needed to build the network."""


def resolve_model_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Map a model path to ``(weights.safetensors, card.json)``.

    Raises:
        InputError: not a ``.safetensors`` / ``.json`` path (the message lists :data:`MODEL_CHOICES`),
            or the weights/card files do not exist.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        card, weights = path, path.with_suffix(".safetensors")
    elif path.suffix.lower() == ".safetensors":
        weights, card = path, path.with_suffix(".json")
    elif str(path) in ENGINE_MODELS:
        raise InputError(f"{str(path)!r} is an engine model, not the paper's network: crmef.engine.load_engine "
                         "loads it (crmef fuse and crmef.fuse take either)")
    else:
        raise InputError(f"unknown model {str(path)!r}: use {MODEL_CHOICES}")
    if not weights.is_file():
        raise InputError(f"{weights}: model weights not found")
    if not card.is_file():
        raise InputError(f"{card}: model card not found (needed beside {weights.name})")
    return weights, card


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a model card (see the module docstring for the format).

    Raises:
        InputError: not JSON, not an object, or a required key missing / invalid.
    """
    path = Path(path)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON model card ({exc})") from exc
    if not isinstance(card, dict):
        raise InputError(f"{path}: model card must be a JSON object, got {type(card).__name__}")
    missing = [k for k in CARD_REQUIRED if k not in card]
    if missing:
        raise InputError(f"{path}: model card lacks {', '.join(missing)}")
    return card


def build_from_card(card: dict[str, Any], where: str = "model card") -> FusionNet:
    """Build an (untrained) :class:`FusionNet` from a model card dict.

    Raises:
        InputError: the genotype or structure in the card is invalid.
    """
    try:
        genotype = Genotype.from_dict(card["genotype"])
        return FusionNet.from_genotype(genotype, channels=int(card["channels"]), cascades=int(card["cascades"]),
                                       head=card["head"], eps=float(card.get("eps", NetConfig.eps)))
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{where}: invalid model description ({exc})") from exc


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FusionNet:
    """Load a :class:`FusionNet` (e.g. from ``crmef train``) in eval mode.

    Args:
        path: a ``.safetensors`` / ``.json`` path (the other file of the pair must sit beside it
            with the same stem).
        device: where to put the network.

    Returns:
        The :class:`FusionNet` with weights loaded; ``net.card`` holds the model card dict.

    Raises:
        InputError: missing files, bad card, or weights that do not fit the described network.
    """
    weights, card_path = resolve_model_paths(path)
    card = read_card(card_path)
    net = build_from_card(card, where=str(card_path))
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{weights}: not a readable safetensors file ({exc})") from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = net.state_dict()
        parts = [(what, sorted(names)) for what, names in (
            ("unexpected", set(state) - set(own)), ("missing", set(own) - set(state)),
            ("of another shape", {k for k in set(state) & set(own) if state[k].shape != own[k].shape}))]
        detail = "; ".join(f"{len(n)} {what}, e.g. {n[0]}" for what, n in parts if n)
        raise InputError(f"{weights}: weights do not match the network in {card_path.name} "
                         f"({detail or str(exc).splitlines()[0]})") from exc
    net.card = card  # type: ignore[attr-defined]
    return net.to(device).eval()


def save_model(net: FusionNet, path: str | os.PathLike[str], card: dict[str, Any]) -> tuple[Path, Path]:
    """Save ``net`` as ``<path>.safetensors`` plus the model card ``<path>.json``, atomically.

    The structural keys (``genotype``, ``channels``, ``cascades``, ``head``, ``eps``) are filled
    from the network itself, so the card always describes the weights; ``card`` supplies
    ``name``, ``training``, ``metrics`` and anything else (kept as given).

    Args:
        net: a derived (not super-) network.
        path: destination; the suffix is replaced by ``.safetensors`` / ``.json``.
        card: the rest of the model card.

    Returns:
        ``(weights_path, card_path)``.

    Raises:
        InputError: ``net`` is still a super-net (it has no single genotype to describe it).
    """
    if net.is_supernet:
        raise InputError("save_model needs a derived network (FusionNet.from_genotype), not a super-net")
    path = Path(path)
    weights = path.with_suffix(".safetensors")
    card_path = path.with_suffix(".json")
    cfg = net.config
    full = dict(card)
    full.setdefault("name", path.stem)
    full.update(
        genotype=net.derive().to_dict(),
        channels=cfg.channels,
        cascades=cfg.cascades,
        head=cfg.head,
        eps=cfg.eps,
    )
    full.setdefault("training", {})
    full.setdefault("metrics", {})
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "crmef_card": card_path.name})
    atomic_write_text(card_path, json.dumps(full, indent=2, sort_keys=False) + "\n")
    return weights, card_path
