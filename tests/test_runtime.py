"""crmef.runtime: checkpoints with RNG state, optimiser round trip, epoch sampler, loaders, setup."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from crmef import runtime
from crmef.errors import InputError


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_checkpoint_round_trip_restores_rng_and_prunes(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    assert runtime.latest_checkpoint(root) is None
    runtime.seed_everything(3)
    for step in (1, 2, 3):
        state = {"step": step, "rng": runtime.rng_state()}
        path = runtime.save_checkpoint(root, step, {"model": {"w": torch.full((2,), float(step))}}, state, keep=2)
        expected = _draws()  # what follows the saved state
    assert path.name == "step-0000003" and runtime.latest_checkpoint(root) == path
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000002", "step-0000003"]
    ck = runtime.load_checkpoint(path, ("model",))
    assert ck["state"]["step"] == 3 and torch.equal(ck["model"]["w"], torch.full((2,), 3.0))
    runtime.seed_everything(99)
    runtime.set_rng_state(ck["state"]["rng"])
    assert _draws() == expected
    # "epoch" checkpoints (search) prune among themselves
    runtime.save_checkpoint(root, 7, {}, {"epoch": 7}, keep=1, prefix="epoch")
    assert runtime.latest_checkpoint(root).name == "epoch-0000007"
    (root / "latest").write_text("step-0000009\n")
    with pytest.raises(InputError, match="missing or incomplete"):
        runtime.latest_checkpoint(root)


def test_optimiser_state_round_trip() -> None:
    def run(steps: int, restore: tuple | None = None) -> tuple[torch.Tensor, torch.optim.Optimizer]:
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5))
        opt = torch.optim.Adam([w], lr=0.1)
        if restore is not None:
            w.data.copy_(restore[0])
            runtime.optim_from_tensors(opt, "g", restore[1], restore[2])
        for _ in range(steps):
            opt.zero_grad()
            (w ** 2).sum().backward()
            opt.step()
        return w.detach().clone(), opt

    full, _ = run(4)
    half, opt = run(2)
    tensors, meta = runtime.optim_to_tensors(opt, "g")
    assert all(k.startswith("g.") for k in tensors)
    resumed, _ = run(2, (half, tensors, meta))
    torch.testing.assert_close(resumed, full, rtol=0, atol=0)


def test_epoch_sampler_two_ranks_see_one_rank_batches() -> None:
    n, b = 12, 2
    one = list(runtime.EpochSampler(n, seed=5, world=1))
    r0 = list(runtime.EpochSampler(n, seed=5, rank=0, world=2))
    r1 = list(runtime.EpochSampler(n, seed=5, rank=1, world=2))
    assert all(e == 0 for e, _ in one + r0 + r1)
    for step in range(n // (2 * b)):
        big = {i for _, i in one[2 * b * step: 2 * b * (step + 1)]}
        small = {i for _, i in r0[b * step: b * (step + 1)] + r1[b * step: b * (step + 1)]}
        assert big == small
    s = runtime.EpochSampler(n, seed=5, rank=1, world=2)
    s.set_epoch(3, start=2)
    again = runtime.EpochSampler(n, seed=5, rank=1, world=2)
    again.set_epoch(3)
    assert list(s) == list(again)[2:] and len(s) == 4 and all(e == 3 for e, _ in s)
    assert [i for _, i in runtime.EpochSampler(4, seed=0, shuffle=False)] == [0, 1, 2, 3]


class _PidDataset(Dataset):
    epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"pid": os.getpid(), "epoch": self.epoch, "index": index}


def test_loader_workers_persist_and_see_every_epoch() -> None:
    sampler = runtime.EpochSampler(4, seed=0)
    loader = runtime.make_loader(_PidDataset(), sampler, batch_size=2, workers=1, device=torch.device("cpu"))
    assert loader.persistent_workers and not loader.pin_memory
    pids, epochs = set(), []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in loader:
            pids.update(batch["pid"].tolist())
            epochs.extend(batch["epoch"].tolist())
    assert len(pids) == 1 and os.getpid() not in pids  # one worker, started once
    assert epochs == [0] * 4 + [1] * 4 + [2] * 4
    sampler.set_epoch(5, start=2)  # a resumed mid-epoch position, after an abandoned iterator
    it = iter(loader)
    next(it)
    sampler.set_epoch(6)
    assert [b["epoch"].tolist() for b in loader] == [[6, 6], [6, 6]]


def test_setup_alone_and_prepare_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = runtime.setup("cpu")
    assert (rt.rank, rt.world, rt.distributed, rt.main) == (0, 1, False, True)
    assert rt.decide(True) and not rt.all_true(False) and rt.gather(3) == [3]
    t = [torch.ones(2)]
    rt.all_reduce_mean_(t)
    assert torch.equal(t[0], torch.ones(2))
    rt.teardown()  # owns nothing: a no-op
    rev = runtime.git_revision()
    assert rev is None or len(rev) == 40

    calls = []

    class Part:
        def prepare(self, progress: bool = False) -> None:
            calls.append(self)

    class Mixed:
        datasets = [Part(), object()]

    runtime.prepare_cache(rt, [Mixed(), None, Part()])
    assert len(calls) == 2
