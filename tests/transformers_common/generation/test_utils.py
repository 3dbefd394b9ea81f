"""`GenerationTesterMixin` for MiniVLM's run of transformers' common tests (see ../README.md).

transformers' own mixin of this name is not in its source distribution; this one checks, for a
decoder-only VLM, what a user of `generate()` relies on. Each check compares two decoding paths
that must agree (cached against uncached, assisted against plain, a left-padded batch against its
rows alone, one long call against two chained ones), so none can pass by repeating the code it tests.
"""

import copy

import torch
from transformers import DynamicCache


NEW_TOKENS = 4


class GenerationTesterMixin:
    """Expects `all_model_classes` (classes that cannot generate are left out) and `model_tester`
    with `prepare_config_and_inputs_for_common()` returning `input_ids`, `attention_mask`, `pixel_values`."""

    def _generative_models(self, attn_implementation: str = "sdpa"):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        classes = [cls for cls in self.all_model_classes if cls.can_generate()]
        self.assertTrue(classes, "no model class of this tester can generate")
        for model_class in classes:
            torch.manual_seed(0)
            model = model_class(copy.deepcopy(config)).eval()
            model.set_attn_implementation(attn_implementation)
            # No early stop: both paths of each comparison then produce the same number of tokens.
            model.generation_config.eos_token_id = None
            model.generation_config.pad_token_id = self.model_tester.pad_token_id
            yield model, copy.deepcopy(inputs)

    @staticmethod
    def _generate(model, inputs, **kwargs):
        kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, **kwargs}
        with torch.no_grad():
            return model.generate(**inputs, **kwargs)

    def test_greedy_generate_with_and_without_cache(self):
        for model, inputs in self._generative_models():
            cached = self._generate(model, inputs, output_scores=True, return_dict_in_generate=True)
            uncached = self._generate(model, inputs, output_scores=True, return_dict_in_generate=True, use_cache=False)
            torch.testing.assert_close(cached.sequences, uncached.sequences, rtol=0, atol=0)
            self.assertEqual(cached.sequences.shape, (inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + NEW_TOKENS))
            for step, (a, b) in enumerate(zip(cached.scores, uncached.scores)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"scores of step {step}")

    def test_greedy_generate_dict_outputs(self):
        for model, inputs in self._generative_models(attn_implementation="eager"):
            out = self._generate(
                model, inputs, return_dict_in_generate=True, output_scores=True, output_logits=True,
                output_hidden_states=True, output_attentions=True,
            )
            batch, prompt = inputs["input_ids"].shape
            text = model.config.text_config
            self.assertEqual(len(out.scores), NEW_TOKENS)
            self.assertEqual(len(out.logits), NEW_TOKENS)
            self.assertEqual(out.logits[0].shape, (batch, text.vocab_size))
            self.assertEqual(len(out.hidden_states), NEW_TOKENS)
            self.assertEqual(len(out.attentions), NEW_TOKENS)
            for step in range(NEW_TOKENS):
                length = prompt if step == 0 else 1  # the prompt once, then one new position a step
                self.assertEqual(len(out.hidden_states[step]), text.num_hidden_layers + 1)
                self.assertEqual(out.hidden_states[step][-1].shape, (batch, length, text.hidden_size))
                self.assertEqual(len(out.attentions[step]), text.num_hidden_layers)
                self.assertEqual(
                    out.attentions[step][0].shape, (batch, text.num_attention_heads, length, prompt + step)
                )
            self.assertIsInstance(out.past_key_values, DynamicCache)
            self.assertEqual(out.past_key_values.get_seq_length(), prompt + NEW_TOKENS - 1)

    def test_sample_generate_is_seeded_and_top_k_1_is_greedy(self):
        for model, inputs in self._generative_models():
            torch.manual_seed(5)
            first = self._generate(model, inputs, do_sample=True, top_k=0, temperature=2.0)
            torch.manual_seed(5)
            second = self._generate(model, inputs, do_sample=True, top_k=0, temperature=2.0)
            torch.testing.assert_close(first, second, rtol=0, atol=0)
            top_1 = self._generate(model, inputs, do_sample=True, top_k=1)
            torch.testing.assert_close(top_1, self._generate(model, inputs), rtol=0, atol=0)

    def test_beam_search_generate(self):
        for model, inputs in self._generative_models():
            one_beam = self._generate(model, inputs, num_beams=1)
            torch.testing.assert_close(one_beam, self._generate(model, inputs, use_cache=False), rtol=0, atol=0)
            beams = self._generate(
                model, inputs, num_beams=3, num_return_sequences=2, output_scores=True, return_dict_in_generate=True
            )
            batch, prompt = inputs["input_ids"].shape
            self.assertEqual(beams.sequences.shape, (batch * 2, prompt + NEW_TOKENS))
            self.assertEqual(beams.sequences_scores.shape, (batch * 2,))
            # Beams come best first: the first returned beam scores at least as high as the second.
            scores = beams.sequences_scores.view(batch, 2)
            self.assertTrue(bool((scores[:, 0] >= scores[:, 1]).all()), scores)

    def test_assisted_and_prompt_lookup_decoding_match_greedy(self):
        for model, inputs in self._generative_models():
            greedy = self._generate(model, inputs)
            # The assistant drafts tokens from text alone (no pixel_values after the first call).
            assistant = copy.deepcopy(model)
            one = {k: v[:1] for k, v in inputs.items()}  # assisted decoding takes one text at a time
            one["pixel_values"] = inputs["pixel_values"][:1]
            assisted = self._generate(model, one, assistant_model=assistant)
            torch.testing.assert_close(assisted, greedy[:1], rtol=0, atol=0)
            lookup = self._generate(model, one, prompt_lookup_num_tokens=2)
            torch.testing.assert_close(lookup, greedy[:1], rtol=0, atol=0)

    def test_left_padding_gives_the_tokens_of_the_unpadded_text(self):
        for model, inputs in self._generative_models():
            alone = self._generate(model, {k: v[:1] for k, v in inputs.items()})
            pad = self.model_tester.pad_token_id
            padded = dict(inputs)
            padded["input_ids"] = torch.cat(
                [torch.full((inputs["input_ids"].shape[0], 3), pad), inputs["input_ids"]], dim=1
            )
            padded["attention_mask"] = torch.cat(
                [torch.zeros(inputs["attention_mask"].shape[0], 3, dtype=torch.long), inputs["attention_mask"]], dim=1
            )
            # Only the first row is padded on the left; the others start with three more text tokens.
            padded["input_ids"][1:, :3] = self.model_tester.vocab_size - 1
            padded["attention_mask"][1:, :3] = 1
            batched = self._generate(model, padded)
            torch.testing.assert_close(batched[:1, -NEW_TOKENS:], alone[:, -NEW_TOKENS:], rtol=0, atol=0)

    def test_generate_continues_from_a_returned_cache(self):
        for model, inputs in self._generative_models():
            full = self._generate(model, inputs, max_new_tokens=NEW_TOKENS + 2)
            first = self._generate(model, inputs, return_dict_in_generate=True)
            mask = torch.cat(
                [inputs["attention_mask"], torch.ones(first.sequences.shape[0], NEW_TOKENS, dtype=torch.long)], dim=1
            )
            # The images are in the cache: the second call gets no pixel_values.
            second = self._generate(
                model, {"input_ids": first.sequences, "attention_mask": mask}, cache=first.past_key_values, max_new_tokens=2
            )
            torch.testing.assert_close(second, full, rtol=0, atol=0)

    def test_generate_from_inputs_embeds(self):
        for model, inputs in self._generative_models():
            from_ids = self._generate(model, inputs)
            with torch.no_grad():
                features = model.get_image_features(inputs["pixel_values"]).pooler_output
                embeds = model.get_input_embeddings()(inputs["input_ids"])
                mask = (inputs["input_ids"] == model.config.image_token_index).unsqueeze(-1)
                embeds = embeds.masked_scatter(mask, features.reshape(-1, features.shape[-1]))
            from_embeds = self._generate(model, {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]})
            # Given embeddings, generate returns the new tokens only.
            torch.testing.assert_close(from_embeds, from_ids[:, -NEW_TOKENS:], rtol=0, atol=0)

    def test_static_cache_matches_dynamic_cache(self):
        for model, inputs in self._generative_models():
            static = self._generate(model, inputs, cache_implementation="static")
            torch.testing.assert_close(static, self._generate(model, inputs), rtol=0, atol=0)
