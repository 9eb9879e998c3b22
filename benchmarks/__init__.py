"""`make bench`: speed and memory ratios measured side by side in one process (never timed assertions)."""
