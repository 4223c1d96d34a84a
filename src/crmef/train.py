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

Checkpoints (:mod:`crmef.runtime`): ``<out>/checkpoints/step-000123/`` holds
``model.safetensors``, ``critic.safetensors``, ``optim.safetensors`` (every optimiser state
tensor) and ``state.json`` (step, epoch, wall time, optimiser hyper-parameters, scheduler, RNG of
python/numpy/torch/CUDA of every rank, best validation, git revision). It is written under a
temporary name and renamed whole; then ``<out>/checkpoints/latest`` (one line, written
atomically) is switched to it. A crash or SIGKILL at any moment therefore leaves ``latest``
naming a complete checkpoint. ``--resume`` restores everything, and the data order is a pure
function of ``(seed, epoch)``, so a resumed run takes exactly the steps an uninterrupted one would.

Data-parallel (``torchrun --nproc_per_node N``; :mod:`crmef.runtime` sets up the process group,
NCCL on CUDA, gloo on CPU): each rank takes a disjoint slice of every epoch's order (rank ``r``
takes positions ``r, r + N, ...``, so N ranks with batch ``b`` step like one rank with batch
``N·b``). The generator is wrapped in ``DistributedDataParallel`` after ``model.train_only``
froze its other parameters; the critic's gradients are all-reduced by hand, because the gradient
penalty's double backward is not supported through DDP's reducer (the approach of
StyleGAN2-ADA). ``max_minutes`` is decided on rank 0's clock and broadcast every step, so every
rank stops (and checkpoints) at the same step. The data cache (decoded frames, references) is
prepared by rank 0 before the loop while the others wait. On CUDA the generator's forward pass
runs under bfloat16 autocast (``amp``); the critic and the losses run in float32 outside it.
Loader workers persist between epochs and batches are pinned on CUDA.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor, nn

from crmef import runtime
from crmef.config import dump_config, to_dict
from crmef.data.datasets import DataConfig, MixedDataset, build_dataset
from crmef.errors import ConfigError, CrmefError
from crmef.losses import FusionLoss, LossConfig, critic_loss
from crmef.nets.critic import CriticConfig, PatchCritic
from crmef.nets.fusion import FusionNet
from crmef.runtime import EpochSampler
from crmef.space import Genotype, get_preset
from crmef.utils import atomic_write_text

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
    "EpochSampler",
]

CKPT_DIR = "checkpoints"
CKPT_PARTS = ("model", "critic", "optim")


class NonFiniteLossError(CrmefError, RuntimeError):
    """A loss became NaN or infinite; training stopped without saving the broken state."""


