"""Training machinery for `stages/train.py`: the epoch loop (`loop`), the `Strategy` protocol and its registry
(`strategy`; strategies in `frozen` and `finetune`), the Optuna study (`study`) and its workers (`workers`)."""
