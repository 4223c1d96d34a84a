"""The hardware-aware search: tiny end-to-end run, reproducibility, DDP, config errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from crmef.cli import main
from crmef.config import load_config
from crmef.errors import ConfigError
from crmef.search import SearchConfig, inherit_weights, run_search
from crmef.nets import FusionNet, NetConfig
from crmef.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "search" / "tiny.yaml"
OUTPUTS = ("config.yaml", "alphas.json", "genotype.json", "alphas.png", "derived.json", "latency_table.json", "checkpoints/latest")


def test_tiny_search_writes_every_output_quickly(tmp_path, capsys):
    t0 = time.time()
    assert main(["search", "--config", str(TINY), "--out", str(tmp_path / "run")]) == 0
    elapsed = time.time() - t0
    assert elapsed < 30, f"tiny search took {elapsed:.1f} s"
    run = tmp_path / "run"
    for name in OUTPUTS:
        assert (run / name).is_file(), name
    alphas = json.loads((run / "alphas.json").read_text())
    assert [e["epoch"] for e in alphas["epochs"]] == [1, 2, 3]
    slot, weights = next(iter(alphas["epochs"][-1]["alphas"].items()))
    assert len(weights) == len(alphas["candidates"][slot]) and sum(weights) == pytest.approx(1.0, abs=1e-4)
    derived = json.loads((run / "derived.json").read_text())
    for key in ("params", "gflops", "latency_s", "val_l1", "val_l1_inherited", "genotype", "table_ms_derived"):
        assert key in derived
    assert derived["params"] > 0 and derived["latency_s"] > 0 and 0 <= derived["val_l1"] <= 1
    from crmef.space import Genotype

    assert Genotype.load(run / "genotype.json").to_dict() == derived["genotype"]
    resolved = load_config(SearchConfig, run / "config.yaml")
    assert resolved.model.channels == 4 and resolved.search.eta == 0.5


def test_same_seed_same_result(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(SearchConfig, TINY, ["derive.finetune_steps=0", "derive.latency_runs=1"])
    a = run_search(cfg, tmp_path / "a", log=lambda m: None)
    cfg = load_config(SearchConfig, TINY, ["derive.finetune_steps=0", "derive.latency_runs=1",
                                           f"latency.table={tmp_path / 'a' / 'latency_table.json'}"])
    b = run_search(cfg, tmp_path / "b", log=lambda m: None)
    assert a.alphas == b.alphas and a.genotype == b.genotype
    assert a.derived["val_l1"] == b.derived["val_l1"]


def test_eta_pushes_alpha_toward_fast_ops(tmp_path):
    """With a large η the latency term dominates: the derived net is (nearly) the fastest in the table.

    Adam moves every op faster than its slot's mean at the same early rate, so ops of almost
    equal latency may tie; hence "within 10 % of the fastest", far below the uniform mix.
    """
    cfg = load_config(SearchConfig, TINY, ["search.eta=50", "search.alpha_lr=0.2", "search.epochs=4",
                                           "derive.finetune_steps=0", "derive.latency_runs=1"])
    d = run_search(cfg, tmp_path / "r", log=lambda m: None).derived
    assert d["table_ms_derived"] <= 1.1 * d["table_ms_fastest"]
    assert d["table_ms_derived"] < 0.6 * d["table_ms_uniform"]
    cfg = load_config(SearchConfig, TINY, ["search.eta=0", "search.alpha_lr=0.2", "search.epochs=4",
                                           "derive.finetune_steps=0", "derive.latency_runs=1",
                                           f"latency.table={tmp_path / 'r' / 'latency_table.json'}"])
    d0 = run_search(cfg, tmp_path / "r0", log=lambda m: None).derived
    assert d0["table_ms_derived"] > d["table_ms_derived"]


def test_inherit_weights_copies_chosen_ops():
    space = SearchSpace(srsm=("conv_1", "conv_3"), drm=("conv_3", "resconv_3"))
    sup = FusionNet.supernet(NetConfig(channels=4, cascades=1, drm_blocks=1, space=space))
    with torch.no_grad():
        for a in sup.arch_parameters():
            a.copy_(torch.tensor([0.0, 1.0]))
    geno = sup.derive()
    der = FusionNet.from_genotype(geno, channels=4, cascades=1)
    inherit_weights(der, sup)
    torch.testing.assert_close(der.drm.blocks[0].ops[0].conv.weight, sup.drm.blocks[0].ops[1].conv.weight)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.eta=-0.5", "search.eta"),
        ("model.drm_ops=[conv_3, conv_9]", "unknown op 'conv_9'"),
        ("model.srsm_ops=[]", "candidate list is empty"),
        ("model.drm_ops=[deform_3]", "unknown op 'deform_3' for a drm slot"),
        ("data.synthetic=false", "sources is empty"),
        ("search.nope=1", "unknown config key 'search.nope'"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["search", "--config", str(TINY), "--set", override, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crmef: error:") and message in err
    assert not out.exists()


def test_missing_data_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    sets = ["data.synthetic=false", f"data.data.sources=[{{root: {tmp_path / 'nowhere'}, kind: brackets}}]"]
    args = ["search", "--config", str(TINY), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "does not exist" in err
    assert not out.exists()
    with pytest.raises(ConfigError):
        run_search(load_config(SearchConfig, TINY, sets), out)


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.multiprocessing as mp

    def worker(rank, world, out, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
        from crmef.config import load_config
        from crmef.search import SearchConfig, run_search
        import torch.distributed as dist
        cfg = load_config(SearchConfig, sys.argv[1], ["derive.finetune_steps=0", "derive.latency_runs=1"])
        res = run_search(cfg, out, log=lambda m: None)
        net_alphas = res.alphas
        with open(os.path.join(out, f"alphas_rank{rank}.json"), "w") as fh:
            json.dump({"alphas": net_alphas, "genotype": res.genotype.to_dict()}, fh)
        assert not dist.is_initialized()  # run_search created the process group and destroyed it

    if __name__ == "__main__":
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        mp.spawn(worker, args=(2, sys.argv[2], port), nprocs=2, join=True)
    """
)


