"""Data-parallel training on CPU with gloo (2 ranks), and the paper configs at a tiny width.

One spawned pair of ranks (a module fixture: one process start for all cases, one process group)
runs, in order:

- ``stop``: ``max_minutes`` with rank 1's clock running 1000x fast. Before the fix each rank
  decided alone, so rank 1 entered the checkpoint's all-gather while rank 0 was in the next
  step's all-reduce and both waited forever; now rank 0's decision is broadcast every step.
  Then both ranks resume the run to its end.
- ``train_only``: ``model.train_only=[drm.]`` under DDP (crashed at step 2 with "Expected to have
  finished reduction in the prior iteration" when DDP was built before the freezing).
- ``equal``: 2 ranks × batch 2 for two epochs, without the critic, for comparison with one rank
  × batch 4 in the test process.

Every rank runs under a ``faulthandler`` watchdog and a 60 s gloo timeout, so a hang fails the
test (with the ranks' stacks) instead of blocking CI. C = 4, 32×32 crops, one torch thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crmef.config import load_config
from crmef.search import SearchConfig, run_search
from crmef.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "train" / "tiny.yaml"
PAPER_TRAIN = ROOT / "configs" / "train" / "paper.yaml"
PAPER_SEARCH = ROOT / "configs" / "search" / "paper.yaml"

WORKER = textwrap.dedent(
    """
    import datetime, faulthandler, json, os, sys, time
    import torch
    import torch.multiprocessing as mp

    def worker(rank, world, port, hdr, out):
        faulthandler.dump_traceback_later(100, exit=True)  # a hang fails loudly, never blocks CI
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
        import torch.distributed as dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
        from crmef.config import load_config
        from crmef.train import Trainer, TrainConfig, train
        data = [f"data.sources=[{{root: '{hdr}', kind: hdr_synth}}]", "data.split=all", "val=null"]
        res = {}

        def cfg(*sets):
            return load_config(TrainConfig, sys.argv[1], [*data, *sets])

        # stop: rank 1's clock runs 1000x fast; only rank 0's may decide
        if rank == 1:
            t0 = time.monotonic()
            Trainer._clock = staticmethod(lambda: t0 + 1000 * (time.monotonic() - t0))
        r = train(cfg("steps=400", "max_minutes=0.04", "data.samples_per_epoch=16"), f"{out}/stop", progress=False)
        res["stop"] = [r.step, r.stopped_early]
        Trainer._clock = staticmethod(time.monotonic)
        r = train(cfg(f"steps={r.step + 2}", "data.samples_per_epoch=16"), f"{out}/stop", resume=True, progress=False)
        res["resumed"] = [r.step, r.stopped_early]

        # train_only under DDP (the critic is on from step 3: gan_start=2 in tiny.yaml)
        tr = Trainer(cfg("steps=3", "model.train_only=[drm.]"), f"{out}/only", progress=False)
        before = {k: v.clone() for k, v in tr.net.state_dict().items()}
        tr.run()
        after = tr.net.state_dict()
        res["frozen_same"] = all(torch.equal(before[k], after[k]) for k in before if not k.startswith("drm."))
        res["trained_moved"] = any(not torch.equal(before[k], after[k]) for k in before if k.startswith("drm."))
        res["only_sums"] = {k: float(v.double().sum()) for k, v in after.items()}

        # equal: 2 ranks x batch 2, two epochs of 8 samples, no critic
        train(cfg("epochs=2", "batch_size=2", "loss.adversarial=0", "data.samples_per_epoch=8"), f"{out}/equal", progress=False)

        with open(f"{out}/rank{rank}.json", "w") as fh:
            json.dump(res, fh)
        dist.destroy_process_group()

    if __name__ == "__main__":
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        mp.spawn(worker, args=(2, port, sys.argv[2], sys.argv[3]), nprocs=2, join=True)
    """
)


def _hdr_maps(root: Path) -> Path:
    import cv2
    import numpy as np

    from crmef.data.synth import synthetic_radiance

    root.mkdir(parents=True)
    rad = synthetic_radiance(128, 160, np.random.default_rng(0))
    assert cv2.imwrite(str(root / "map0.hdr"), np.ascontiguousarray(rad[..., ::-1]))
    return root


@pytest.fixture(scope="module")
def hdr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _hdr_maps(tmp_path_factory.mktemp("maps") / "hdr")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, hdr: Path) -> dict:
    """Run the 2-rank cases once; returns ``{"dir", "hdr", "ranks": [rank 0's, rank 1's results]}``."""
    base = tmp_path_factory.mktemp("ddp")
    script = base / "ddp_train.py"
    script.write_text(WORKER)
    out = base / "runs"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(TINY), str(hdr), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"dir": out, "hdr": hdr, "ranks": ranks}


@pytest.mark.timeout(240)
def test_max_minutes_stops_every_rank_at_one_step_and_resumes(two_ranks: dict) -> None:
    (step0, early0), (step1, early1) = (r["stop"] for r in two_ranks["ranks"])
    assert early0 and early1 and step0 == step1 and 0 < step0 < 400
    latest = (two_ranks["dir"] / "stop" / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{step0 + 2:07d}"
    assert [r["resumed"] for r in two_ranks["ranks"]] == [[step0 + 2, False]] * 2


@pytest.mark.timeout(240)
def test_train_only_under_ddp(two_ranks: dict) -> None:
    r0, r1 = two_ranks["ranks"]
    assert r0["frozen_same"] and r1["frozen_same"]
    assert r0["trained_moved"] and r1["trained_moved"]
    assert r0["only_sums"] == r1["only_sums"]  # the ranks hold the same weights


@pytest.mark.timeout(240)
def test_two_ranks_equal_one_rank_with_the_doubled_batch(two_ranks: dict, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    hdr = two_ranks["hdr"]
    sets = [f"data.sources=[{{root: '{hdr}', kind: hdr_synth}}]", "data.split=all", "val=null",
            "epochs=2", "batch_size=4", "loss.adversarial=0", "data.samples_per_epoch=8"]
    one = train(load_config(TrainConfig, TINY, sets), tmp_path / "one", progress=False)
    assert one.step == 4
    a = load_file(str(one.model_path))
    b = load_file(str(two_ranks["dir"] / "equal" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    # the weights did move (so equality is not trivially true)
    from crmef.train import build_net

    torch.manual_seed(0)
    init = build_net(load_config(TrainConfig, TINY, sets).model).state_dict()
    assert any(not torch.allclose(init[k], a[k]) for k in a)


def test_losses_run_in_float32_outside_autocast(hdr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``amp`` the generator's forward pass runs under bf16 autocast, the critic and every
    loss in float32 outside it (forced on CPU here; on CUDA it is the default)."""
    import crmef.train as T

    torch.set_num_threads(1)
    sets = [f"data.sources=[{{root: '{hdr}', kind: hdr_synth}}]", "data.split=all", "val=null"]
    trainer = T.Trainer(load_config(TrainConfig, TINY, sets), tmp_path / "run", progress=False)
    trainer.amp = True
    trainer.step = trainer.cfg.gan_start  # the critic is on
    seen: dict[str, object] = {}
    trainer.net.register_forward_hook(lambda m, i, o: seen.update(net=torch.is_autocast_enabled("cpu")))
    real_loss, real_critic = trainer.criterion, T.critic_loss

    def criterion(y, ref, critic=None, sources=None):
        seen.update(loss=(torch.is_autocast_enabled("cpu"), y.dtype))
        return real_loss(y, ref, critic, sources=sources)

    def critic_loss(critic, ref, y, gp):
        seen.update(critic=(torch.is_autocast_enabled("cpu"), y.dtype))
        return real_critic(critic, ref, y, gp)

    trainer.criterion = criterion  # type: ignore[assignment]
    monkeypatch.setattr(T, "critic_loss", critic_loss)
    trainer.train_step(next(iter(trainer.loader)))
    assert seen == {"net": True, "loss": (False, torch.float32), "critic": (False, torch.float32)}