@dataclass
class ModelSpec:
    """The network to train.

    Attributes:
        genotype: a preset name (``paper_general``, ``paper_aligned``) or a genotype JSON file (from search).
        channels: feature width C.
        cascades: SRSM stages per exposure.
        head: ``"retinex"``, ``"direct"`` or None (the genotype's default).
        init_from: optional ``.safetensors`` model (or checkpoint ``model.safetensors``) whose
            tensors of matching name and shape initialise the network (fine-tuning); or a list
            of such paths and ``{path, prefix}`` entries (only tensors under ``prefix``), loaded
            in order, later entries overriding earlier ones.
        train_only: parameter-name prefixes that are trained (None: all); the rest stays as
            initialised, e.g. ``[dasm.]`` trains the DASM alone on a trained network.
    """

    genotype: str = "paper_general"
    channels: int = 16
    cascades: int = 2
    head: str | None = None
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
        steps: total generator steps (the cosine period); ignored when ``epochs`` is set.
        epochs: when set, ``steps = epochs × steps per epoch`` (an epoch is ``len(data)`` samples
            over all ranks, so the step count follows the number of ranks and the batch).
        batch_size: crops per step (per rank).
        gan_start: generator steps of pixel-only warm-up before the adversarial term starts.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        log_every: steps between TensorBoard scalar writes.
        val_every: steps between validations; None = once per epoch.
        workers: DataLoader worker processes per rank (0 = load in the training process); started
            once and kept between epochs.
        threads: torch intra-op threads (None: torch's default).
        device: ``auto``, ``cpu``, ``cuda``...
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        seed: seed of the weights' initialisation and of the critic's interpolation.
        max_minutes: stop cleanly (with a checkpoint) after this much wall time of this session, on
            rank 0's clock (every rank stops at the same step).
        tensorboard: write TensorBoard events under ``<out>/tb``.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    critic: CriticConfig = field(default_factory=CriticConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    val: DataConfig | None = None
    steps: int = 1000
    epochs: int | None = None
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
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1 or null, got {self.epochs}")
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
        net = FusionNet.from_genotype(genotype, channels=spec.channels, cascades=spec.cascades, head=spec.head)
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


# ----------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder that ``<out>/checkpoints/latest`` names, or None when there is none.

    Raises:
        InputError: ``latest`` names a folder that is missing or incomplete.
    """
    return runtime.latest_checkpoint(Path(out_dir) / CKPT_DIR)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint folder.

    Returns:
        ``{"state": dict, "model": {name: Tensor}, "critic": {...}, "optim": {...}}``.

    Raises:
        InputError: a file is missing or unreadable (named in the message).
    """
    return runtime.load_checkpoint(path, CKPT_PARTS)


# ----------------------------------------------------------------------------- logging


class RunLog:
    """Rank 0's progress bar, TensorBoard events and messages (silent on the other ranks).

    Args:
        cfg: the run's config (``log_every``, ``tensorboard``).
        out: run folder (events under ``<out>/tb``).
        initial: the step the run starts from.
        progress: show the tqdm bar.
        active: False on ranks other than 0.
    """

    def __init__(self, cfg: TrainConfig, out: Path, initial: int, progress: bool, active: bool) -> None:
        from tqdm import tqdm

        self.cfg, self.active = cfg, active
        self.bar = tqdm(total=cfg.steps, initial=initial, disable=not (progress and active), desc="train",
                        unit="step", dynamic_ncols=True)
        self.writer = None
        if active and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"))

    def step(self, step: int, parts: dict[str, float], lr: float, seconds: float) -> None:
        """One training step's losses and learning rate."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{parts['total']:.4f}", l1=f"{parts['int']:.4f}", lr=f"{lr:.2e}", s_step=f"{seconds:.2f}")
        if self.writer is not None and step % self.cfg.log_every == 0:
            for k, v in parts.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.add_scalar("train/lr", lr, step)

    def validation(self, step: int, metrics: dict[str, float], image: Tensor | None) -> None:
        """A validation's means and its first sample (under | over | output | reference)."""
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"val/{k}", v, step)
            if image is not None:
                self.writer.add_image("val/under_over_output_ref", image, step)
        self.write(f"step {step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def write(self, message: str) -> None:
        """A line above the bar (rank 0)."""
        if self.active:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Generator + critic training with checkpoints, resume, validation and logging.

    Reading order: ``__init__`` builds (runtime, model, data, optimisers); :meth:`run` is the
    loop (:meth:`_start`, :meth:`_run_epoch`, :meth:`_after_step`, :meth:`_finish`);
    :meth:`train_step` is one critic + generator step; :meth:`validate`;
    :meth:`save_checkpoint` / :meth:`restore`; :class:`RunLog` does the logging.

    Args:
        cfg: the run's config.
        out_dir: run folder (checkpoints, TensorBoard, exported models).
        progress: show a tqdm bar (rank 0 only).
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike[str], progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        self.rt = runtime.setup(cfg.device, cfg.threads)
        self.device, self.rank, self.world = self.rt.device, self.rt.rank, self.rt.world
        self.distributed = self.rt.distributed
        self.amp = cfg.amp and self.device.type == "cuda"
        self._build_model()
        self._build_data()
        self._build_optimisers()
        self.step = 0
        self.wall_time = 0.0
        self.best: dict[str, float] | None = None
        self.history: list[dict[str, float]] = []
        self.log: RunLog | None = None

    # -- building ----------------------------------------------------------------------

    def _build_model(self) -> None:
        """Network, critic and loss; the generator wrapped in DDP after ``train_only`` froze it."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.net = build_net(cfg.model).to(self.device)
        self.critic = PatchCritic(cfg.critic).to(self.device)
        self.criterion = FusionLoss(cfg.loss)
        # Freeze first: DDP registers the parameters that require a gradient when it is built
        # and waits for a gradient of each of them every step.
        self.g_params = trainable_parameters(self.net, cfg.model.train_only)
        self.gen: nn.Module = self.net
        if self.distributed:
            for p in self.critic.parameters():
                dist.broadcast(p.data, src=0)
            self.gen = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_data(self) -> None:
        """Datasets (probed), the per-rank epoch sampler and the loader; resolves ``epochs``."""
        cfg = self.cfg
        self.dataset = build_dataset(cfg.data)
        self._probe(self.dataset, "data")
        self.val_set = None
        if cfg.val is not None:
            self.val_set = build_dataset(cfg.val)
            self._probe(self.val_set, "val")
        weights = None
        if isinstance(self.dataset, MixedDataset) and not self.dataset.uniform:
            weights = self.dataset.weights
        self.sampler = EpochSampler(len(self.dataset), cfg.data.seed, weights, self.rank, self.world)
        self.steps_per_epoch = self.sampler.per_rank() // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"data: {len(self.dataset)} samples over {self.world} rank(s) make no batch of "
                              f"{cfg.batch_size}; raise data.samples_per_epoch or lower batch_size")
        if cfg.epochs is not None:
            self.cfg = replace(cfg, steps=cfg.epochs * self.steps_per_epoch)
        self.loader = runtime.make_loader(self.dataset, self.sampler, cfg.batch_size, cfg.workers, self.device,
                                          seed=cfg.data.seed)

    def _build_optimisers(self) -> None:
        o = self.cfg.optim
        self.g_opt = torch.optim.Adam(self.g_params, lr=o.lr, betas=tuple(o.betas))
        self.c_opt = torch.optim.Adam(self.critic.parameters(), lr=o.critic_lr, betas=tuple(o.critic_betas))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.g_opt, T_max=self.cfg.steps, eta_min=o.lr_min)

    @staticmethod
    def _probe(ds: Any, what: str) -> None:
        """Load one sample now so that bad data fails before training starts."""
        try:
            ds[0]
        except CrmefError as exc:
            raise ConfigError(f"{what}: {exc}") from exc

    # -- one step ------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One critic step (when the adversarial term is on) and one generator step.

        Only the generator's forward pass runs under autocast; the critic and every loss run in
        float32.

        Raises:
            NonFiniteLossError: a loss is NaN/inf on any rank (nothing is updated by that step).
        """
        under, over, ref = (batch[k].to(self.device, non_blocking=True) for k in ("under", "over", "ref"))
        use_gan = self.cfg.loss.adversarial > 0 and self.step >= self.cfg.gan_start
        self.gen.train()
        with self._autocast():
            y = self.gen(under, over)
        y = y.float()
        parts: dict[str, float] = {}
        if use_gan:
            parts.update(self._critic_step(ref, y))
        parts.update(self._generator_step(y, ref, (under, over), use_gan))
        return parts

    def _critic_step(self, ref: Tensor, y: Tensor) -> dict[str, float]:
        self.critic.requires_grad_(True)
        self.c_opt.zero_grad(set_to_none=True)
        c_loss, c_parts = critic_loss(self.critic, ref, y, self.cfg.loss.gp)
        if not self.rt.all_true(bool(torch.isfinite(c_loss.detach()).all())):
            raise NonFiniteLossError(f"critic loss is {float(c_loss)} at step {self.step + 1}")
        c_loss.backward()
        # By hand: the gradient penalty's double backward does not go through DDP's reducer.
        self.rt.all_reduce_mean_([p.grad for p in self.critic.parameters() if p.grad is not None])
        self.c_opt.step()
        return c_parts

    def _generator_step(self, y: Tensor, ref: Tensor, sources: tuple[Tensor, Tensor], use_gan: bool) -> dict[str, float]:
        self.critic.requires_grad_(False)
        loss, g_parts = self.criterion(y, ref, self.critic if use_gan else None, sources=sources)
        if not self.rt.all_true(bool(torch.isfinite(loss.detach()).all())):
            raise NonFiniteLossError(f"generator loss is {float(loss.detach())} at step {self.step + 1} (parts: {g_parts})")
        self.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.g_opt.step()
        self.sched.step()
        return g_parts

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
            with self._autocast():
                y = self.net(u, o)
            y = y.float().clamp(0, 1).cpu()
            u, o, r = u.cpu(), o.cpu(), r.cpu()
            sums["psnr"] += float(psnr(y, r)[0])
            sums["ssim"] += float(ssim(y, r)[0])
            sums["mef_ssim"] += float(mef_ssim([u, o], y)[0])
            if first is None:
                first = torch.cat([u, o, y, r], dim=3)[0]
        self.net.train()
        metrics = {k: v / len(self.val_set) for k, v in sums.items()}
        if self.log is not None:
            self.log.validation(self.step, metrics, first)
        return metrics

    def _after_validation(self, metrics: dict[str, float]) -> None:
        from crmef.models import save_model

        record = {"step": float(self.step), **metrics}
        self.history.append(record)
        if self.best is None or metrics["psnr"] > self.best["psnr"]:
            self.best = record
            save_model(self.net, self.out / "best", self.card(metrics))

    # -- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; every rank must call it: the RNG
        states of all ranks are gathered)."""
        rngs = self.rt.gather(runtime.rng_state())
        if not self.rt.main:
            return None
        g_t, g_meta = runtime.optim_to_tensors(self.g_opt, "gen")
        c_t, c_meta = runtime.optim_to_tensors(self.c_opt, "critic")
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
            "git": runtime.git_revision(),
        }
        parts = {"model": self.net.state_dict(), "critic": self.critic.state_dict(), "optim": {**g_t, **c_t}}
        return runtime.save_checkpoint(self.out / CKPT_DIR, self.step, parts, state, self.cfg.keep_checkpoints)

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
        runtime.optim_from_tensors(self.g_opt, "gen", ck["optim"], st["optim"]["gen"])
        runtime.optim_from_tensors(self.c_opt, "critic", ck["optim"], st["optim"]["critic"])
        self.sched.load_state_dict(st["scheduler"])
        self.sched.T_max = self.cfg.steps  # a resumed run may be extended with --set steps=N
        runtime.set_rng_state(st["rng"][self.rank])
        self.step = int(st["step"])
        self.wall_time = float(st.get("wall_time_s", 0.0))
        self.best = st.get("best")
        self.history = list(st.get("history", []))

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
                "git": runtime.git_revision(),
            },
            "metrics": {"val": metrics or {}},
        }

    # -- loop ---------------------------------------------------------------------------

    _clock = staticmethod(time.monotonic)  # the stop clock (only rank 0's decides)

    def run(self, resume: bool = False) -> TrainResult:
        """Train to ``cfg.steps`` (or ``max_minutes``), checkpointing as configured.

        Raises:
            NonFiniteLossError: NaN/inf loss; the last good checkpoint stays ``latest``.
            ConfigError: ``resume`` without a checkpoint, or one that does not fit.
        """
        self._start(resume)
        stopped_early = False
        try:
            while self.step < self.cfg.steps and not stopped_early:
                stopped_early = self._run_epoch()
        except NonFiniteLossError as exc:
            last = latest_checkpoint(self.out) if self.rank == 0 else None
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(f"training stopped: {exc}; {keep}") from None
        finally:
            if self.log is not None:
                self.log.close()
        return self._finish(stopped_early)

    def _start(self, resume: bool) -> None:
        """Restore or check the run folder, write the config, prepare the data cache, start the clock."""
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
            atomic_write_text(self.out / "config.yaml", dump_config(self.cfg))
            atomic_write_text(self.out / "genotype.json", self.net.derive().to_json() + "\n")
        runtime.prepare_cache(self.rt, [self.dataset, self.val_set], progress=self.progress)
        self.log = RunLog(self.cfg, self.out, self.step, self.progress, active=self.rank == 0)
        self._started = self._clock()
        self._session_start = self.wall_time

    def _run_epoch(self) -> bool:
        """The rest of the current epoch; True when the run stopped early (``max_minutes``)."""
        epoch, within = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch, within * self.cfg.batch_size)
        for batch in self.loader:
            t0 = time.monotonic()
            parts = self.train_step(batch)
            self.step += 1
            if self._after_step(parts, time.monotonic() - t0):
                return True
            if self.step >= self.cfg.steps:
                return False
        self.rt.barrier()
        return False

    def _after_step(self, parts: dict[str, float], seconds: float) -> bool:
        """Log, validate and checkpoint as due; True when every rank stops now (time is up)."""
        cfg = self.cfg
        self.wall_time = self._session_start + (self._clock() - self._started)
        assert self.log is not None
        self.log.step(self.step, parts, self.sched.get_last_lr()[0], seconds)
        end_of_epoch = self.step % self.steps_per_epoch == 0
        due = (self.step % cfg.val_every == 0) if cfg.val_every else end_of_epoch
        if due or self.step == cfg.steps:
            metrics = self.validate()
            if metrics is not None:
                self._after_validation(metrics)
        stop = self._time_is_up()
        if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or stop:
            self.save_checkpoint()
        if stop and self.step < cfg.steps:
            self.log.write(f"stopping after {cfg.max_minutes} minutes at step {self.step}; continue with --resume")
            return True
        return False

    def _time_is_up(self) -> bool:
        """``max_minutes`` passed on rank 0's clock; broadcast every step, so all ranks stop at
        the same step (a rank deciding alone would wait in a collective the others skip)."""
        if self.cfg.max_minutes is None:
            return False
        return self.rt.decide(self._clock() - self._started > 60 * self.cfg.max_minutes)

    def _finish(self, stopped_early: bool) -> TrainResult:
        model_path = self.out / "model.safetensors"
        if self.rank == 0:
            from crmef.models import save_model

            last_val = self.history[-1] if self.history else None
            save_model(self.net, self.out / "model", self.card(last_val))
        return TrainResult(self.step, self.out, model_path, self.wall_time, self.best, stopped_early)


def train(cfg: TrainConfig, out_dir: str | os.PathLike[str], resume: bool = False, progress: bool = True) -> TrainResult:
    """Build a :class:`Trainer` and run it (see the module docstring); a process group this call
    created is destroyed at the end."""
    trainer = Trainer(cfg, out_dir, progress=progress)
    try:
        return trainer.run(resume=resume)
    finally:
        trainer.rt.teardown()


def lr_at(step: int, cfg: OptimConfig, steps: int) -> float:
    """Closed form of the cosine schedule (for documentation and tests)."""
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * step / steps))
