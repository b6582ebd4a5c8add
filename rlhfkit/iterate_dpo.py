"""On-policy DPO rounds for ``rlhfkit iterate`` (``method: dpo``; recipe ``configs/iterate_dpo.yaml``).

Round r samples two responses per prompt from the current policy π_{r−1}, has them labelled in the app, and
trains the ``dpo:`` section's preference loss on *this round's* preferences only, from π_{r−1} with π_{r−1}
itself as the reference (``reference: null``): every round is a KL-regularised step away from the policy whose
outputs were labelled, the on-policy setting of Xiong et al. 2024 and Guo et al. 2024 — offline DPO's labels
describe SFT's samples, which the policy leaves behind as it trains. The round's policy is
``round-r/dpo/final``. Resume: a finished round (``round.json``) is skipped; an unfinished DPO run resumes from
its last checkpoint in ``round-r/dpo`` (the shared loop's exact resume); its reference table is cached in
``round-r/dpo/reference-cache``.
"""

from __future__ import annotations

from typing import Any

from rlhfkit.config import ConfigError, save_config
from rlhfkit.iterate_config import stage_config

DPO_KEYS = ("train/loss", "rewards/accuracies", "rewards/margins", "logps/chosen_minus_ref",
            "eval/rewards/accuracies", "eval/loss")


def train_round_dpo(run, r: int, start_policy: str) -> dict[str, Any]:
    """DPO from ``start_policy`` (also π_ref) on round r's exported preferences (config saved as ``dpo.yaml``)."""
    from rlhfkit.iterate import is_model_folder, last_logged, read_jsonl
    from rlhfkit.trainers.dpo import train

    out = run.round_dir(r)
    train_file, eval_file = out / "export" / "preferences.train.jsonl", out / "export" / "preferences.eval.jsonl"
    if not read_jsonl(train_file):
        raise ConfigError(f"round {r}: no preference survived the export (every pair was a tie or below "
                          f"labels.min_votes={run.cfg.labels.min_votes}); see {out / 'export' / 'manifest.json'}")
    paths = {"model.path": start_policy, "reference": None, "data.train_file": str(train_file),
             "data.eval_file": str(eval_file) if read_jsonl(eval_file) else None,
             "train.output_dir": str(out / "dpo"), "train.seed": run.cfg.seed + r}
    dpo_cfg = stage_config(run.cfg, "dpo", paths)
    if dpo_cfg.reference_cache_dir is None:  # beside the round, not beside the (round's) export files
        dpo_cfg.reference_cache_dir = str(out / "dpo" / "reference-cache")
    save_config(dpo_cfg, out / "dpo.yaml")
    final = out / "dpo" / "final"
    status = "already_complete" if is_model_folder(final) else train(dpo_cfg).status
    return {"path": str(final), "loss": dpo_cfg.loss, "beta": dpo_cfg.beta, "status": status,
            "preferences": len(read_jsonl(train_file)), **last_logged(out / "dpo" / "metrics.jsonl", DPO_KEYS)}