# ----------------------------------------------------------------------------- paper configs


def _sice(root: Path) -> Path:
    """A SICE-layout folder (Dataset_Part1/<n>/*.JPG, Dataset_Part1/Label/<n>.JPG) of synthetic
    scenes, named so that the stable hash split puts some in train and some in val."""
    import cv2
    import numpy as np

    from crmef.data.splitting import hash_split

    part = root / "Dataset_Part1"
    (part / "Label").mkdir(parents=True)
    rng = np.random.default_rng(0)
    want = {"train": 2, "val": 1}
    n = 0
    while any(want.values()):
        n += 1
        split = hash_split(f"Dataset_Part1/{n}")
        if want.get(split, 0) == 0:
            continue
        want[split] -= 1
        scene = rng.uniform(0.05, 0.95, (6, 8, 3))
        ref = cv2.resize(scene, (80, 64), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        (part / str(n)).mkdir()
        for i, gain in enumerate((0.25, 1.0, 3.0), 1):
            cv2.imwrite(str(part / str(n) / f"{i}.JPG"), (255 * (ref * gain).clip(0, 1)).astype(np.uint8))
        cv2.imwrite(str(part / "Label" / f"{n}.JPG"), (255 * ref).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def sice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _sice(tmp_path_factory.mktemp("data") / "SICE")


def test_paper_configs_state_the_paper() -> None:
    t = load_config(TrainConfig, PAPER_TRAIN)
    assert (t.model.genotype, t.model.channels, t.data.crop, t.epochs) == ("paper_general", 64, 128, 2000)
    assert (t.loss.gradient, t.loss.adversarial, t.optim.lr, t.optim.lr_min) == (0.75, 0.05, 1e-4, 1e-10)
    assert t.data.augment and [s.kind for s in t.data.sources] == ["sice"]
    s = load_config(SearchConfig, PAPER_SEARCH)
    s.validate()
    assert s.model.align and s.model.channels == 64 and s.data.crop == 128
    assert (s.search.warmup_epochs, s.search.epochs, s.search.eta) == (10, 300, 0.5)
    assert (s.search.w_lr, s.search.alpha_lr, s.latency.batch, s.latency.runs) == (3e-4, 1e-4, 16, 1000)
    assert [x.kind for x in s.data.data.sources] == ["sice"]


@pytest.mark.timeout(120)
def test_paper_train_config_runs_two_steps_at_tiny_width(sice: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sets = [f"data.sources=[{{root: '{sice}', kind: sice}}]", f"val.sources=[{{root: '{sice}', kind: sice}}]",
            f"data.cache_dir='{tmp_path / 'cache'}'", f"val.cache_dir='{tmp_path / 'cache'}'",
            "model.channels=4", "critic.channels=4", "critic.layers=2", "data.crop=32", "val.crop=48",
            "epochs=null", "steps=2", "batch_size=2", "workers=0", "device=cpu", "tensorboard=false"]
    cfg = load_config(TrainConfig, PAPER_TRAIN, sets)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2 and result.best is not None and result.model_path.is_file()
    assert (tmp_path / "cache").is_dir()  # rank 0 prepared the decode cache


@pytest.mark.timeout(120)
def test_paper_search_config_runs_two_steps_at_tiny_width(sice: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sets = [f"data.data.sources=[{{root: '{sice}', kind: sice}}]", f"data.data.cache_dir='{tmp_path / 'cache'}'",
            "model.channels=4", "data.crop=32", "data.batch=1",
            "data.workers=0", "search.warmup_epochs=1", "search.epochs=1", "search.steps_per_epoch=1",
            "latency.batch=1", "latency.runs=1", "latency.warmup=0", "derive.val_batches=1",
            "derive.latency_size=32", "derive.latency_runs=1", "device=cpu", "log_every=0"]
    res = run_search(load_config(SearchConfig, PAPER_SEARCH, sets), tmp_path / "run", log=lambda m: None)
    assert res.genotype.dasm is not None  # the alignment was searched
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "epoch-0000002"
