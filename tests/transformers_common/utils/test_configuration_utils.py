"""Keyword arguments every `PreTrainedConfig` accepts, with non-default values (for `ConfigTester`)."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
    "is_encoder_decoder": True,
    "tokenizer_class": "BertTokenizerFast",
    "bos_token_id": 2,
    "pad_token_id": 3,
    "eos_token_id": 4,
    "sep_token_id": 5,
    "decoder_start_token_id": 6,
}
