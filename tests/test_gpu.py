"""The GPU check (issue 17): generation on CUDA under every attention kernel installed, and one short bf16
training step per stage. Marked ``gpu`` and skipped without CUDA; ``benchmarks/gpu_check.sh`` runs it (about
ten minutes) and prints what to record in ``benchmarks/RESULTS.md``.

``RLHFKIT_GPU_CHECK_DEVICE=cpu`` runs the same tests on the CPU (a dry run of the test code itself; the
kernels and bf16 numerics that matter are the GPU's).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch

from rlhfkit.models.load import set_attention
from rlhfkit.models.tiny import DROPOUT_ARCHS, tiny_config
from rlhfkit.rollout.generate import generate, left_pad

DEVICE = os.environ.get("RLHFKIT_GPU_CHECK_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VOCAB, PAD, BOS, EOS = 96, 0, 1, 2


def flash_attention_2_installed() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return DEVICE == "cuda" and importlib.util.find_spec("flash_attn") is not None and is_flash_attn_2_available()


KERNELS = ["eager", "sdpa", pytest.param("flash_attention_2", marks=pytest.mark.skipif(
    not flash_attention_2_installed(), reason="flash-attn is not installed (or no CUDA)"))]


def build(arch: str, kernel: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, "small", vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                         dropout=0.1 if arch == "opt" else 0.0)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(DEVICE).eval()
    return set_attention(model, kernel)  # as every stage does; FA2 checks for CUDA, so after moving the model


def prompts(n: int = 16, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[BOS] + torch.randint(3, VOCAB, (int(k),), generator=g).tolist() for k in torch.randint(1, 20, (n,), generator=g)]


def dtype_for(kernel: str) -> torch.dtype:
    return torch.bfloat16 if kernel == "flash_attention_2" else torch.float32  # FA2 runs in half precision only


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("arch", DROPOUT_ARCHS)
def test_greedy_generation_equals_model_generate(arch, kernel):
    """The engine against ``model.generate`` with the same kernel, keeping finished rows: the same tokens (every
    row in float32; FA2 in bf16 decodes on model.generate's own path, so every row there too)."""
    model = build(arch, kernel, dtype_for(kernel))
    batch = prompts()
    ids, mask = left_pad(batch, PAD)
    with torch.no_grad():
        expected = model.generate(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), max_new_tokens=24,
                                  do_sample=False, eos_token_id=VOCAB + 1, pad_token_id=PAD)[:, ids.shape[1]:]
    ours = generate(model, batch, max_new_tokens=24, greedy=True, eos_token_id=VOCAB + 1, pad_token_id=PAD,
                    drop_finished=False)
    same = (ours.response_ids == expected).all(dim=1).float().mean().item()
    assert same == 1.0, f"{same:.0%} of rows identical ({arch}, {kernel})"


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("arch", DROPOUT_ARCHS)
def test_left_padding_never_changes_a_row(arch, kernel):
    """Batched (left-padded) vs one prompt at a time, greedy. float32: the same tokens, log-probs within 1e-4
    (other matrix shapes pick other GPU kernels); FA2 in bf16: rounding may flip a near-tie, so 90 % of rows."""
    model = build(arch, kernel, dtype_for(kernel))
    batch = prompts(8, seed=2)
    together = generate(model, batch, max_new_tokens=16, greedy=True, eos_token_id=VOCAB + 1, pad_token_id=PAD,
                        return_logprobs=True)
    same, worst = 0, 0.0
    for row, prompt in enumerate(batch):
        alone = generate(model, [prompt], max_new_tokens=16, greedy=True, eos_token_id=VOCAB + 1,
                         pad_token_id=PAD, return_logprobs=True)
        if torch.equal(alone.response_ids[0], together.response_ids[row]):
            same += 1
            worst = max(worst, float((alone.logprobs[0] - together.logprobs[row]).abs().max()))
    if dtype_for(kernel) == torch.float32:
        assert same == len(batch) and worst <= 1e-4, (same, worst)
    else:
        assert same >= 0.9 * len(batch), f"{same}/{len(batch)} rows identical"


# ---------------------------------------------------------------------------------------------------------
# One bf16 training step per stage, through the CLI
# ---------------------------------------------------------------------------------------------------------


def _finite_losses(out) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    losses = [r[k] for r in rows for k in ("train/loss", "ppo/policy/loss") if k in r]
    assert losses and all(math.isfinite(v) for v in losses), losses
    return losses


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "ppo"])
def test_one_bf16_step_per_stage(stage, tmp_path):
    from ppo_fixtures import save_policy_folder, save_prompts, save_reward_folder
    from stage_helpers import FAST_TRAIN, cli, colour_rows, model_dir, write_jsonl

    bf16 = ["train.mixed_precision=bf16", "train.max_steps=2", "train.progress_bar=false"]
    out = tmp_path / "out"
    if stage == "ppo":
        args = ["ppo", f"model.path={save_policy_folder(tmp_path)}", f"reward_model.path={save_reward_folder(tmp_path)}",
                f"data.train_file={save_prompts(tmp_path)}", f"train.output_dir={out}", "train.per_device_batch_size=8",
                "ppo.minibatch_size=4", "rollout.max_new_tokens=8", "data.max_prompt_length=32",
                "data.max_length=64", "rollout.print_samples=0", *bf16]
    else:
        base = model_dir(tmp_path)
        rows = colour_rows(16)
        if stage != "sft":  # preferences: the demonstrated colour over another
            rows = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": r["response"][:-1] + " maybe."}
                    for r in rows]
        data = write_jsonl(tmp_path / "data.jsonl", rows)
        args = [stage, f"model.path={base}", f"data.train_file={data}", f"train.output_dir={out}",
                "train.per_device_batch_size=4", "data.max_length=64", "data.max_prompt_length=32", *FAST_TRAIN,
                *bf16]
    assert cli(args) == 0
    _finite_losses(out)
