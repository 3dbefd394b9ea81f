"""push_to_hub, against a local Hub-compatible server: every pushed revision is a complete,
loadable repo (weights, config with auto_map and custom_pipelines, code, processor, card)."""

import json
import textwrap

import yaml
from conftest import make_config, make_model, make_processor, make_tokenizer
from hub_server import local_hub  # noqa: F401 (fixture)
from test_training import shapes_dir, tiny_argv  # noqa: F401 (fixture)

from minivlm.training.model_card import write_model_card
from minivlm.training.run import parse_args, train


CODE_FILES = {"configuration_minivlm.py", "modeling_minivlm.py", "pipeline_minivlm.py", "processing_minivlm.py"}
REPO_FILES = CODE_FILES | {"config.json", "model.safetensors", "generation_config.json", "processor_config.json",
                           "tokenizer.json", "tokenizer_config.json", "README.md"}

# Loads every given revision in a fresh interpreter that cannot import the project.
LOAD_REVISIONS = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_minivlm", "processing", "training"):
                raise ImportError(name + " is blocked")

    sys.meta_path.insert(0, BlockProject())
    sys.path = [p for p in sys.path if p not in ("", ".")]
    from PIL import Image
    from transformers import AutoModel, AutoProcessor, pipeline

    image = Image.new("RGB", (40, 40), (200, 30, 30))
    for revision in json.loads(sys.argv[1]):
        model = AutoModel.from_pretrained("org/minivlm", revision=revision, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained("org/minivlm", revision=revision, trust_remote_code=True)
        captioner = pipeline("image-to-text", model="org/minivlm", revision=revision, trust_remote_code=True)
        out = captioner(image, max_new_tokens=3)
        assert isinstance(out[0]["generated_text"], str), out
        print("loaded", revision, type(model).__name__, type(processor).__name__)
    """
)


def run_loader(hub, revisions, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(LOAD_REVISIONS)
    env = hub.env(hf_home=tmp_path / "fresh_hf_home")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(script), json.dumps(revisions)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def is_pickle(name: str) -> bool:
    return name.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))


def assert_no_secret(hub, output_dir):
    """The token is in no file written under output_dir (training_args.bin of the folder and of every
    checkpoint included) and in no file of any pushed commit."""
    token = hub.token.encode()
    written = [p for p in output_dir.rglob("*") if p.is_file() and token in p.read_bytes()]
    assert written == []
    assert (output_dir / "training_args.bin").is_file() and any(output_dir.glob("checkpoint-*/training_args.bin"))
    pushed = [(c["title"], name) for c in hub.commits("org/minivlm") for name, data in c["files"].items()
              if token in data]
    assert pushed == []


def card_metadata(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_training_pushes_a_loadable_repo_at_every_save(local_hub, shapes_dir, tmp_path):  # noqa: F811
    argv = tiny_argv(tmp_path / "out", shapes_dir, "--max_steps", "4", "--push_to_hub", "true",
                     "--hub_model_id", "org/minivlm", "--hub_strategy", "every_save", "--hub_always_push", "true",
                     "--hub_token", local_hub.token, "--eval_strategy", "steps", "--eval_steps", "2",
                     "--caption_eval_samples", "4")
    trainer = train(*parse_args(argv))
    assert any("eval_cider" in entry for entry in trainer.state.log_history)
    commits = [c for c in local_hub.commits("org/minivlm") if "model.safetensors" in c["files"]]
    titles = [c["title"] for c in commits]
    assert titles[:2] == ["Training in progress, step 2", "Training in progress, step 4"] and titles[-1] == "End of training"
    for commit in commits:
        missing = REPO_FILES - set(commit["files"])
        assert not missing, f"{commit['title']} lacks {sorted(missing)}"
        config = json.loads(commit["files"]["config.json"])
        assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_minivlm.MiniVLMForConditionalGeneration"
        assert config["custom_pipelines"]["image-to-text"]["impl"] == "pipeline_minivlm.MiniVLMImageToTextPipeline"
    pickles = [name for c in local_hub.commits("org/minivlm") for name in c["files"] if is_pickle(name)]
    assert pickles == []  # no training_args.bin, optimizer, scheduler or RNG state: they stay local
    assert_no_secret(local_hub, tmp_path / "out")
    metadata = card_metadata(commits[-1]["files"]["README.md"])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "image-text-to-text"
    assert metadata["license"] == "apache-2.0" and "cider" in metadata["metrics"]
    readme = commits[-1]["files"]["README.md"].decode()
    assert 'pipeline("image-to-text", model="org/minivlm", trust_remote_code=True)' in readme
    assert "Steps: 4" in readme
    assert "| cider |" in readme and "Decoding: max_new_tokens=32" in readme and "validation" in readme
    run_loader(local_hub, [c["oid"] for c in commits], tmp_path)


def test_model_and_processor_push_to_hub_round_trip(local_hub, tmp_path):  # noqa: F811
    tokenizer = make_tokenizer()
    config = make_config(tokenizer)
    make_model(config).push_to_hub("org/minivlm", token=local_hub.token)
    make_processor(config, tokenizer).push_to_hub("org/minivlm", token=local_hub.token)
    files = local_hub.files("org/minivlm")
    assert CODE_FILES <= set(files)  # the pipeline file travels with the model's code
    assert "model.safetensors" in files and not any(name.endswith(".bin") for name in files)
    out = run_loader(local_hub, ["main"], tmp_path)
    assert "MiniVLMForConditionalGeneration MiniVLMProcessor" in out


def test_model_card_metadata_names_parts_dataset_and_results(tmp_path):
    args = parse_args(["--preset", "notebook", "--output_dir", str(tmp_path), "--hub_model_id", "org/minivlm"])[2]
    path = write_model_card(
        tmp_path, base_model=["google/vit-large-patch16-224", "HuggingFaceTB/SmolLM-360M"], dataset="jxie/flickr8k",
        training_args=args, num_train_examples=2000, metrics={"bleu_4": 0.21, "cider": 0.55, "meteor": None},
        decoding={"num_beams": 3, "max_new_tokens": 32},
    )
    text = path.read_text()
    metadata = card_metadata(text.encode())
    assert metadata["base_model"] == ["google/vit-large-patch16-224", "HuggingFaceTB/SmolLM-360M"]
    assert metadata["datasets"] == ["jxie/flickr8k"]
    assert "| cider | 0.5500 |" in text and "| meteor | unavailable |" in text
    assert "Decoding: num_beams=3, max_new_tokens=32" in text
    # No trainer: no steps were trained, whatever the arguments planned (the card reports what happened).
    assert "Steps: 0 (no training step yet); learning rate 0.0002, batch size 4" in text


def test_checkpoint_pushes_keep_the_training_state_local_unless_asked(local_hub, shapes_dir, tmp_path, caplog):  # noqa: F811
    common = ["--max_steps", "2", "--save_steps", "2", "--push_to_hub", "true", "--hub_model_id", "org/minivlm",
              "--hub_strategy", "all_checkpoints", "--hub_always_push", "true", "--hub_token", local_hub.token]
    train(*parse_args(tiny_argv(tmp_path / "out", shapes_dir, *common)))
    files = local_hub.files("org/minivlm")
    assert "checkpoint-2/model.safetensors" in files
    assert [name for name in files if is_pickle(name)] == []
    assert (tmp_path / "out" / "checkpoint-2" / "optimizer.pt").is_file()  # still there locally, for resuming
    assert_no_secret(local_hub, tmp_path / "out")

    with caplog.at_level("WARNING"):
        train(*parse_args(tiny_argv(tmp_path / "opt-in", shapes_dir, *common, "--hub_push_training_state", "true")))
    files = local_hub.files("org/minivlm")
    assert {"checkpoint-2/optimizer.pt", "checkpoint-2/scheduler.pt", "checkpoint-2/rng_state.pth"} <= set(files)
    assert "--hub_push_training_state: pushing optimizer.pt, rng_state.pth, scheduler.pt" in caplog.text
    assert local_hub.token.encode() not in files["checkpoint-2/training_args.bin"]  # pushed, but redacted
