"""Hardware-aware bilevel architecture search (DARTS-style, with a latency term).

Objective (Liu et al., §III): ``min_α ℓ_val(α; w*(α)) + η R(α)`` with
``w*(α) = argmin_w ℓ_train(w, α)``, ``ℓ`` the L1 loss to the reference and ``R(α)`` the normalised
expected latency from a per-device look-up table (:mod:`crmef.latency`).

Schedule: ``warmup_epochs`` of weight-only training, then ``epochs`` of alternating steps — one
weight step on a training batch (SGD with momentum, cosine learning rate) and one architecture
step on a validation batch (Adam). The architecture gradient is first-order by default; the
second-order (unrolled, finite-difference Hessian-vector product) variant of DARTS is an option.

The :class:`Architect` owns the α optimiser and is kept apart from the network. Data-parallel
runs (``torchrun --nproc_per_node N``; process group, device, seeds and checkpoints from
:mod:`crmef.runtime`) wrap the network in DDP for the weight step and average the α gradients
with ``all_reduce``, so α stays identical on every rank. Loader workers persist across passes
(pinned memory on CUDA) and a decode cache is prepared by rank 0 before the loop.

Outputs of :func:`run_search` in the run directory: ``config.yaml`` (resolved), ``alphas.json``
(softmax α per slot per epoch), ``genotype.json``, ``alphas.png`` (heatmap, slots × ops),
``derived.json`` (params, GFLOPs, measured latency, validation L1 of the derived net),
``latency_table.json`` (the table used) and ``checkpoints/epoch-0000123/`` (after every epoch:
super-net weights and α, both optimisers, scheduler, history and the RNG state of every rank, in
safetensors + JSON, written atomically; ``checkpoints/latest`` names the newest). ``resume``
continues from it exactly: the data order is a pure function of the seed and the pass.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from crmef.config import dump_config, to_dict
from crmef.data.datasets import DataConfig
from crmef.errors import ConfigError
from crmef.latency import ExpectedLatency, LatencyTable, ensure_table, slot_sigs
from crmef.nets import FusionNet, NetConfig
from crmef.runtime import (
    EpochSampler,
    Runtime,
    git_revision,
    latest_checkpoint,
    load_checkpoint,
    make_loader,
    optim_from_tensors,
    optim_to_tensors,
    prepare_cache,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    setup,
)
from crmef.space import CONV_OPS, DEFORM_OPS, SLOT_KINDS, Genotype, SearchSpace
from crmef.utils import atomic_path, atomic_write_text

CKPT_DIR = "checkpoints"

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class ModelSection:
    """The super-net: width, structure and candidate ops per slot kind."""

    channels: int = 16
    cascades: int = 2
    align: bool = False
    head: str = "retinex"
    drm_blocks: int = 4
    srsm_ops: list[str] = field(default_factory=lambda: list(CONV_OPS))
    drm_ops: list[str] = field(default_factory=lambda: list(CONV_OPS))
    dasm_ops: list[str] = field(default_factory=lambda: list(DEFORM_OPS))


@dataclass
class DataSection:
    """Where training/validation pairs come from.

    ``synthetic: true`` uses :class:`SyntheticBrackets` (smooth random scenes, exposure-scaled
    and clipped); otherwise ``data`` is a :class:`crmef.data.DataConfig` whose ``split`` is the
    training split (the validation split is the same config with ``split: val``, no augmentation).
    """

    synthetic: bool = False
    synthetic_samples: int = 256
    crop: int = 64
    batch: int = 4
    workers: int = 0
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class SearchSection:
    """The bilevel optimisation (paper: 10 warm-up + 300 search epochs, SGD 3e-4, Adam 1e-4)."""

    eta: float = 0.5
    warmup_epochs: int = 10
    epochs: int = 300
    steps_per_epoch: int = 50
    w_lr: float = 3e-4
    w_lr_min: float = 0.0
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    w_grad_clip: float = 5.0
    alpha_lr: float = 1e-4
    alpha_betas: tuple[float, float] = (0.5, 0.999)
    alpha_weight_decay: float = 1e-3
    order: str = "first"
    unrolled_xi: float | None = None
    seed: int = 0


@dataclass
class LatencySection:
    """The look-up table: measured on ``device`` at ``size`` (default: the crop), batch ``batch``."""

    table: str | None = None
    size: int | None = None
    batch: int = 16
    runs: int = 100
    warmup: int = 5


@dataclass
class DeriveSection:
    """Evaluation of the derived net: fine-tuning, validation L1, measured latency."""

    finetune_steps: int = 0
    finetune_lr: float = 1e-3
    val_batches: int = 8
    latency_size: int = 512
    latency_runs: int = 5


@dataclass
class SearchConfig:
    """Everything a search run needs (YAML: ``configs/search/*.yaml``)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    search: SearchSection = field(default_factory=SearchSection)
    latency: LatencySection = field(default_factory=LatencySection)
    derive: DeriveSection = field(default_factory=DeriveSection)
    device: str = "cpu"
    threads: int | None = None
    log_every: int = 10

    def validate(self) -> None:
        """Check the config before any work starts.

        Raises:
            ConfigError: negative η, unknown or disallowed op, empty candidate list, bad schedule
                or sizes (the message names the key).
        """
        m, s, d, lat = self.model, self.search, self.data, self.latency
        if not (isinstance(s.eta, (int, float)) and math.isfinite(s.eta) and s.eta >= 0):
            raise ConfigError(f"search.eta must be a finite number >= 0, got {s.eta!r}")
        for kind, ops in (("srsm", m.srsm_ops), ("drm", m.drm_ops), ("dasm", m.dasm_ops)):
            if not ops:
                raise ConfigError(f"model.{kind}_ops: the candidate list is empty; give at least one op")
            for op in ops:
                if op not in SLOT_KINDS[kind]:
                    raise ConfigError(f"model.{kind}_ops: unknown op {op!r} for a {kind} slot; allowed: {', '.join(SLOT_KINDS[kind])}")
            if len(set(ops)) != len(ops):
                raise ConfigError(f"model.{kind}_ops: duplicate ops in {ops}")
        if m.channels < 1 or m.drm_blocks < 1 or m.cascades not in (0, 1, 2, 3):
            raise ConfigError(f"model: channels and drm_blocks must be >= 1 and cascades 0-3, got {m.channels}, {m.drm_blocks}, {m.cascades}")
        if m.head not in ("retinex", "direct"):
            raise ConfigError(f"model.head must be retinex or direct, got {m.head!r}")
        if s.order not in ("first", "second"):
            raise ConfigError(f"search.order must be 'first' or 'second', got {s.order!r}")
        for key in ("warmup_epochs", "epochs"):
            if getattr(s, key) < 0:
                raise ConfigError(f"search.{key} must be >= 0, got {getattr(s, key)}")
        if s.steps_per_epoch < 1 or s.w_lr <= 0 or s.alpha_lr <= 0:
            raise ConfigError("search.steps_per_epoch must be >= 1 and the learning rates > 0")
        if d.crop < 8 or d.crop % 4 or d.batch < 1:
            raise ConfigError(f"data.crop must be a multiple of 4 and >= 8, data.batch >= 1; got crop={d.crop}, batch={d.batch}")
        if not d.synthetic and not d.data.sources:
            raise ConfigError("data.data.sources is empty: give data sources, or set data.synthetic: true")
        if lat.batch < 1 or lat.runs < 1 or lat.warmup < 0 or (lat.size is not None and lat.size < 4):
            raise ConfigError("latency: batch and runs must be >= 1, warmup >= 0, size >= 4")
        if self.derive.latency_runs < 1 or self.derive.val_batches < 1:
            raise ConfigError("derive.latency_runs and derive.val_batches must be >= 1")

    def net_config(self) -> NetConfig:
        m = self.model
        try:
            space = SearchSpace(srsm=tuple(m.srsm_ops), drm=tuple(m.drm_ops), dasm=tuple(m.dasm_ops))
            return NetConfig(channels=m.channels, cascades=m.cascades, align=m.align, head=m.head,
                             drm_blocks=m.drm_blocks, space=space)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class SyntheticBrackets(Dataset):
    """Synthetic (under, over, ref) triples: smooth random scenes, exposure-scaled and clipped.

    The reference is a smooth random image in [0, 1] (bilinear up-sampling of low-resolution
    noise plus an edge pattern); ``under = clip(ref · 2^-e)`` and ``over = clip(ref · 2^e)`` with
    ``e`` drawn in [1, 2.5] stops, in a gamma-2.2 space. Deterministic per (seed, index).

    Items: ``{"under", "over", "ref": Tensor[3, crop, crop], "name": str}``.
    """

    def __init__(self, length: int, crop: int, seed: int = 0) -> None:
        self.length, self.crop, self.seed = length, crop, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        c = self.crop
        lo = torch.rand(1, 3, 4, 4, generator=g)
        mid = torch.rand(1, 3, 8, 8, generator=g) * 0.3
        ref = F.interpolate(lo, size=(c, c), mode="bilinear", align_corners=False)
        ref = ref + F.interpolate(mid, size=(c, c), mode="bicubic", align_corners=False) - 0.15
        lum = float(torch.rand(1, generator=g)) * 0.6 + 0.4
        ref = (ref * lum).clamp(0.0, 1.0)[0]
        e = 1.0 + 1.5 * float(torch.rand(1, generator=g))
        lin = ref ** 2.2
        under = (lin * 2.0 ** -e).clamp(0, 1) ** (1 / 2.2)
        over = (lin * 2.0 ** e).clamp(0, 1) ** (1 / 2.2)
        return {"under": under.float(), "over": over.float(), "ref": ref.float(), "name": f"synth{index}"}


def build_datasets(cfg: SearchConfig) -> tuple[Dataset, Dataset]:
    """Training and validation datasets of a search config (checked before any work).

    Raises:
        ConfigError: missing data roots or empty splits (from the data layer).
    """
    d = cfg.data
    if d.synthetic:
        n = d.synthetic_samples
        return SyntheticBrackets(n, d.crop, seed=cfg.search.seed), SyntheticBrackets(max(n // 4, d.batch), d.crop, seed=cfg.search.seed + 7919)
    from crmef.data import build_dataset

    train_cfg = replace(d.data, crop=d.crop, split=d.data.split)
    val_cfg = replace(d.data, crop=d.crop, split="val", augment=False)
    return build_dataset(train_cfg), build_dataset(val_cfg)


def _loader(ds: Dataset, cfg: SearchConfig, seed: int, rt: Runtime) -> DataLoader:
    """Batches of ``ds`` in a per-pass order that is a pure function of ``(seed, pass)``, this
    rank's slice of it (workers persist across passes; pinned on CUDA)."""
    sampler = EpochSampler(len(ds), seed, rank=rt.rank, world=rt.world)  # type: ignore[arg-type]
    drop_last = sampler.per_rank() >= cfg.data.batch
    return make_loader(ds, sampler, cfg.data.batch, cfg.data.workers, rt.device, seed=seed, drop_last=drop_last)


def _cycle(loader: DataLoader, start: int = 0) -> Iterator[dict[str, Any]]:
    """Endless batches, a new order every pass, beginning after the first ``start`` batches
    (how a resumed search takes the batches an uninterrupted one would)."""
    sampler: EpochSampler = loader.sampler  # type: ignore[assignment]
    batch = loader.batch_size or 1
    per_pass = sampler.per_rank() // batch if loader.drop_last else -(-sampler.per_rank() // batch)
    if per_pass < 1:
        raise ConfigError(f"the data loader is empty (dataset of {len(loader.dataset)} samples, batch {batch})")  # type: ignore[arg-type]
    epoch, within = divmod(start, per_pass)
    while True:
        sampler.set_epoch(epoch, within * batch)
        yield from loader
        epoch, within = epoch + 1, 0


# --------------------------------------------------------------------------------------------
# The architect
# --------------------------------------------------------------------------------------------


def l1_loss(net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean absolute error between ``net(under, over)`` and ``ref`` (all ``(B, 3, H, W)``)."""
    return F.l1_loss(net(batch["under"], batch["over"]), batch["ref"])


class Architect:
    """Updates α against ``L1_val + η R(α)`` (first- or second-order), kept apart from the net.

    Args:
        net: the super-net (not DDP-wrapped).
        rt: the runtime (α gradients are averaged over its ranks); None: one process.
        latency: the expected-latency term ``R(α)``.
        cfg: the search section (η, Adam settings, order).
        w_optimizer: the weight optimiser (its learning rate is the unrolled step size ``ξ`` when
            ``unrolled_xi`` is not set).
    """

    def __init__(self, net: FusionNet, latency: ExpectedLatency, cfg: SearchSection, w_optimizer: torch.optim.Optimizer,
                 rt: Runtime | None = None) -> None:
        self.net, self.latency, self.cfg, self.w_optimizer = net, latency, cfg, w_optimizer
        self.rt = rt or Runtime(torch.device("cpu"))
        self.alphas = net.arch_parameters()
        if not self.alphas:
            raise ConfigError("the super-net has no searchable slot (every candidate list has one op)")
        self.optimizer = torch.optim.Adam(self.alphas, lr=cfg.alpha_lr, betas=tuple(cfg.alpha_betas),
                                          weight_decay=cfg.alpha_weight_decay)

    def step(self, val_batch: dict[str, Tensor], train_batch: dict[str, Tensor] | None = None) -> dict[str, float]:
        """One α update; returns ``{"val_l1", "R", "loss"}`` (before the update)."""
        if self.cfg.order == "second":
            if train_batch is None:
                raise ValueError("second-order search needs a training batch")
            grads, val_l1 = self._second_order_grads(val_batch, train_batch)
        else:
            val_l1 = l1_loss(self.net, val_batch)
            grads = list(torch.autograd.grad(val_l1, self.alphas))
        r = self.latency()
        if self.cfg.eta > 0:
            r_grads = torch.autograd.grad(self.cfg.eta * r, self.alphas)
            grads = [g + rg for g, rg in zip(grads, r_grads)]
        grads = [g.detach().clone() for g in grads]
        self.rt.all_reduce_mean_(grads)  # α stays identical on every rank
        self.optimizer.zero_grad(set_to_none=True)
        for a, g in zip(self.alphas, grads):
            a.grad = g.detach().clone()
        self.optimizer.step()
        val = float(val_l1.detach())
        return {"val_l1": val, "R": float(r.detach()), "loss": val + self.cfg.eta * float(r.detach())}

    def _second_order_grads(self, val_batch: dict[str, Tensor], train_batch: dict[str, Tensor]) -> tuple[list[Tensor], Tensor]:
        """DARTS second-order gradient: ∇α L_val(w') − ξ ∇²αw L_train · ∇w' L_val, w' = w − ξ ∇w L_train."""
        weights = self.net.weight_parameters()
        xi = self.cfg.unrolled_xi if self.cfg.unrolled_xi is not None else self.w_optimizer.param_groups[0]["lr"]
        backup = [w.detach().clone() for w in weights]
        g_train = torch.autograd.grad(l1_loss(self.net, train_batch), weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, g_train):
                if g is not None:
                    w.sub_(xi * g)
        val_l1 = l1_loss(self.net, val_batch)
        g_all = torch.autograd.grad(val_l1, self.alphas + weights, allow_unused=True)
        g_alpha = [g if g is not None else torch.zeros_like(a) for g, a in zip(g_all[: len(self.alphas)], self.alphas)]
        g_w = g_all[len(self.alphas):]
        norm = torch.sqrt(sum((g * g).sum() for g in g_w if g is not None))
        eps = 0.01 / (float(norm) + 1e-12)

        def alpha_grad_at(sign: float) -> list[Tensor]:
            with torch.no_grad():
                for w, b, g in zip(weights, backup, g_w):
                    w.copy_(b if g is None else b + sign * eps * g)
            return list(torch.autograd.grad(l1_loss(self.net, train_batch), self.alphas))

        gp, gn = alpha_grad_at(+1.0), alpha_grad_at(-1.0)
        with torch.no_grad():
            for w, b in zip(weights, backup):
                w.copy_(b)
        grads = [ga - xi * (p - n) / (2 * eps) for ga, p, n in zip(g_alpha, gp, gn)]
        return grads, val_l1


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def alpha_snapshot(net: FusionNet) -> dict[str, list[float]]:
    """softmax(α) of every searching slot: ``{slot: [weight per candidate]}``."""
    return {name: [round(float(v), 6) for v in ch.weights().detach()] for name, ch in net.choices() if ch.alpha is not None}


def plot_alphas(alphas: dict[str, list[float]], candidates: dict[str, list[str]], path: str | Path, title: str = "") -> None:
    """Heatmap of softmax(α), slots (rows) × ops (columns); ops a slot cannot hold are blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = list(alphas)
    ops: list[str] = []
    for s in slots:
        ops.extend(o for o in candidates[s] if o not in ops)
    grid = np.full((len(slots), len(ops)), np.nan)
    for i, s in enumerate(slots):
        for o, v in zip(candidates[s], alphas[s]):
            grid[i, ops.index(o)] = v
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(ops), 1.2 + 0.32 * len(slots)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(slots)), slots, fontsize=8)
    for i, s in enumerate(slots):
        j = int(np.nanargmax(grid[i]))
        ax.text(j, i, "●", ha="center", va="center", color="red", fontsize=7)
    fig.colorbar(im, ax=ax, label="softmax(α)")
    ax.set_title(title or "softmax(α) per slot (● = derived op)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def inherit_weights(derived: FusionNet, supernet: FusionNet) -> None:
    """Copy the super-net's weights of every chosen op (and every fixed layer) into ``derived``.

    Both nets come from the same module definitions, so names match except for the op index
    inside a slot (``…ops.0.…`` in the derived net, ``…ops.<chosen>.…`` in the super-net).
    """
    sup_state = supernet.state_dict()
    chosen = {name: ch.candidates.index(ch.chosen()) for name, ch in supernet.choices()}
    new_state = {}
    for key, value in derived.state_dict().items():
        src = key
        for slot, idx in chosen.items():
            prefix = f"{slot}.ops.0."
            if key.startswith(prefix):
                src = f"{slot}.ops.{idx}." + key[len(prefix):]
                break
        if src not in sup_state or sup_state[src].shape != value.shape:
            raise RuntimeError(f"cannot inherit weight {key} (from {src}) from the super-net")
        new_state[key] = sup_state[src]
    derived.load_state_dict(new_state)


@torch.no_grad()
def evaluate_l1(net: nn.Module, batches: list[dict[str, Tensor]]) -> float:
    """Mean L1 over fixed validation batches (eval mode)."""
    was = net.training
    net.eval()
    vals = [float(l1_loss(net, b)) for b in batches]
    net.train(was)
    return float(np.mean(vals))


def measure_latency(nets: dict[str, nn.Module], size: int, runs: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Forward latency (s) of each net at ``size``×``size`` (batch 1), interleaved round-robin.

    One warm-up pass each, then ``runs`` rounds in which every net runs once, so slow phases of a
    shared machine hit all nets alike. Returns ``{name: {"median_s", "min_s", "max_s"}}``.
    """
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    times: dict[str, list[float]] = {k: [] for k in nets}
    with torch.inference_mode():
        for net in nets.values():
            net.eval()(x, x)
        for _ in range(runs):
            for k, net in nets.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                net(x, x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for k, v in times.items()}


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What a search produced (also written to the run directory)."""

    genotype: Genotype
    alphas: dict[str, list[float]]
    derived: dict[str, Any]
    out_dir: Path


def run_search(cfg: SearchConfig, out_dir: str | Path, resume: bool = False,
               log: Callable[[str], None] | None = None) -> SearchResult:
    """Run the hardware-aware search described by ``cfg`` and write its outputs to ``out_dir``.

    Under ``torchrun`` every rank calls this; a process group it created is destroyed at the end.

    Raises:
        ConfigError: an invalid config or missing data, before any training or timing starts.
    """
    cfg.validate()
    rt = setup(cfg.device, cfg.threads)
    try:
        run = _SearchRun(cfg, Path(out_dir), rt, log)
        run.start(resume)
        for epoch in range(run.start_epoch, run.n_epochs):
            run.epoch(epoch)
        return run.finish()
    finally:
        rt.teardown()


class _SearchRun:
    """One search, in the order it happens: build (data, super-net, latency table, optimisers),
    :meth:`start` (resume), :meth:`epoch` (warm-up or search), :meth:`save`, :meth:`finish`."""

    def __init__(self, cfg: SearchConfig, out: Path, rt: Runtime, log: Callable[[str], None] | None) -> None:
        self.cfg, self.out, self.rt, self._log = cfg, out, rt, log
        self.device = rt.device
        s = cfg.search
        net_cfg = cfg.net_config()
        self.train_ds, self.val_ds = build_datasets(cfg)  # raises ConfigError on missing data, before any work
        seed_everything(s.seed)
        self.net = FusionNet.supernet(net_cfg).to(self.device)
        if rt.main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", dump_config(cfg))
        self.latency = self._latency_term()
        self.model: nn.Module = self.net
        if rt.distributed:  # broadcasts rank 0's weights and α
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.w_params = self.net.weight_parameters()
        self.w_opt = torch.optim.SGD(self.w_params, lr=s.w_lr, momentum=s.w_momentum, weight_decay=s.w_weight_decay)
        self.n_epochs = s.warmup_epochs + s.epochs
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_opt, T_max=max(1, self.n_epochs * s.steps_per_epoch), eta_min=s.w_lr_min)
        self.architect = Architect(self.net, self.latency, s, self.w_opt, rt)
        self.candidates = {name: list(ch.candidates) for name, ch in self.net.choices() if ch.alpha is not None}
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.search_s = 0.0

    def say(self, msg: str) -> None:
        if self.rt.main:
            (self._log or print)(msg)

    def _latency_term(self) -> ExpectedLatency:
        """The look-up table (rank 0 measures or loads it; the others wait and read it) and R(α)."""
        cfg, out = self.cfg, self.out
        lat_size = cfg.latency.size or cfg.data.crop
        sigs = list({sig.key: sig for _, ch in self.net.choices() for sig in slot_sigs(ch, lat_size)}.values())
        table_path = Path(cfg.latency.table) if cfg.latency.table else out / "latency_table.json"
        if self.rt.main:
            table = ensure_table(table_path, sigs, self.device, batch=cfg.latency.batch, runs=cfg.latency.runs,
                                 warmup=cfg.latency.warmup, log=self.say)
            if table_path != out / "latency_table.json":
                table.save(out / "latency_table.json")
        self.rt.barrier()
        if not self.rt.main:
            table = LatencyTable.load(out / "latency_table.json")
        latency = ExpectedLatency(self.net, table, lat_size).to(self.device)
        self.say(f"latency: R_uniform = {latency.reference_ms:.2f} ms, fastest = {latency.fastest_ms():.2f} ms "
                 f"({latency.fastest_ms() / latency.reference_ms:.3f} of uniform) at {lat_size}x{lat_size}, batch {cfg.latency.batch}")
        return latency

    def start(self, resume: bool) -> None:
        """Restore the newest checkpoint (when ``resume`` and there is one), prepare the data
        cache on rank 0, and position the data where the restored epoch left it."""
        ckpt = latest_checkpoint(self.out / CKPT_DIR) if resume else None
        if ckpt is not None:
            self.restore(ckpt)
            self.say(f"resumed from {ckpt} at epoch {self.start_epoch}")
        prepare_cache(self.rt, [self.train_ds, self.val_ds])
        s = self.cfg.search
        spe = s.steps_per_epoch
        self.train_iter = _cycle(_loader(self.train_ds, self.cfg, s.seed, self.rt), start=self.start_epoch * spe)
        self.val_iter = _cycle(_loader(self.val_ds, self.cfg, s.seed + 1, self.rt),
                               start=max(0, self.start_epoch - s.warmup_epochs) * spe)
        self.net.train()
        self._t0 = time.time()

    def _to_dev(self, b: dict[str, Any]) -> dict[str, Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in b.items() if isinstance(v, Tensor)}

    def epoch(self, epoch: int) -> None:
        """One epoch: a weight step per batch, preceded by an α step once past the warm-up."""
        s, cfg = self.cfg.search, self.cfg
        searching = epoch >= s.warmup_epochs
        stats: dict[str, list[float]] = {"train_l1": [], "val_l1": [], "R": []}
        for step in range(s.steps_per_epoch):
            tb = self._to_dev(next(self.train_iter))
            if searching:
                vb = self._to_dev(next(self.val_iter))
                a = self.architect.step(vb, tb if s.order == "second" else None)
                stats["val_l1"].append(a["val_l1"])
                stats["R"].append(a["R"])
            stats["train_l1"].append(self._weight_step(tb))
            if cfg.log_every and (step + 1) % cfg.log_every == 0:
                self.say(f"epoch {epoch + 1}/{self.n_epochs} step {step + 1}/{s.steps_per_epoch} train_l1 {np.mean(stats['train_l1']):.4f}"
                         + (f" val_l1 {np.mean(stats['val_l1']):.4f} R {stats['R'][-1]:.4f}" if searching else "")
                         + f" ({time.time() - self._t0:.0f}s)")
        rec = {"epoch": epoch + 1, "phase": "search" if searching else "warmup",
               "train_l1": float(np.mean(stats["train_l1"])), "lr": self.sched.get_last_lr()[0],
               "alphas": alpha_snapshot(self.net)}
        if searching:
            rec.update(val_l1=float(np.mean(stats["val_l1"])), R=float(self.latency().detach()),
                       R_derived_ms=self.latency.derived_ms(), genotype=self.net.derive().to_dict())
        self.history.append(rec)
        self.save(epoch + 1)
        self.say(f"epoch {epoch + 1}/{self.n_epochs} [{rec['phase']}] train_l1 {rec['train_l1']:.4f}"
                 + (f" val_l1 {rec['val_l1']:.4f} R {rec['R']:.4f} table-ms(derived) {rec['R_derived_ms']:.1f}" if searching else "")
                 + f" ({time.time() - self._t0:.0f}s)")

    def _weight_step(self, tb: dict[str, Tensor]) -> float:
        self.w_opt.zero_grad(set_to_none=True)
        loss = l1_loss(self.model, tb)
        loss.backward()
        for p in self.net.arch_parameters():
            p.grad = None  # α are only moved by the architect
        if self.cfg.search.w_grad_clip > 0:
            nn.utils.clip_grad_norm_(self.w_params, self.cfg.search.w_grad_clip)
        self.w_opt.step()
        self.sched.step()
        return float(loss.detach())

    def save(self, epoch: int) -> None:
        """``alphas.json`` and a checkpoint after ``epoch`` epochs (rank 0 writes; every rank
        must call it, the RNG states of all ranks are gathered)."""
        rngs = self.rt.gather(rng_state())
        if not self.rt.main:
            return
        _write_alphas(self.out, self.candidates, self.history)
        w_t, w_meta = optim_to_tensors(self.w_opt, "w")
        a_t, a_meta = optim_to_tensors(self.architect.optimizer, "alpha")
        state = {"epoch": epoch, "world": self.rt.world, "history": self.history, "sched": self.sched.state_dict(),
                 "optim": {"w": w_meta, "alpha": a_meta}, "rng": rngs, "git": git_revision()}
        save_checkpoint(self.out / CKPT_DIR, epoch, {"net": self.net.state_dict(), "optim": {**w_t, **a_t}}, state,
                        keep=2, prefix="epoch")

    def restore(self, path: Path) -> None:
        """Weights, α, both optimisers, scheduler, history and RNG of a checkpoint folder."""
        ck = load_checkpoint(path, ("net", "optim"))
        st = ck["state"]
        if st.get("world", 1) != self.rt.world:
            raise ConfigError(f"checkpoint {path} was written by {st.get('world')} rank(s); resume with the same number, got {self.rt.world}")
        try:
            self.net.load_state_dict(ck["net"])
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint {path} does not fit the configured super-net: {exc}") from exc
        optim_from_tensors(self.w_opt, "w", ck["optim"], st["optim"]["w"])
        optim_from_tensors(self.architect.optimizer, "alpha", ck["optim"], st["optim"]["alpha"])
        self.sched.load_state_dict(st["sched"])
        self.sched.T_max = max(1, self.n_epochs * self.cfg.search.steps_per_epoch)  # --set search.epochs=N may extend a run
        set_rng_state(st["rng"][self.rt.rank])
        self.history = list(st["history"])
        self.start_epoch = int(st["epoch"])

    def finish(self) -> SearchResult:
        """Derive the genotype; rank 0 writes it, the α plot and the derived net's figures."""
        cfg, out, s = self.cfg, self.out, self.cfg.search
        search_s = time.time() - self._t0
        genotype = self.net.derive()
        alphas = alpha_snapshot(self.net)
        derived_info: dict[str, Any] = {}
        if self.rt.main:
            genotype.save(out / "genotype.json")
            _write_alphas(out, self.candidates, self.history)
            plot_alphas(alphas, self.candidates, out / "alphas.png",
                        title=f"softmax(α), η={s.eta}, C={cfg.model.channels} (● = derived op)")
            alone = Runtime(self.device)
            val_batches = [self._to_dev(b) for b, _ in zip(_cycle(_loader(self.val_ds, cfg, s.seed + 2, alone)),
                                                            range(cfg.derive.val_batches))]
            derived_info = evaluate_derived(cfg, self.net, genotype, self.latency, self.train_ds, val_batches,
                                            self.device, self.say)
            derived_info.update(search_s=round(search_s, 1), world_size=self.rt.world, git=git_revision(),
                                loadavg=list(os.getloadavg()))
            atomic_write_text(out / "derived.json", json.dumps(derived_info, indent=2) + "\n")
            self.say(f"derived: {genotype.to_dict()}")
            self.say(f"derived: params {derived_info['params']:,}, {derived_info['gflops']:.2f} GFLOPs at "
                     f"{cfg.derive.latency_size}^2, latency {derived_info['latency_s']:.3f} s, val L1 {derived_info['val_l1']:.4f}")
        self.rt.barrier()
        return SearchResult(genotype=genotype, alphas=alphas, derived=derived_info, out_dir=out)


def _write_alphas(out: Path, candidates: dict[str, list[str]], history: list[dict[str, Any]]) -> None:
    doc = {"candidates": candidates,
           "epochs": [{"epoch": h["epoch"], "phase": h["phase"], "alphas": h["alphas"]} for h in history]}
    atomic_write_text(out / "alphas.json", json.dumps(doc, indent=1) + "\n")


def build_derived(cfg: SearchConfig, genotype: Genotype) -> FusionNet:
    """The derived network of ``genotype`` with the search's width, cascades and head."""
    return FusionNet.from_genotype(genotype, channels=cfg.model.channels, cascades=cfg.model.cascades, head=cfg.model.head)


def evaluate_derived(cfg: SearchConfig, supernet: FusionNet, genotype: Genotype, latency: ExpectedLatency,
                     train_ds: Dataset, val_batches: list[dict[str, Tensor]], device: torch.device,
                     say: Callable[[str], None]) -> dict[str, Any]:
    """Params, GFLOPs, measured latency and validation L1 (inherited, then fine-tuned) of the derived net."""
    from crmef.complexity import count_flops, count_params

    d = cfg.derive
    derived = build_derived(cfg, genotype).to(device)
    inherit_weights(derived, supernet)
    info: dict[str, Any] = {"genotype": genotype.to_dict(), "eta": cfg.search.eta, "channels": cfg.model.channels,
                            "val_l1_inherited": evaluate_l1(derived, val_batches)}
    if d.finetune_steps > 0:
        opt = torch.optim.Adam(derived.parameters(), lr=d.finetune_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=d.finetune_steps)
        it = _cycle(_loader(train_ds, cfg, cfg.search.seed + 3, Runtime(device)))
        derived.train()
        for _ in range(d.finetune_steps):
            b = {k: v.to(device) for k, v in next(it).items() if isinstance(v, Tensor)}
            opt.zero_grad(set_to_none=True)
            l1_loss(derived, b).backward()
            opt.step()
            sched.step()
    info["val_l1"] = evaluate_l1(derived, val_batches)
    info["finetune_steps"] = d.finetune_steps
    info["params"] = count_params(derived)
    info["gflops"] = count_flops(derived, (d.latency_size, d.latency_size)) / 1e9
    lat = measure_latency({"derived": derived}, d.latency_size, d.latency_runs, device)["derived"]
    info.update(latency_s=lat["median_s"], latency_min_s=lat["min_s"], latency_max_s=lat["max_s"],
                latency_size=d.latency_size, latency_runs=d.latency_runs, device=str(device),
                table_ms_derived=latency.derived_ms(), table_ms_uniform=latency.reference_ms,
                table_ms_fastest=latency.fastest_ms())
    return info


def config_dict(cfg: SearchConfig) -> dict[str, Any]:
    """The resolved config as a plain dict."""
    return to_dict(cfg)
