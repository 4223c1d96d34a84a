"""``crmef train``: train a derived fusion network (L1 + Sobel gradient + WGAN-GP)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a fusion network from a YAML config",
        description="Train a derived fusion network with l_Int + 0.75 l_Gra + 0.05 l_Dis (WGAN-GP). "
        "Checkpoints go to OUT/checkpoints (atomic); --resume continues exactly. "
        "Run data-parallel with: torchrun --nproc_per_node N -m crmef.cli train ...",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="training config YAML (see configs/train/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set steps=2000 --set data.crop=96 (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, TensorBoard, model)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crmef.config import load_config
    from crmef.train import TrainConfig, train

    cfg = load_config(TrainConfig, args.config, args.overrides)
    result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    state = "stopped early (resume to continue)" if result.stopped_early else "done"
    best = f"; best val PSNR {result.best['psnr']:.2f} dB at step {int(result.best['step'])}" if result.best else ""
    print(f"{state}: step {result.step}, {result.wall_time_s / 60:.1f} min, model {result.model_path}{best}")
    return 0
