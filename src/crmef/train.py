"""Training of a derived fusion network: ``ℓ_Int + β1 ℓ_Gra + β2 ℓ_Dis`` (generator + critic).

Public API:

- :class:`TrainConfig` (with :class:`ModelSpec`, :class:`OptimConfig`), loaded from YAML with
  :func:`crmef.config.load_config` (``crmef train --config FILE --set key=value``).
- :class:`Trainer` — builds the network, critic, optimisers, data; :meth:`Trainer.run` trains.
- :func:`train` — one call: ``train(cfg, out_dir, resume=False) -> TrainResult``.
- :func:`load_checkpoint` / :func:`latest_checkpoint` — read a run's newest checkpoint.

Schedule: Adam with cosine decay from ``optim.lr`` (1e-4) to ``optim.lr_min`` (1e-10) over
``steps`` generator steps; 128×128 crops with flips and rotations (the data layer). The critic
(WGAN-GP, :mod:`crmef.losses`) takes one step per generator step on the same batch, from step
``gan_start`` on (pixel-loss warm-up before). Validation (PSNR, SSIM, MEF-SSIM) runs once per
epoch, or every ``val_every`` steps; the best validation PSNR is exported as ``best.safetensors``.

Checkpoints: ``<out>/checkpoints/step-000123/`` holds ``model.safetensors``,
``critic.safetensors``, ``optim.safetensors`` (every optimiser state tensor) and ``state.json``
(step, epoch, wall time, optimiser hyper-parameters, scheduler, RNG of python/numpy/torch of
every rank, best validation). It is written under a temporary name and renamed whole; then
``<out>/checkpoints/latest`` (one line, written atomically) is switched to it. A crash or
SIGKILL at any moment therefore leaves ``latest`` naming a complete checkpoint. ``--resume``
restores everything, and the data order is a pure function of ``(seed, epoch)``, so a resumed
run takes exactly the steps an uninterrupted one would.

Data-parallel: under ``torchrun`` (``WORLD_SIZE > 1``) each rank takes a disjoint slice of every
epoch's order; the generator is wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on
CUDA) and the critic's gradients are all-reduced by hand, because the gradient penalty's double
backward is not supported through DDP's reducer (the approach of StyleGAN2-ADA). On CUDA the
forward passes run under bfloat16 autocast (``amp``); the losses are computed in float32.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from crmef.config import dump_config, to_dict
from crmef.data.datasets import DataConfig, MixedDataset, build_dataset, worker_init
from crmef.errors import ConfigError, CrmefError, InputError
from crmef.losses import FusionLoss, LossConfig, critic_loss
from crmef.nets.critic import CriticConfig, PatchCritic
from crmef.nets.fusion import NET_OPTIONS, FusionNet
from crmef.nets.prior import PRIORS
from crmef.space import Genotype, get_preset
from crmef.utils import atomic_path, atomic_write_text, resolve_device

__all__ = [
    "ModelSpec",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "Trainer",
    "train",
    "latest_checkpoint",
    "load_checkpoint",
    "build_net",
]

CKPT_DIR = "checkpoints"
LATEST = "latest"


class NonFiniteLossError(CrmefError, RuntimeError):
    """A loss became NaN or infinite; training stopped without saving the broken state."""


@dataclass
class ModelSpec:
    """The network to train.

    Attributes:
        genotype: a preset name (``general``, ``aligned``) or a genotype JSON file (from search).
        channels: feature width C.
        cascades: SRSM stages per exposure.
        head: ``"retinex"``, ``"direct"`` or None (the genotype's default).
        illum_smooth: box radius of the Retinex illumination map (0: the paper's per-pixel map).
        prior: ``"none"`` (the paper), ``"mertens"``, ``"flow_mertens"`` or ``"mertens_detail"`` (learned blend with that
            classical fusion of the inputs; :mod:`crmef.nets.prior`).
        detail: low-pass scale (pixels) of the prior's learned detail transfer (0: none).
        detail_space: ``"rgb"`` (detail added per channel), ``"luma"`` (its luma in full, its
            chroma scaled by the base-to-prior luminance ratio) or ``"luma_gamut"`` (and its chroma
            kept in [0, 1]; :class:`~crmef.nets.prior.PriorBlend`).
        headroom: envelope scale (pixels) that keeps the transferred detail in [0, 1] (0: clip).
        dark_guard: stops (0: off) beyond which an output darker than the prior moves the blend
            towards the prior (:class:`~crmef.nets.prior.PriorBlend`).
        prealign: ``"none"`` or ``"flow"`` (the under frame warped onto the over frame by optical
            flow before the network; needs ``prior: mertens`` or ``mertens_detail``).
        align_mode: ``"features"`` (the paper's DASM) or ``"residual"`` (DASM corrects the relit
            under image; :class:`~crmef.nets.fusion.NetConfig`).
        init_from: optional ``.safetensors`` model (or checkpoint ``model.safetensors``) whose
            tensors of matching name and shape initialise the network (fine-tuning); or a list
            of such paths and ``{path, prefix}`` entries (only tensors under ``prefix``), loaded
            in order, later entries overriding earlier ones.
        train_only: parameter-name prefixes that are trained (None: all); the rest stays as
            initialised, e.g. ``[dasm., align_out.]`` trains a residual DASM on a trained network.
    """

    genotype: str = "general"
    channels: int = 16
    cascades: int = 2
    head: str | None = None
    illum_smooth: int = 0
    prior: str = "none"
    detail: int = 0
    detail_space: str = "rgb"
    headroom: int = 0
    dark_guard: float = 0.0
    prealign: str = "none"
    align_mode: str = "features"
    init_from: str | list[str | dict[str, str]] | None = None
    train_only: list[str] | None = None


@dataclass
class OptimConfig:
    """Optimisers: Adam for both; the generator's learning rate decays by a cosine.

    Attributes:
        lr: generator's initial learning rate.
        lr_min: generator's final learning rate.
        betas: generator's Adam betas.
        critic_lr: critic's (constant) learning rate.
        critic_betas: critic's Adam betas (WGAN-GP's (0.5, 0.9) by default).
    """

    lr: float = 1e-4
    lr_min: float = 1e-10
    betas: tuple[float, float] = (0.9, 0.999)
    critic_lr: float = 1e-4
    critic_betas: tuple[float, float] = (0.5, 0.9)


@dataclass
class TrainConfig:
    """Everything a training run needs (see the module docstring).

    Attributes:
        model: network spec.
        critic: PatchGAN critic shape.
        loss: loss weights (β1 = 0.75, β2 = 0.05).
        optim: optimisers.
        data: training data (crops, augmentation, sources).
        val: validation data, or None to skip validation.
        steps: total generator steps (the cosine period).
        batch_size: crops per step (per rank).
        gan_start: generator steps of pixel-only warm-up before the adversarial term starts.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        log_every: steps between TensorBoard scalar writes.
        val_every: steps between validations; None = once per epoch.
        workers: DataLoader worker processes (0 = load in the training process).
        threads: torch intra-op threads (None: torch's default).
        device: ``auto``, ``cpu``, ``cuda``...
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        seed: seed of the weights' initialisation and of the critic's interpolation.
        max_minutes: stop cleanly (with a checkpoint) after this much wall time in one process.
        tensorboard: write TensorBoard events under ``<out>/tb``.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    critic: CriticConfig = field(default_factory=CriticConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val: DataConfig | None = None
    steps: int = 1000
    batch_size: int = 8
    gan_start: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int | None = None
    workers: int = 1
    threads: int | None = None
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    max_minutes: float | None = None
    tensorboard: bool = True

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every,
                    "keep_checkpoints": self.keep_checkpoints, "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.val_every is not None and self.val_every < 1:
            raise ConfigError(f"val_every must be >= 1 or null, got {self.val_every}")
        if self.gan_start < 0 or self.workers < 0:
            raise ConfigError("gan_start and workers must be >= 0")
        min_crop = 2 ** (self.critic.layers + 1)
        if self.data.crop is None:
            raise ConfigError("data.crop must be set for training (crops are batched); e.g. data.crop=128")
        if self.data.crop < min_crop:
            raise ConfigError(f"data.crop={self.data.crop} is too small: the critic with {self.critic.layers} "
                              f"down-sampling layers needs crops of at least {min_crop} pixels")
        from crmef.metrics.mef_ssim import MIN_SIDE

        if self.loss.mef_ssim > 0 and self.data.crop < MIN_SIDE:
            raise ConfigError(f"data.crop={self.data.crop} is too small for loss.mef_ssim: MEF-SSIM's three scales "
                              f"of 11x11 windows need crops of at least {MIN_SIDE} pixels")
        if self.loss.lpips > 0:
            from crmef.metrics.lpips import INSTALL_COMMAND, weights_installed

            if not weights_installed():
                raise ConfigError(f"loss.lpips needs the LPIPS weights, which are not installed: run `{INSTALL_COMMAND}`")
        if not 0 < self.optim.lr_min <= self.optim.lr:
            raise ConfigError(f"optim.lr_min must be in (0, optim.lr], got {self.optim.lr_min} and {self.optim.lr}")
        if self.model.prior not in PRIORS:
            raise ConfigError(f"model.prior must be one of {', '.join(PRIORS)}, got {self.model.prior!r}")
        # A net with a prior takes it as an input: the data pipeline supplies it (DataConfig
        # validates the combination, e.g. no Mertens prior on misaligned pairs).
        self.data = replace(self.data, prior=self.model.prior, prealign=self.model.prealign)
        if self.val is not None:
            self.val = replace(self.val, prior=self.model.prior, prealign=self.model.prealign)


@dataclass
class TrainResult:
    """What a finished (or stopped) run reached."""

    step: int
    out_dir: Path
    model_path: Path
    wall_time_s: float
    best: dict[str, float] | None
    stopped_early: bool = False


# ----------------------------------------------------------------------------- building


def load_genotype(text: str) -> Genotype:
    """A preset name or a genotype JSON file.

    Raises:
        ConfigError: unknown preset or unreadable file.
    """
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"model.genotype: genotype file {path} not found")
        try:
            return Genotype.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"model.genotype: {path} is not a valid genotype JSON ({exc})") from exc
    try:
        return get_preset(text)
    except ValueError as exc:
        raise ConfigError(f"model.genotype: {exc} (or give a genotype .json file)") from None


def build_net(spec: ModelSpec) -> FusionNet:
    """The derived network of a :class:`ModelSpec`, initialised from ``init_from`` if given.

    Raises:
        ConfigError: bad genotype, structure or ``init_from`` file.
    """
    genotype = load_genotype(spec.genotype)
    try:
        options = {k: getattr(spec, k) for k in NET_OPTIONS if hasattr(spec, k)}  # ModelSpec keeps eps at its default
        net = FusionNet.from_genotype(genotype, channels=spec.channels, cascades=spec.cascades, head=spec.head,
                                       **options)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from exc
    if spec.init_from:
        entries = spec.init_from if isinstance(spec.init_from, list) else [spec.init_from]
        for entry in entries:
            _init_part(net, entry)
    return net


def trainable_parameters(net: nn.Module, train_only: list[str] | None) -> list[nn.Parameter]:
    """The parameters to optimise: all, or those whose names start with one of ``train_only``
    (the others get ``requires_grad = False``).

    Raises:
        ConfigError: a prefix that matches no parameter.
    """
    if not train_only:
        return list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    unknown = [pre for pre in train_only if not any(n.startswith(pre) for n in names)]
    if unknown:
        raise ConfigError(f"model.train_only: no parameter starts with {', '.join(map(repr, unknown))}")
    out = []
    for name, p in net.named_parameters():
        p.requires_grad_(any(name.startswith(pre) for pre in train_only))
        if p.requires_grad:
            out.append(p)
    return out


def _init_part(net: FusionNet, entry: str | dict[str, str]) -> None:
    """Load the tensors of one ``model.init_from`` entry whose names and shapes match ``net``:
    a path, or ``{path: ..., prefix: ...}`` (only tensors whose names start with ``prefix``).

    Raises:
        ConfigError: missing or unreadable file, a bad entry, or nothing that matches.
    """
    if isinstance(entry, dict):
        unknown = set(entry) - {"path", "prefix"}
        if "path" not in entry or unknown:
            raise ConfigError(f"model.init_from: an entry is a path or {{path, prefix}}, got {entry!r}")
        where, prefix = str(entry["path"]), str(entry.get("prefix", ""))
    else:
        where, prefix = str(entry), ""
    path = Path(where).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.init_from: {path} not found")
    try:
        src = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ConfigError(f"model.init_from: {path} is not a readable safetensors file ({exc})") from exc
    own = net.state_dict()
    matched = {k: v for k, v in src.items() if k.startswith(prefix) and k in own and own[k].shape == v.shape}
    if not matched:
        raise ConfigError(f"model.init_from: no tensor of {path}{f' under {prefix!r}' if prefix else ''} "
                          f"matches the network (names/shapes differ)")
    net.load_state_dict(matched, strict=False)


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch order: a pure function of ``(seed, epoch)``, sliced per rank.

    ``set_epoch(epoch, start)`` skips the first ``start`` indices of this rank's order, which is
    how a resumed run continues mid-epoch.

    Args:
        n: dataset length.
        seed: order seed.
        weights: per-sample weights for sampling with replacement, or None for a permutation.
        rank: this process's rank.
        world: number of ranks.
    """

    def __init__(self, n: int, seed: int, weights: Tensor | None = None, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.weights, self.rank, self.world = n, seed, weights, rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and how many of this rank's indices to skip."""
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        """Indices per rank per epoch."""
        return self.n // self.world

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        mine = order[: self.per_rank() * self.world][self.rank :: self.world]
        return iter(mine[self.start :].tolist())

    def __len__(self) -> int:
        return max(self.per_rank() - self.start, 0)


def _git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- checkpoints


def _optim_to_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().to("cpu").contiguous()
                entry[k] = None
            else:
                entry[k] = v
        meta["state"][str(pid)] = entry
    return tensors, meta


def _optim_from_tensors(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"{prefix}.{pid}.{k}"] if v is None else v) for k, v in entry.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder that ``<out>/checkpoints/latest`` names, or None when there is none.

    Raises:
        InputError: ``latest`` names a folder that is missing or incomplete.
    """
    ckpts = Path(out_dir) / CKPT_DIR
    pointer = ckpts / LATEST
    if not pointer.is_file():
        return None
    path = ckpts / pointer.read_text(encoding="utf-8").strip()
    if not (path / "state.json").is_file():
        raise InputError(f"{pointer} names {path}, which is missing or incomplete")
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint folder.

    Returns:
        ``{"state": dict, "model": {name: Tensor}, "critic": {...}, "optim": {...}}``.

    Raises:
        InputError: a file is missing or unreadable (named in the message).
    """
    path = Path(path)
    out: dict[str, Any] = {}
    try:
        out["state"] = json.loads((path / "state.json").read_text(encoding="utf-8"))
        for part in ("model", "critic", "optim"):
            out[part] = load_file(str(path / f"{part}.safetensors"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"checkpoint {path}: cannot read ({exc})") from exc
    except Exception as exc:  # safetensors' own errors
        raise InputError(f"checkpoint {path}: corrupt safetensors file ({exc})") from exc
    return out


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


# ----------------------------------------------------------------------------- trainer


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


class Trainer:
    """Generator + critic training with checkpoints, resume, validation and logging.

    Args:
        cfg: the run's config.
        out_dir: run folder (checkpoints, TensorBoard, exported models).
        progress: show a tqdm bar (rank 0 only).
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike[str], progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = self.world > 1
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        self.rank = dist.get_rank() if self.distributed else 0
        if self.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.amp = cfg.amp and self.device.type == "cuda"

        torch.manual_seed(cfg.seed)
        self.net = build_net(cfg.model).to(self.device)
        self.critic = PatchCritic(cfg.critic).to(self.device)
        self.criterion = FusionLoss(cfg.loss)
        if self.distributed:
            for p in self.critic.parameters():
                dist.broadcast(p.data, src=0)
            self.gen: nn.Module = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.gen = self.net
        o = cfg.optim
        self.g_opt = torch.optim.Adam(trainable_parameters(self.net, cfg.model.train_only), lr=o.lr, betas=tuple(o.betas))
        self.c_opt = torch.optim.Adam(self.critic.parameters(), lr=o.critic_lr, betas=tuple(o.critic_betas))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.g_opt, T_max=cfg.steps, eta_min=o.lr_min)

        self.dataset = build_dataset(cfg.data)
        self._probe(self.dataset, "data")
        weights = None
        if isinstance(self.dataset, MixedDataset) and not self.dataset.uniform:
            weights = self.dataset.weights
        self.sampler = EpochSampler(len(self.dataset), cfg.data.seed, weights, self.rank, self.world)
        self.steps_per_epoch = self.sampler.per_rank() // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"data: {len(self.dataset)} samples over {self.world} rank(s) make no batch of "
                              f"{cfg.batch_size}; raise data.samples_per_epoch or lower batch_size")
        self.loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=cfg.workers, persistent_workers=False,
                                 # Own generator: creating an iterator must not draw from the global
                                 # torch RNG (else a mid-epoch resume would shift the critic's draws).
                                 generator=torch.Generator().manual_seed(cfg.data.seed),
                                 worker_init_fn=worker_init if cfg.workers > 0 else None)
        self.val_set = None
        if cfg.val is not None:
            self.val_set = build_dataset(cfg.val)
            self._probe(self.val_set, "val")

        self.step = 0
        self.wall_time = 0.0
        self.best: dict[str, float] | None = None
        self.history: list[dict[str, float]] = []
        self.writer = None

    @staticmethod
    def _probe(ds: Any, what: str) -> None:
        """Load one sample now so that bad data fails before training starts."""
        try:
            ds[0]
        except CrmefError as exc:
            raise ConfigError(f"{what}: {exc}") from exc

    # -- checkpoints -------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0), atomically; prune old ones."""
        rngs = [_rng_state()]
        if self.distributed:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if self.rank != 0:
            return None
        ckpts = self.out / CKPT_DIR
        ckpts.mkdir(parents=True, exist_ok=True)
        name = f"step-{self.step:07d}"
        final = ckpts / name
        tmp = ckpts / f".{name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        g_t, g_meta = _optim_to_tensors(self.g_opt, "gen")
        c_t, c_meta = _optim_to_tensors(self.c_opt, "critic")
        _save_tensors({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, tmp / "model.safetensors")
        _save_tensors({k: v.detach().cpu().contiguous() for k, v in self.critic.state_dict().items()}, tmp / "critic.safetensors")
        _save_tensors({**g_t, **c_t}, tmp / "optim.safetensors")
        state = {
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world": self.world,
            "wall_time_s": self.wall_time,
            "optim": {"gen": g_meta, "critic": c_meta},
            "scheduler": self.sched.state_dict(),
            "rng": rngs,
            "best": self.best,
            "history": self.history,
            "config": to_dict(self.cfg),
        }
        atomic_write_text(tmp / "state.json", json.dumps(state) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(ckpts / LATEST, name + "\n")
        done = sorted(p for p in ckpts.glob("step-*") if p.is_dir() and p.name != name)
        for old in done[: max(len(done) - (self.cfg.keep_checkpoints - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self, path: Path) -> None:
        """Load a checkpoint folder into the trainer (weights, optimisers, scheduler, RNG, step)."""
        ck = load_checkpoint(path)
        st = ck["state"]
        if st.get("world", 1) != self.world:
            raise ConfigError(f"checkpoint {path} was written by {st.get('world')} rank(s); resume with the same number, got {self.world}")
        if st.get("steps_per_epoch") != self.steps_per_epoch:
            raise ConfigError(f"checkpoint {path}: {st.get('steps_per_epoch')} steps per epoch there but "
                              f"{self.steps_per_epoch} now; the data or batch size changed, so the run cannot resume exactly")
        try:
            self.net.load_state_dict(ck["model"])
            self.critic.load_state_dict(ck["critic"])
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint {path} does not fit the configured network: {exc}") from exc
        _optim_from_tensors(self.g_opt, "gen", ck["optim"], st["optim"]["gen"])
        _optim_from_tensors(self.c_opt, "critic", ck["optim"], st["optim"]["critic"])
        self.sched.load_state_dict(st["scheduler"])
        self.sched.T_max = self.cfg.steps  # a resumed run may be extended with --set steps=N
        _set_rng_state(st["rng"][self.rank])
        self.step = int(st["step"])
        self.wall_time = float(st.get("wall_time_s", 0.0))
        self.best = st.get("best")
        self.history = list(st.get("history", []))

    # -- one step ------------------------------------------------------------------------

    def _all_finite(self, *values: Tensor) -> bool:
        ok = torch.tensor([float(all(bool(torch.isfinite(v).all()) for v in values))], device=self.device)
        if self.distributed:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One critic step (when the adversarial term is on) and one generator step.

        Raises:
            NonFiniteLossError: a loss is NaN/inf (nothing is updated by that step).
        """
        under, over, ref = (batch[k].to(self.device, non_blocking=True) for k in ("under", "over", "ref"))
        prior = batch["prior"].to(self.device, non_blocking=True) if "prior" in batch else None
        use_gan = self.cfg.loss.adversarial > 0 and self.step >= self.cfg.gan_start
        self.gen.train()
        with self._autocast():
            y = self.gen(under, over, prior)
        y = y.float()
        parts: dict[str, float] = {}
        if use_gan:
            self.critic.requires_grad_(True)
            self.c_opt.zero_grad(set_to_none=True)
            with self._autocast():
                c_loss, c_parts = critic_loss(self.critic, ref, y, self.cfg.loss.gp)
            if not self._all_finite(c_loss):
                raise NonFiniteLossError(f"critic loss is {float(c_loss)} at step {self.step + 1}")
            c_loss.backward()
            self._reduce_critic_grads()
            self.c_opt.step()
            parts.update(c_parts)
        self.critic.requires_grad_(False)
        with self._autocast():
            loss, g_parts = self.criterion(y, ref, self.critic if use_gan else None, sources=(under, over))
        if not self._all_finite(loss):
            raise NonFiniteLossError(f"generator loss is {float(loss.detach())} at step {self.step + 1} (parts: {g_parts})")
        self.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.g_opt.step()
        self.sched.step()
        parts.update(g_parts)
        return parts

    def _reduce_critic_grads(self) -> None:
        if not self.distributed:
            return
        for p in self.critic.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    # -- validation ---------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Mean PSNR, SSIM and MEF-SSIM on the validation set (rank 0; others return None)."""
        if self.val_set is None or self.rank != 0:
            return None
        from crmef.metrics import mef_ssim, psnr, ssim

        self.net.eval()
        self.val_set.set_epoch(0)
        sums = {"psnr": 0.0, "ssim": 0.0, "mef_ssim": 0.0}
        first = None
        for i in range(len(self.val_set)):
            item = self.val_set[i]
            u, o, r = (item[k].unsqueeze(0).to(self.device) for k in ("under", "over", "ref"))
            p = item["prior"].unsqueeze(0).to(self.device) if "prior" in item else None
            with self._autocast():
                y = self.net(u, o, p)
            y = y.float().clamp(0, 1).cpu()
            u, o, r = u.cpu(), o.cpu(), r.cpu()
            sums["psnr"] += float(psnr(y, r)[0])
            sums["ssim"] += float(ssim(y, r)[0])
            sums["mef_ssim"] += float(mef_ssim([u, o], y)[0])
            if first is None:
                first = torch.cat([u, o, y, r], dim=3)[0]
        self.net.train()
        metrics = {k: v / len(self.val_set) for k, v in sums.items()}
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"val/{k}", v, self.step)
            if first is not None:
                self.writer.add_image("val/under_over_output_ref", first, self.step)
        return metrics

    def _after_validation(self, metrics: dict[str, float]) -> None:
        from crmef.models import save_model

        record = {"step": float(self.step), **metrics}
        self.history.append(record)
        if self.best is None or metrics["psnr"] > self.best["psnr"]:
            self.best = record
            save_model(self.net, self.out / "best", self.card(metrics))

    # -- export --------------------------------------------------------------------------

    def card(self, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """The model card's free-form part (training description and metrics)."""
        dev = self.device
        hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads)"
        return {
            "training": {
                "steps": self.step,
                "batch_size": self.cfg.batch_size,
                "ranks": self.world,
                "wall_time_s": round(self.wall_time, 1),
                "hardware": hw,
                "data": to_dict(self.cfg.data),
                "loss": to_dict(self.cfg.loss),
                "gan_start": self.cfg.gan_start,
                "optim": to_dict(self.cfg.optim),
                "critic": to_dict(self.cfg.critic),
                "git": _git_rev(),
            },
            "metrics": {"val": metrics or {}},
        }

    # -- loop ---------------------------------------------------------------------------

    def run(self, resume: bool = False) -> TrainResult:
        """Train to ``cfg.steps`` (or ``max_minutes``), checkpointing as configured.

        Raises:
            NonFiniteLossError: NaN/inf loss; the last good checkpoint stays ``latest``.
            ConfigError: ``resume`` without a checkpoint, or one that does not fit.
        """
        from tqdm import tqdm

        cfg = self.cfg
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            ckpt = latest_checkpoint(self.out)
            if ckpt is None:
                raise ConfigError(f"--resume: no checkpoint in {self.out / CKPT_DIR}")
            self.restore(ckpt)
        elif self.rank == 0 and latest_checkpoint(self.out) is not None:
            raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if self.rank == 0:
            atomic_write_text(self.out / "config.yaml", dump_config(cfg))
            atomic_write_text(self.out / "genotype.json", self.net.derive().to_json() + "\n")
            if cfg.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tb"))
        started = time.monotonic()
        session_start = self.wall_time
        stopped_early = False
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress or self.rank != 0,
                   desc="train", unit="step", dynamic_ncols=True)
        try:
            while self.step < cfg.steps and not stopped_early:
                epoch, within = divmod(self.step, self.steps_per_epoch)
                self.dataset.set_epoch(epoch)
                self.sampler.set_epoch(epoch, within * cfg.batch_size)
                for batch in self.loader:
                    t0 = time.monotonic()
                    parts = self.train_step(batch)
                    self.step += 1
                    self.wall_time = session_start + (time.monotonic() - started)
                    lr = self.sched.get_last_lr()[0]
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['total']:.4f}", l1=f"{parts['int']:.4f}", lr=f"{lr:.2e}",
                                    s_step=f"{time.monotonic() - t0:.2f}")
                    if self.writer is not None and self.step % cfg.log_every == 0:
                        for k, v in parts.items():
                            self.writer.add_scalar(f"train/{k}", v, self.step)
                        self.writer.add_scalar("train/lr", lr, self.step)
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    due = (self.step % cfg.val_every == 0) if cfg.val_every else end_of_epoch
                    if due or self.step == cfg.steps:
                        metrics = self.validate()
                        if metrics is not None:
                            self._after_validation(metrics)
                            bar.write(f"step {self.step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                    over_time = cfg.max_minutes is not None and (time.monotonic() - started) > 60 * cfg.max_minutes
                    if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or over_time:
                        self.save_checkpoint()
                    if over_time and self.step < cfg.steps:
                        stopped_early = True
                        bar.write(f"stopping after {cfg.max_minutes} minutes at step {self.step}; continue with --resume")
                    if self.step >= cfg.steps or stopped_early:
                        break
                if self.distributed:
                    dist.barrier()
        except NonFiniteLossError as exc:
            last = latest_checkpoint(self.out) if self.rank == 0 else None
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(f"training stopped: {exc}; {keep}") from None
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        model_path = self.out / "model.safetensors"
        if self.rank == 0:
            from crmef.models import save_model

            last_val = self.history[-1] if self.history else None
            save_model(self.net, self.out / "model", self.card(last_val))
        return TrainResult(self.step, self.out, model_path, self.wall_time, self.best, stopped_early)


def train(cfg: TrainConfig, out_dir: str | os.PathLike[str], resume: bool = False, progress: bool = True) -> TrainResult:
    """Build a :class:`Trainer` and run it (see the module docstring)."""
    return Trainer(cfg, out_dir, progress=progress).run(resume=resume)


def lr_at(step: int, cfg: OptimConfig, steps: int) -> float:
    """Closed form of the cosine schedule (for documentation and tests)."""
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * step / steps))
