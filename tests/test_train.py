"""Trainer: exact resume after SIGKILL, atomic checkpoints, NaN guard, config and data errors.

All runs use configs/train/tiny.yaml (C=4, 32x32 crops of synthetic HDR brackets): seconds each.
The radiance maps are generated here (procedural, no files needed), so these tests also run in a
clone without ``../shared``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crmef.config import load_config
from crmef.errors import ConfigError
from crmef.train import NonFiniteLossError, Trainer, TrainConfig, latest_checkpoint, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="module")
def hdr_maps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two procedural linear radiance maps (Radiance .hdr)."""
    import cv2
    import numpy as np

    from crmef.data.synth import synthetic_radiance

    root = tmp_path_factory.mktemp("hdr")
    rng = np.random.default_rng(0)
    for i in range(2):
        rad = synthetic_radiance(256, 384, rng)
        assert cv2.imwrite(str(root / f"map{i}.hdr"), np.ascontiguousarray(rad[..., ::-1]))
    return root


def _overrides(hdr: Path, **extra: object) -> list[str]:
    out = [
        f"data.sources=[{{root: '{hdr}', kind: hdr_synth}}]",
        f"val.sources=[{{root: '{hdr}', kind: hdr_synth}}]",
        "data.split=all",
        "val.split=all",
    ]
    return out + [f"{k}={v}" for k, v in extra.items()]


def _cfg(hdr: Path, **extra: object) -> TrainConfig:
    return load_config(TrainConfig, TINY, _overrides(hdr, **extra))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_sigkill_and_resume_equals_uninterrupted(hdr_maps: Path, tmp_path: Path) -> None:
    steps = 40
    extra = {"steps": steps, "val": "null"}
    ref = train(_cfg(hdr_maps, **extra), tmp_path / "ref", progress=False)
    assert ref.step == steps

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "crmef.cli", "train", "--config", str(TINY), "--out", str(out), "--no-progress"]
    for o in _overrides(hdr_maps, **extra):
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while latest_checkpoint(out) is None:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "trainer exited early"
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((latest_checkpoint(out) / "state.json").read_text())["step"]
    assert 0 < killed_at < steps, f"the run was not killed mid-way (latest checkpoint at step {killed_at})"

    resumed = train(_cfg(hdr_maps, **extra), out, resume=True, progress=False)
    assert resumed.step == steps
    _assert_same(_weights(ref.model_path), _weights(resumed.model_path))
    final_ref = load_checkpoint(latest_checkpoint(tmp_path / "ref"))
    final_res = load_checkpoint(latest_checkpoint(out))
    _assert_same(final_ref["critic"], final_res["critic"])
    _assert_same(final_ref["optim"], final_res["optim"])


