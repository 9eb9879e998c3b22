"""The semi-supervised recipe (run `recipes/ssl/train.py` with `accelerate launch`)."""
