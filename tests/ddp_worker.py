"""Run under `torchrun --nproc_per_node 2`: trains a tiny MiniVLM and records, per rank, the
example ids the rank trained on and a digest of its final weights (see test_distributed.py)."""

import hashlib
import json
import os
import sys

from minivlm.processing.collator import ConversationCollator
from minivlm.training.run import leave_process_group, parse_args, train


def main() -> None:
    record_dir, argv = sys.argv[1], sys.argv[2:]
    rank = int(os.environ["RANK"])
    seen: list[str] = []
    collate = ConversationCollator.__call__

    def recording_call(self, examples):
        seen.extend(str(example["id"]) for example in examples)
        return collate(self, examples)

    ConversationCollator.__call__ = recording_call
    trainer = train(*parse_args(argv))
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    with open(os.path.join(record_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"ids": seen, "digest": digest.hexdigest(), "world_size": trainer.args.world_size}, handle)
    leave_process_group()  # as training.run.main does


if __name__ == "__main__":
    main()
