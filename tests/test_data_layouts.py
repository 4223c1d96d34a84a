"""Layouts (bracket folders, SICE, paired folders) and bad input, on tiny generated trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crmef.data.layouts import DataWarning, detect_layout, scan_brackets, scan_paired, scan_sice, scene_pairs
from crmef.data.synth import write_demo_bracket
from crmef.errors import ConfigError, InputError
from crmef.imageio import write_image


def _grey(path: Path, value: float, size: tuple[int, int] = (48, 48)) -> Path:
    return write_image(path, np.full((*size, 3), value, np.float32))


def test_brackets_nested_scenes_and_pairs(tmp_path: Path) -> None:
    write_demo_bracket(tmp_path / "coll1" / "s1", [-2, 0, 2], ["3.jpg", "1.jpg", "2.jpg"])
    write_demo_bracket(tmp_path / "coll2" / "s2", [-1, 1], seed=1)
    assert detect_layout(tmp_path) == "brackets"
    scenes = scan_brackets(tmp_path)
    assert [s.name for s in scenes] == ["coll1/s1", "coll2/s2"]
    s1 = scenes[0]
    assert [f.path.name for f in s1.frames] == ["3.jpg", "1.jpg", "2.jpg"]
    (item,) = scene_pairs(s1)
    assert (item.under.name, item.over.name, item.ref) == ("3.jpg", "2.jpg", None)
    assert item.source_scene is s1 and item.size == (48, 48)
    multi = scene_pairs(s1, pair_mode=1.0)
    assert len(multi) == 3 and len({m.name for m in multi}) == 3
    with pytest.raises(ConfigError, match="pair_mode"):
        scene_pairs(s1, pair_mode="nearest")


def test_single_frame_scene_and_unreadable_image_are_skipped_with_warnings(tmp_path: Path) -> None:
    write_demo_bracket(tmp_path / "good", [-2, 2])
    write_demo_bracket(tmp_path / "lonely", [0])
    write_demo_bracket(tmp_path / "corrupt", [-2, 0, 2])
    (tmp_path / "corrupt" / "f1.png").write_bytes(b"\x89PNG garbage")
    with pytest.warns(DataWarning) as record:
        scenes = scan_brackets(tmp_path)
    messages = [str(w.message) for w in record]
    assert any("lonely" in m and "at least two" in m for m in messages)
    assert any("f1.png" in m and "unreadable" in m for m in messages)
    by_name = {s.name: s for s in scenes}
    assert set(by_name) == {"good", "corrupt"}
    assert [f.path.name for f in by_name["corrupt"].frames] == ["f0.png", "f2.png"]


def test_frames_of_different_sizes(tmp_path: Path) -> None:
    scene = tmp_path / "mixed"
    _grey(scene / "a.png", 0.2, (40, 60))
    _grey(scene / "b.png", 0.7, (42, 58))
    with pytest.raises(InputError, match="scene mixed .*different sizes.*a.png 60x40"):
        scan_brackets(tmp_path)
    (s,) = scan_brackets(tmp_path, resize=True)
    assert s.size == (58, 40) and s.resized


def test_sice_layout_uses_labels(tmp_path: Path) -> None:
    for part, seqs in (("Dataset_Part1", ["1", "2"]), ("Dataset_Part2", ["7"])):
        for i, n in enumerate(seqs):
            write_demo_bracket(tmp_path / part / n, [-3, -1, 1, 3], [f"{k}.JPG" for k in range(4)], seed=i)
            _grey(tmp_path / part / "Label" / f"{n}.JPG", 0.5)
    write_demo_bracket(tmp_path / "Dataset_Part2" / "9", [-1, 1])  # no label
    assert detect_layout(tmp_path) == "sice"
    with pytest.warns(DataWarning, match="no label"):
        scenes = scan_sice(tmp_path)
    assert [s.name for s in scenes] == ["Dataset_Part1/1", "Dataset_Part1/2", "Dataset_Part2/7"]
    (item,) = scene_pairs(scenes[0])
    assert item.ref == tmp_path / "Dataset_Part1" / "Label" / "1.JPG"
    assert (item.under.name, item.over.name) == ("0.JPG", "3.JPG")
    assert item.source_scene is None


def test_paired_layout(tmp_path: Path) -> None:
    for prefix in ("train", "test"):
        for name in ("a.png", "b.png"):
            for sub, v in zip("ABC", (0.1, 0.9, 0.5)):
                _grey(tmp_path / f"{prefix}{sub}" / name, v)
    _grey(tmp_path / "trainA" / "orphan.png", 0.1)
    assert detect_layout(tmp_path) == "paired"
    with pytest.warns(DataWarning, match="orphan.png: missing from trainB, trainC"):
        found = scan_paired(tmp_path)
    assert sorted(found) == ["test", "train"]
    assert [i.name for i in found["train"]] == ["train/a", "train/b"]
    item = found["train"][0]
    assert (item.under.parent.name, item.over.parent.name, item.ref.parent.name) == ("trainA", "trainB", "trainC")


def test_detect_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "x.exr").write_bytes(b"")
    assert detect_layout(tmp_path) == "hdr_synth"
