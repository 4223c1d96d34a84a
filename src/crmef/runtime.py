"""What training and search share: process group, device, seeds, git revision, checkpoints, loaders.

Public API:

- :func:`setup` → :class:`Runtime` (rank, world, device); :meth:`Runtime.teardown`.
  Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised from its environment
  variables (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): NCCL on
  CUDA (one GPU per rank, ``cuda:LOCAL_RANK``), gloo on CPU. A group that already exists is used
  as it is and left to its owner.
- :meth:`Runtime.decide` — rank 0's decision, broadcast to every rank (e.g. "time is up"), so that
  no rank enters a collective the others skip.
- :func:`seed_everything`, :func:`git_revision`, :func:`rng_state` / :func:`set_rng_state`
  (python, numpy, torch and every CUDA device; JSON-ready).
- Checkpoints: :func:`save_checkpoint` writes ``<root>/step-0000123/`` (search: ``epoch-…``) (one ``.safetensors`` file
  per part and ``state.json``) under a temporary name, renames it whole, then switches
  ``<root>/latest`` (one line, written atomically) to it and prunes older ones; a SIGKILL at any
  moment leaves ``latest`` naming a complete checkpoint. :func:`latest_checkpoint`,
  :func:`load_checkpoint`, :func:`optim_to_tensors` / :func:`optim_from_tensors` (no pickle).
- Data: :class:`EpochSampler` (a per-epoch order that is a pure function of ``(seed, epoch)``,
  sliced per rank, resumable mid-epoch) and :func:`make_loader` (workers kept alive between
  epochs, pinned memory on CUDA). The sampler hands ``(epoch, index)`` to the workers, so a
  persistent worker still draws the right epoch's crops.
- :func:`prepare_cache` — decode a dataset's files into its cache on rank 0 before the loop, the
  other ranks waiting at a barrier.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from crmef.errors import InputError
from crmef.utils import atomic_path, atomic_write_text, resolve_device

__all__ = [
    "Runtime",
    "setup",
    "seed_everything",
    "git_revision",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "optim_to_tensors",
    "optim_from_tensors",
    "EpochSampler",
    "EpochDataset",
    "make_loader",
    "prepare_cache",
    "LATEST",
]

LATEST = "latest"


# ----------------------------------------------------------------------------- process group


@dataclass(frozen=True)
class Runtime:
    """Where this process runs.

    Attributes:
        device: the device of this rank (``cuda:LOCAL_RANK`` in a CUDA data-parallel run).
        rank: global rank (0 alone).
        world: number of ranks.
        owns_group: True when :func:`setup` created the process group (``teardown`` destroys it).
    """

    device: torch.device
    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """More than one rank."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 (writes files, logs, decides)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if not self.distributed:
            return
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def decide(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (one broadcast; every rank must call it)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank (one all-reduce; every rank must call it)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (one all-gather; every rank must call it)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_mean_(self, tensors: Sequence[Tensor]) -> None:
        """Average tensors over the ranks, in place, in one flat all-reduce."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        for t, part in zip(tensors, torch.split(flat, [t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def teardown(self) -> None:
        """Destroy the process group when this runtime created it."""
        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


PG_TIMEOUT_S = 3600


def setup(device: str | torch.device | None = "auto", threads: int | None = None,
          timeout_s: float = PG_TIMEOUT_S) -> Runtime:
    """The runtime of this process: device, and the process group under ``torchrun``.

    Args:
        device: ``auto``, ``cpu``, ``cuda``... (a data-parallel CUDA run uses ``cuda:LOCAL_RANK``).
        threads: torch intra-op threads (None: torch's default).
        timeout_s: how long a collective may wait before the run fails. One hour, not NCCL's ten
            minutes: the other ranks wait at a barrier while rank 0 decodes a dataset into its
            cache (:func:`prepare_cache`) or measures a latency table.

    Raises:
        ValueError: an unavailable device was requested.
    """
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    return Runtime(dev, dist.get_rank(), dist.get_world_size(), owns)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the source tree, or None outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch and CUDA generator states of this process (JSON-ready)."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ----------------------------------------------------------------------------- checkpoints


def optim_to_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimiser's state as ``({"<prefix>.<param>.<key>": Tensor}, JSON-ready rest)``."""
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


def optim_from_tensors(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Load what :func:`optim_to_tensors` wrote into ``opt``."""
    state = {}
    for pid, entry in meta["state"].items():
        state[int(pid)] = {k: (tensors[f"{prefix}.{pid}.{k}"] if v is None else v) for k, v in entry.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def save_checkpoint(root: str | os.PathLike[str], step: int, parts: dict[str, dict[str, Tensor]],
                    state: dict[str, Any], keep: int = 2, prefix: str = "step") -> Path:
    """Write ``<root>/<prefix>-<step>/`` atomically, point ``<root>/latest`` at it, keep ``keep`` newest.

    Args:
        root: the checkpoints folder.
        step: the step (or epoch) the checkpoint is named after.
        parts: ``{name: {tensor name: Tensor}}``, one ``<name>.safetensors`` each.
        state: everything else (JSON-ready; RNG states, step, history...), as ``state.json``.
        keep: how many checkpoints to keep (>= 1).
        prefix: ``step`` (training) or ``epoch`` (search).

    Returns:
        The checkpoint folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}-{step:07d}"
    final = root / name
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for part, tensors in parts.items():
        _save_tensors(tensors, tmp / f"{part}.safetensors")
    atomic_write_text(tmp / "state.json", json.dumps(state) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / LATEST, name + "\n")
    done = sorted(p for p in root.glob(f"{prefix}-*") if p.is_dir() and p.name != name)
    for old in done[: max(len(done) - (keep - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder that ``<root>/latest`` names, or None when there is none.

    Raises:
        InputError: ``latest`` names a folder that is missing or incomplete.
    """
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text(encoding="utf-8").strip()
    if not (path / "state.json").is_file():
        raise InputError(f"{pointer} names {path}, which is missing or incomplete")
    return path


def load_checkpoint(path: str | os.PathLike[str], parts: Sequence[str]) -> dict[str, Any]:
    """Read a checkpoint folder: ``{"state": dict, <part>: {name: Tensor}, ...}``.

    Raises:
        InputError: a file is missing or unreadable (named in the message).
    """
    path = Path(path)
    out: dict[str, Any] = {}
    try:
        out["state"] = json.loads((path / "state.json").read_text(encoding="utf-8"))
        for part in parts:
            out[part] = load_file(str(path / f"{part}.safetensors"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"checkpoint {path}: cannot read ({exc})") from exc
    except Exception as exc:  # safetensors' own errors
        raise InputError(f"checkpoint {path}: corrupt safetensors file ({exc})") from exc
    return out


# ----------------------------------------------------------------------------- data


class EpochSampler(Sampler[tuple[int, int]]):
    """Deterministic per-epoch order: a pure function of ``(seed, epoch)``, sliced per rank.

    Yields ``(epoch, index)`` pairs (for :class:`EpochDataset`). ``set_epoch(epoch, start)``
    skips the first ``start`` indices of this rank's order, which is how a resumed run continues
    mid-epoch. Rank ``r`` of ``w`` takes positions ``r, r + w, r + 2w...`` of the epoch's order,
    so one step of ``w`` ranks with batch ``b`` sees the samples one rank would see with batch
    ``w·b``.

    Args:
        n: dataset length.
        seed: order seed.
        weights: per-sample weights for sampling with replacement, or None for a permutation.
        rank: this process's rank.
        world: number of ranks.
        shuffle: False keeps the dataset's order (every epoch alike).
    """

    def __init__(self, n: int, seed: int, weights: Tensor | None = None, rank: int = 0, world: int = 1,
                 shuffle: bool = True) -> None:
        self.n, self.seed, self.weights, self.rank, self.world = n, seed, weights, rank, world
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and how many of this rank's indices to skip."""
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        """Indices per rank per epoch."""
        return self.n // self.world

    def order(self) -> Tensor:
        """This epoch's order of all ranks."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        return torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.order()[: self.per_rank() * self.world][self.rank :: self.world]
        return iter([(self.epoch, i) for i in mine[self.start :].tolist()])

    def __len__(self) -> int:
        return max(self.per_rank() - self.start, 0)


class EpochDataset(Dataset):
    """A dataset indexed by ``(epoch, index)``: calls ``set_epoch(epoch)`` (when the dataset has
    it) before ``dataset[index]``, in whichever process loads the sample (a persistent worker
    never sees the main process's ``set_epoch``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self._epoch = epoch
        return self.dataset[index]


def make_loader(dataset: Dataset, sampler: EpochSampler, batch_size: int, workers: int, device: torch.device,
                seed: int = 0, drop_last: bool = True) -> DataLoader:
    """A DataLoader over ``dataset`` in ``sampler``'s order.

    Workers (``workers > 0``) are started once and kept between epochs (``persistent_workers``);
    batches are pinned on CUDA, for ``.to(device, non_blocking=True)``. The loader has its own
    generator, so creating an iterator never draws from the global torch RNG.
    """
    from crmef.data.datasets import worker_init

    return DataLoader(EpochDataset(dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=worker_init if workers > 0 else None)


def prepare_cache(rt: Runtime, datasets: Sequence[Dataset | None], progress: bool = False) -> None:
    """Decode every file of ``datasets`` into their cache on rank 0; the other ranks wait.

    Datasets without a ``prepare`` method (synthesised on the fly) are skipped; the parts of a
    concatenated dataset are prepared one by one. Every rank must call this.
    """
    if rt.main:
        for ds in datasets:
            for part in getattr(ds, "datasets", [ds]):
                prepare = getattr(part, "prepare", None)
                if callable(prepare):
                    prepare(progress=progress)
    rt.barrier()
