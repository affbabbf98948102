"""Labelling building blocks used by `stages/label.py`.

- `annotations`: read Label Studio JSON exports and filled-in review CSVs, agreement (kappa), majority vote.
- `review`: write the review queue as Label Studio task-import JSON and as CSV.
- `detect`: out-of-fold probabilities and confident learning for likely label errors.
- `auto`: labelling functions (keyword / regex rules) and model labels for unlabelled rows.
- `features`: pretrained-encoder features through the modality backbones, and the store label and train share.

Every function here is pure (values in, values out) except `features.extract`, which runs a backbone.
"""
