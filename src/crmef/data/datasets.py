"""Torch datasets and loaders of (under, over, ref) triples from every supported source.

Public API:

- :class:`SourceSpec` — one data source: ``kind`` in ``{"auto", "brackets", "sice", "paired",
  "hdr_synth"}``, ``root``, optional ``weight`` (sampling weight when mixing sources).
- :class:`DataConfig` — sources, ``crop`` (128; ``None`` = full images, for evaluation),
  ``split`` (``"train"``/``"val"``/``"test"``/``"all"``), ``misalign`` (bool or
  :class:`~crmef.data.misalign.MisalignConfig`), ``pair_mode`` (``"extremes"`` or a minimum gap
  in stops), ``samples_per_epoch``, ``seed``, ``cache_dir``, ``synth``
  (:class:`~crmef.data.synth.SynthConfig`), ``augment``, ``resize``, ``clip_fraction``,
  ``split_file``.
- :func:`build_dataset` — a ``torch.utils.data.Dataset`` yielding
  ``{"under": Tensor[3, H, W], "over": Tensor[3, H, W], "ref": Tensor[3, H, W], "name": str}``,
  float32 RGB in [0, 1].
- :func:`build_loader` — a ``DataLoader`` (``DistributedSampler`` when ``distributed=True``;
  weighted sampling when sources have different weights).

Sources: bracket folders and SICE give one sample per (under, over) pair of each scene
(:func:`~crmef.data.layouts.scene_pairs`); references are SICE labels or the cached Mertens
fusion of the full bracket (:mod:`crmef.data.reference`); paired folders give their files;
``hdr_synth`` synthesises ``samples_per_epoch`` triples on the fly (:mod:`crmef.data.synth`).

Speed: frames are decoded once into uint8 ``.npy`` files in ``<cache_dir>/decoded`` and
memory-mapped (shared by all DataLoader workers through the page cache); a crop then costs a
slice, a flip and a copy. Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``
so every sample is reproducible; call ``set_epoch`` (done by :func:`build_loader`'s sampler
hook for distributed runs) to vary crops between epochs.

Splits follow :mod:`crmef.data.splitting`: the committed table for ``../shared/data`` scenes,
``<prefix>A/B/C`` prefixes named train/val/test for paired folders, a stable name hash otherwise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from crmef.data import layouts
from crmef.data.layouts import PairItem, detect_layout
from crmef.data.misalign import MisalignConfig, max_border, misalign_triple
from crmef.data.reference import ArrayCache, default_cache_dir
from crmef.data.splitting import hash_split, load_split, lookup_split
from crmef.data.synth import SynthConfig, load_radiance, random_crop_radiance, synthesize
from crmef.data.transforms import augment, crop, random_crop_box, to_tensor
from crmef.errors import ConfigError, CrmefError

KINDS = ("auto", "brackets", "sice", "paired", "hdr_synth")
SPLIT_CHOICES = ("train", "val", "test", "all")
DEFAULT_SYNTH_SAMPLES = 1000


@dataclass
class SourceSpec:
    """One data source.

    Attributes:
        root: folder of the data.
        kind: ``"auto"`` (detected by :func:`~crmef.data.layouts.detect_layout`), ``"brackets"``,
            ``"sice"``, ``"paired"`` or ``"hdr_synth"``.
        weight: relative sampling weight of this source's samples when several are mixed.
    """

    root: str
    kind: str = "auto"
    weight: float = 1.0


@dataclass
class DataConfig:
    """What to load and how (see the module docstring)."""

    sources: list[SourceSpec] = field(default_factory=list)
    crop: int | None = 128
    split: str = "train"
    misalign: bool | MisalignConfig = False
    pair_mode: str | float = "extremes"
    samples_per_epoch: int | None = None
    seed: int = 0
    cache_dir: str | None = None
    synth: SynthConfig = field(default_factory=SynthConfig)
    augment: bool = True
    resize: bool = False
    clip_fraction: float = 0.95
    split_file: str | None = None

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceSpec) else SourceSpec(**s) for s in self.sources]
        if isinstance(self.synth, dict):
            self.synth = SynthConfig(**self.synth)
        if isinstance(self.misalign, dict):
            self.misalign = MisalignConfig(**self.misalign)
        if self.split not in SPLIT_CHOICES:
            raise ConfigError(f"data.split must be one of {', '.join(SPLIT_CHOICES)}, got {self.split!r}")
        if self.crop is not None and self.crop < 8:
            raise ConfigError(f"data.crop must be >= 8 or None, got {self.crop}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ConfigError(f"data.samples_per_epoch must be >= 1, got {self.samples_per_epoch}")

    @property
    def misalign_config(self) -> MisalignConfig | None:
        """The misalignment ranges, or None when disabled."""
        if self.misalign is True:
            return MisalignConfig()
        return self.misalign or None

    @property
    def cache(self) -> Path:
        """``cache_dir`` or :func:`~crmef.data.reference.default_cache_dir`."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


