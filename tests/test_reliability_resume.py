"""Resume trusts only complete checkpoints: each file a resume reads is checked (one broken file
per case), a broken newest checkpoint falls back to the previous complete one with a warning
naming the file, and the run still ends bit-exact."""

import logging
import shutil

import pytest
from test_training import assert_same_weights, shapes_dir, tiny_argv, weights  # noqa: F401 (fixture)

from minivlm.training.run import parse_args, train
from minivlm.training.trainer import last_complete_checkpoint


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shapes_dir):  # noqa: F811
    """A 4-step run with checkpoints at steps 2 and 4, and the argv that made it (output_dir last)."""
    out = tmp_path_factory.mktemp("run") / "out"
    argv = tiny_argv(out, shapes_dir, "--max_steps", "4")
    train(*parse_args(argv))
    return out, argv


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BREAKAGES = {
    "trainer_state.json missing": ("trainer_state.json", lambda p: p.unlink()),
    "config.json missing": ("config.json", lambda p: p.unlink()),
    "scheduler.pt missing": ("scheduler.pt", lambda p: p.unlink()),
    "rng_state.pth missing": ("rng_state.pth", lambda p: p.unlink()),
    "optimizer.pt truncated": ("optimizer.pt", truncate),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_a_checkpoint_with_one_broken_file_is_skipped_with_a_warning_naming_it(finished_run, tmp_path, caplog, case):
    source, _ = finished_run
    out = tmp_path / "out"
    shutil.copytree(source, out)
    name, breakage = BREAKAGES[case]
    breakage(out / "checkpoint-4" / name)
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(out) == str(out / "checkpoint-2")
    assert f"Skipping incomplete checkpoint {out / 'checkpoint-4'}: {name} is" in caplog.text


def test_a_truncated_optimizer_falls_back_and_the_run_still_ends_bit_exact(finished_run, tmp_path):
    source, argv = finished_run
    out = tmp_path / "out"
    shutil.copytree(source, out)
    (out / "model.safetensors").unlink()  # as if the run died while saving checkpoint-4
    truncate(out / "checkpoint-4" / "optimizer.pt")
    argv = [*argv[: argv.index("--output_dir") + 1], str(out), *argv[argv.index("--output_dir") + 2:]]
    resumed = train(*parse_args(argv))
    assert resumed.state.global_step == 4
    assert_same_weights(weights(resumed.model), weights(source))
