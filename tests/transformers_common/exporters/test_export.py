"""`ExportTesterMixin` for MiniVLM's run of transformers' common tests (see ../README.md).

transformers' own mixin of this name is not in its source distribution; this one checks what its
tests check for a model of ours: `torch.export` traces the forward of every model class, and the
exported program gives the eager outputs.
"""

import torch
from transformers.integrations.executorch import register_dynamic_cache_export_support


class ExportTesterMixin:
    """Expects `all_model_classes`, `model_tester`, `test_torch_exportable` and `_prepare_for_class`."""

    def _export_and_compare(self, use_cache: bool):
        if not self.test_torch_exportable:
            self.skipTest(reason="this model class is marked as not exportable (test_torch_exportable=False)")
        if use_cache:
            # transformers' own switch: a DynamicCache becomes a pytree of its key/value tensors.
            register_dynamic_cache_export_support()
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with self.subTest(model_class=model_class.__name__, use_cache=use_cache):
                model = model_class(config).eval()
                inputs = dict(self._prepare_for_class(inputs_dict, model_class), use_cache=use_cache)
                with torch.no_grad():
                    eager = model(**inputs)
                    program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                    exported = program.module()(**inputs)
                key = "logits" if "logits" in eager else "last_hidden_state"
                torch.testing.assert_close(exported[key], eager[key], rtol=1e-4, atol=1e-4)
                if use_cache:
                    eager_keys = eager.cache.layers[0].keys
                    torch.testing.assert_close(exported["cache"].layers[0].keys, eager_keys, rtol=1e-4, atol=1e-4)

    def test_torch_export(self):
        self._export_and_compare(use_cache=False)

    def test_torch_export_with_cache(self):
        self._export_and_compare(use_cache=True)
