"""Per-device latency look-up table of candidate ops and the expected latency ``R(α)``.

The table times every candidate op of every slot signature of the super-net — ``(op, c_in,
c_out, c_cond, H×W)`` where ``H×W`` is the feature size the slot runs at (the measuring size
divided by the slot's ``scale``) — for each requested channel width C, on one device, with a
configurable batch. Each entry keeps the median of N timed runs after a warm-up and the spread
(10th/90th percentiles, min, max). The JSON file records the device name, torch version and
thread count; :func:`ensure_table` reuses a cached table only when those match and it covers
every needed entry, and re-measures otherwise (saying why).

The hardware term of the search is

    ``R(α) = Σ_slots Σ_o softmax(α_slot)_o · LAT(slot, o) / R_ref``

where ``R_ref`` is the latency of the uniform-α architecture (every slot at the mean of its
candidates), so ``R = 1`` at initialisation on every device and ``η`` does not depend on the
device's absolute speed (:class:`ExpectedLatency`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from crmef.errors import ConfigError, InputError
from crmef.space import Choice, make_op
from crmef.utils import atomic_write_text

TABLE_VERSION = 1


@dataclass(frozen=True)
class SlotSig:
    """What an op's latency depends on: op name, channels, conditioning channels, feature size."""

    op: str
    c_in: int
    c_out: int
    c_cond: int | None
    height: int
    width: int

    @property
    def key(self) -> str:
        """Table key, e.g. ``"resconv_3|32|32|-|128x128"``."""
        cond = "-" if self.c_cond is None else str(self.c_cond)
        return f"{self.op}|{self.c_in}|{self.c_out}|{cond}|{self.height}x{self.width}"


