"""rlhfkit side of ``bench_vs_trl.py``: one SFT / reward / DPO run with rlhfkit's own trainer, steps timed.

    .venv/bin/python benchmarks/_rlhfkit_worker.py '<Job as JSON>'      # started by bench_vs_trl.py

Runs the stage exactly as ``rlhfkit sft|reward|dpo`` does: ``load_config`` with ``key=value`` overrides (the
command line's path), then ``train_sft`` / ``train_reward`` / ``dpo.train`` on the job's model folder and
JSON Lines rows (``template=raw``: prompt text + response text, one token per word, EOS appended).
``job.settings`` are more overrides (e.g. ``{"packing": true}``). One hook only observes: the shared loop's
``_fit_step`` is wrapped to note when each optimizer step starts and ends and count the real tokens of its
micro-batches. The untimed parts (encoding, the reference precompute of DPO, the final save, the reward
model's normalisation pass) run as usual.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vs_trl_common import PAD, Job, Recorder, read_jsonl, write_jsonl  # noqa: E402


def overrides(job: Job, data_file: Path) -> list[str]:
    out = Path(job.work_dir) / "out"
    base = {"model.path": job.model_dir, "data.train_file": str(data_file), "data.template": "raw",
            "train.output_dir": str(out), "train.max_steps": job.steps, "train.per_device_batch_size": job.batch_size,
            "train.lr": job.lr, "train.lr_schedule": "linear", "train.warmup_steps": 0, "train.weight_decay": 0.0,
            "train.max_grad_norm": 1.0, "train.save_every": 0, "train.progress_bar": False, "train.seed": 0}
    if job.stage == "dpo":
        base["beta"] = 0.1
        base["reference_cache_dir"] = str(Path(job.work_dir) / "ref-cache")
    if job.stage == "reward":
        base["normalize.mode"] = "none"  # scoring the training responses after the run: untimed, not needed
    return [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in {**base, **job.settings}.items()]


def data_for_rlhfkit(job: Job) -> Path:
    """SFT rows name the response ``response`` in rlhfkit's format (TRL's: ``completion``)."""
    if job.stage != "sft":
        return Path(job.data_file)
    rows = [{"prompt": r["prompt"], "response": r["completion"]} for r in read_jsonl(Path(job.data_file))]
    return write_jsonl(Path(job.work_dir) / "sft.jsonl", rows)


def sequence_tokens(batch: dict) -> int | None:
    """Real tokens counted per training sequence: a prompt shared by K responses counts K times."""
    if "segment_ids" not in batch:
        return None
    responses_per_row = batch["response_row"].bincount(minlength=len(batch["prompt_length"]))  # (G,)
    shared = int((batch["prompt_length"] * (responses_per_row - 1)).sum())
    return int((batch["input_ids"] != PAD).sum()) + shared


def run(job: Job) -> dict:
    from rlhfkit.config import load_config

    args = overrides(job, data_for_rlhfkit(job))
    if job.stage == "sft":
        from rlhfkit.trainers.sft import SFTConfig, train_sft

        train_sft(load_config(SFTConfig, None, args))
    elif job.stage == "reward":
        from rlhfkit.trainers.reward import RewardConfig, train_reward

        train_reward(load_config(RewardConfig, None, args))
    else:
        from rlhfkit.trainers.dpo import DPOConfig, train

        train(load_config(DPOConfig, None, args))
    return {"overrides": args}


def main() -> None:
    job = Job.from_json(sys.argv[1])
    Path(job.work_dir).mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(job.threads)
    from rlhfkit.engine.loop import TrainLoop

    recorder = Recorder(job.stage)
    fit_step = TrainLoop._fit_step

    def timed_fit_step(self, step, step_fn, weight_fn):
        recorder.step_begins()
        for batch in step.micro_batches:
            recorder.add_batch(batch, sequence_tokens(batch))
        if len(recorder.starts) == 1:
            recorder.notes["torch_threads_in_step"] = torch.get_num_threads()
        metrics = fit_step(self, step, step_fn, weight_fn)
        recorder.step_ends()
        return metrics

    TrainLoop._fit_step = timed_fit_step
    extra = run(job)
    import transformers

    recorder.notes.update({"transformers": transformers.__version__, "torch": torch.__version__, **extra})
    recorder.write(job)


if __name__ == "__main__":
    main()