KILL_IN_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import crmef.runtime as R
    import crmef.train as T
    from crmef.config import load_config

    real_save = R.save_file
    def save_then_die(tensors, path):
        real_save(tensors, path)
        if "step-0000004" in str(path) and "optim" in str(path):
            with open(path, "r+b") as fh:   # half-written file, then SIGKILL mid-checkpoint
                fh.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    R.save_file = save_then_die
    cfg = load_config(T.TrainConfig, sys.argv[1], sys.argv[3:])
    T.train(cfg, sys.argv[2], progress=False)
    """
)


def test_kill_during_save_keeps_previous_checkpoint(hdr_maps: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = tmp_path / "kill_in_save.py"
    script.write_text(KILL_IN_SAVE)
    args = [sys.executable, str(script), str(TINY), str(out), *_overrides(hdr_maps, steps=8, val="null")]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step-0000002"
    loaded = load_checkpoint(ckpt)
    assert loaded["state"]["step"] == 2 and loaded["model"]
    assert any(p.name.startswith(".step-0000004") for p in (out / "checkpoints").iterdir())  # the broken one
    done = train(_cfg(hdr_maps, steps=8, val="null"), out, resume=True, progress=False)
    assert done.step == 8


def test_nan_loss_stops_and_keeps_last_good_checkpoint(hdr_maps: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(hdr_maps, steps=8, val="null"), tmp_path / "run", progress=False)
    real = trainer.criterion

    def nan_from_step_5(y: torch.Tensor, ref: torch.Tensor, critic: object = None,
                        sources: object = None) -> tuple[torch.Tensor, dict]:
        total, parts = real(y, ref, critic, sources=sources)
        return (total * float("nan"), parts) if trainer.step >= 4 else (total, parts)

    trainer.criterion = nan_from_step_5  # type: ignore[assignment]
    with pytest.raises(NonFiniteLossError, match=r"generator loss is nan at step 5.*last good checkpoint is .*step-0000004"):
        trainer.run()
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_cli_nan_message(hdr_maps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crmef.cli import main

    # A learning rate of 1e30 blows the weights up to inf/NaN within a few steps.
    args = ["train", "--config", str(TINY), "--out", str(tmp_path / "run"), "--no-progress"]
    for o in _overrides(hdr_maps, steps=8, val="null", **{"optim.lr": 1e30, "optim.lr_min": 1e29}):
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "crmef: error: training stopped:" in err and "loss is nan" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"data.crop": "null"}, "data.crop must be set"),
        ({"data.crop": 4}, "crop"),
        ({"data.crop": 600}, "smaller than the crop 600x600"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"model.genotype": "nosuch"}, "unknown preset 'nosuch'"),
        ({"steps": "many"}, "steps: expected an integer"),
    ],
)
def test_bad_config_errors(hdr_maps: Path, tmp_path: Path, extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Trainer(_cfg(hdr_maps, **extra), tmp_path / "run", progress=False)


def test_missing_reference_folder(hdr_maps: Path, tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    for sub in ("trainA", "trainB"):  # no trainC: the ground-truth folder is missing
        (root / sub).mkdir(parents=True)
    cfg = _cfg(hdr_maps, **{"data.sources": f"[{{root: '{root}', kind: paired}}]"})
    with pytest.raises(ConfigError, match="trainC"):
        Trainer(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="does not exist"):
        Trainer(_cfg(hdr_maps, **{"data.sources": f"[{{root: '{tmp_path / 'nope'}'}}]"}), tmp_path / "r2", progress=False)


def test_resume_guards(hdr_maps: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(_cfg(hdr_maps, steps=2, val="null"), tmp_path / "run", resume=True, progress=False)
    train(_cfg(hdr_maps, steps=2, val="null"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_cfg(hdr_maps, steps=2, val="null"), tmp_path / "run", progress=False)


def test_loader_workers_after_opencv_thread_pool(hdr_maps: Path, tmp_path: Path) -> None:
    # Regression: a worker_init calling cv2.setNumThreads in a forked child whose parent had
    # already run OpenCV's thread pool (e.g. building references) waited forever.
    script = textwrap.dedent(f"""
        import cv2, numpy as np
        cv2.setNumThreads(2)
        cv2.GaussianBlur(np.zeros((2000, 2000, 3), np.float32), (31, 31), 5)
        from crmef.config import load_config
        from crmef.train import TrainConfig, train
        cfg = load_config(TrainConfig, {str(TINY)!r}, {_overrides(hdr_maps, steps=2, workers=1, val='null')!r})
        print("steps", train(cfg, {str(tmp_path / 'w')!r}, progress=False).step)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps 2" in done.stdout


def _aligned_general():
    """The published general genotype plus the published DASM."""
    from dataclasses import replace

    from crmef.space import get_preset

    return replace(get_preset("paper_general"), dasm=get_preset("paper_aligned").dasm)


def test_init_from_list_with_prefix(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from crmef.nets import FusionNet
    from crmef.space import get_preset
    from crmef.train import ModelSpec, build_net

    torch.manual_seed(0)
    plain = FusionNet.from_genotype(get_preset("paper_general"), channels=4)
    torch.manual_seed(3)
    aligned = FusionNet.from_genotype(_aligned_general(), channels=4, head="retinex")
    a, b = tmp_path / "general.safetensors", tmp_path / "aligned.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(a))
    save_file({k: v.contiguous() for k, v in aligned.state_dict().items()}, str(b))
    geno = tmp_path / "g.json"
    geno.write_text(json.dumps(_aligned_general().to_dict()))
    net = build_net(ModelSpec(genotype=str(geno), channels=4, head="retinex",
                              init_from=[str(a), {"path": str(b), "prefix": "dasm."}]))
    first = plain.state_dict()
    taken = 0
    for k, v in net.state_dict().items():
        if k.startswith("dasm."):
            torch.testing.assert_close(v, aligned.state_dict()[k])
        elif k in first and first[k].shape == v.shape:  # the DRM stem differs: 3 channels in without DASM
            torch.testing.assert_close(v, first[k])
            taken += 1
    assert taken > 0
    with pytest.raises(ConfigError, match="path or"):
        build_net(ModelSpec(genotype=str(geno), channels=4, init_from=[{"file": str(a)}]))
    with pytest.raises(ConfigError, match="under 'nothing.'"):
        build_net(ModelSpec(genotype=str(geno), channels=4, init_from=[{"path": str(a), "prefix": "nothing."}]))


def test_train_only_keeps_the_rest_fixed(hdr_maps: Path, tmp_path: Path) -> None:
    cfg = _cfg(hdr_maps, steps=2, val="null", **{"model.genotype": "paper_aligned", "model.train_only": "[dasm.]"})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    trainer.run()
    after = trainer.net.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("dasm.") for k in moved)
    with pytest.raises(ConfigError, match="no parameter starts with 'dsam.'"):
        Trainer(_cfg(hdr_maps, **{"model.train_only": "[dsam.]"}), tmp_path / "r2", progress=False)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_configs_load(path: Path) -> None:
    """Every committed training config holds only keys the trainer knows (none of a removed option)."""
    cfg = load_config(TrainConfig, path)
    assert cfg.model.channels >= 1
