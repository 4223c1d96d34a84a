"""The CLI pays only for what it runs: parsing imports no heavy library (issue 19).

Each case runs in a fresh interpreter and reports ``sys.modules`` after the action, so a module
that a previous test imported cannot hide a regression.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import crmef
from crmef import cli, commands

HEAVY = ("torch", "torchvision", "cv2", "numpy", "matplotlib", "tensorboard", "PIL", "onnxruntime",
         "skimage", "scipy")
"""Top-level packages that parsing the command line must not import."""

_SRC = str(Path(crmef.__file__).resolve().parents[1])


def _modules_after(code: str) -> set[str]:
    """Top-level package names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (
        "import sys, json\n"
        "try:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "except SystemExit:\n    pass\n"
        "sys.stderr.write('\\nMODULES ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stderr.rsplit("MODULES ", 1)[1]))


def _assert_light(loaded: set[str]) -> None:
    heavy = sorted(loaded & set(HEAVY))
    assert not heavy, f"imported {heavy}"


def test_import_crmef_is_light():
    _assert_light(_modules_after("import crmef"))


def test_top_level_help_is_light():
    _assert_light(_modules_after("from crmef.cli import main\nmain(['--help'])"))


def test_version_is_light():
    _assert_light(_modules_after("from crmef.cli import main\nmain(['--version'])"))


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_command_help_is_light(name):
    """``crmef CMD --help`` imports the command's module and registers it, nothing heavy."""
    loaded = _modules_after(f"from crmef.cli import main\nmain([{name!r}, '--help'])")
    _assert_light(loaded)


def test_registering_every_command_is_light():
    """Importing every command module and calling its ``register`` imports nothing heavy."""
    code = "import argparse, importlib\nsub = argparse.ArgumentParser().add_subparsers()\n"
    code += "".join(f"importlib.import_module('crmef.commands.{n}').register(sub)\n" for n in cli.COMMANDS)
    _assert_light(_modules_after(code))


def test_probe_detects_heavy_imports():
    """The check can fail: a probe that imports numpy sees it."""
    assert "numpy" in _modules_after("import crmef.imageio")


def test_command_table_matches_the_package():
    """Every command module is in COMMANDS (and nothing else), with the help line it registers."""
    modules = {m.name for m in pkgutil.iter_modules(commands.__path__)}
    assert set(cli.COMMANDS) == modules
    assert list(cli.COMMANDS) == sorted(cli.COMMANDS)
    lazy = cli.build_parser().format_help()
    full = cli.build_parser(all_commands=True).format_help()
    assert lazy == full


def test_only_the_chosen_command_is_registered():
    assert cli.chosen_command(["--version"]) is None
    assert cli.chosen_command(["fuse", "a.png", "--help"]) == "fuse"
    assert cli.chosen_command(["-h", "info"]) == "info"
    help_text = cli.build_parser("fuse")._subparsers._group_actions[0].choices["fuse"].format_help()
    assert "--max-memory" in help_text


def test_fuse_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fuse", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--batch" in out and "--fast-size" in out


def test_data_clip_fraction_help_matches_the_default():
    from crmef.commands.data import CLIP_FRACTION_HELP
    from crmef.data.exposure import DEFAULT_CLIP_FRACTION

    assert float(CLIP_FRACTION_HELP) == DEFAULT_CLIP_FRACTION


def test_fuse_lazy_imageio_names_behave_as_imageio():
    from crmef import imageio
    from crmef.commands import fuse

    assert tuple(fuse.IMAGE_SUFFIXES) == imageio.IMAGE_SUFFIXES
    assert ".png" in fuse.IMAGE_SUFFIXES and ".exr" not in fuse.IMAGE_SUFFIXES
    assert fuse.is_image_file("a.JPG") and not fuse.is_image_file("a.txt")


def test_space_does_not_import_torchvision():
    loaded = _modules_after("import crmef.space")
    assert "torch" in loaded and "torchvision" not in loaded


def test_file_helpers_do_not_import_torch():
    """crmef.utils (atomic writes, used by crmef.imageio) leaves torch to resolve_device."""
    loaded = _modules_after("from crmef.utils import atomic_path, atomic_write_text")
    assert "torch" not in loaded
