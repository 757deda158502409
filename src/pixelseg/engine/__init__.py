"""Training, evaluation, prediction and checkpointing."""