def _padding(cfg: DataConfig) -> int:
    """Extra pixels per side cut around a crop so that misalignment borders can be cropped."""
    mis = cfg.misalign_config
    if mis is None or cfg.crop is None:
        return 0
    pad = max_border(cfg.crop, cfg.crop, mis)
    for _ in range(3):
        pad = max_border(cfg.crop + 2 * pad, cfg.crop + 2 * pad, mis)
    return pad


def _as_float(a: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]; float arrays unchanged."""
    return a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else a


class _EpochMixin:
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Vary random crops/augmentations between epochs (reproducibly)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, self.epoch, index])  # type: ignore[attr-defined]

    def _finish(self, arrays: list[np.ndarray], rng: np.random.Generator, name: str) -> dict[str, Any]:
        cfg: DataConfig = self.cfg  # type: ignore[attr-defined]
        mis = cfg.misalign_config
        if mis is not None:
            f = [_as_float(a) for a in arrays]
            size = (cfg.crop, cfg.crop) if cfg.crop is not None else None
            u, o, r, _ = misalign_triple(f[0], f[1], f[2], rng, mis, out_size=size)
            arrays = [u, o, r]
        if cfg.augment and cfg.crop is not None:
            arrays = augment(arrays, rng)
        u, o, r = (to_tensor(a) for a in arrays)
        return {"under": u, "over": o, "ref": r, "name": name}


class PairDataset(_EpochMixin, Dataset):
    """Samples from files: bracket scenes, SICE sequences or paired folders.

    Args:
        items: the samples (see :class:`~crmef.data.layouts.PairItem`).
        cfg: the data config (crop, misalignment, seed, cache).
    """

    def __init__(self, items: list[PairItem], cfg: DataConfig) -> None:
        if not items:
            raise ConfigError("dataset is empty: no (under, over, ref) samples in the requested split")
        self.items = items
        self.cfg = cfg
        self.cache = ArrayCache(cfg.cache)
        self.pad = _padding(cfg)
        self.length = cfg.samples_per_epoch or len(items)

    def __len__(self) -> int:
        return self.length

    def arrays(self, item: PairItem) -> list[np.ndarray]:
        """The uint8 (H, W, 3) under, over and reference of an item (memory-mapped)."""
        under = self.cache.frame(item.under, item.size)
        over = self.cache.frame(item.over, item.size)
        if item.ref is not None:
            ref = self.cache.frame(item.ref, item.size)
        else:
            assert item.source_scene is not None
            ref = self.cache.reference(item.source_scene)
        return [under, over, ref]

    def prepare(self, progress: bool = False) -> None:
        """Decode every frame and build every reference now (else done on first use)."""
        from tqdm import tqdm

        for item in tqdm(self.items, desc="caching", disable=not progress):
            self.arrays(item)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        item = self.items[index % len(self.items)]
        rng = self._rng(index)
        arrays = self.arrays(item)
        if self.cfg.crop is not None:
            size = self.cfg.crop + 2 * self.pad
            h, w = arrays[0].shape[:2]
            try:
                top, left = random_crop_box(rng, h, w, size)
            except CrmefError as exc:
                raise ConfigError(f"sample {item.name}: {exc}") from None
            arrays = crop(arrays, top, left, size)
        arrays = [np.array(a) for a in arrays]  # copy out of the memory map
        return self._finish(arrays, rng, item.name)


class SynthDataset(_EpochMixin, Dataset):
    """On-the-fly bracket synthesis from linear HDR radiance maps.

    Args:
        maps: ``.exr`` / ``.hdr`` files.
        cfg: the data config; ``cfg.synth`` holds the synthesis parameters and ``cfg.crop`` the
            output size (the radiance crop is larger by the misalignment border).
    """

    def __init__(self, maps: list[Path], cfg: DataConfig) -> None:
        if not maps:
            raise ConfigError("dataset is empty: no HDR radiance maps in the requested split")
        self.maps = maps
        self.cfg = cfg
        self.pad = _padding(cfg)
        self.length = cfg.samples_per_epoch or DEFAULT_SYNTH_SAMPLES
        self._radiance: dict[Path, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_radiance"] = {}
        return state

    def __len__(self) -> int:
        return self.length

    def radiance(self, path: Path) -> np.ndarray:
        """The radiance map (kept in memory per worker)."""
        if path not in self._radiance:
            self._radiance[path] = load_radiance(path)
        return self._radiance[path]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self._rng(index)
        path = self.maps[int(rng.integers(len(self.maps)))]
        size = None if self.cfg.crop is None else self.cfg.crop + 2 * self.pad
        sample = synthesize(random_crop_radiance(self.radiance(path), size, rng), rng, self.cfg.synth)
        return self._finish([sample.under, sample.over, sample.ref], rng, f"{path.stem}#{index}")


class MixedDataset(ConcatDataset):
    """Several sources concatenated; ``weights`` gives each sample's sampling weight."""

    def __init__(self, datasets: list[Dataset], source_weights: list[float]) -> None:
        super().__init__(datasets)
        self.weights = torch.cat(
            [torch.full((len(d),), w / len(d), dtype=torch.float64) for d, w in zip(datasets, source_weights)]
        )
        self.uniform = len(set(source_weights)) == 1

    def set_epoch(self, epoch: int) -> None:
        """Forward to every source."""
        for d in self.datasets:
            d.set_epoch(epoch)  # type: ignore[attr-defined]


