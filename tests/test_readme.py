"""The README's Python snippets ("Using a MiniVLM", "Export and quantization") run as written.

Each ```python block is read from README.md (an edited snippet is what runs) and executed in a fresh
namespace against a tiny random MiniVLM: "org/minivlm" resolves offline to a Hub cache that holds it,
and the image files the snippets name are written into the working folder. The values of a snippet's
top-level expressions are kept, so the checks below assert what its comments claim. Concrete outputs
only a trained model gives are stated as such in the README; here their format is checked instead.
"""

import ast
import os
import re
import shutil
import socket
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline

from minivlm.grounding_minivlm import parse_boxes, valid_box


SECTIONS = ("Using a MiniVLM", "Export and quantization")
# The only snippets that do not run here, and why. A snippet is skipped only when it is named here AND
# its first line is this marker, visible to readers; either one alone fails the test.
NEEDS_NETWORK_MARKER = "# needs the Hub"
NEEDS_NETWORK = {
    "Using a MiniVLM #4": "downloads google/vit-large-patch16-224 and HuggingFaceTB/SmolLM-360M from the Hub",
}
# Image sizes of the files the snippets open; shapes.png is 64x64 as in the README's detect example.
IMAGE_FILES = {"cat.jpg": (48, 40), "a.jpg": (40, 40), "b.jpg": (37, 53), "shapes.png": (64, 64)}


def readme_snippets(readme: Path = REPO_ROOT / "README.md") -> dict[str, tuple[int, str]]:
    """`{"<section> #<n>": (first line number, code)}` for each ```python block of `SECTIONS`."""
    snippets, section, count, block, start = {}, None, 0, None, 0
    for number, line in enumerate(readme.read_text().splitlines(), start=1):
        if line.startswith("## "):
            section, count = line[3:].strip(), 0
        elif block is not None:
            if line.startswith("```"):
                count += 1
                snippets[f"{section} #{count}"] = (start, "\n".join(block) + "\n")
                block = None
            else:
                block.append(line)
        elif line.startswith("```python") and section in SECTIONS:
            block, start = [], number + 1
    return snippets


SNIPPETS = readme_snippets()


def run_snippet(name: str) -> tuple[dict, list[tuple[str, object]]]:
    """Executes one snippet statement by statement in a fresh namespace (tracebacks point at README.md's
    lines); returns the namespace and `(source, value)` of each top-level expression."""
    start, code = SNIPPETS[name]
    tree = ast.parse(code)
    namespace, results = {"__name__": "__readme__"}, []
    for statement in tree.body:
        source = ast.get_source_segment(code, statement)
        ast.increment_lineno(statement, start - 1)
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), str(REPO_ROOT / "README.md"), "eval"), namespace)
            results.append((source, value))
        else:
            exec(compile(ast.Module([statement], []), str(REPO_ROOT / "README.md"), "exec"), namespace)
    return namespace, results


def value_of(results: list[tuple[str, object]], prefix: str):
    """The value of the one top-level expression whose source starts with `prefix`."""
    found = [value for source, value in results if source.startswith(prefix)]
    assert len(found) == 1, f"expected one expression starting {prefix!r} in the snippet, found {len(found)}"
    return found[0]


def comment_after(code: str, prefix: str) -> str:
    """The comment on the line starting with `prefix` and the comment lines right after it."""
    lines = code.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    comment = [lines[index].split("#", 1)[1]] if "#" in lines[index] else []
    for line in lines[index + 1:]:
        if not line.startswith("#"):
            break
        comment.append(line[1:])
    return "\n".join(comment)


@pytest.fixture(scope="module")
def hf_home(saved_model_dir, tmp_path_factory) -> Path:
    """A Hub cache laid out as `hub/models--org--minivlm/{refs/main, snapshots/<sha>/...}` holding the tiny model."""
    home = tmp_path_factory.mktemp("hf_home")
    sha = "fedcba9876543210fedcba9876543210fedcba98"
    repo = home / "hub" / "models--org--minivlm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(saved_model_dir, repo / "snapshots" / sha)
    return home


