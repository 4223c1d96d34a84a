"""Optical-flow pre-alignment (NetConfig.prealign) and the residual DASM (NetConfig.align_mode)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from crmef.baselines import align_to
from crmef.config import load_config
from crmef.data.datasets import DataConfig, SourceSpec, build_dataset
from crmef.data.reference import mertens_reference
from crmef.data.synth import write_demo_bracket
from crmef.errors import ConfigError
from crmef.inference import fuse, run_full
from crmef.models import load_model, save_model
from crmef.nets import FusionNet, NetConfig
from crmef.nets.prior import prealign_array, prealign_image, prior_array
from crmef.space import Genotype, get_preset
from crmef.train import ModelSpec, Trainer, TrainConfig, build_net

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "train" / "tiny.yaml"
torch.set_num_threads(1)


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture with structure at several scales, float32 (h, w, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for s in (3, 9, 27):
        n = rng.random((h // s + 2, w // s + 2, 3)).astype(np.float32)
        out += cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) / 3
    return np.clip(out, 0, 1)


def _shifted_pair(h: int = 96, w: int = 128, dx: int = 3, dy: int = -2) -> tuple[np.ndarray, np.ndarray]:
    """(under, over): the under frame is a darker copy of the scene moved by (dx, dy) pixels."""
    scene = _scene(h + 16, w + 16)
    over = np.clip(0.3 + 0.8 * scene[8 : 8 + h, 8 : 8 + w], 0, 1)
    under = 0.35 * scene[8 - dy : 8 - dy + h, 8 - dx : 8 - dx + w]
    return under.astype(np.float32), over.astype(np.float32)


def _aligned_general() -> Genotype:
    """The general genotype plus a DASM (the layout of the shipped aligned model)."""
    return replace(get_preset("general"), dasm=get_preset("aligned").dasm)


def _net(prealign: str = "flow", residual: bool = False, seed: int = 0) -> FusionNet:
    torch.manual_seed(seed)
    genotype = _aligned_general() if residual else get_preset("general")
    net = FusionNet.from_genotype(genotype, channels=4, head="retinex", prior="mertens", detail=16,
                                  prealign=prealign, align_mode="residual" if residual else "features").eval()
    assert net.blend is not None
    torch.nn.init.normal_(net.blend.net[-1].weight, std=0.3)  # a trained-looking blend
    return net


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


def test_prealign_moves_the_under_frame_onto_the_over_frame() -> None:
    under, over = _shifted_pair()
    aligned = prealign_array("flow", under, over)
    np.testing.assert_array_equal(aligned, align_to(under, over))

    def err(u: np.ndarray) -> float:  # structure mismatch in the interior, brightness-normalised
        a, b = u[10:-10, 10:-10].mean(2), over[10:-10, 10:-10].mean(2)
        a, b = (a - a.mean()) / a.std(), (b - b.mean()) / b.std()
        return float(np.abs(a - b).mean())

    assert err(aligned) < 0.4 * err(under)
    np.testing.assert_array_equal(prealign_array("none", under, over), under)
    batch = prealign_image("flow", torch.cat([_t(under)] * 2), torch.cat([_t(over)] * 2))
    np.testing.assert_allclose(batch[1].permute(1, 2, 0).numpy(), aligned, atol=1e-6)
    with pytest.raises(ValueError, match="unknown prealign"):
        prealign_array("homography", under, over)


def test_forward_prealigns_and_its_prior_is_flow_then_mertens() -> None:
    net = _net()
    under, over = _shifted_pair()
    u, o = _t(under), _t(over)
    pu, prior = net.prepare(u, o)
    assert prior is not None
    np.testing.assert_allclose(pu[0].permute(1, 2, 0).numpy(), align_to(under, over), atol=1e-6)
    want = mertens_reference([align_to(under, over), over])  # flow, then Mertens (the references' wrapper)
    np.testing.assert_allclose(prior[0].permute(1, 2, 0).numpy(), want, atol=2e-6)
    with torch.no_grad():
        # called without a prior, forward prepares; given one, the inputs are taken as prepared
        torch.testing.assert_close(net(u, o), net(pu, o, prior))
        # the raw pair with its own (ghosted) Mertens prior is not what forward computes
        ghosted = net(u, o, _t(prior_array("mertens", under, over)))
        assert (net(u, o) - ghosted).abs().max() > 1e-3
    # fuse(): pre-aligned once on the whole image; full (whole or tiled) and fast modes agree with forward
    with torch.no_grad():
        want = net(u, o)[0].permute(1, 2, 0).numpy()
    got = fuse([under, over], model=net, mode="full")
    assert np.abs(got - want).max() < 1e-4
    tiled = fuse([under, over], model=net, mode="full", tile=48)
    assert np.abs(tiled - want).max() < 1e-4
    fast = fuse([under, over], model=net, mode="fast", fast_size=64)
    assert fast.shape == under.shape and np.isfinite(fast).all()
    # run_full takes its inputs as prepared: given the raw pair it does not align them
    raw = run_full(net, under, over)
    assert np.abs(raw - want).max() > 1e-3


def test_prealign_config_errors() -> None:
    with pytest.raises(ValueError, match="prealign 'flow' needs prior 'mertens'"):
        NetConfig(prealign="flow")
    with pytest.raises(ValueError, match="prealign 'flow' needs prior 'mertens'"):
        NetConfig(prealign="flow", prior="flow_mertens")
    with pytest.raises(ValueError, match="prealign must be one of"):
        NetConfig(prealign="sift", prior="mertens")
    with pytest.raises(ValueError, match="align_mode must be one of"):
        NetConfig(align_mode="pixels")


def test_residual_dasm_starts_as_the_network_without_alignment() -> None:
    """The residual DASM's output conv starts at zero: with the general net's weights the aligned
    net is exactly the general net; once that conv is non-zero, the DASM changes the output."""
    plain = _net(prealign="flow", residual=False)
    res = _net(prealign="flow", residual=True, seed=1)
    assert res.dasm is not None and res.align_out is not None and res.to_rgb is None
    missing, unexpected = res.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("dasm.", "align_out.")) for k in missing)
    under, over = _shifted_pair(64, 64)
    u, o = _t(under), _t(over)
    with torch.no_grad():
        torch.testing.assert_close(res(u, o), plain(u, o))
        torch.nn.init.normal_(res.align_out.weight, std=0.1)
        assert (res(u, o) - plain(u, o)).abs().max() > 1e-3
    # the paper's feature mode keeps its C-channel DRM input
    feat = FusionNet.from_genotype(get_preset("aligned"), channels=4, head="retinex")
    assert feat.align_out is None and feat.to_rgb is not None


def test_card_round_trip_keeps_prealign_and_align_mode(tmp_path: Path) -> None:
    net = _net(residual=True)
    with torch.no_grad():
        torch.nn.init.normal_(net.align_out.weight, std=0.1)  # type: ignore[union-attr]
    w, card = save_model(net, tmp_path / "m", {"name": "a"})
    saved = json.loads(card.read_text())
    assert saved["prealign"] == "flow" and saved["align_mode"] == "residual"
    back = load_model(w)
    assert back.config.prealign == "flow" and back.config.align_mode == "residual"
    under, over = _shifted_pair(48, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(_t(under), _t(over)), net(_t(under), _t(over)))


def test_init_from_list_with_prefix(tmp_path: Path) -> None:
    plain, res = _net(), _net(residual=True, seed=3)
    a, b = tmp_path / "general.safetensors", tmp_path / "aligned.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(a))
    save_file({k: v.contiguous() for k, v in res.state_dict().items()}, str(b))
    geno = tmp_path / "g.json"
    geno.write_text(json.dumps(_aligned_general().to_dict()))
    spec = ModelSpec(genotype=str(geno), channels=4, head="retinex", prior="mertens", detail=16, prealign="flow",
                     align_mode="residual", init_from=[str(a), {"path": str(b), "prefix": "dasm."}])
    net = build_net(spec)
    own = net.state_dict()
    for k, v in own.items():
        if k.startswith("dasm."):
            torch.testing.assert_close(v, res.state_dict()[k])
        elif k in plain.state_dict():
            torch.testing.assert_close(v, plain.state_dict()[k])
    with pytest.raises(ConfigError, match="path or"):
        build_net(ModelSpec(genotype=str(geno), channels=4, init_from=[{"file": str(a)}]))
    with pytest.raises(ConfigError, match="under 'nothing.'"):
        build_net(ModelSpec(genotype=str(geno), channels=4, init_from=[{"path": str(a), "prefix": "nothing."}]))


def test_dataset_prealigns_before_the_prior(tmp_path: Path) -> None:
    root = tmp_path / "brackets"
    write_demo_bracket(root / "s0", [-2, 0, 2], size=(96, 128), seed=0)
    common = {"sources": [SourceSpec(str(root))], "cache_dir": str(tmp_path / "cache"), "split": "all",
              "augment": False}
    with pytest.raises(ConfigError, match="needs data.prior"):
        DataConfig(crop=48, prealign="flow", **common)
    with pytest.raises(ConfigError, match="prealign must be one of"):
        DataConfig(crop=48, prior="mertens", prealign="orb", **common)
    with pytest.raises(ConfigError, match="prealign: flow"):
        DataConfig(crop=48, prior="mertens", misalign=True, **common)
    # misaligned crops: the under crop is pre-aligned, the prior is the Mertens fusion of the result
    plain = build_dataset(DataConfig(crop=48, prior="flow_mertens", misalign=True, **common))[0]
    pre = build_dataset(DataConfig(crop=48, prior="mertens", misalign=True, prealign="flow", **common))[0]
    np.testing.assert_array_equal(pre["over"].numpy(), plain["over"].numpy())
    want_u = align_to(plain["under"].permute(1, 2, 0).numpy(), plain["over"].permute(1, 2, 0).numpy())
    np.testing.assert_allclose(pre["under"].permute(1, 2, 0).numpy(), want_u, atol=1e-6)
    want_p = prior_array("mertens", want_u, pre["over"].permute(1, 2, 0).numpy())
    np.testing.assert_allclose(pre["prior"].permute(1, 2, 0).numpy(), want_p, atol=1e-5)
    # whole-frame pairs: pre-aligned whole frame and its prior, cached as uint8
    full = build_dataset(DataConfig(crop=None, prior="mertens", prealign="flow", **common))[0]
    raw = build_dataset(DataConfig(crop=None, prior="mertens", **common))[0]
    u8 = raw["under"].permute(1, 2, 0).numpy()
    o8 = raw["over"].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(full["under"].permute(1, 2, 0).numpy(), align_to(u8, o8), atol=0.5 / 255 + 1e-6)
    assert np.abs(full["prior"].numpy() - raw["prior"].numpy()).max() > 0  # a different (pre-aligned) prior


def _residual_overrides(tmp_path: Path) -> list[str]:
    """``--set`` overrides: tiny.yaml with pre-alignment and a residual DASM on two misaligned
    synthetic brackets, 2 steps."""
    root = tmp_path / "brackets"
    for i in range(2):
        write_demo_bracket(root / f"s{i}", [-2, 0, 2], size=(72, 96), seed=i)
    src = f"[{{root: '{root}', kind: brackets}}]"
    cache = tmp_path / "c"
    sets = [f"data.sources={src}", f"val.sources={src}", "data.split=all", "val.split=all",
            f"data.cache_dir='{cache}'", f"val.cache_dir='{cache}'", "model.genotype=aligned", "model.head=retinex",
            "model.prior=mertens", "model.prealign=flow", "model.align_mode=residual", "data.misalign=true",
            "val.misalign=true", "steps=2", "val_every=2"]
    return sets


def test_trainer_with_prealign_and_residual_dasm(tmp_path: Path) -> None:
    sets = _residual_overrides(tmp_path)
    cfg = load_config(TrainConfig, TINY, sets)
    assert cfg.data.prealign == "flow" and cfg.val is not None and cfg.val.prealign == "flow"
    result = Trainer(cfg, tmp_path / "run", progress=False).run()
    net = load_model(result.model_path)
    assert net.config.prealign == "flow" and net.config.align_mode == "residual" and net.align_out is not None
    with pytest.raises(ConfigError, match="needs prior 'mertens'"):
        Trainer(load_config(TrainConfig, TINY, [*sets, "model.prior=flow_mertens"]), tmp_path / "r2", progress=False)


def test_train_only_keeps_the_rest_fixed(tmp_path: Path) -> None:
    sets = [*_residual_overrides(tmp_path), "model.train_only=[dasm., align_out.]"]
    cfg = load_config(TrainConfig, TINY, sets)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    trainer.run()
    after = trainer.net.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("dasm.", "align_out.")) for k in moved)
    assert "align_out.weight" in moved
    with pytest.raises(ConfigError, match="no parameter starts with 'dsam.'"):
        Trainer(load_config(TrainConfig, TINY, [*sets[:-1], "model.train_only=[dsam.]"]), tmp_path / "r2", progress=False)


def test_net_options_reach_cards_and_training_configs(tmp_path: Path) -> None:
    """Every NetConfig option a derived net takes is written to and read from its card, and every
    one but eps is a training-config model option (one list, crmef.nets.fusion.NET_OPTIONS)."""
    from dataclasses import fields

    from crmef.nets.fusion import NET_OPTIONS

    assert set(NET_OPTIONS) - {"eps"} <= {f.name for f in fields(ModelSpec)}
    net = _net(residual=True)
    _, card = save_model(net, tmp_path / "m", {"name": "a"})
    saved = json.loads(card.read_text())
    assert all(saved[k] == getattr(net.config, k) for k in NET_OPTIONS)
    assert all(getattr(load_model(tmp_path / "m.safetensors").config, k) == saved[k] for k in NET_OPTIONS)
    with pytest.raises(ValueError, match="unknown network option"):
        FusionNet.from_genotype(get_preset("general"), channels=4, detial=8)
