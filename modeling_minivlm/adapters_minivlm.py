"""LoRA adapters that know their base: a fingerprint of the base weights, checked when they load.

An adapter folder holds weight *differences*: applied to another set of base weights they load
without complaint and give a different model. A MiniVLM adapter folder (a LoRA run's output)
records, beside `adapter_config.json`, which base it was trained on and a fingerprint of that
base's weights (`minivlm_adapter_base.json`). `model.load_adapter(...)`, which
`AutoModel.from_pretrained(<adapter folder or repo>)` calls once the base is loaded, compares the
loaded base with the record and refuses a base whose weights changed.

Ships to the Hub verbatim as remote code: imports torch, transformers and the standard library only.
"""

import hashlib
import json

import torch
from transformers.utils import cached_file, logging


logger = logging.get_logger(__name__)

BASE_RECORD_NAME = "minivlm_adapter_base.json"


def base_weights_fingerprint(model: torch.nn.Module) -> dict:
    """A fingerprint of a model's weights: `{"sha256": hex, "dtype": "torch.float32", "tensors": n}`.

    Every tensor of the state dict is hashed with its dtype and shape; the hashes are sorted before
    they are combined, so the fingerprint follows the values, not the module names (which
    transformers may rename between versions) nor their order. Tied weights count once per name,
    as the state dict lists them.
    """
    hashes, dtypes = [], set()
    for tensor in model.state_dict().values():
        tensor = tensor.detach()
        dtypes.add(str(tensor.dtype))
        digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        # bytes through uint8 (numpy has no bfloat16): exact for every dtype.
        digest.update(tensor.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        hashes.append(digest.hexdigest())
    combined = hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()
    return {"sha256": combined, "dtype": ",".join(sorted(dtypes)), "tensors": len(hashes)}


def read_base_record(adapter: str, **hub_kwargs) -> dict | None:
    """The base record of an adapter folder or Hub repo, or None when it has none (e.g. made by peft alone)."""
    kwargs = {k: v for k, v in hub_kwargs.items() if k in ("token", "revision", "cache_dir", "local_files_only", "subfolder")}
    path = cached_file(
        adapter, BASE_RECORD_NAME, _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False, **kwargs,
    )
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_adapter_base(model: torch.nn.Module, adapter: str, record: dict | None = None, **hub_kwargs) -> None:
    """Raises ValueError when `model` (a base about to receive `adapter`) is not the base it was trained on.

    Adapters without a record (made by peft alone) are not checked. A base loaded in another dtype
    than the record's cannot be compared bit for bit: that is logged as a warning, not refused.
    """
    record = record if record is not None else read_base_record(adapter, **hub_kwargs)
    if not record or "base_weights_sha256" not in record:
        return
    found = base_weights_fingerprint(model)
    if found["dtype"] != record.get("base_weights_dtype", found["dtype"]):
        logger.warning(
            "The base weights are %s but the adapters in %s were trained on %s weights: their fingerprint cannot be "
            "checked. Load the base in %s to check that it is the base they were trained on.",
            found["dtype"], adapter, record["base_weights_dtype"], record["base_weights_dtype"],
        )
        return
    if found["sha256"] != record["base_weights_sha256"]:
        raise ValueError(
            f"the adapters in {adapter} were trained on other base weights than those loaded from "
            f"{record.get('base_model_name_or_path', 'their base')}: the base's fingerprint is {found['sha256'][:12]}, "
            f"the adapters were trained on {record['base_weights_sha256'][:12]} (recorded in {BASE_RECORD_NAME}). "
            "The base folder was retrained or overwritten since; point adapter_config.json's base_model_name_or_path "
            "at the original base, or train the adapters again on this one."
        )


class MiniVLMAdapterMixin:
    """`load_adapter` that refuses a base whose weights differ from those the adapters were trained on."""

    def load_adapter(self, peft_model_id: str | None = None, *args, **kwargs):
        if peft_model_id is not None and kwargs.get("adapter_state_dict") is None:
            check_adapter_base(self, str(peft_model_id), **(kwargs.get("adapter_kwargs") or {}))
        return super().load_adapter(peft_model_id, *args, **kwargs)


__all__ = ["BASE_RECORD_NAME", "MiniVLMAdapterMixin", "base_weights_fingerprint", "check_adapter_base", "read_base_record"]
