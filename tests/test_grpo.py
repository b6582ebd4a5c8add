"""The critic-free estimators on the online trainer: groups of n responses, no value model, β = 0 without a
reference, reward functions with row columns, the CLI, recipes, learning and resume (micro models)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from ppo_fixtures import FakeLoop, ppo_config, save_policy_folder, save_prompts, save_reward_folder

from rlhfkit.cli import main as cli
from rlhfkit.config import ConfigError
from rlhfkit.engine.metrics_log import read_metrics
from rlhfkit.trainers import ppo
from rlhfkit.trainers.critic_free import PolicyOnly, build_online_models
from rlhfkit.trainers.ppo import PPOTrainer, SamplingRNG, load_prompts, make_kl_controller

ROOT = Path(__file__).resolve().parents[1]

REWARDS = '''
def has_letter(prompts, completions, letter=None, **columns):
    """1 if the completion holds the row's letter; no opinion on rows without one."""
    letter = letter or [None] * len(completions)  # a file without the column (the eval prompts)
    return [None if l is None else float(l in c) for c, l in zip(completions, letter)]


def length(prompts, completions, **columns):
    return [len(c) / 10 for c in completions]


def spread(prompts, completions, letter=None, **columns):
    """Varies with the text on rows with a letter; 0 on the others, whose groups are then all equal."""
    letter = letter or [None] * len(completions)
    return [0.0 if l is None else (sum(map(ord, c)) % 97) / 97 for c, l in zip(completions, letter)]


def constant(prompts, completions, **columns):
    return [1.0] * len(completions)
