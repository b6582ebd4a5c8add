"""``rlhfkit kto``: the preference trainer with ``loss=kto`` (``rlhfkit dpo loss=kto`` is the same run).

    rlhfkit kto --config configs/kto.yaml data.train_file=unpaired.train.jsonl

Rows: unpaired ``{"prompt","completion","label"}`` (``data_kind: unpaired``, e.g. the annotation app's thumbs
export), or preference pairs, each turned into a good and a bad row. See ``rlhfkit.trainers.dpo``.
"""

from __future__ import annotations


def main(args) -> int:
    from rlhfkit.config import load_config
    from rlhfkit.trainers.dpo import DPOConfig, train

    # first, so a loss= the user writes still wins; the recipe's data_kind is kept
    train(load_config(DPOConfig, args.config, ["loss=kto", *(args.overrides or [])]))
    return 0
