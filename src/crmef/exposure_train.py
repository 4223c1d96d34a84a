"""Search and train the exposure network of the default engine (:mod:`crmef.engine`), on the CPU.

Two stages, each resumable from its checkpoint (``--resume``):

``search``: hardware-aware differentiable search of the three slots of
    :class:`~crmef.nets.exposure.ExposureNet` (first-order DARTS: network weights on the train
    part, α on a held-out part of the training scenes), objective ``ℓ + η R(α)`` with ``R`` the
    expected latency from a look-up table measured on this machine at the engine's work
    resolution (batch = frames of a typical bracket). Writes ``genotype.json``.
``train``: the derived network trained end to end through the blend
    (:func:`~crmef.nets.exposure.fuse_torch`) and saved as safetensors + ONNX + model card.

Loss: ``L1(y, ref) + β1 · L2(Sobel y, Sobel ref) + λ · (1 − MEF-SSIM(frames, y))``: the paper's
intensity and gradient terms, plus the no-reference structure term (the network decides weights,
not pixels, so the adversarial term has nothing to add and is off). References: sequences of
the training split, OpenCV Mertens of the full bracket (:func:`crmef.data.reference.mertens_reference`),
with the network given all frames, the darkest and brightest, or a random subset; synthetic
pairs of the training HDR maps with their tone-mapped radiance.

    python -m crmef.exposure_train search --out runs/exposure_search
    python -m crmef.exposure_train train --genotype runs/exposure_search/genotype.json --out runs/exposure
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from crmef.engine import BlendConfig, select_frames, work_shape
from crmef.errors import InputError
from crmef.latency import LatencyTable
from crmef.nets.exposure import ExposureNet, fuse_torch, gray_t
from crmef.space import CONV_OPS

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
REFERENCE_LATENCY = "configs/latency/exposure_cpu.json"
"""A latency table of the reference 2-core CPU (repository-relative), measured by the search
stage on 2026-12-03: ``--set latency=`` this file makes a search repeatable anywhere."""


@dataclass
class ExposureTrainConfig:
    """Settings of both stages (defaults: the shipped model's)."""

    channels: int = 8
    candidates: list[str] = field(default_factory=lambda: [o for o in CONV_OPS if not o.endswith("_7")])
    steps: int = 300
    batch: int = 4
    lr: float = 2e-3
    arch_lr: float = 3e-3
    eta: float = 0.5
    warmup: int = 40
    train_size: int = 256
    max_frames: int = 5
    beta_grad: float = 0.75
    lambda_mef: float = 1.0
    hdr_samples: int = 24
    seed: int = 0
    latency: str = ""
    blend: BlendConfig = field(default_factory=BlendConfig)


# ------------------------------------------------------------------------------- data


@dataclass
class Scene:
    """Frames (dark to bright, float32 (H, W, 3)) at training size and the reference."""

    name: str
    frames: list[np.ndarray]
    ref: np.ndarray
    kind: str  # "sequence" or "hdr"


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = size / max(h, w)
    if s >= 1:
        return img
    return cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)


def load_scenes(split: str, size: int, hdr_samples: int, seed: int = 0) -> list[Scene]:
    """The sequences and HDR pairs of one split of the committed split file, at ``size`` px."""
    from crmef.data.reference import mertens_reference
    from crmef.evaluation import load_samples
    from crmef.imageio import read_image

    splits = json.loads((Path(__file__).parent / "data" / "splits" / "shared.json").read_text())["scenes"]
    manifest = json.loads((SHARED / "manifest.json").read_text())
    scenes: list[Scene] = []
    for entry in manifest:
        key = entry["scene"].removeprefix("sequences/")
        if splits.get(key, splits.get(entry["scene"])) != split:
            continue
        frames = [read_image(SHARED / entry["scene"] / f["file"]) for f in entry["frames"]]
        frames.sort(key=lambda a: float(a.mean()))
        ref = mertens_reference(frames)
        scenes.append(Scene(entry["scene"], [_resize(f, size) for f in frames], _resize(ref, size), "sequence"))
    if hdr_samples:
        samples, _ = load_samples(SHARED / "hdr", split, "auto", hdr_samples, seed)
        for s in samples:
            scenes.append(Scene(s.name, [_resize(s.under, size), _resize(s.over, size)], _resize(s.ref, size), "hdr"))
    return scenes


def pick_frames(scene: Scene, rng: random.Random) -> list[np.ndarray]:
    """The frames one training step sees: all usable, the two extremes, or a random subset."""
    idx, _ = select_frames(scene.frames)
    if len(idx) <= 2:
        return [scene.frames[i] for i in idx]
    r = rng.random()
    if r < 0.4:
        chosen = [idx[0], idx[-1]]
    elif r < 0.7:
        chosen = idx
    else:
        k = rng.randint(2, len(idx))
        chosen = sorted(rng.sample(idx, k))
    return [scene.frames[i] for i in chosen]


