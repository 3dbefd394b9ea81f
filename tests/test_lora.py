"""LoRA through peft: targets on the language model only, the projector trained in full, adapters
saved and loadable, merged logits equal adapter logits, resume, and the second stage on a saved
captioning checkpoint."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from hub_server import local_hub  # noqa: F401 (fixture)
from test_training import InterruptAt, assert_same_weights, shapes_dir, tiny_argv, weights  # noqa: F401 (fixture)
from transformers import AutoModel, AutoProcessor, TrainerCallback, pipeline

from minivlm import MiniVLMForConditionalGeneration
from minivlm.adapters_minivlm import BASE_RECORD_NAME, base_weights_fingerprint
from minivlm.training.lora import (
    ADAPTER_FILES, apply_lora, count_trainable, language_model_linear_layers, lora_targets, model_part,
    resolve_adapter_base,
)
from minivlm.training.run import parse_args, train


def module_ids(module: torch.nn.Module) -> set[int]:
    return {id(m) for m in module.modules()}


def lora_layer_names(peft_model) -> list[str]:
    return [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A)]


def randomise_adapters(peft_model, seed: int = 0) -> None:
    """LoRA's B starts at zero (adapters are a no-op); give every adapter and the projector copy new values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory, shapes_dir):  # noqa: F811
    """A first stage: a tiny captioning MiniVLM trained for two steps and saved."""
    out = tmp_path_factory.mktemp("stage1")
    train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "2", "--save_strategy", "no")))
    return out


# -- targets -----------------------------------------------------------------------------------------
def test_default_targets_are_the_language_models_linear_layers_only(model):
    targets = lora_targets(model)
    layers_per_block = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(targets) == len(layers_per_block) * model.config.text_config.num_hidden_layers
    assert {t.rsplit(".", 1)[-1] for t in targets} == layers_per_block
    peft_model = apply_lora(model)
    adapted = {id(m) for name, m in peft_model.named_modules() if name in set(lora_layer_names(peft_model))}
    decoder = module_ids(model.get_decoder())
    assert adapted and adapted <= decoder  # every adapter sits in the LM's decoder...
    assert not adapted & module_ids(model_part(model, "vision_tower"))  # ...none in the vision tower
    assert not adapted & module_ids(model_part(model, "multi_modal_projector"))  # ...none in the projector
    assert id(model.get_output_embeddings()) not in adapted  # ...nor on the LM head
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "multi_modal_projector.modules_to_save" in name for name in trainable)
    assert any("multi_modal_projector.modules_to_save" in name for name in trainable)


def test_targets_follow_the_module_objects_not_name_patterns(model):
    # A vision layer named like an LM layer must not become a target: targets come from the decoder's objects.
    model_part(model, "vision_tower").q_proj = torch.nn.Linear(4, 4)
    assert not any("vision_tower" in name for name in language_model_linear_layers(model))
    assert lora_targets(model, ["q_proj", "v_proj"]) == [
        name for name in language_model_linear_layers(model) if name.endswith((".q_proj", ".v_proj"))
    ]
    with pytest.raises(ValueError, match="--lora_target_modules query match no linear layer of the language model; choose among"):
        lora_targets(model, ["query"])


def test_trainable_parameter_counts_with_and_without_lora(model):
    full = count_trainable(model)
    projector = sum(p.numel() for p in model_part(model, "multi_modal_projector").parameters())
    # r=4 on every LM linear layer: 4 * (in + out) parameters each.
    expected = sum(4 * (layer.in_features + layer.out_features) for layer in map(model.get_submodule, lora_targets(model)))
    peft_model = apply_lora(model, r=4)
    lora = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_" in name)
    assert lora == expected
    assert count_trainable(peft_model) == lora + projector < full


# -- merge ---------------------------------------------------------------------------------------------
def test_merged_logits_equal_adapter_logits(model, processor, images, tmp_path):
    inputs = processor(images=images, text=["a red circle"] * 3, return_tensors="pt", padding=True)
    base_logits = model(**inputs).logits
    peft_model = apply_lora(model).eval()
    randomise_adapters(peft_model)
    with torch.no_grad():
        adapter_logits = peft_model(**inputs).logits
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-3)  # the adapters do change the model
    merged = peft_model.merge_and_unload()
    assert not lora_layer_names(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapter_logits, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, adapter_logits, atol=1e-5, rtol=1e-5)