def slot_sigs(choice: Choice, size: int | tuple[int, int]) -> list[SlotSig]:
    """Signatures of every candidate of ``choice`` for an input of ``size`` (the network's input).

    The slot runs at ``ceil(size / scale)`` (padding rounds the input up to the scale's multiple).
    """
    h, w = (size, size) if isinstance(size, int) else size
    fh, fw = -(-h // choice.scale), -(-w // choice.scale)
    return [SlotSig(op, choice.c_in, choice.c_out, choice.c_cond, fh, fw) for op in choice.candidates]


def device_info(device: torch.device | str) -> dict[str, Any]:
    """What a table must match to be reused: device type and name, torch version, threads."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:  # the CPU model is more telling than the architecture
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


@dataclass
class LatencyTable:
    """Measured op latencies (milliseconds) on one device.

    Attributes:
        meta: device/torch/threads (see :func:`device_info`) plus batch, runs, warm-up, load.
        entries: table key (:attr:`SlotSig.key`) → ``{"median_ms", "p10_ms", "p90_ms", "min_ms",
            "max_ms", "runs"}``.
    """

    meta: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, dict[str, float]] = field(default_factory=dict)

    def ms(self, sig: SlotSig) -> float:
        """Median latency of ``sig`` in ms.

        Raises:
            KeyError: the table has no entry for ``sig`` (message names the key).
        """
        try:
            return float(self.entries[sig.key]["median_ms"])
        except KeyError:
            raise KeyError(f"latency table has no entry {sig.key!r} (measured for {self.meta.get('device_name')})") from None

    def matches(self, device: torch.device | str) -> tuple[bool, str]:
        """Whether this table was measured here: same device name, torch version and threads."""
        here = device_info(device)
        for key in ("device", "device_name", "torch", "threads"):
            if self.meta.get(key) != here[key]:
                return False, f"{key} differs: table has {self.meta.get(key)!r}, this machine has {here[key]!r}"
        return True, "same device, torch version and thread count"

    def covers(self, sigs: Iterable[SlotSig], batch: int | None = None) -> list[SlotSig]:
        """The signatures missing from the table (all of them if ``batch`` differs)."""
        sigs = list(sigs)
        if batch is not None and self.meta.get("batch") != batch:
            return sigs
        return [s for s in sigs if s.key not in self.entries]

    def to_dict(self) -> dict[str, Any]:
        return {"version": TABLE_VERSION, "meta": self.meta, "entries": self.entries}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        """Read a table written by :meth:`save`.

        Raises:
            InputError: unreadable file or not a latency table (message names the file).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{path}: cannot read latency table: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: latency table is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict) or not isinstance(data.get("meta"), dict):
            raise InputError(f"{path}: not a latency table (expected keys 'meta' and 'entries')")
        if data.get("version") != TABLE_VERSION:
            raise InputError(f"{path}: latency table version {data.get('version')!r}, expected {TABLE_VERSION}")
        return cls(meta=data["meta"], entries=data["entries"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_op(
    sig: SlotSig,
    batch: int,
    runs: int,
    warmup: int,
    device: torch.device,
) -> dict[str, float]:
    """Time the forward pass of one freshly built op (eval mode, no grad).

    Returns:
        ``{"median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms", "runs"}``.
    """
    op = make_op(sig.op, sig.c_in, sig.c_out, c_cond=sig.c_cond).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, sig.c_in, sig.height, sig.width, generator=gen).to(device)
    extra: tuple[Tensor, ...] = ()
    if sig.c_cond is not None:
        extra = (torch.rand(batch, sig.c_cond, sig.height, sig.width, generator=gen).to(device),)
    times: list[float] = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            _sync(device)
            t0 = time.perf_counter()
            op(x, *extra)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return {
        "median_ms": statistics.median(times),
        "p10_ms": q[0],
        "p90_ms": q[-1],
        "min_ms": times[0],
        "max_ms": times[-1],
        "runs": len(times),
    }


def supernet_sigs(channels: int, size: int, align: bool = True, cascades: int = 2, drm_blocks: int = 4,
                  space: Any = None) -> list[SlotSig]:
    """Every distinct op signature of the super-net of width ``channels`` for inputs of ``size``."""
    from crmef.nets import FusionNet, NetConfig
    from crmef.space import SearchSpace

    cfg = NetConfig(channels=channels, cascades=max(cascades, 1), align=align, drm_blocks=drm_blocks,
                    space=space or SearchSpace())
    net = FusionNet.supernet(cfg)
    seen: dict[str, SlotSig] = {}
    for _, ch in net.choices():
        for sig in slot_sigs(ch, size):
            seen.setdefault(sig.key, sig)
    return list(seen.values())


def measure_table(
    sigs: Sequence[SlotSig],
    device: torch.device | str = "cpu",
    batch: int = 16,
    runs: int = 100,
    warmup: int = 5,
    table: LatencyTable | None = None,
    progress: Callable[[str], None] | None = None,
) -> LatencyTable:
    """Measure (or extend ``table`` with) the latency of every signature in ``sigs``.

    Args:
        sigs: op signatures to time.
        device: where to time them (``cpu`` or ``cuda``).
        batch: batch size of the timing input (paper: 16).
        runs: timed runs per op (the median is kept).
        warmup: untimed runs first.
        table: an existing table of the same device and batch to add to.
        progress: called with one line per op.
    """
    if batch < 1 or runs < 1 or warmup < 0:
        raise ConfigError(f"latency: batch and runs must be >= 1 and warmup >= 0, got batch={batch}, runs={runs}, warmup={warmup}")
    device = torch.device(device)
    table = table or LatencyTable()
    load_start = os.getloadavg()
    t_start = time.time()
    for i, sig in enumerate(sigs):
        table.entries[sig.key] = time_op(sig, batch, runs, warmup, device)
        if progress is not None:
            e = table.entries[sig.key]
            progress(f"[{i + 1}/{len(sigs)}] {sig.key:<34} {e['median_ms']:9.3f} ms  (p10 {e['p10_ms']:.3f}, p90 {e['p90_ms']:.3f})")
    table.meta.update(device_info(device))
    table.meta.update({
        "batch": batch,
        "runs": runs,
        "warmup": warmup,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "measured_s": round(time.time() - t_start, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    return table


def ensure_table(
    path: str | os.PathLike[str] | None,
    sigs: Sequence[SlotSig],
    device: torch.device | str = "cpu",
    batch: int = 16,
    runs: int = 100,
    warmup: int = 5,
    log: Callable[[str], None] = print,
) -> LatencyTable:
    """Load the cached table at ``path`` when it was measured here and covers ``sigs``; else measure.

    A table from another device, torch version or thread count is never reused: it is
    re-measured and (when ``path`` is given) overwritten, with a message saying why. A table of
    this device that lacks some entries is extended.
    """
    table: LatencyTable | None = None
    if path is not None and Path(path).is_file():
        cached = LatencyTable.load(path)
        ok, why = cached.matches(device)
        if not ok:
            log(f"latency table {path} was measured elsewhere ({why}); re-measuring")
        elif cached.meta.get("batch") != batch:
            log(f"latency table {path} has batch {cached.meta.get('batch')}, need {batch}; re-measuring")
        else:
            table = cached
    missing = list(sigs) if table is None else table.covers(sigs)
    if table is not None and not missing:
        log(f"latency table: reusing {path} ({len(table.entries)} entries, {table.meta.get('device_name')})")
        return table
    if table is not None:
        log(f"latency table {path}: measuring {len(missing)} missing entries")
    table = measure_table(missing, device, batch=batch, runs=runs, warmup=warmup, table=table)
    if path is not None:
        table.save(path)
    return table


class ExpectedLatency(nn.Module):
    """Differentiable, normalised expected latency ``R(α)`` of a super-net.

    ``R(α) = Σ_slots softmax(α_slot) · lat_slot / R_uniform`` with ``lat_slot`` the table
    latencies of the slot's candidates and ``R_uniform`` the value at uniform α, so ``R = 1``
    for the uniform architecture. Fixed (derived) slots add their constant latency.

    Args:
        net: the super-net (anything with ``choices()`` yielding ``(name, Choice)``).
        table: the look-up table.
        size: the input size the table entries were measured for (the search crop).

    Shapes: ``forward() -> ()`` scalar tensor, differentiable w.r.t. every α.
    """

    def __init__(self, net: nn.Module, table: LatencyTable, size: int | tuple[int, int]) -> None:
        super().__init__()
        self.slots: list[tuple[str, Choice]] = list(net.choices())  # type: ignore[attr-defined]
        if not self.slots:
            raise ValueError("ExpectedLatency: the network has no searchable slots")
        lats = []
        for name, ch in self.slots:
            try:
                lats.append(torch.tensor([table.ms(s) for s in slot_sigs(ch, size)], dtype=torch.float32))
            except KeyError as exc:
                raise ConfigError(f"slot {name}: {exc.args[0]}") from None
        for i, lat in enumerate(lats):
            self.register_buffer(f"lat{i}", lat)
        self.n = len(lats)
        self.reference_ms = float(sum(lat.mean() for lat in lats))

    def _lat(self, i: int) -> Tensor:
        return getattr(self, f"lat{i}")

    def expected_ms(self) -> Tensor:
        """Unnormalised expected latency in ms (sum over slots of softmax-weighted latency)."""
        total = None
        for i, (_, ch) in enumerate(self.slots):
            lat = self._lat(i)
            w = ch.weights().to(lat.device) if ch.alpha is not None else torch.ones_like(lat)
            term = (w * lat).sum()
            total = term if total is None else total + term
        return total  # type: ignore[return-value]

    def forward(self) -> Tensor:
        return self.expected_ms() / self.reference_ms

    def derived_ms(self) -> float:
        """Table latency (ms) of the argmax architecture."""
        total = 0.0
        for i, (_, ch) in enumerate(self.slots):
            total += float(self._lat(i)[ch.candidates.index(ch.chosen())])
        return total

    def fastest_ms(self) -> float:
        """Table latency (ms) of the fastest architecture in the space."""
        return float(sum(self._lat(i).min() for i in range(self.n)))
