"""Benchmark MiniVLM's training step and generation against the notebook's way.

    python scripts/benchmark.py                                    # preset `small`, CPU-friendly
    python scripts/benchmark.py --preset notebook --train_batch_size 32 --output_json outputs/bench-h200.json

The measurements live in `minivlm.benchmark`; this command parses arguments and prints the tables.
"""

import os

# Before torch is imported: passive OpenMP waiting (see minivlm.benchmark).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from minivlm.benchmark import main  # noqa: E402


if __name__ == "__main__":
    main()