def test_two_process_ddp_gives_identical_alphas(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(TINY), str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "alphas_rank0.json").read_text())
    r1 = json.loads((out / "alphas_rank1.json").read_text())
    assert r0["alphas"] == r1["alphas"] and r0["genotype"] == r1["genotype"]
    # α actually moved away from its initialisation (so "identical" is not trivially true).
    first = json.loads((out / "alphas.json").read_text())["epochs"][0]["alphas"]
    assert first != r0["alphas"]
    assert json.loads((out / "derived.json").read_text())["world_size"] == 2


class _Stop(Exception):
    pass


def test_resume_after_a_crash_equals_uninterrupted(tmp_path):
    """A search killed after epoch 2 (its checkpoint written) and resumed ends with the α, the
    weights and the history of an uninterrupted one: RNG state, optimisers, scheduler and the data
    position all come back."""
    torch.set_num_threads(1)
    sets = ["derive.finetune_steps=0", "derive.latency_runs=1", "search.epochs=3"]
    a = run_search(load_config(SearchConfig, TINY, sets), tmp_path / "a", log=lambda m: None)
    sets.append(f"latency.table={tmp_path / 'a' / 'latency_table.json'}")

    def crash_after_epoch_2(msg: str) -> None:
        if msg.startswith("epoch 2/4 ["):
            raise _Stop(msg)

    with pytest.raises(_Stop):
        run_search(load_config(SearchConfig, TINY, sets), tmp_path / "b", log=crash_after_epoch_2)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "epoch-0000002"
    b = run_search(load_config(SearchConfig, TINY, sets), tmp_path / "b", resume=True, log=lambda m: None)
    assert a.alphas == b.alphas and a.genotype == b.genotype
    ha = json.loads((tmp_path / "a" / "alphas.json").read_text())
    hb = json.loads((tmp_path / "b" / "alphas.json").read_text())
    assert ha == hb
