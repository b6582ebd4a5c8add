"""`rlhfkit iterate`: rounds of sample → app → simulated annotators over HTTP → export → reward → PPO → eval."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from rlhfkit.cli import main as cli
from rlhfkit.config import ConfigError, load_config
from rlhfkit.iterate_config import IterateConfig, check_resume_safe

FAST = ["train.progress_bar=false"]


@pytest.fixture(scope="module")
def micro_sft(tmp_path_factory) -> Path:
    """A random micro Llama with a tokenizer trained on world text, standing in for the SFT policy."""
    import torch

    from rlhfkit.judges.simulated import world_sample_pairs
    from rlhfkit.models.tiny import build_tiny_model, save_tiny, train_tokenizer
    from rlhfkit.worlds import World

    torch.set_num_threads(1)
    world = World.build(0)
    texts = [p.text for p in world.train_prompts[:2000]] + [t for _, a, b in world_sample_pairs(world, 800)
                                                           for t in (a, b)]
    tokenizer = train_tokenizer(texts, vocab_size=500, style="world")
    out = tmp_path_factory.mktemp("iterate") / "sft"
    save_tiny(build_tiny_model("llama", "micro", tokenizer, seed=0), tokenizer, out)
    return out


MICRO_RECIPE = {
    "rounds": 2, "threads": 1,
    "sampling": {"prompts_per_round": 16, "max_new_tokens": 8, "batch_size": 32},
    # Random micro models write word salad (gold utility −1 for every sample); a taste for length gives
    # the simulated annotators something to prefer, with little noise (τ) so two votes often agree.
    "labels": {"annotators": 3, "overlap": 2, "min_votes": 2, "eval_fraction": 0.25, "tau": 0.02,
               "length_bias": 0.1},
    "reward": {"data": {"max_length": 96, "max_prompt_length": 64},
               "train": {"lr": 1.0e-3, "per_device_batch_size": 8, "num_epochs": 1, "save_every": 0,
                         "progress_bar": False}},
    "ppo": {"data": {"max_prompt_length": 64, "max_length": 96},
            "train": {"lr": 1.0e-3, "per_device_batch_size": 8, "max_steps": 2, "save_every": 0,
                      "progress_bar": False},
            "rollout": {"max_new_tokens": 8, "print_samples": 0}, "ppo": {"epochs": 1, "minibatch_size": 4}},
    "eval": {"prompts_per_family": 2, "samples": 1, "max_new_tokens": 8, "batch_size": 32},
}


def write_recipe(tmp_path: Path, sft: Path, **changes) -> Path:
    recipe = json.loads(json.dumps(MICRO_RECIPE))
    recipe.update(output_dir=str(tmp_path / "run"), sft_path=str(sft), **changes)
    path = tmp_path / "iterate.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_two_rounds_through_the_app_then_resume(tmp_path, micro_sft):
    from rlhfkit.data import load_rows
    from rlhfkit.feedback import commands
    from rlhfkit.judges.simulated import annotator_panel
    from rlhfkit.models import load_causal_lm, load_reward_model
    from rlhfkit.worlds import World

    recipe = write_recipe(tmp_path, micro_sft)
    assert cli(["iterate", "--config", str(recipe)]) == 0
    run = tmp_path / "run"
    rounds = json.loads((run / "rounds.json").read_text())["rounds"]
    assert [m["round"] for m in rounds] == [1, 2]

    # the app received and stored every judgment: overlap 2 on every imported pair, nothing left open
    db = f"sqlite:///{run / 'feedback.db'}"
    progress = commands.stats(db)["progress"]
    candidates = [len((run / f"round-{r}" / "candidates.jsonl").read_text().splitlines()) for r in (1, 2)]
    assert progress["items"] == sum(candidates) == sum(m["import"]["imported"] for m in rounds)
    assert progress["judgments"] == 2 * progress["items"] and progress["slots_left"] == 0
    assert sum(m["labels"]["submitted_now"] for m in rounds) == progress["judgments"]
    assert set(commands.stats(db)["annotators"]) == {"simulated-1", "simulated-2", "simulated-3"}

    # the labels are the simulated annotators' own, mapped back from screen order: two of the three agree
    world = World.build(0)
    panel = annotator_panel(world, 3, tau=0.02, length_bias=0.1)
    for r in (1, 2):
        exported = load_rows(run / f"round-{r}" / "export" / "preferences.train.jsonl", "preference").rows
        assert exported
        for row in exported:
            assert sum(a.compare(row.prompt, row.chosen, row.rejected) == "a" for a in panel) >= 2

    # the export fed the reward model: round 2 trained on every preference of rounds 1 and 2
    exports = [load_rows(run / f"round-{r}" / "export" / f"preferences.{s}.jsonl", "preference").n_read
               for r in (1, 2) for s in ("train",)]
    reward_cfg = yaml.safe_load((run / "round-2" / "reward.yaml").read_text())
    assert reward_cfg["data"]["train_file"] == str(run / "round-2" / "prefs.train.jsonl")
    assert reward_cfg["model"]["path"] == str(micro_sft)  # every reward model starts from SFT
    report = json.loads((run / "round-2" / "reward" / "data_report.json").read_text())
    assert report["train"]["rows_read"] == sum(exports) == rounds[1]["labels"]["preferences_so_far"]
    ppo_cfg = yaml.safe_load((run / "round-2" / "ppo.yaml").read_text())
    assert ppo_cfg["model"]["path"] == str(run / "round-1" / "ppo" / "final")  # PPO from the current policy
    assert ppo_cfg["reward_model"]["path"] == str(run / "round-2" / "reward" / "final")

    # each round's folders load
    for r in (1, 2):
        load_causal_lm(run / f"round-{r}" / "ppo" / "final")
        load_reward_model(run / f"round-{r}" / "reward" / "final")
        load_rows(run / f"round-{r}" / "prefs.train.jsonl", "preference")

    # the gold judge's figures, round against previous round (and round 2 against SFT)
    for m in rounds:
        figures = m["eval_vs_previous"]
        assert figures["counts/pairs"] == 10 and figures["kl/nats_per_seq"] is not None
        for key in ("gold/utility_a", "gold/utility_b", "gold/utility_delta", "gold/utility_delta_ci_low",
                    "win_rate/goal_decisive", "rates/a/incoherent"):
            assert key in figures
    assert "eval_vs_sft" in rounds[1] and "eval_vs_sft" not in rounds[0]

    # a re-run resumes: finished round 1 is not redone; round 2, its manifest removed, redoes only what is missing
    round1 = run / "round-1"
    stamps = {p: p.stat().st_mtime_ns for p in (round1 / "round.json", round1 / "ppo" / "final" / "config.json",
                                                round1 / "reward" / "final" / "config.json")}
    (run / "round-2" / "round.json").unlink()
    (run / "round-2" / "eval_vs_sft.json").unlink()
    assert cli(["iterate", "--config", str(recipe)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert commands.stats(db)["progress"]["judgments"] == progress["judgments"]  # nothing labelled twice
    again = json.loads((run / "rounds.json").read_text())["rounds"]
    assert again[0] == rounds[0]
    assert again[1]["eval_vs_sft"] == rounds[1]["eval_vs_sft"]  # re-evaluated, same samples, same figures
    assert again[1]["labels"]["submitted_now"] == 0 and again[1]["import"]["imported"] == 0


def test_people_mode_waits_until_every_pair_has_its_votes(tmp_path, micro_sft, monkeypatch):
    from rlhfkit.feedback import commands
    from rlhfkit.feedback.client import FeedbackClient
    from rlhfkit.iterate import Run, import_candidates, wait_for_people

    cfg = load_config(IterateConfig, write_recipe(tmp_path, micro_sft),
                      ["labels.source=people", "labels.port=0", "labels.poll_seconds=0.05"])
    run = Run(cfg)
    (run.round_dir(1)).mkdir(parents=True)
    rows = [{"prompt": "what is 7 plus 5?", "responses": ["12.", "13."]},
            {"prompt": "what is 2 plus 2?", "responses": ["4.", "i do not know."]}]
    (run.round_dir(1) / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    commands.init_db(run.db_url)
    assert import_candidates(run, 1) == {"imported": 2, "already_in_database": 0}
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (wait_for_people(run, 1), done.set()))
    waiter.start()
    deadline = time.monotonic() + 30
    while not (run.root / "app.json").exists():
        assert time.monotonic() < deadline and waiter.is_alive()
        time.sleep(0.02)
    url = json.loads((run.root / "app.json").read_text())["url"]
    for name in ("alice", "bob"):
        commands.create_user(run.db_url, name, "annotator", f"{name}-has-a-long-password")
        client = FeedbackClient(url)
        client.login(name, f"{name}-has-a-long-password")
        assert not done.is_set()  # still waiting for votes
        while (task := client.next_task()) is not None:
            client.submit(task.assignment_id, choice="A")
    waiter.join(30)
    assert done.is_set() and not (run.root / "app.json").exists()
    assert commands.stats(run.db_url)["progress"]["judgments"] == 4


def test_recipe_errors_name_the_key(tmp_path, micro_sft):
    recipe = write_recipe(tmp_path, micro_sft)
    cases = {
        "reward.train.lrr=1": "unknown key reward.train.lrr",
        "ppo.ppo.minibatch_size=64": "ppo.minibatch_size (64) must be between 1",
        "reward.model.path=x": "reward.model.path is set by rlhfkit iterate",
        "ppo.train.output_dir=x": "ppo.train.output_dir is set by rlhfkit iterate",
        "labels.min_votes=3": "labels.min_votes (3) exceeds labels.overlap (2)",
        "labels.annotators=1": "labels.annotators (1) must be at least labels.overlap",
        "reward.train.lr=fast": "reward.train.lr: expected a number",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(IterateConfig, recipe, [override])


def test_missing_sft_folder_and_a_changed_config_stop_before_any_work(tmp_path, micro_sft, capsys):
    recipe = write_recipe(tmp_path, micro_sft)
    assert cli(["iterate", "--config", str(recipe), f"sft_path={tmp_path / 'nope'}"]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    saved = load_config(IterateConfig, recipe)
    run = tmp_path / "run"
    run.mkdir()
    check_resume_safe(saved, run / "iterate.yaml")  # first run: saves the config
    check_resume_safe(load_config(IterateConfig, recipe, ["rounds=5", "labels.poll_seconds=3"]), run / "iterate.yaml")
    with pytest.raises(ConfigError, match="sampling.prompts_per_round changed"):
        check_resume_safe(load_config(IterateConfig, recipe, ["sampling.prompts_per_round=17"]), run / "iterate.yaml")
    assert not os.path.exists(run / "round-1")


def test_a_run_from_another_world_version_is_not_continued(tmp_path, micro_sft, capsys):
    from rlhfkit.iterate import world_fingerprint
    from rlhfkit.worlds import World, WorldConfig

    recipe = write_recipe(tmp_path, micro_sft)
    run = tmp_path / "run"
    run.mkdir()
    other = World.build(0, WorldConfig(max_operand=9))  # a different definition of world 0
    assert world_fingerprint(other) != world_fingerprint(World.build(0))
    (run / "world.json").write_text(json.dumps({"fingerprint": world_fingerprint(other)}))
    assert cli(["iterate", "--config", str(recipe)]) == 2
    assert "another version of the built-in world" in capsys.readouterr().err
    assert not (run / "round-1").exists()
