"""DPO under ``train.mixed_precision=bf16``: π_ref's log-probs — precomputed, on the fly from a frozen copy, or the
LoRA policy with adapters disabled — come from the autocast the policy runs in, so at step 0 (policy = reference)
every pair's margin is ~0 and the loss is ln 2 (issue 17: in float32 against bf16 the margins were ±0.2…±1.8 per
pair and the loss started at 0.682)."""

from __future__ import annotations

import math

import pytest
import torch

try:
    from test_dpo_common import cli_args, make_data, model_dir, read_metrics
except ImportError:  # tests/ imported as a package
    from tests.test_dpo_common import cli_args, make_data, model_dir, read_metrics

from rlhfkit.models.tiny import ARCHS

SCALE = 40.0  # weight matrices × this: logits as peaked as a trained model's, so bf16 rounding shows


def sharp_model_dir(root, arch: str):
    """A micro model whose weight matrices are scaled up: random micro weights give near-uniform logits on
    which bf16 and float32 agree to ~1e-3 nats, a trained model's do not (issue 17: |margin| up to 1.8)."""
    from rlhfkit.models.load import load_causal_lm, load_tokenizer

    out = root / f"sharp-{arch}"
    if not (out / "config.json").exists():
        model = load_causal_lm(model_dir(root, arch=arch))
        with torch.no_grad():
            for param in model.parameters():
                if param.ndim >= 2:
                    param.mul_(SCALE)
        model.save_pretrained(out)
        load_tokenizer(model_dir(root, arch=arch)).save_pretrained(out)
    return out


MODES = {"precompute": ["reference_mode=precompute"], "on_the_fly": ["reference_mode=on_the_fly"],
         "lora_adapters_off": ["reference_mode=on_the_fly", "lora.enabled=true", "lora.r=4"]}


class Recording:
    """A :class:`PreferenceObjective` that keeps every per-pair output."""

    def __init__(self, objective) -> None:
        self.objective, self.outputs = objective, []

    def __call__(self, *args):
        self.outputs.append(self.objective(*args))
        return self.outputs[-1]

    def metrics(self, *args):
        return self.objective.metrics(*args)


def first_step_margins(root, arch: str, mode: str, precision: str) -> tuple[torch.Tensor, float]:
    """Per-pair margins β·[(log π_θ − log π_ref)(y_w) − (log π_θ − log π_ref)(y_l)] and the mean loss of the
    first micro-batch, with the policy prepared by the loop's own Accelerator (as training runs it)."""
    from rlhfkit.config import load_config
    from rlhfkit.data.collate import pad_token_id_for
    from rlhfkit.engine.loop_support import make_accelerator
    from rlhfkit.models.load import load_tokenizer
    from rlhfkit.trainers.dpo import (
        DPOConfig,
        DPOStep,
        Pair,
        PreferenceCollator,
        PreferenceObjective,
        encode_rows,
        load_models,
        prepare_reference,
        read_rows,
        use_shared_prompt,
    )

    make_data(root, n_train=16, n_eval=0)
    args = cli_args(root, "out", f"train.mixed_precision={precision}", *MODES[mode],
                    model=sharp_model_dir(root, arch))[1:]
    cfg = load_config(DPOConfig, None, [a for a in args if not a.startswith("data.eval_file")])
    tokenizer = load_tokenizer(cfg.model.path)
    data = {"train": encode_rows(cfg, tokenizer, read_rows(cfg)[0], "train")}
    accelerator = make_accelerator(cfg.train.mixed_precision)
    policy, sources, tables, _ = prepare_reference(cfg, *load_models(cfg), tokenizer, data, accelerator.device, True)
    shared = use_shared_prompt(cfg, policy)
    model = accelerator.prepare(policy)
    model.train()
    objective = Recording(PreferenceObjective("dpo", cfg.beta))
    step = DPOStep(objective, sources["train"])
    batch = PreferenceCollator(pad_token_id_for(tokenizer), tables["train"], shared)(
        [Pair(i, e) for i, e in enumerate(data["train"][:8])])
    loss, _ = step(model, batch)
    out = objective.outputs[0]
    return (out.chosen_rewards - out.rejected_rewards).detach().float(), float(loss)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_margins_at_step_zero_are_zero_and_the_loss_is_ln2(tmp_path, arch, mode):
    margins, loss = first_step_margins(tmp_path, arch, mode, "bf16")
    assert float(margins.abs().max()) <= 1e-2, margins
    assert loss == pytest.approx(math.log(2), abs=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_changes_the_numbers_so_the_check_has_power(tmp_path, arch):
    """The policy's bf16 forward itself differs from float32 by more than the tolerance above on these
    models: a reference computed in float32 would fail it."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.models.policy import response_logprobs

    model = load_causal_lm(sharp_model_dir(tmp_path, arch)).eval()
    ids = torch.randint(3, 290, (8, 24), generator=torch.Generator().manual_seed(0))
    mask, response = torch.ones_like(ids), torch.zeros_like(ids)
    response[:, 8:] = 1
    with torch.no_grad():
        exact = response_logprobs(model, ids, mask, response).sum(dim=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = response_logprobs(model, ids, mask, response).sum(dim=1)
    assert float((exact - bf16).abs().max()) * 0.1 > 2e-2  # β = 0.1 times the log-prob difference


def test_the_cli_starts_a_bf16_run_at_ln2(tmp_path):
    from rlhfkit.cli import main as cli

    make_data(tmp_path, n_train=16, n_eval=8)
    assert cli(cli_args(tmp_path, "run", "train.mixed_precision=bf16", "train.max_steps=1",
                        model=sharp_model_dir(tmp_path, "llama"))) == 0
    first = read_metrics(tmp_path / "run")[0]
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-3)