def _in_split(split: str, actual: str) -> bool:
    return split == "all" or split == actual


def _scene_split(path: Path, name: str, table: dict[str, str], seed: int) -> str:
    return lookup_split(path, table) or hash_split(name, seed)


def _source_dataset(spec: SourceSpec, cfg: DataConfig) -> Dataset:
    root = Path(spec.root).expanduser()
    if spec.kind not in KINDS:
        raise ConfigError(f"unknown data source kind {spec.kind!r}; use one of {', '.join(KINDS)}")
    if not root.is_dir():
        raise ConfigError(f"data root {root} does not exist or is not a folder")
    kind = detect_layout(root) if spec.kind == "auto" else spec.kind
    table = load_split(cfg.split_file)
    if kind == "hdr_synth":
        maps = [m for m in layouts.scan_hdr(root) if _in_split(cfg.split, _scene_split(m, m.name, table, cfg.seed))]
        if not maps:
            raise ConfigError(f"{root}: no .exr/.hdr radiance maps for split {cfg.split!r}")
        return SynthDataset(maps, cfg)
    if kind == "paired":
        items = []
        for prefix, entries in layouts.scan_paired(root).items():
            for it in entries:
                actual = prefix if prefix in ("train", "val", "test") else hash_split(it.name, cfg.seed)
                if _in_split(cfg.split, actual):
                    items.append(it)
    elif kind in ("brackets", "sice"):
        scan = layouts.scan_brackets if kind == "brackets" else layouts.scan_sice
        items = []
        for scene in scan(root, resize=cfg.resize, clip_fraction=cfg.clip_fraction):
            if _in_split(cfg.split, _scene_split(scene.path, scene.name, table, cfg.seed)):
                pairs = layouts.scene_pairs(scene, cfg.pair_mode, cfg.clip_fraction)
                if not pairs:
                    warnings.warn(
                        f"scene {scene.name}: no pair at least {cfg.pair_mode} stops apart", layouts.DataWarning, stacklevel=2
                    )
                items.extend(pairs)
    else:  # pragma: no cover - KINDS is checked above
        raise ConfigError(f"unknown data source kind {kind!r}")
    if not items:
        raise ConfigError(f"{root} ({kind}): no samples for split {cfg.split!r}; check the folder and the split")
    return PairDataset(items, cfg)


def build_dataset(cfg: DataConfig) -> Dataset:
    """The dataset of a config (one source, or a :class:`MixedDataset` of several).

    Raises:
        ConfigError: no sources, unknown kind, missing root, or an empty split.
    """
    if not cfg.sources:
        raise ConfigError("data config has no sources; add one with kind and root")
    datasets = [_source_dataset(s, cfg) for s in cfg.sources]
    if len(datasets) == 1:
        return datasets[0]
    return MixedDataset(datasets, [s.weight for s in cfg.sources])


def worker_init(_: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker process."""
    # One thread per worker. Do not call cv2.setNumThreads here: in a forked child whose parent
    # already ran OpenCV's thread pool it waits forever for the parent's (absent) threads.
    torch.set_num_threads(1)


def build_loader(
    cfg: DataConfig,
    batch_size: int,
    workers: int = 2,
    shuffle: bool = True,
    distributed: bool = False,
    drop_last: bool | None = None,
    dataset: Dataset | None = None,
) -> DataLoader:
    """A DataLoader over :func:`build_dataset` (or a given dataset).

    Args:
        cfg: the data config.
        batch_size: samples per batch (use 1 with ``crop=None``: full images differ in size).
        workers: DataLoader worker processes.
        shuffle: random order (weighted by source when weights differ).
        distributed: use a ``DistributedSampler`` (needs an initialised process group).
        drop_last: default ``True`` for training splits with crops, else ``False``.
        dataset: reuse an already built dataset.
    """
    ds = dataset if dataset is not None else build_dataset(cfg)
    if drop_last is None:
        drop_last = cfg.crop is not None and cfg.split == "train"
    sampler = None
    if distributed:
        sampler = DistributedSampler(ds, shuffle=shuffle, seed=cfg.seed, drop_last=drop_last)
    elif shuffle and isinstance(ds, MixedDataset) and not ds.uniform:
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = WeightedRandomSampler(ds.weights, num_samples=len(ds), replacement=True, generator=gen)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        worker_init_fn=worker_init if workers > 0 else None,
        # Not persistent: workers are re-created each epoch so they see set_epoch()'s value.
        persistent_workers=False,
        pin_memory=False,
    )

