"""Each installed name is its folder's name, and the old `minivlm.data` still imports, with a warning."""

import importlib
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def _package_dirs():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def test_every_installed_subpackage_is_named_after_its_folder():
    package_dirs = _package_dirs()
    assert package_dirs.pop("minivlm") == "modeling_minivlm"  # the remote-code convention
    for name, folder in package_dirs.items():
        assert name == f"minivlm.{folder}", (name, folder)
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve().parent == (ROOT / folder).resolve(), name


def test_old_name_minivlm_data_gives_the_same_modules_and_warns_with_the_new_name():
    # A fresh interpreter: the alias warns on first import only.
    code = (
        "import warnings, sys\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import minivlm.data.shapes as old_shapes\n"
        "    from minivlm.data import builder as old_builder\n"
        "import minivlm.processing.shapes as shapes, minivlm.processing.builder as builder\n"
        "assert old_shapes is shapes and old_builder is builder\n"
        "assert sys.modules['minivlm.data'] is sys.modules['minivlm.processing']\n"
        "assert shapes.__spec__.name == 'minivlm.processing.shapes', shapes.__spec__.name\n"
        "messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]\n"
        "assert any('`minivlm.data.shapes` was renamed `minivlm.processing.shapes`' in m for m in messages), messages\n"
        "assert any('`minivlm.data` was renamed `minivlm.processing`' in m for m in messages), messages\n"
        "try:\n"
        "    import minivlm.data.no_such_module\n"
        "except ModuleNotFoundError as e:\n"
        "    assert 'minivlm.data.no_such_module' in str(e)\n"
        "else:\n"
        "    raise AssertionError('a missing module imported')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_new_name_imports_without_a_warning():
    code = (
        "import warnings\n"
        "warnings.simplefilter('error', FutureWarning)\n"
        "import minivlm.processing.shapes, minivlm.processing.loading\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_shapes_module_runs_under_its_documented_command(tmp_path):
    doc = importlib.import_module("minivlm.processing.shapes").__doc__
    assert "python -m minivlm.processing.shapes" in doc
    result = subprocess.run(
        [sys.executable, "-m", "minivlm.processing.shapes", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--output_dir" in result.stdout


@pytest.mark.parametrize("name", ["minivlm.data", "minivlm.data.loading"])
def test_alias_is_not_a_second_copy(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = importlib.import_module(name)
    assert old is importlib.import_module(name.replace("minivlm.data", "minivlm.processing"))
