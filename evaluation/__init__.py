"""`minivlm.evaluation`: caption metrics (an offline `evaluate` module), batched captioning with scores, plots."""
