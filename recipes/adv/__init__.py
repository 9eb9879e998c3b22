"""The adversarial-training recipe (run `recipes/adv/train.py` and `recipes/adv/eval.py` with `accelerate launch`)."""
