"""`minivlm.data`: raw data to training examples — dataset adapters and bad-data cleaning, the
synthetic shapes set and its scorer, the collator, and the word-level tokenizer of tiny models."""