def cap_frames(frames: list[np.ndarray], limit: int, rng: random.Random) -> list[np.ndarray]:
    """At most ``limit`` frames (the extremes kept, the rest a random subset), to bound a step's cost."""
    if len(frames) <= limit:
        return frames
    inner = sorted(rng.sample(range(1, len(frames) - 1), limit - 2))
    return [frames[0], *(frames[i] for i in inner), frames[-1]]


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)


def augment(frames: list[np.ndarray], ref: np.ndarray, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) frames and (1, 3, H, W) reference with a random flip / 90° rotation."""
    x = torch.stack([_tensor(f) for f in frames])
    y = _tensor(ref)[None]
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if rng.random() < 0.25:
        x, y = x.transpose(-1, -2), y.transpose(-1, -2)
    return x.contiguous(), y.contiguous()


# ------------------------------------------------------------------------------- loss


def scene_loss(net: ExposureNet, frames: torch.Tensor, ref: torch.Tensor, cfg: ExposureTrainConfig) -> torch.Tensor:
    """The training loss of one scene (see the module docstring)."""
    from crmef.losses import sobel
    from crmef.metrics.mef_ssim import mef_ssim_gray

    y = fuse_torch(net, frames, cfg.blend)
    loss = F.l1_loss(y, ref) + cfg.beta_grad * F.mse_loss(sobel(y), sobel(ref))
    if cfg.lambda_mef:
        seq = (gray_t(frames) * 255.0).permute(1, 0, 2, 3).double()  # float32 cancels to NaN
        q = mef_ssim_gray(seq, (gray_t(y) * 255.0).double())
        loss = loss + cfg.lambda_mef * (1.0 - q.float().mean())
    return loss


# ------------------------------------------------------------------------------- stages


def _log(out: Path, text: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {text}"
    print(line, flush=True)
    with open(out / "log.txt", "a") as fh:
        fh.write(line + "\n")


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def photo_work_shape(blend: BlendConfig) -> tuple[int, int]:
    """The work-resolution (h, w) of a 3:2 landscape photo: where latency and FLOPs are measured."""
    return work_shape(2000, 3000, blend.work_size)


def latency_table(net: ExposureNet, cfg: ExposureTrainConfig, out: Path, frames: int = 3,
                  given: LatencyTable | None = None):
    """The CPU look-up table of every candidate at the work resolution (batch = ``frames``).

    With ``cfg.latency`` (a table file, as :meth:`crmef.latency.LatencyTable.save` writes it) the
    search uses that table whatever machine it runs on (``given``: the file already read), and
    keeps a copy in ``out``: given one
    table the search is deterministic, so a search with the reference CPU's table
    (:data:`REFERENCE_LATENCY`) is repeatable from a clean checkout. Without it the table is
    measured on this machine (cached in ``out/latency.json``): a search for the machine at hand,
    whose measurements vary from run to run by more than the candidates' α differ after a short
    search (docs/training.md, sixth round).
    """
    from crmef.latency import ensure_table, slot_sigs

    shape = photo_work_shape(cfg.blend)
    sigs = {s.key: s for _, ch in net.choices() for s in slot_sigs(ch, shape)}
    if cfg.latency:
        table = given if given is not None else LatencyTable.load(cfg.latency)
        if table.meta.get("batch") != frames:
            raise InputError(f"{cfg.latency}: latency table measured at batch {table.meta.get('batch')}, "
                             f"the search needs batch {frames}")
        missing = table.covers(sigs.values())
        if missing:
            raise InputError(f"{cfg.latency}: latency table lacks {len(missing)} of the candidates' entries "
                             f"(first: {missing[0].key})")
        _log(out, f"latency table {cfg.latency} (measured on {table.meta.get('device_name')}, "
                  f"torch {table.meta.get('torch')}, {table.meta.get('threads')} threads)")
        table.save(out / "latency.json")
        return table, shape
    table = ensure_table(out / "latency.json", list(sigs.values()), "cpu", batch=frames, runs=30, warmup=3,
                         log=lambda t: _log(out, t))
    return table, shape


def run(stage: str, cfg: ExposureTrainConfig, out: Path, genotype: list[str] | None, resume: bool,
        overrides: list[str] | None = None) -> dict:
    """Run one stage; returns a summary dict (also written to ``out/summary.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    given = LatencyTable.load(cfg.latency) if stage == "search" and cfg.latency else None  # a bad file fails here
    scenes = load_scenes("train", cfg.train_size, cfg.hdr_samples, cfg.seed)
    _log(out, f"{stage}: {len(scenes)} training scenes at {cfg.train_size} px")
    if stage == "search":
        net = ExposureNet(cfg.channels, [cfg.candidates] * 3, cfg.blend.max_gain)
        order = list(range(len(scenes)))
        rng.shuffle(order)
        cut = len(order) * 4 // 5
        train_idx, arch_idx = order[:cut], order[cut:]
        from crmef.latency import ExpectedLatency

        table, shape = latency_table(net, cfg, out, given=given)
        expected = ExpectedLatency(net, table, shape)
        arch_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999))
    else:
        if not genotype:
            raise SystemExit("train: --genotype is required")
        net = ExposureNet.from_ops(genotype, cfg.channels, cfg.blend.max_gain)
        train_idx, arch_idx = list(range(len(scenes))), []
        arch_opt = expected = None
    opt = torch.optim.Adam(net.weight_parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 1e-3)
    start = 0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        if arch_opt is not None:
            arch_opt.load_state_dict(state["arch_opt"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        _log(out, f"resumed at step {start}")
    t0 = time.time()
    for step in range(start, cfg.steps):
        net.train()
        opt.zero_grad()
        total = 0.0
        for _ in range(cfg.batch):
            sc = scenes[rng.choice(train_idx)]
            x, y = augment(cap_frames(pick_frames(sc, rng), cfg.max_frames, rng), sc.ref, rng)
            loss = scene_loss(net, x, y, cfg) / cfg.batch
            loss.backward()
            total += float(loss.detach())
        opt.step()
        sched.step()
        msg = f"step {step + 1}/{cfg.steps} loss {total:.4f}"
        if arch_opt is not None and expected is not None and step >= cfg.warmup:
            arch_opt.zero_grad()
            sc = scenes[rng.choice(arch_idx)]
            x, y = augment(cap_frames(pick_frames(sc, rng), cfg.max_frames, rng), sc.ref, rng)
            r = expected()
            (scene_loss(net, x, y, cfg) + cfg.eta * r).backward()
            arch_opt.step()
            msg += f" R {float(r):.3f} ops {net.genotype()}"
        if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
            _log(out, msg + f" ({time.time() - t0:.0f} s)")
        if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                     "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "step": step + 1}
            if arch_opt is not None:
                state["arch_opt"] = arch_opt.state_dict()
            _save(state, ckpt)
    summary: dict = {"stage": stage, "config": asdict(cfg), "steps": cfg.steps, "seconds": round(time.time() - t0),
                     "overrides": list(overrides or [])}
    if stage == "search":
        assert expected is not None
        summary.update(genotype=net.genotype(), derived_ms=expected.derived_ms(),
                       alphas={n: [round(float(a), 4) for a in torch.softmax(ch.alpha.detach(), 0)]
                               for n, ch in net.choices() if ch.alpha is not None},
                       candidates=cfg.candidates)
        (out / "genotype.json").write_text(json.dumps(net.genotype()) + "\n")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "exposure.safetensors"))
        summary.update(genotype=genotype)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _log(out, f"done: {summary.get('genotype')}")
    return summary


