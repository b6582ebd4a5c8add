"""TRL side of ``bench_vs_trl.py``: one SFT / reward / DPO run with TRL's own trainer, steps timed.

    .venv-trl/bin/python benchmarks/trl_worker.py '<Job as JSON>'      # started by bench_vs_trl.py

Runs ``SFTTrainer``, ``RewardTrainer`` or ``DPOTrainer`` unchanged on the job's model folder (loaded by TRL
from the path, as a user would: ``AutoModelForCausalLM``, or ``AutoModelForSequenceClassification`` with one
label for the reward model) and its JSON Lines rows as a ``datasets.Dataset`` (text; TRL tokenizes it
with the word tokenizer saved in the model folder). ``job.settings`` are passed as they are to the TRL
config (e.g. ``activation_checkpointing=False, bf16=False, precompute_ref_log_probs=True``); everything
else is TRL's default. Two hooks only observe: a callback notes when each optimizer step starts and ends,
and a wrapper around ``training_step`` counts the real tokens of the batch it receives.

With ``train_sampling_strategy="group_by_length"``, transformers' ``LengthGroupedSampler`` sorts mega-batches
of ``min(batches // 4, 50)`` batches; on this benchmark's one-epoch data (8 batches) that is 2, which would
leave TRL more padding than it has on any real dataset (≥ 200 batches: 50). The worker pins it to 50, what
rlhfkit's ``group_by_length`` uses, so both sides sort the whole epoch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vs_trl_common import Job, Recorder, read_jsonl  # noqa: E402


def trl_config(job: Job):
    from trl import DPOConfig, RewardConfig, SFTConfig

    cls = {"sft": SFTConfig, "reward": RewardConfig, "dpo": DPOConfig}[job.stage]
    common = dict(output_dir=str(Path(job.work_dir) / "out"), max_steps=job.steps,
                  per_device_train_batch_size=job.batch_size, learning_rate=job.lr, lr_scheduler_type="linear",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, save_strategy="no", report_to="none",
                  use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    if job.stage == "dpo":
        common["beta"] = 0.1
    return cls(**common, **job.settings)


def trainer_for(job: Job, args, dataset, tokenizer):
    from trl import DPOTrainer, RewardTrainer, SFTTrainer

    cls = {"sft": SFTTrainer, "reward": RewardTrainer, "dpo": DPOTrainer}[job.stage]
    return cls(model=job.model_dir, args=args, train_dataset=dataset, processing_class=tokenizer)


def main() -> None:
    job = Job.from_json(sys.argv[1])
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(job.threads)
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    recorder = Recorder(job.stage)

    class StepStarts(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            recorder.step_begins()
            if len(recorder.starts) == 1:
                recorder.notes["torch_threads_in_step"] = torch.get_num_threads()

        def on_step_end(self, args, state, control, **kwargs):
            recorder.step_ends()

    if job.settings.get("train_sampling_strategy") == "group_by_length":
        import functools

        import transformers.trainer_pt_utils as pt_utils

        pt_utils.get_length_grouped_indices = functools.partial(pt_utils.get_length_grouped_indices,
                                                                mega_batch_mult=50)
    tokenizer = AutoTokenizer.from_pretrained(job.model_dir)
    rows = read_jsonl(Path(job.data_file))
    if job.stage != "sft" and job.settings.get("train_sampling_strategy") == "group_by_length":
        # what LengthGroupedSampler sorts by: the longer padded row of the pair (prompt + response + EOS)
        for row in rows:
            row["length"] = len(row["prompt"].split()) + max(len(row[k].split()) for k in ("chosen", "rejected")) + 1
    dataset = Dataset.from_list(rows)
    args = trl_config(job)
    trainer = trainer_for(job, args, dataset, tokenizer)
    trainer.add_callback(StepStarts())
    training_step = trainer.training_step

    def counted_training_step(model, inputs, *rest, **kwargs):
        recorder.add_batch(inputs)
        return training_step(model, inputs, *rest, **kwargs)

    trainer.training_step = counted_training_step
    trainer.train()
    import transformers
    import trl

    recorder.notes.update({
        "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
        "bf16": bool(args.bf16), "gradient_checkpointing": bool(args.gradient_checkpointing),
        "optim": str(args.optim), "attn_implementation": trainer.model.config._attn_implementation,
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "precompute_ref_log_probs": bool(getattr(args, "precompute_ref_log_probs", False)),
    })
    recorder.write(job)


if __name__ == "__main__":
    main()
