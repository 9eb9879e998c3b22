"""The knowledge-distillation recipe (run `recipes/kd/train.py` with `accelerate launch`)."""