def with_blend(blend: BlendConfig, item: str) -> BlendConfig:
    """``blend`` with one field set from ``FIELD=VALUE`` (typed as the field).

    Raises:
        SystemExit: an unknown field.
    """
    key, _, value = item.partition("=")
    if key not in BlendConfig.__dataclass_fields__:
        raise SystemExit(f"--set blend.{item}: unknown blend field {key!r}")
    return replace(blend, **{key: type(getattr(blend, key))(value)})


def ship(run_dir: Path, weights_dir: Path | None = None, blend_overrides: list[str] | None = None) -> list[Path]:
    """Ship a trained run: ``exposure.safetensors`` + ``exposure.onnx`` + the cards ``general.json``
    and ``aligned.json`` (the same network; ``aligned`` pre-aligns every frame by optical flow).

    ``blend_overrides`` (``["detail_levels=7", "general:detail_levels=7", ...]``) change the
    cards' fixed blend settings from the training run's, for both cards or, prefixed with a
    card's name, for that one (settings chosen on validation after training, each card on its
    own targets; recorded in the cards' commands).

    The cards keep the run's configuration and genotype; measured metrics are added by
    ``benchmarks/eval_models.py --write-cards``.
    """
    import shutil

    from safetensors.torch import load_file

    from crmef.engine import WEIGHTS_DIR
    from crmef.nets.exposure import count_flops, export_onnx
    from crmef.utils import atomic_write_text

    weights_dir = weights_dir or WEIGHTS_DIR
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg_d = summary["config"]
    blend = BlendConfig(**cfg_d["blend"])
    card_blend = {"general": blend, "aligned": blend}
    for item in blend_overrides or []:
        target, _, setting = item.rpartition(":")
        if target not in ("", *card_blend):
            raise SystemExit(f"ship --set blend.{item}: unknown card {target!r} (general or aligned)")
        for name in card_blend if not target else [target]:
            card_blend[name] = with_blend(card_blend[name], setting)
    net = ExposureNet.from_ops(summary["genotype"], cfg_d["channels"], blend.max_gain)
    net.load_state_dict(load_file(str(run_dir / "exposure.safetensors")))
    shutil.copyfile(run_dir / "exposure.safetensors", weights_dir / "exposure.safetensors")
    tmp = weights_dir / "exposure.onnx.tmp"
    export_onnx(net, str(tmp))
    tmp.replace(weights_dir / "exposure.onnx")
    shape = photo_work_shape(blend)
    search = {}
    search_summary = run_dir.parent / "exp_search" / "summary.json"
    if search_summary.is_file():
        s = json.loads(search_summary.read_text())
        search = {k: s.get(k) for k in ("genotype", "derived_ms", "alphas", "candidates", "steps", "seconds",
                                         "overrides")}
        search["eta"] = s["config"]["eta"]
    out = []
    for name, prealign in (("general", None), ("aligned", "flow")):
        card_path = weights_dir / f"{name}.json"
        old = json.loads(card_path.read_text()) if card_path.is_file() else {}
        card = {
            "name": name,
            "onnx": "exposure.onnx",
            "weights": "exposure.safetensors",
            "network": "ExposureNet",
            "genotype": summary["genotype"],
            "channels": cfg_d["channels"],
            "params": sum(p.numel() for p in net.parameters()),
            "mflops_3_frames_at_work_size": round(count_flops(net, 3, shape) / 1e6, 2),
            "blend": card_blend[name].to_dict(),
            "prealign": prealign,
            "training": {
                "config": cfg_d,
                "steps": summary["steps"],
                "seconds": summary["seconds"],
                "search": search,
                "commands": [
                    "python -m crmef.exposure_train search --out runs/exp_search "
                    + " ".join(f"--set {k}" for k in search.get("overrides", [])),
                    "python -m crmef.exposure_train train --genotype runs/exp_search/genotype.json "
                    "--out runs/exp_train " + " ".join(f"--set {k}" for k in summary.get("overrides", [])),
                    "python -m crmef.exposure_train ship runs/exp_train"
                    + "".join(f" --set blend.{o}" for o in blend_overrides or []),
                ],
                "data": "training split of ../shared/data (src/crmef/data/splits/shared.json): sequences "
                        "(reference: OpenCV Mertens of the full bracket) and synthetic pairs of the HDR maps",
            },
            "metrics": old.get("metrics", {}),
        }
        atomic_write_text(card_path, json.dumps(card, indent=1) + "\n")
        out.append(card_path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("search", "train", "ship"))
    p.add_argument("run", type=Path, nargs="?", help="ship: the train stage's output folder")
    p.add_argument("--out", type=Path)
    p.add_argument("--genotype", type=Path, help="genotype.json of the search (train stage)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of ExposureTrainConfig, e.g. --set steps=60 --set eta=0.5 "
                        "--set blend.max_gain=2")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    if args.stage == "ship":
        if args.run is None:
            p.error("ship needs the train stage's output folder")
        blend_sets = [item[6:] for item in args.set if item.startswith("blend.")]
        if len(blend_sets) != len(args.set):
            p.error("ship takes only --set blend.FIELD=VALUE")
        for path in ship(args.run, blend_overrides=blend_sets):
            print(path)
        return 0
    if args.out is None:
        p.error("--out is required")
    cfg = ExposureTrainConfig()
    for item in args.set:
        key, _, value = item.partition("=")
        if key.startswith("blend."):
            cfg.blend = with_blend(cfg.blend, item[6:])
            continue
        if key not in ExposureTrainConfig.__dataclass_fields__ or key in ("blend", "candidates"):
            raise SystemExit(f"--set {item}: unknown or structured field {key!r} (blend settings: blend.<field>)")
        setattr(cfg, key, type(getattr(cfg, key))(value))
    genotype = json.loads(args.genotype.read_text()) if args.genotype else None
    try:
        run(args.stage, cfg, args.out, genotype, args.resume, overrides=args.set)
    except InputError as exc:  # a bad file named on the command line: one line, exit 2
        print(f"crmef.exposure_train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
