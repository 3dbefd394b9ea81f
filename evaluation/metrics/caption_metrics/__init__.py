"""The ``caption_metrics`` evaluate module; the folder is what ``evaluate.load`` is pointed at."""
