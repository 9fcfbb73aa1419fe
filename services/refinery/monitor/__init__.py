"""The drift monitor: a faust-streaming worker over predictions and feedback."""
