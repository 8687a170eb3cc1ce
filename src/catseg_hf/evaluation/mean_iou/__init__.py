"""The `evaluate` metric script for catseg-hf's mean IoU and the core it is built on.

Deliberately empty of imports: `mean_iou.py` imports `evaluate` and `datasets` (slow), and
only `evaluate.load` or an explicit import should pay for that. The NumPy/torch core lives in
`mean_iou_core.py`.
"""
