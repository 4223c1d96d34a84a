"""Datasets and loaders: sample format, reference cache, sources, splits, bad configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import OpenEXR
import pytest
import torch

import crmef.data.reference as reference
from crmef.data.datasets import DataConfig, MixedDataset, PairDataset, SourceSpec, SynthDataset, build_dataset, build_loader
from crmef.data.misalign import MisalignConfig
from crmef.data.splitting import SHARED_SPLIT_FILE, hash_split, load_split, make_shared_split
from crmef.data.synth import synthetic_radiance, write_demo_bracket
from crmef.errors import ConfigError
from crmef.imageio import read_image, write_image

torch.set_num_threads(1)


@pytest.fixture
def brackets(tmp_path: Path) -> Path:
    root = tmp_path / "brackets"
    for i in range(3):
        write_demo_bracket(root / f"s{i}", [-2, 0, 2], size=(72, 96), seed=i)
    return root


def _cfg(root: Path, tmp_path: Path, **kw: object) -> DataConfig:
    kw.setdefault("crop", 32)
    kw.setdefault("split", "all")
    return DataConfig(sources=[SourceSpec(str(root))], cache_dir=str(tmp_path / "cache"), **kw)


def test_sample_format_and_determinism(brackets: Path, tmp_path: Path) -> None:
    ds = build_dataset(_cfg(brackets, tmp_path))
    assert isinstance(ds, PairDataset) and len(ds) == 3
    s = ds[1]
    assert set(s) == {"under", "over", "ref", "name"} and s["name"] == "s1"
    for key in ("under", "over", "ref"):
        t = s[key]
        assert t.shape == (3, 32, 32) and t.dtype == torch.float32
        assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert s["under"].mean() < s["over"].mean()
    again = ds[1]
    assert all(torch.equal(s[k], again[k]) for k in ("under", "over", "ref"))
    ds.set_epoch(1)
    assert not torch.equal(s["under"], ds[1]["under"])


def test_reference_is_mertens_of_all_frames_cached_once(brackets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(brackets, tmp_path, crop=None)
    ds = build_dataset(cfg)
    full = ds[0]
    assert full["ref"].shape == (3, 72, 96)
    frames = [read_image(p) for p in sorted((brackets / "s0").iterdir())]
    expected = reference.mertens_reference(frames)
    got = full["ref"].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() <= 0.5 / 255 + 1e-6
    ds.prepare()
    refs = sorted((tmp_path / "cache" / "refs").glob("*.npy"))
    assert len(refs) == 3
    stamps = [p.stat().st_mtime_ns for p in refs]

    def boom(_frames: object) -> None:
        raise AssertionError("reference recomputed although cached")

    monkeypatch.setattr(reference, "mertens_reference", boom)
    ds2 = build_dataset(cfg)
    ds2.prepare()
    assert torch.equal(ds2[0]["ref"], full["ref"])
    assert [p.stat().st_mtime_ns for p in refs] == stamps
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # atomic writes leave nothing behind


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRMEF_CACHE", str(tmp_path / "envcache"))
    assert DataConfig().cache == tmp_path / "envcache"
    assert DataConfig(cache_dir=str(tmp_path / "x")).cache == tmp_path / "x"


def test_loader_with_workers_and_misalignment(brackets: Path, tmp_path: Path) -> None:
    cfg = _cfg(brackets, tmp_path, misalign=MisalignConfig(max_translation=3, local_amplitude=1.0), samples_per_epoch=8)
    loader = build_loader(cfg, batch_size=4, workers=2)
    batches = list(loader)
    assert len(batches) == 2
    for b in batches:
        assert b["under"].shape == b["over"].shape == b["ref"].shape == (4, 3, 32, 32)
        assert len(b["name"]) == 4


def _write_exr(path: Path, seed: int) -> None:
    rad = synthetic_radiance(80, 80, np.random.default_rng(seed), dynamic_range=1e4) * 10
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"RGB": rad}).write(str(path))


def test_hdr_synth_source_and_weighted_mix(brackets: Path, tmp_path: Path) -> None:
    hdr = tmp_path / "hdr"
    hdr.mkdir()
    for i in range(2):
        _write_exr(hdr / f"m{i}.exr", i)
    synth_only = build_dataset(DataConfig([SourceSpec(str(hdr), "auto")], crop=32, split="all", samples_per_epoch=5, misalign=True))
    assert isinstance(synth_only, SynthDataset) and len(synth_only) == 5
    s = synth_only[0]
    assert s["under"].shape == (3, 32, 32) and s["name"].startswith("m")
    assert torch.equal(s["over"], synth_only[0]["over"])
    cfg = DataConfig(
        [SourceSpec(str(brackets), "brackets", weight=1.0), SourceSpec(str(hdr), "hdr_synth", weight=3.0)],
        crop=32, split="all", samples_per_epoch=6, cache_dir=str(tmp_path / "cache"),
    )
    mixed = build_dataset(cfg)
    assert isinstance(mixed, MixedDataset) and len(mixed) == 12 and not mixed.uniform
    assert float(mixed.weights[6:].sum()) == pytest.approx(3 * float(mixed.weights[:6].sum()))
    loader = build_loader(cfg, batch_size=3, workers=0, dataset=mixed)
    assert isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler)
    assert next(iter(loader))["ref"].shape == (3, 3, 32, 32)


def test_sice_and_paired_sources(tmp_path: Path) -> None:
    sice = tmp_path / "sice" / "Dataset_Part1"
    write_demo_bracket(sice / "1", [-3, 0, 3], [f"{k}.JPG" for k in range(3)], size=(40, 40))
    label = np.full((40, 40, 3), 0.4, np.float32)
    write_image(sice / "Label" / "1.JPG", label)
    ds = build_dataset(DataConfig([SourceSpec(str(tmp_path / "sice"), "sice")], crop=None, split="all", cache_dir=str(tmp_path / "c")))
    assert torch.allclose(ds[0]["ref"], torch.full((3, 40, 40), 0.4), atol=2 / 255)

    paired = tmp_path / "paired"
    for prefix in ("train", "test"):
        for sub, v in zip("ABC", (0.1, 0.9, 0.5)):
            write_image(paired / f"{prefix}{sub}" / "a.png", np.full((40, 40, 3), v, np.float32))
    train = build_dataset(DataConfig([SourceSpec(str(paired))], crop=32, split="train", cache_dir=str(tmp_path / "c")))
    assert len(train) == 1 and train[0]["name"] == "train/a"
    assert float(train[0]["ref"].mean()) == pytest.approx(0.5, abs=1 / 255)
    test = build_dataset(DataConfig([SourceSpec(str(paired))], crop=None, split="test", cache_dir=str(tmp_path / "c")))
    assert test[0]["name"] == "test/a"


def test_bad_configs_raise_clear_errors(brackets: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no sources"):
        build_dataset(DataConfig())
    with pytest.raises(ConfigError, match="unknown data source kind 'flickr'"):
        build_dataset(DataConfig([SourceSpec(str(brackets), "flickr")]))
    with pytest.raises(ConfigError, match="does not exist"):
        build_dataset(DataConfig([SourceSpec(str(tmp_path / "missing"))]))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no samples"):
        build_dataset(DataConfig([SourceSpec(str(empty))], split="all"))
    with pytest.raises(ConfigError, match="split"):
        DataConfig(split="holdout")
    with pytest.raises(ConfigError, match="smaller than the crop"):
        build_dataset(_cfg(brackets, tmp_path, crop=128))[0]


def test_scene_level_split_of_generated_scenes(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(20):
        write_demo_bracket(root / f"scene{i:02d}", [-2, 2], size=(40, 40), seed=i)
    names = {}
    for split in ("train", "val", "test"):
        try:
            ds = build_dataset(DataConfig([SourceSpec(str(root))], split=split, crop=32, cache_dir=str(tmp_path / "c")))
            names[split] = {it.scene for it in ds.items}
        except ConfigError:
            names[split] = set()
    assert names["train"] and names["test"]
    assert not names["train"] & names["test"] and not names["train"] & names["val"] and not names["val"] & names["test"]
    assert set().union(*names.values()) == {f"scene{i:02d}" for i in range(20)}
    assert all(hash_split(n) == s for s, group in names.items() for n in group)


def test_distributed_sampler(brackets: Path, tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", world_size=1, rank=0)
    try:
        loader = build_loader(_cfg(brackets, tmp_path), batch_size=1, workers=0, distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        assert len(list(loader)) == 3
    finally:
        dist.destroy_process_group()


def test_committed_shared_split(shared_data: Path, tmp_path: Path) -> None:
    table = load_split()
    regenerated = make_shared_split(shared_data)
    assert regenerated["scenes"] == table
    counts = regenerated["counts"]
    for coll in ("hdrps", "deepfuse", "forth"):
        c = counts[coll]
        n = sum(c.values())
        assert abs(c["train"] / n - 0.7) < 0.05 and abs(c["val"] / n - 0.1) < 0.05 and abs(c["test"] / n - 0.2) < 0.05
    assert counts["hdr"] == {"train": 4, "val": 1, "test": 1}
    assert counts["misaligned"]["test"] == 2 and counts["misaligned"]["train"] == 0
    # the datasets follow the table: no scene in two splits, test scenes never in train
    seen = {}
    for split in ("train", "val", "test"):
        ds = build_dataset(DataConfig([SourceSpec(str(shared_data / "sequences"))], split=split, cache_dir=str(tmp_path / "c")))
        seen[split] = {it.scene for it in ds.items}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["val"]
    assert sum(len(v) for v in seen.values()) == 81
    assert all(table[f"sequences/{s}"] == "test" for s in seen["test"])
    assert SHARED_SPLIT_FILE.is_file()
