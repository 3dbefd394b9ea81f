"""`minivlm.processing`: raw data to training examples — the one data entry point (`loading`: resolve the
shapes set, load, clean, attach what the scorers need), dataset adapters and bad-data cleaning, the
synthetic shapes set and its scorer, the collator, and the word-level tokenizer of tiny models."""
