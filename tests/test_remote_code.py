"""The saved folder is a Hub-ready model: it loads with trust_remote_code=True in a process that
cannot import this project, from a folder and from an offline Hub cache, and its pipelines work."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_images
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline


# Runs in a fresh interpreter. The project's packages are made unimportable first, so only
# the files in the saved folder can provide MiniVLM.
CHILD = textwrap.dedent(
    r"""
    import hashlib, importlib.abc, importlib.util, json, sys

    class BlockProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_minivlm", "processing", "scripts"):
                raise ImportError(f"{name} is blocked: remote code must not import the project")
            return None

    sys.meta_path.insert(0, BlockProject())
    sys.path = [p for p in sys.path if p not in ("", ".")]
    for name in ("modeling_minivlm", "processing"):
        try:
            importlib.util.find_spec(name)
        except ImportError:
            continue
        raise SystemExit(f"{name} is importable")

    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

    source, image_paths, out_path = sys.argv[1], sys.argv[2].split(","), sys.argv[3]

    def weights_digest(model):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode()); digest.update(tensor.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()

    config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    model_itt = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    images = [Image.open(p) for p in image_paths]
    inputs = processor(images=images, text=["a red"] * len(images))
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    captioner = pipeline("image-to-text", model=source, trust_remote_code=True)
    result = {
        "config_class": type(config).__name__,
        "model_class": type(model).__name__,
        "model_itt_class": type(model_itt).__name__,
        "processor_class": type(processor).__name__,
        "model_module": type(model).__module__,
        "digest": weights_digest(model),
        "digest_itt": weights_digest(model_itt),
        "generated": processor.post_process_image_text_to_text(ids[:, inputs["input_ids"].shape[1]:]),
        "pipeline": captioner(image_paths[0], max_new_tokens=6),
        # the task helpers, from the folder's own files (processor found through config._name_or_path)
        "caption": model.caption(image_paths[0], max_new_tokens=6),
        "query_stream": "".join(model.query(image_paths[0], "a red", max_new_tokens=4, stream=True)),
        "detect": model.detect(image_paths[0], "red circle", max_new_tokens=4)["text"],
    }
    json.dump(result, open(out_path, "w"))
    """
)


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_child(source: str, tmp_path: Path, env: dict | None = None) -> dict:
    image_paths = []
    for i, image in enumerate(make_images(2)):
        image_paths.append(str(tmp_path / f"image{i}.png"))
        image.save(image_paths[-1])
    script, out = tmp_path / "child.py", tmp_path / "result.json"
    script.write_text(CHILD)
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child_env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}, **(env or {}))
    proc = subprocess.run(
        [sys.executable, str(script), source, ",".join(image_paths), str(out)],
        cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), image_paths


def local_reference(folder: Path, image_paths: list[str]) -> tuple[str, list[str], str]:
    from PIL import Image

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(images=[Image.open(p) for p in image_paths], text=["a red"] * len(image_paths))
    ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    generated = processor.post_process_image_text_to_text(ids[:, inputs["input_ids"].shape[1] :])
    single = processor(images=Image.open(image_paths[0]))
    first = model.generate(**single, max_new_tokens=6, do_sample=False)
    return weights_digest(model), generated, processor.post_process_image_text_to_text(first[:, 17:])[0]


def test_saved_folder_has_code_safetensors_and_auto_map(saved_model_dir):
    names = {p.name for p in saved_model_dir.iterdir()}
    assert {"configuration_minivlm.py", "modeling_minivlm.py", "pipeline_minivlm.py", "processing_minivlm.py",
            "tasks_minivlm.py", "grounding_minivlm.py", "adapters_minivlm.py"} <= names
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    config = json.loads((saved_model_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_minivlm.MiniVLMConfig",
        "AutoModel": "modeling_minivlm.MiniVLMForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_minivlm.MiniVLMForConditionalGeneration",
    }
    processor_config = json.loads((saved_model_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_minivlm.MiniVLMProcessor"


def test_remote_code_loads_without_the_project(saved_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_model_dir, folder)
    result, image_paths = run_child(str(folder), tmp_path)
    digest, generated, first_caption = local_reference(saved_model_dir, image_paths)
    assert result["config_class"] == "MiniVLMConfig"
    assert result["model_class"] == result["model_itt_class"] == "MiniVLMForConditionalGeneration"
    assert result["processor_class"] == "MiniVLMProcessor"
    assert result["model_module"].startswith("transformers_modules.")  # the folder's copy, not the project
    assert result["digest"] == result["digest_itt"] == digest
    assert result["generated"] == generated
    assert result["pipeline"] == [{"generated_text": first_caption}]
    assert result["caption"] == first_caption
    local = AutoModel.from_pretrained(saved_model_dir).eval()
    assert result["query_stream"].strip() == local.query(image_paths[0], "a red", max_new_tokens=4)
    assert result["detect"] == local.detect(image_paths[0], "red circle", max_new_tokens=4)["text"]


def populate_hub_cache(folder: Path, hf_home: Path, repo_id: str = "org/minivlm") -> None:
    """Lays out a Hub cache (`hub/models--org--name/{refs/main, snapshots/<sha>/...}`) holding `folder`."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(folder, repo / "snapshots" / sha)


def test_hub_id_loads_offline_from_the_cache(saved_model_dir, tmp_path):
    populate_hub_cache(saved_model_dir, tmp_path / "hf_home")
    result, image_paths = run_child("org/minivlm", tmp_path)
    digest, generated, _ = local_reference(saved_model_dir, image_paths)
    assert result["model_module"].startswith("transformers_modules.org")
    assert result["digest"] == digest
    assert result["generated"] == generated


# -- pipelines (in-process, remote code from the folder) ---------------------------------------
@pytest.fixture(scope="module")
def captioner(saved_model_dir):
    return pipeline("image-to-text", model=str(saved_model_dir), trust_remote_code=True)


def test_image_to_text_pipeline_takes_a_bare_image(captioner, saved_model_dir, tmp_path):
    assert type(captioner).__name__ == "MiniVLMImageToTextPipeline"
    image = make_images(1)[0]
    path = tmp_path / "image.png"
    image.save(path)
    from_pil = captioner(image, max_new_tokens=5)
    from_path = captioner(str(path), max_new_tokens=5)
    assert isinstance(from_pil, list) and set(from_pil[0]) == {"generated_text"}
    assert from_pil == from_path
    model = AutoModel.from_pretrained(saved_model_dir).eval()
    processor = AutoProcessor.from_pretrained(saved_model_dir)
    ids = model.generate(**processor(images=image), max_new_tokens=5, do_sample=False)
    assert from_pil[0]["generated_text"] == processor.post_process_image_text_to_text(ids[:, 17:])[0]


def test_image_to_text_pipeline_batches_a_list(captioner):
    images = make_images(3)
    one_by_one = [captioner(image, max_new_tokens=5) for image in images]
    batched = captioner(images, max_new_tokens=5, batch_size=3)
    assert batched == one_by_one


def test_image_to_text_pipeline_passes_prompt_and_generate_kwargs(captioner):
    image = make_images(1)[0]
    beams = captioner(image, prompt="a red", generate_kwargs={"num_beams": 2, "max_new_tokens": 4})
    assert isinstance(beams[0]["generated_text"], str)
    with pytest.raises(ValueError, match="given twice"):
        captioner(image, max_new_tokens=3, generate_kwargs={"max_new_tokens": 4})


def test_image_text_to_text_pipeline_with_chat_messages(saved_model_dir):
    chat = pipeline("image-text-to-text", model=str(saved_model_dir), trust_remote_code=True)
    image = make_images(1)[0]
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "a red"}]}]
    out = chat(text=messages, max_new_tokens=4, return_full_text=False)
    model = AutoModelForImageTextToText.from_pretrained(saved_model_dir).eval()
    processor = AutoProcessor.from_pretrained(saved_model_dir)
    inputs = processor(images=image, text="a red")
    ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = processor.post_process_image_text_to_text(ids[:, inputs["input_ids"].shape[1] :])[0]
    assert out[0]["generated_text"].strip() == expected

