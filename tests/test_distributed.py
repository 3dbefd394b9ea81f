"""The training script runs data-parallel: two CPU processes (torchrun, gloo) see different
examples and end with the same weights."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import shapes_dir, tiny_argv  # noqa: F401 (fixture)


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed")
def test_two_processes_split_the_data_and_agree_on_weights(tmp_path, shapes_dir):  # noqa: F811
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = tiny_argv(tmp_path / "out", shapes_dir, "--max_steps", "3", "--ddp_backend", "gloo", "--save_strategy", "no")
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), str(Path(__file__).with_name("ddp_worker.py")),
         str(tmp_path), *argv],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    ids0, ids1 = ranks[0]["ids"], ranks[1]["ids"]
    assert len(ids0) == len(ids1) == 3 * 4  # 3 steps of 4 examples per process
    assert set(ids0[:12]).isdisjoint(ids1[:12])  # each rank trained on its own shard
    assert ranks[0]["digest"] == ranks[1]["digest"]
