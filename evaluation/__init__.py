"""`minivlm.evaluation`: what a split of any training format holds (`tasks`), caption metrics (an offline `evaluate` module), batched captioning and answering with scores, plots."""