@pytest.fixture
def workdir(hf_home, tmp_path, monkeypatch) -> Path:
    """The snippets' working folder, with their image files, and "org/minivlm" resolved offline."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the cache path and the offline flag once, at import: the module constants are
    # what it uses (conftest sets HF_HUB_OFFLINE before that import; this holds whatever the order).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # No snippet may reach the network: any connection beyond this machine fails loudly.
    real_connect = socket.socket.connect

    def local_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            raise AssertionError(f"a README snippet tried to reach {address}: it must run offline")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    rng = np.random.default_rng(0)
    for name, (width, height) in IMAGE_FILES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_sections_hold_the_snippets_this_file_checks():
    # A snippet added or removed shows here, so that its checks are written, not silently absent.
    assert sorted(SNIPPETS) == sorted(
        [f"Using a MiniVLM #{n}" for n in range(1, 5)] + [f"Export and quantization #{n}" for n in (1, 2)]
    )
    for name, (_, code) in SNIPPETS.items():
        marked = code.startswith(NEEDS_NETWORK_MARKER)
        assert marked == (name in NEEDS_NETWORK), (
            f"{name}: a snippet is skipped only when its first line says {NEEDS_NETWORK_MARKER!r} and "
            f"NEEDS_NETWORK names it; it has the marker: {marked}, is listed: {name in NEEDS_NETWORK}"
        )


def test_a_broken_snippet_fails(workdir, monkeypatch):
    """The harness itself: a snippet with a wrong method name raises, it is not swallowed."""
    start, code = SNIPPETS["Using a MiniVLM #3"]
    assert "model.caption(" in code
    monkeypatch.setitem(SNIPPETS, "Using a MiniVLM #3", (start, code.replace("model.caption(", "model.captions(")))
    with pytest.raises(AttributeError, match="captions"):
        run_snippet("Using a MiniVLM #3")


@pytest.mark.parametrize("name", sorted(NEEDS_NETWORK))
def test_snippets_that_need_the_hub_are_skipped(name):
    pytest.skip(f"{name}: {NEEDS_NETWORK[name]}")


def test_pipeline_automodel_and_processor_snippet(workdir):
    namespace, results = run_snippet("Using a MiniVLM #1")
    caption = value_of(results, 'captioner("cat.jpg")')
    assert isinstance(caption, list) and len(caption) == 1 and set(caption[0]) == {"generated_text"}
    assert isinstance(caption[0]["generated_text"], str)
    batched = value_of(results, 'captioner(["a.jpg", "b.jpg"]')
    assert len(batched) == 2 and all(isinstance(r[0]["generated_text"], str) for r in batched)
    conditional = value_of(results, 'captioner("cat.jpg", prompt=')
    assert isinstance(conditional[0]["generated_text"], str)
    model = namespace["model"]
    # "AutoModel and AutoModelForImageTextToText both give MiniVLMForConditionalGeneration ... model.model"
    assert type(model).__name__ == "MiniVLMForConditionalGeneration"
    assert type(AutoModelForImageTextToText.from_pretrained("org/minivlm", trust_remote_code=True)) is type(model)
    assert type(model.model).__name__ == "MiniVLMModel"
    # "several per text": one text with its two images.
    inputs = namespace["inputs"]
    assert inputs["input_ids"].shape[0] == 1 and inputs["pixel_values"].shape[0] == 2
    texts = value_of(results, "processor.post_process_image_text_to_text(")
    assert isinstance(texts, list) and len(texts) == 1 and isinstance(texts[0], str)


def test_chat_snippet(workdir):
    namespace, results = run_snippet("Using a MiniVLM #2")
    messages = namespace["messages"]
    # "the history + the answer", then the appended question.
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    answer = value_of(results, "chat(text=messages, return_full_text=False)")
    assert isinstance(answer, str)
    # A random model writes no box; whatever it writes that parses as one is on the 0-1000 grid.
    assert all(0 <= v <= 1000 for box in parse_boxes(answer) for v in box)
    # The trained model's answer the comment quotes is a valid box on that grid.
    quoted = re.search(r'"(\[.*?\])"', comment_after(SNIPPETS["Using a MiniVLM #2"][1], "chat(text=messages, return_full"))
    assert quoted and [valid_box(box) for box in parse_boxes(quoted.group(1))] == [(120, 310, 400, 590)]


def test_task_helpers_snippet(workdir, capsys):
    namespace, results = run_snippet("Using a MiniVLM #3")
    printed = capsys.readouterr().out
    model = namespace["model"]
    captioner = pipeline("image-to-text", model="org/minivlm", trust_remote_code=True)
    chat = pipeline("image-text-to-text", model="org/minivlm", trust_remote_code=True)
    # "= pipeline("image-to-text")'s generated_text"
    assert value_of(results, 'model.caption("shapes.png")') == captioner("shapes.png")[0]["generated_text"]
    # "= pipeline("image-text-to-text"), return_full_text=False"
    messages = [{"role": "user", "content": [{"type": "image", "image": "shapes.png"},
                                             {"type": "text", "text": "where is the red circle?"}]}]
    expected = chat(text=messages, max_new_tokens=32, return_full_text=False)[0]["generated_text"].strip()
    assert value_of(results, 'model.query("shapes.png", "where') == expected
    # The streamed pieces print the whole answer.
    assert printed.strip() == model.query("shapes.png", "what objects are in the image?")
    found = value_of(results, 'model.detect("shapes.png"')
    assert set(found) == {"objects", "text", "dropped"} and isinstance(found["text"], str)
    assert isinstance(found["dropped"], int)
    for obj in found["objects"]:
        assert obj["label"] == "red circle" and valid_box(obj["box"]) == tuple(obj["box"])
    # The example the comment shows is consistent: grid box x 64 px / 1000 = box_pixels, text parses to it.
    example = ast.literal_eval(comment_after(SNIPPETS["Using a MiniVLM #3"][1], 'model.detect("shapes.png"')
                               .split(":", 1)[1].strip())
    (obj,) = example["objects"]
    assert obj["box_pixels"] == tuple(round(v * IMAGE_FILES["shapes.png"][0] / 1000, 1) for v in obj["box"])
    assert parse_boxes(example["text"]) == [obj["box"]] and example["dropped"] == 0


def test_onnx_runner_snippet(workdir, saved_model_dir, onnx_export_dir):
    # The folder `minivlm-export MODEL_DIR minivlm-onnx` writes (tests/test_export.py tests the command).
    shutil.copytree(onnx_export_dir, workdir / "minivlm-onnx")
    namespace, results = run_snippet("Export and quantization #1")
    tokens, inputs = namespace["tokens"], namespace["inputs"]
    # "(1, prompt + new) ids, = generate(do_sample=False)"
    model = AutoModel.from_pretrained(saved_model_dir).eval()
    with torch.no_grad():
        expected = model.generate(**{k: torch.from_numpy(v) for k, v in inputs.items()}, max_new_tokens=32, do_sample=False)
    assert tokens.shape[0] == 1 and tokens.shape[1] > inputs["input_ids"].shape[1]
    np.testing.assert_array_equal(tokens, expected.numpy())
    captions = value_of(results, "processor.post_process_image_text_to_text(")
    assert isinstance(captions, list) and len(captions) == 1 and isinstance(captions[0], str)


def test_int8_snippet(workdir):
    # Outside CI torchao is optional (as in test_quantization.py); CI installs it, so there it must run.
    if not os.environ.get("CI"):
        pytest.importorskip("torchao", reason='torchao is not installed: pip install -e ".[quantization]"')
    namespace, _ = run_snippet("Export and quantization #2")
    model = namespace["model"]
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    assert linears and all(m.weight.qdata.dtype == torch.int8 for m in linears.values())