'''


def reward_module(root: Path) -> Path:
    path = root / "toy_rewards.py"
    path.write_text(REWARDS)
    return path


def letter_prompts(root: Path, n: int = 16) -> Path:
    """Prompts with a ``letter`` column (the verifiable answer); every fourth row has none."""
    path = root / "letter_prompts.jsonl"
    words = ["what is 17 plus 25?", "the capital of Varnia is", "kill the process", "what is 3 plus 4?"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = {"prompt": words[i % 4]}
            if i % 4 != 3:
                row["letter"] = "e"
            f.write(json.dumps(row) + "\n")
    return path


def grpo_config(root: Path, *overrides: str):
    return ppo_config(root, "reward_model.path=", "advantage.estimator=grpo", "rollout.n=4",
                      "train.per_device_batch_size=4", f"data.train_file={letter_prompts(root)}",
                      f'rewards=[{{name: letter, function: "{reward_module(root)}:has_letter"}}]', *overrides)


def step_rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "event" not in r]


def test_a_grpo_step_samples_groups_and_uses_their_baseline_without_a_critic_or_reference(tmp_path):
    cfg = grpo_config(tmp_path, "kl.init_coef=0", "ppo.minibatch_size=8")
    models = build_online_models(cfg)
    assert isinstance(models.actor_critic, PolicyOnly) and models.reference is None and models.no_reference
    assert not any("value" in name for name, _ in models.actor_critic.named_parameters())
    loop = FakeLoop(models.actor_critic, lr=1e-3)
    encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer)
    rows = ppo.read_prompt_rows(cfg.data.train_file, cfg)
    trainer = PPOTrainer(cfg, models, loop, make_kl_controller(cfg.kl), SamplingRNG(0), prompts, None,
                         ([r.fields for r in rows], []))
    metrics = trainer.step(encoded[:4], 1)
    rollout = trainer.last_rollout
    assert len(rollout) == 16 and rollout.values is None and rollout.ref_logprobs is None
    # rows 4g … 4g+3 answer prompt g: the same prompt ids
    for g in range(4):
        assert all(torch.equal(rollout.query_ids[4 * g], rollout.query_ids[4 * g + j]) for j in range(4))
    # the advantages are each group's z-scores of the scores (an independent computation)
    scores = rollout.scores.tolist()
    for g in range(4):
        group = scores[4 * g : 4 * g + 4]
        spread = statistics.stdev(group)
        for j in range(4):
            i = 4 * g + j
            expected = 0.0 if max(group) == min(group) else (scores[i] - statistics.mean(group)) / (spread + 1e-6)
            n = int(rollout.response_mask[i].sum())
            assert rollout.advantages[i, :n].tolist() == pytest.approx([expected] * n, abs=1e-5)
    # the fourth prompt has no letter: no opinion, score 0, an all-equal group
    assert scores[12:16] == [0.0] * 4 and metrics["objective/equal_reward_groups"] >= 0.25
    assert "objective/kl" not in metrics and loop.updates == 4 * 2  # ppo.epochs × (16 rollouts / minibatch 8)
    for key in ("reward/letter/mean", "reward/letter/std", "ppo/policy/clipfrac_low", "ppo/policy/clipfrac_high",
                "response/length_min", "response/length_max"):
        assert key in metrics, key


def test_kl_as_a_loss_term_loads_the_reference_and_gae_is_still_ppo(tmp_path):
    cfg = grpo_config(tmp_path, "kl.penalty=loss", "kl.init_coef=0.1", "ppo.minibatch_size=16")
    models = build_online_models(cfg)
    assert models.reference is not None and not models.no_reference
    loop = FakeLoop(models.actor_critic, lr=0.0)
    encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer)
    rows = ppo.read_prompt_rows(cfg.data.train_file, cfg)
    trainer = PPOTrainer(cfg, models, loop, make_kl_controller(cfg.kl), SamplingRNG(0), prompts, None,
                         ([r.fields for r in rows], []))
    metrics = trainer.step(encoded[:4], 1)
    # the rewards carry no KL (it is in the loss), yet the KL is measured and the k3 term reported
    assert torch.equal(trainer.last_rollout.rewards.sum(dim=1), trainer.last_rollout.scores)
    assert "objective/kl" in metrics and metrics["ppo/policy/kl_loss"] == pytest.approx(0.0, abs=1e-6)  # π = π_ref
    ppo_models = build_online_models(ppo_config(tmp_path))
    assert not isinstance(ppo_models.actor_critic, PolicyOnly) and ppo_models.actor_critic.value_model is not None


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_micro_batches_give_the_update_of_the_whole_minibatch(tmp_path, aggregation):
    """The same rollout trained with ppo.micro_batch_size 3 and null ends at the same weights (exact accumulation
    of the aggregated loss; the weights did move, so the check has power)."""

    def trained(micro: str, mode: str) -> dict[str, torch.Tensor]:
        cfg = grpo_config(tmp_path, "kl.penalty=loss", "kl.init_coef=0.1", "ppo.minibatch_size=16", "ppo.epochs=1",
                          f"ppo.micro_batch_size={micro}", f"advantage.loss_aggregation={mode}",
                          f'rewards=[{{function: "{reward_module(tmp_path)}:length"}}]')  # varied in every group
        models = build_online_models(cfg)
        loop = FakeLoop(models.actor_critic, lr=0.5)
        encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer)
        rows = ppo.read_prompt_rows(cfg.data.train_file, cfg)
        trainer = PPOTrainer(cfg, models, loop, make_kl_controller(cfg.kl), SamplingRNG(0), prompts, None,
                             ([r.fields for r in rows], []))
        trainer.step(encoded[:4], 1)
        return {k: v.detach().clone() for k, v in models.actor_critic.state_dict().items()}

    whole, split = trained("null", aggregation), trained("3", aggregation)
    assert all(torch.allclose(whole[k], split[k], atol=1e-6) for k in whole)
    initial = build_online_models(grpo_config(tmp_path)).actor_critic.state_dict()
    assert max(float((whole[k] - initial[k]).abs().max()) for k in whole) > 1e-3  # the update is not empty


class GradLoop(FakeLoop):
    """FakeLoop without an optimizer that keeps each update's gradients."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model, lr=0.0)
        self.grads: list[dict[str, torch.Tensor]] = []

    def optimizer_step(self) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                           if p.grad is not None})
        super().optimizer_step()


def filtering_trainer(root: Path, function: str, *overrides: str) -> tuple[PPOTrainer, GradLoop, list]:
    cfg = grpo_config(root, "kl.penalty=loss", "kl.init_coef=0.1", "ppo.minibatch_size=16", "ppo.epochs=1",
                      "advantage.filter_zero_std_groups=true",
                      f'rewards=[{{function: "{reward_module(root)}:{function}"}}]', *overrides)
    models = build_online_models(cfg)
    loop = GradLoop(models.actor_critic)
    encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer)
    rows = ppo.read_prompt_rows(cfg.data.train_file, cfg)
    trainer = PPOTrainer(cfg, models, loop, make_kl_controller(cfg.kl), SamplingRNG(0), prompts, None,
                         ([r.fields for r in rows], []))
    return trainer, loop, encoded


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_filtered_groups_update_like_the_batch_without_them(tmp_path, aggregation):
    """advantage.filter_zero_std_groups: the gradient (policy loss + KL term, divided by the kept count) and the
    loss equal those of the rollout with the all-equal groups physically removed; kept, they change it."""
    trainer, loop, encoded = filtering_trainer(tmp_path, "spread", f"advantage.loss_aggregation={aggregation}")
    metrics = trainer.step(encoded[:4], 1)
    rollout = trainer.last_rollout
    scores = rollout.scores.tolist()
    equal = [max(scores[4 * g : 4 * g + 4]) == min(scores[4 * g : 4 * g + 4]) for g in range(4)]
    assert equal[3] and not all(equal)  # the letterless prompt's group (all 0) is dropped, some group is kept
    assert rollout.keep.tolist() == [0.0 if equal[i // 4] else 1.0 for i in range(16)]
    assert metrics["objective/dropped_rows"] == 4 * sum(equal)

    def update(part):
        loop.grads.clear()
        return trainer.update(part), loop.grads[0]

    kept = [i for i in range(16) if not equal[i // 4]]
    (stats, filtered), (removed_stats, removed) = update(rollout), update(rollout.index_select(kept).replace(keep=None))
    assert filtered.keys() == removed.keys()
    for name in filtered:
        torch.testing.assert_close(filtered[name], removed[name], atol=1e-7, rtol=1e-5)
    for key in ("ppo/policy/loss", "ppo/policy/kl_loss", "ppo/policy/clipfrac"):
        assert stats[key] == pytest.approx(removed_stats[key], abs=1e-7), key
    _, unfiltered = update(rollout.replace(keep=None))  # the dropped rows do weigh without the filter
    assert max(float((unfiltered[n] - removed[n]).abs().max()) for n in removed) > 1e-5


def test_a_step_whose_groups_are_all_dropped_takes_no_update(tmp_path):
    trainer, loop, encoded = filtering_trainer(tmp_path, "constant")
    before = {k: v.clone() for k, v in trainer.models.actor_critic.state_dict().items()}
    metrics = trainer.step(encoded[:4], 1)
    assert metrics["objective/dropped_rows"] == 16 and loop.updates == 0 and loop.grads == []
    assert all(torch.equal(v, trainer.models.actor_critic.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(("overrides", "message"), [
    (("advantage.estimator=rloo", "rollout.n=1"), "rollout.n must be >= 1, and >= 2 for advantage.estimator=rloo"),
    (("advantage.estimator=grpo", "rollout.n=2", "ppo.minibatch_size=9"), "ppo.minibatch_size (9)"),
    (("rollout.n=2",), "are for the critic-free estimators"),
    (("advantage.estimator=ppo",), "expected one of 'gae', 'grpo', 'dr_grpo', 'rloo', 'reinforce_pp'"),
    (("rewards=[{function: a:b}]",), "either as reward_model.path or as a source in rewards"),
    (("advantage.estimator=reinforce_pp", "advantage.filter_zero_std_groups=true"),
     "advantage.filter_zero_std_groups is for the group estimators (grpo, dr_grpo, rloo), whose all-equal groups "
     "carry no signal; advantage.estimator=reinforce_pp has no groups to filter"),
    (("advantage.filter_zero_std_groups=true",), "advantage.estimator=gae has no groups to filter"),
])
def test_bad_settings_are_one_sentence_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ppo_config(tmp_path, "train.per_device_batch_size=4", *overrides)


def cli_args(root: Path, command: str, *extra: str) -> list[str]:
    return [command, f"model.path={save_policy_folder(root)}", f"data.train_file={letter_prompts(root)}",
            f"data.eval_file={save_prompts(root, 4, 'eval.jsonl')}", f"train.output_dir={root / 'out'}",
            "train.per_device_batch_size=2", "train.max_steps=2", "train.progress_bar=false",
            "ppo.minibatch_size=4", "rollout.max_new_tokens=6", "data.max_prompt_length=32", "data.max_length=64",
            "rollout.print_samples=0", *extra]


def test_cli_grpo_with_a_reward_model_and_a_function_saves_the_policy_alone(tmp_path):
    from transformers import AutoModelForCausalLM

    rewards = (f'rewards=[{{name: rm, reward_model: "{save_reward_folder(tmp_path)}", weight: 0.5}}, '
               f'{{name: letter, function: "{reward_module(tmp_path)}:has_letter"}}]')
    assert cli(cli_args(tmp_path, "grpo", rewards, "rollout.n=2")) == 0
    rows = step_rows(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2]
    assert all("reward/rm/mean" in r and "reward/letter/mean" in r for r in rows)
    assert (tmp_path / "out" / "final" / "config.json").is_file() and not (tmp_path / "out" / "value_model").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")


def test_ppo_takes_reward_sources_too(tmp_path):
    args = cli_args(tmp_path, "ppo", "value_model.kind=head", "train.max_steps=1", "ppo.minibatch_size=2",
                    f'rewards=[{{name: letter, function: "{reward_module(tmp_path)}:has_letter"}}]')
    assert cli(args) == 0
    (row,) = step_rows(tmp_path / "out")
    assert "reward/letter/mean" in row and "ppo/val/loss" in row
    with pytest.raises(ConfigError, match="needs value_model.path"):
        ppo_config(tmp_path, "reward_model.path=", "rewards=[{function: a:b}]")


def test_a_failing_reward_function_stops_the_run_naming_it(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("def score(prompts, completions, **kw):\n    return [1.0]\n")
    args = cli_args(tmp_path, "rloo", "rollout.n=2", f'rewards=[{{function: "{tmp_path / "bad.py"}:score"}}]')
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert f"reward function {tmp_path / 'bad.py'}:score returned 1 scores for 4 responses" in err


@pytest.mark.parametrize("recipe", ["configs/grpo.yaml", "configs/rloo.yaml", "configs/grpo_lora.yaml"])
def test_recipes_run(tmp_path, recipe):
    command = "rloo" if "rloo" in recipe else "grpo"
    args = cli_args(tmp_path, command, "train.max_steps=1", "lora.r=2", "rollout.n=2",
                    f'rewards=[{{function: "{reward_module(tmp_path)}:has_letter"}}]')
    assert cli([args[0], "--config", str(ROOT / recipe), *args[1:]]) == 0
    final = tmp_path / "out" / "final"
    assert (final / ("adapter_config.json" if "lora" in recipe else "config.json")).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_grpo_raises_a_verifiable_reward(tmp_path, estimator):
    """The reward: 1 if the response contains the row's letter "e" (None on rows without one). A random micro
    model rarely writes it; the critic-free update must make it common."""
    cfg = grpo_config(tmp_path, f"advantage.estimator={estimator}", "train.max_steps=14", "kl.init_coef=0",
                      "train.lr=3e-3", "train.lr_schedule=constant", "rollout.n=4", "train.per_device_batch_size=8",
                      "ppo.minibatch_size=8")
    assert ppo.train(cfg).status == "completed"
    scores = [r["reward/letter/mean"] for r in step_rows(tmp_path / "out")]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert first < 0.4 and last > first + 0.3, scores


@pytest.mark.parametrize("recipe", ["configs/grpo.yaml", "configs/rloo.yaml", "configs/grpo_lora.yaml"])
def test_the_recipes_reward_functions_import(recipe):
    from rlhfkit.config import load_config
    from rlhfkit.rewards.sources import load_reward_function
    from rlhfkit.trainers.ppo_config import PPOConfig

    functions = [s.function for s in load_config(PPOConfig, ROOT / recipe).rewards if s.function]
    assert functions and all(callable(load_reward_function(f)) for f in functions)


@pytest.mark.slow
def test_grpo_ranks_hold_identical_policies(tmp_path):
    """2 CPU processes (accelerate launch): each samples its own groups, both apply the same updates."""
    from safetensors.torch import load_file
    from test_multiprocess import QUIET, assert_identical
    from test_multiprocess import run as run_processes

    args = cli_args(tmp_path, "grpo", "rollout.n=2", "train.lr=1e-2", "kl.penalty=loss", "kl.init_coef=0.1",
                    f'rewards=[{{name: letter, function: "{reward_module(tmp_path)}:has_letter"}}]',
                    "data.eval_file=null", *QUIET)
    two = run_processes(tmp_path, args, 2)
    assert_identical(two[0], two[1])
    assert not any("value" in k for k in two[0])
    initial = load_file(next(save_policy_folder(tmp_path).glob("*.safetensors")))
    trained = {k.removeprefix("policy."): v for k, v in two[0].items() if k.startswith("policy.")}
    assert max(float((trained[k] - initial[k]).abs().max()) for k in initial) > 1e-4  # it did train


def test_the_command_fills_the_estimator_only_when_nothing_names_one(tmp_path):
    from rlhfkit.trainers.grpo import estimator_overrides

    plain = tmp_path / "plain.yaml"
    plain.write_text("train: {max_steps: 1}\n")
    assert estimator_overrides("rloo", str(plain), ["a=1"]) == ["advantage.estimator=rloo", "a=1"]
    assert estimator_overrides("grpo", None, []) == ["advantage.estimator=grpo"]
    assert estimator_overrides("grpo", str(ROOT / "configs/rloo.yaml"), []) == []  # the recipe's rloo stays
    assert estimator_overrides("grpo", None, ["advantage.estimator=dr_grpo"]) == ["advantage.estimator=dr_grpo"]


def test_the_policy_forward_runs_a_repeated_prompt_once_with_the_full_forwards_values_and_gradients(tmp_path):
    """PolicyOnly's forward (the rollout's log-probs, the updates') over a group runs each distinct prompt once;
    log-probs, entropies and gradients equal the full query ⧺ response forward's to float rounding."""
    from rlhfkit.models import policy as policy_module

    cfg = grpo_config(tmp_path, "kl.init_coef=0")
    module = build_online_models(cfg).actor_critic
    assert module.share_prompts
    g = torch.Generator().manual_seed(0)
    vocab = module.policy.get_input_embeddings().weight.shape[0]
    query_ids = torch.randint(3, vocab, (3, 6), generator=g).repeat_interleave(2, 0)  # 3 prompts × 2
    query_mask = torch.ones_like(query_ids)
    query_mask[:2, :2] = 0  # the first prompt is shorter (left padding)
    response_ids = torch.randint(3, vocab, (6, 5), generator=g)
    response_mask = (torch.arange(5)[None] < torch.tensor([5, 2, 5, 4, 1, 5])[:, None]).long()

    def run():
        module.zero_grad()
        logprobs, entropy, _ = module(query_ids, query_mask, response_ids, response_mask, 0.8, with_entropy=True)
        (logprobs * torch.arange(1.0, 7.0)[:, None]).sum().backward()  # rows weighted differently
        return logprobs.detach(), entropy, [p.grad.clone() for p in module.parameters()]

    shared = run()
    full_path = policy_module.query_response_span_logits
    policy_module.query_response_span_logits = lambda *args: None  # the full forward
    try:
        full = run()
    finally:
        policy_module.query_response_span_logits = full_path
    assert (shared[0] - full[0]).abs().max() < 1e-5 and (shared[1] - full[1]).abs().max() < 1e-5
    assert (shared[0][response_mask == 0] == 0).all()
    for a, b in zip(shared[2], full[2]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_with_old_logprobs_forward_the_first_ratio_is_exactly_1_over_groups(tmp_path):
    """The rollout's log-probs and the update's come from the same computation per row — in micro-batches holding
    a prompt's group whole, split, or not at all (a prompt once still takes the query-then-response forwards;
    falling back to the full forward there gave 1 ± 5e-7) — so before any optimizer step π_θ / π_old is exactly 1."""
    cfg = grpo_config(tmp_path, "kl.init_coef=0", "ppo.minibatch_size=16", "ppo.micro_batch_size=5",
                      "rollout.old_logprobs=forward", "ppo.epochs=1")
    models = build_online_models(cfg)
    loop = FakeLoop(models.actor_critic, lr=1e-3)
    encoded, prompts = load_prompts(cfg.data.train_file, cfg, models.tokenizer)
    rows = ppo.read_prompt_rows(cfg.data.train_file, cfg)
    trainer = PPOTrainer(cfg, models, loop, make_kl_controller(cfg.kl), SamplingRNG(0), prompts, None,
                         ([r.fields for r in rows], []))
    metrics = trainer.step(encoded[:4], 1)
    assert metrics["ppo/ratio/max"] == 1.0 and metrics["ppo/ratio/mean"] == 1.0
