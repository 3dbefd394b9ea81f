"""The package as a user installs it: a wheel (and `pip install .`) in a fresh virtual environment
outside the checkout, its console commands run from a folder that is not the checkout.

Offline and quick: the fresh environments get their dependencies (torch, transformers, ...) from a
`.pth` line naming this environment's site-packages. A plain path line does not run the `.pth`
files inside that folder, so the checkout's editable install (its `__editable__` finder) stays
out, and every step checks that `minivlm` is imported from the fresh environment.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from conftest import REPO_ROOT, TINY_TEXT, TINY_VISION

# What the checkout holds that a build must not see (or write into).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "outputs", "data")


def fresh_venv(folder: Path) -> Path:
    """A new virtual environment whose only extra path is this environment's site-packages; returns its python."""
    venv.create(folder, with_pip=False, symlinks=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def pip_install(python: Path, *args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                             "--no-build-isolation", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def run(command: list[str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


def test_wheel_installs_in_a_fresh_venv_and_its_commands_train_evaluate_and_write_the_card(tmp_path):
    source = Path(shutil.copytree(REPO_ROOT, tmp_path / "source", symlinks=True, ignore=NOT_SOURCE))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path / "dist"), "."], cwd=source, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("minivlm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"minivlm", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "minivlm/evaluation/metrics/caption_metrics/caption_metrics.py" in names
    card_template = zipfile.ZipFile(wheel).read("minivlm/training/model_card.md").decode()
    assert card_template == (REPO_ROOT / "model_card.md").read_text()  # the template itself, not a link

    python = fresh_venv(tmp_path / "venv")
    pip_install(python, str(wheel), cwd=tmp_path)
    bin_dir = python.parent
    for command in ("minivlm-train", "minivlm-evaluate", "minivlm-demo", "minivlm-benchmark", "minivlm-convert"):
        assert (bin_dir / command).is_file(), command

    work = tmp_path / "elsewhere"
    work.mkdir()
    run([str(bin_dir / "minivlm-train"), "--preset", "shapes-tiny", "--dataset", "shapes", "--shapes_dir", "shapes",
         "--shapes_num_train", "8", "--shapes_num_eval", "4", "--shapes_image_size", "32",
         "--tiny_vision_config", json.dumps(TINY_VISION), "--tiny_text_config", json.dumps(TINY_TEXT),
         "--pixel_shuffle_factor", "1", "--max_steps", "2", "--per_device_train_batch_size", "4",
         "--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", "model"], cwd=work)
    assert (work / "model" / "model.safetensors").is_file() and (work / "shapes" / "test" / "metadata.jsonl").is_file()

    run([str(bin_dir / "minivlm-evaluate"), "--model", "model", "--dataset", "shapes", "--shapes_dir", "shapes",
         "--split", "test", "--max_new_tokens", "4", "--skip_meteor", "--output_dir", "eval"], cwd=work)
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and 0.0 <= metrics["shapes_accuracy"] <= 1.0 and metrics["cider"] >= 0.0

    # The card renders from the template inside the installed package; minivlm is the fresh venv's.
    script = (
        "import json, minivlm, minivlm.training.model_card as card\n"
        "path = card.write_model_card('model', dataset='shapes', num_train_examples=8, metrics={'cider': 0.5})\n"
        "print(json.dumps([minivlm.__file__, str(card.TEMPLATE.resolve()), str(path)]))\n"
    )
    package, template, readme = json.loads(run([str(python), "-c", script], cwd=work))
    venv_dir = str((tmp_path / "venv").resolve())
    assert package.startswith(venv_dir) and template.startswith(venv_dir), (package, template)
    text = Path(work / readme).read_text()
    assert "pipeline_tag: image-text-to-text" in text and "library_name: transformers" in text
    assert "# model" in text and "| cider | 0.5000 |" in text and "{{" not in text


def test_pip_install_dot_installs_the_package_not_a_link_to_the_checkout(tmp_path):
    source = Path(shutil.copytree(REPO_ROOT, tmp_path / "source", symlinks=True, ignore=NOT_SOURCE))
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, ".", cwd=source)
    shutil.rmtree(source)  # an installed package does not need the folder it was built from
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    installed = {p.name for p in purelib.iterdir()}
    assert "minivlm" in installed and not any(name.startswith("__editable__") for name in installed)
    assert not {"processing", "training", "evaluation", "benchmark", "scripts", "export"} & installed
    package = purelib / "minivlm"
    assert (package / "training" / "model_card.md").is_file() and not (package / "training" / "model_card.md").is_symlink()
    assert (package / "evaluation" / "metrics" / "caption_metrics" / "caption_metrics.py").is_file()
    assert (python.parent / "minivlm-train").is_file() and (python.parent / "minivlm-export").is_file()
    assert (package / "export" / "runner.py").is_file()


def test_console_commands_return_nothing_so_they_exit_0():
    # A console script exits with sys.exit(main()): a returned dict is printed and exits with status 1.
    import importlib
    import inspect
    import tomllib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"minivlm-train", "minivlm-evaluate", "minivlm-demo", "minivlm-benchmark", "minivlm-convert",
                            "minivlm-app", "minivlm-caption", "minivlm-export"}
    for command, target in scripts.items():
        module, name = target.split(":")
        function = getattr(importlib.import_module(module), name)
        assert inspect.signature(function).return_annotation in (None, "None"), command