# -- runs ----------------------------------------------------------------------------------------------------
def test_lora_needs_a_base_that_can_be_loaded(tmp_path, shapes_dir):  # noqa: F811
    with pytest.raises(ValueError, match="pass --model_name_or_path .* or add --merge_lora"):
        train(*parse_args(tiny_argv(tmp_path / "out", shapes_dir, "--lora", "true", "--max_steps", "1")))
    with pytest.raises(ValueError, match="--merge_lora merges LoRA adapters: add --lora"):
        train(*parse_args(tiny_argv(tmp_path / "out", shapes_dir, "--merge_lora", "true", "--max_steps", "1")))
    assert not (tmp_path / "out").exists()  # refused before any work


def test_second_stage_lora_trains_only_adapters_and_projector(tmp_path, shapes_dir, captioner_dir):  # noqa: F811
    out = tmp_path / "lora"
    trainer = train(*parse_args(tiny_argv(out, shapes_dir, "--model_name_or_path", str(captioner_dir),
                                          "--lora", "true", "--lora_r", "4", "--max_steps", "3")))
    names = {p.name for p in out.iterdir()}
    assert set(ADAPTER_FILES) | {"processor_config.json", "processing_minivlm.py", "tokenizer.json", "README.md"} <= names
    assert "model.safetensors" not in names and "config.json" not in names  # an adapter folder, not a full model

    peft_model = trainer.model
    base = weights(captioner_dir)
    for name, parameter in peft_model.get_base_model().state_dict().items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        original = name.replace(".base_layer", "").replace(".original_module", "")
        assert torch.equal(parameter, base[original]), f"{name} changed"
    trained = get_peft_model_state_dict(peft_model)
    assert all(trained[k].abs().sum() > 0 for k in trained if "lora_B" in k)  # every adapter learned something
    projector = {k: v for k, v in trained.items() if "multi_modal_projector" in k}
    assert projector and any(not torch.equal(v, base[k.replace("base_model.model.", "")]) for k, v in projector.items())

    # The folder loads as peft documents, and through transformers' own adapter support.
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    image = sorted((Path(shapes_dir) / "test").glob("*.png"))[0]
    inputs = processor(images=str(image), text="a", return_tensors="pt")
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**inputs).logits
        loaded = PeftModel.from_pretrained(MiniVLMForConditionalGeneration.from_pretrained(captioner_dir), out)
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
        auto = AutoModel.from_pretrained(out, trust_remote_code=True)
        torch.testing.assert_close(auto(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
    captioner = pipeline("image-to-text", model=str(out), trust_remote_code=True)
    ids = auto.generate(**processor(images=str(image), return_tensors="pt"), max_new_tokens=3, do_sample=False)
    prompt_length = processor(images=str(image))["input_ids"].shape[1]
    assert captioner(str(image), max_new_tokens=3)[0]["generated_text"] == processor.post_process_image_text_to_text(
        ids[:, prompt_length:])[0]


def test_merge_lora_writes_a_full_model_with_the_adapters_beside_it(tmp_path, shapes_dir, captioner_dir):  # noqa: F811
    out = tmp_path / "merged"
    trainer = train(*parse_args(tiny_argv(out, shapes_dir, "--model_name_or_path", str(captioner_dir),
                                          "--lora", "true", "--merge_lora", "true", "--max_steps", "3")))
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_minivlm.py", "processor_config.json"} <= names
    assert not set(ADAPTER_FILES) & names  # beside a full model, root adapters would be applied twice
    assert {p.name for p in (out / "adapter").iterdir()} >= set(ADAPTER_FILES)

    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    image = sorted((Path(shapes_dir) / "test").glob("*.png"))[0]
    inputs = processor(images=str(image), text="a", return_tensors="pt")
    merged = AutoModel.from_pretrained(out, trust_remote_code=True)
    adapters = PeftModel.from_pretrained(MiniVLMForConditionalGeneration.from_pretrained(captioner_dir), out / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapters(**inputs).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(**inputs).logits, trainer.model(**inputs).logits, atol=1e-5, rtol=1e-5)
    assert not lora_layer_names(merged)


class CountSteps(TrainerCallback):
    count = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.count += 1


class KeepInitialBaseWeights(TrainerCallback):
    """Records the base model's weights (LoRA layers unwrapped to their base names) as training begins."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {name.replace(".base_layer", "").replace(".original_module", ""): p.detach().clone()
                        for name, p in model.get_base_model().state_dict().items()
                        if "lora_" not in name and "modules_to_save" not in name}


def test_lora_from_scratch_with_merge_changes_only_adapted_layers_and_projector(tmp_path, shapes_dir):  # noqa: F811
    # No saved base to load adapters onto: the merged model is the run's product.
    out = tmp_path / "scratch"
    initial = KeepInitialBaseWeights()
    train(*parse_args(tiny_argv(out, shapes_dir, "--lora", "true", "--merge_lora", "true", "--max_steps", "2",
                                "--save_strategy", "no")), callbacks=[initial])
    merged = weights(out)
    assert merged.keys() == initial.weights.keys()
    changed = {name for name in merged if not torch.equal(merged[name], initial.weights[name])}
    targets = {f"{t}.weight" for t in lora_targets(MiniVLMForConditionalGeneration.from_pretrained(out))}
    projector = {name for name in merged if "multi_modal_projector." in name}
    assert changed and changed <= targets | projector
    assert changed & projector and changed & targets


def test_interrupted_lora_run_resumes_bit_exact(tmp_path, shapes_dir, captioner_dir):  # noqa: F811
    common = ("--model_name_or_path", str(captioner_dir), "--lora", "true", "--max_steps", "6")
    straight = train(*parse_args(tiny_argv(tmp_path / "straight", shapes_dir, *common)))
    argv = tiny_argv(tmp_path / "resumed", shapes_dir, *common)
    interrupted = train(*parse_args(argv), callbacks=[InterruptAt(3, signal.SIGTERM)])
    assert interrupted.state.global_step == 3
    steps = CountSteps()
    finished = train(*parse_args(argv), callbacks=[steps])
    assert finished.state.global_step == 6 and steps.count == 3  # resumed at step 3, not restarted
    assert_same_weights(get_peft_model_state_dict(finished.model), get_peft_model_state_dict(straight.model))
    assert_same_weights(weights(finished.model.get_base_model()), weights(straight.model.get_base_model()))


def test_lora_run_pushes_adapters_processor_and_card(local_hub, tmp_path, shapes_dir, captioner_dir):  # noqa: F811
    argv = tiny_argv(tmp_path / "out", shapes_dir, "--model_name_or_path", str(captioner_dir), "--lora", "true",
                     "--max_steps", "2", "--push_to_hub", "true", "--hub_model_id", "org/minivlm-lora",
                     "--hub_token", local_hub.token, "--hub_always_push", "true")
    trainer = train(*parse_args(argv))
    commits = local_hub.commits("org/minivlm-lora")
    assert [c["title"] for c in commits if "adapter_model.safetensors" in c["files"]][-1] == "End of training"
    files = commits[-1]["files"]
    assert set(ADAPTER_FILES) | {"processor_config.json", "processing_minivlm.py", "tokenizer.json", "README.md"} <= set(files)
    assert "model.safetensors" not in files and "config.json" not in files
    assert b"org/minivlm-lora" in files["README.md"]

    processor = AutoProcessor.from_pretrained("org/minivlm-lora", trust_remote_code=True)
    image = sorted((Path(shapes_dir) / "test").glob("*.png"))[0]
    inputs = processor(images=str(image), text="a", return_tensors="pt")
    pulled = PeftModel.from_pretrained(MiniVLMForConditionalGeneration.from_pretrained(captioner_dir), "org/minivlm-lora")
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(pulled(**inputs).logits, trainer.model(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_lora_run_refuses_to_resume_a_full_model_checkpoint(tmp_path, shapes_dir, captioner_dir):  # noqa: F811
    out = tmp_path / "out"
    train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "2")))
    with pytest.raises(ValueError, match="cannot resume a LoRA run from .*checkpoint-2: it has no adapter_model.safetensors"):
        # The changed configuration is reported first; resuming it anyway reaches the LoRA check.
        train(*parse_args(tiny_argv(out, shapes_dir, "--model_name_or_path", str(captioner_dir), "--lora", "true",
                                    "--max_steps", "4", "--resume_changed_run", "true")))


# -- adapter folders that know their base ---------------------------------------------------------------
@pytest.fixture(scope="module")
def relative_lora(tmp_path_factory, shapes_dir, captioner_dir):  # noqa: F811
    """A LoRA run started in `work/` on the base typed as the relative path `outputs/full`."""
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(captioner_dir, work / "outputs" / "full")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        trainer = train(*parse_args(tiny_argv("outputs/lora", shapes_dir, "--model_name_or_path", "outputs/full",
                                              "--lora", "true", "--lora_r", "4", "--max_steps", "2")))
    finally:
        os.chdir(cwd)
    return work, trainer


def lora_inputs(folder, shapes_dir):
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image = sorted((Path(shapes_dir) / "test").glob("*.png"))[0]
    return processor(images=str(image), text="a", return_tensors="pt")


def test_lora_folder_loads_from_any_working_directory(relative_lora, shapes_dir, tmp_path, monkeypatch):  # noqa: F811
    work, trainer = relative_lora
    config = json.loads((work / "outputs" / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((work / "outputs" / "full").resolve())
    record = json.loads((work / "outputs" / "lora" / BASE_RECORD_NAME).read_text())
    assert record["base_model_name_or_path"] == "outputs/full" and record["base_model_relative_path"] == "../full"
    checkpoints = sorted((work / "outputs" / "lora").glob("checkpoint-*"))
    assert checkpoints and all((c / BASE_RECORD_NAME).is_file() for c in checkpoints), checkpoints  # each save
    monkeypatch.chdir(tmp_path)  # where "outputs/full" does not exist
    inputs = lora_inputs(work / "outputs" / "lora", shapes_dir)
    loaded = AutoModel.from_pretrained(work / "outputs" / "lora", trust_remote_code=True)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, trainer.model(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_moved_adapters_find_their_base_beside_them_or_name_it(relative_lora, tmp_path):
    work, _ = relative_lora
    moved = tmp_path / "moved"
    shutil.copytree(work / "outputs", moved)  # both folders moved together (to another machine)...
    config_path = moved / "lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "/elsewhere/outputs/full"  # ...where the absolute path is stale
    config_path.write_text(json.dumps(config))
    assert resolve_adapter_base(moved / "lora") == str((moved / "full").resolve())
    shutil.rmtree(moved / "full")
    with pytest.raises(ValueError, match=r"trained on the base model folder /elsewhere/outputs/full, which does not exist here "
                                         r"\(nor at .*moved/lora/\.\./full\)\. Copy the base model there, or set "
                                         r"base_model_name_or_path in .*adapter_config.json"):
        resolve_adapter_base(moved / "lora")


def test_adapters_refuse_a_base_whose_weights_changed(relative_lora, tmp_path, shapes_dir):  # noqa: F811
    work, _ = relative_lora
    shutil.copytree(work / "outputs", tmp_path / "outputs")
    config_path = tmp_path / "outputs" / "lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "outputs" / "full")
    config_path.write_text(json.dumps(config))
    base = MiniVLMForConditionalGeneration.from_pretrained(tmp_path / "outputs" / "full")
    with torch.no_grad():
        base.multi_modal_projector.linear_1.bias.add_(0.01)  # "retrained": one tensor differs
    base.save_pretrained(tmp_path / "outputs" / "full")
    with pytest.raises(ValueError, match="trained on other base weights than those loaded from outputs/full.*"
                                         "point adapter_config.json's base_model_name_or_path at the original base"):
        AutoModel.from_pretrained(tmp_path / "outputs" / "lora", trust_remote_code=True)
    with pytest.raises(ValueError, match="trained on other base weights"):
        train(*parse_args(tiny_argv(tmp_path / "again", shapes_dir, "--model_name_or_path",
                                    str(tmp_path / "outputs" / "lora"), "--max_steps", "1")))


def test_base_fingerprint_follows_values_not_names(model):
    before = base_weights_fingerprint(model)
    assert before == base_weights_fingerprint(model)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3
    assert base_weights_fingerprint(model)["sha256"] != before["sha256"]
    renamed = torch.nn.Module()
    renamed.other_name = model  # same tensors under other names
    assert base_weights_fingerprint(renamed)["sha256"] == base_weights_fingerprint(model)["sha256"]


def test_lora_folder_as_starting_model_trains_and_saves(relative_lora, tmp_path, shapes_dir):  # noqa: F811
    work, trainer = relative_lora
    lora = work / "outputs" / "lora"
    with pytest.raises(ValueError, match="holds LoRA adapters: training starts from them merged into their base.*"
                                         "add --merge_lora"):
        train(*parse_args(tiny_argv(tmp_path / "refused", shapes_dir, "--model_name_or_path", str(lora),
                                    "--lora", "true", "--max_steps", "1")))
    out = tmp_path / "full-from-lora"
    train(*parse_args(tiny_argv(out, shapes_dir, "--model_name_or_path", str(lora), "--max_steps", "2",
                                "--learning_rate", "0")))  # saves at step 2 and at the end
    inputs = lora_inputs(out, shapes_dir)
    saved = AutoModel.from_pretrained(out, trust_remote_code=True)
    trainer.model.eval()
    with torch.no_grad():  # learning rate 0: the saved model is the adapted model, merged
        torch.testing.assert_close(saved(**inputs).logits, trainer.model(**inputs).logits, atol=1e-5, rtol=1e-5)
