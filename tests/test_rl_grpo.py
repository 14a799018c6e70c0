"""GRPO on the tiny NaviGen: advantages, the surrogate, rollouts, judges, one step, the log files."""

from __future__ import annotations

import csv

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_navigen.config import Config
from recbole_navigen.model.navigen import NaviGen
from recbole_navigen.quick_start import run_model
from recbole_navigen.rl.grpo import clipped_surrogate, group_advantages
from recbole_navigen.rl.judge import JudgeInput, OfflineJudge, parse_scores
from recbole_navigen.rl.log import write_rl_log
from tests.test_navigen import SMALL_NAVIGEN

RL_QUICK = {"rl_num_generations": 3, "rl_max_new_tokens": 12, "rl_lora_r": 2, "rl_lora_alpha": 4,
            "rl_lora_target_modules": ["q_proj", "v_proj"], "train_batch_size": 4, "max_length": 1024}


def test_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.2])
    advantages = group_advantages(rewards, 3)
    assert torch.allclose(advantages[:3], torch.tensor([1.0, -1.0, 0.0]), atol=1e-3)
    assert torch.equal(advantages[3:], torch.zeros(3))  # a group that scores alike teaches nothing
    assert torch.allclose(group_advantages(rewards, 3, scale=False)[:3], torch.tensor([0.5, -0.5, 0.0]))
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, 4)


def test_surrogate_kl_and_clipping():
    logps = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.9]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    advantages = torch.tensor([1.0, -1.0])
    loss, stats = clipped_surrogate(logps, logps, logps, advantages, mask, clip_epsilon=0.2, beta=0.1)
    assert stats.kl == 0.0 and stats.clip_fraction == 0.0
    assert loss.item() == pytest.approx(0.0)  # ratio 1: -(1 * 1) and -(1 * -1) averaged per completion
    old = logps - torch.tensor([[0.5, 0.0], [0.0, 0.0]])  # first token's ratio e^0.5 > 1.2: clipped
    _, stats = clipped_surrogate(logps, old, logps, advantages, mask, clip_epsilon=0.2, beta=0.1)
    assert stats.clip_fraction == pytest.approx(1 / 3)
    reference = logps + 0.3
    _, stats = clipped_surrogate(logps, logps, reference, advantages, mask, clip_epsilon=0.2, beta=0.1)
    assert stats.kl == pytest.approx(float(torch.exp(torch.tensor(0.3)) - 0.3 - 1), rel=1e-5)


def test_judge_answers_are_validated(tiny_text_encoder, tmp_path):
    good = ('{"specificity":0.8,"creativity":0.6,"content_quality":1,"visual_generatability":0.6,'
            '"ins_vs_true":0.85,"ins_vs_pred":0.6,"pred_vs_true":0.3}')
    assert parse_scores(good).ins_vs_true == 0.85
    assert parse_scores(good.replace("0.85", "1.5")) is None and parse_scores("no json") is None
    assert parse_scores(good.replace('"pred_vs_true":0.3', '"other":0.3')) is None
    judge = OfflineJudge(tiny_text_encoder, str(tmp_path))
    request = JudgeInput([["guitar", "strings"]], ["acoustic guitar", "bronze strings"], ["acoustic guitar"],
                         "Cinematic close-up of bronze strings on an acoustic guitar, warm window light, calm mood.")
    (scores,) = judge.score([request])
    values = [getattr(scores, name) for name in ("specificity", "creativity", "content_quality",
                                                  "visual_generatability", "ins_vs_true", "ins_vs_pred",
                                                  "pred_vs_true")]
    assert all(0.0 <= value <= 1.0 for value in values) and scores.visual_generatability > 0.5


@pytest.fixture()
def rl_base(tiny_name, tiny_item_config, tiny_text_encoder, tmp_path) -> dict:
    """Settings of an RL stage starting from a stage-2 checkpoint trained for two steps."""
    base = {**tiny_item_config, **SMALL_NAVIGEN, "text_encoder": tiny_text_encoder,
            "identifiers_dir": str(tmp_path / "ids"), "pretrained_cache_dir": str(tmp_path / "models")}
    stage_two = run_model("NaviGen", tiny_name, config_dict={**base, "epochs": 1, "train_steps_per_epoch": 2},
                          cmd_args=[])
    return {**base, **RL_QUICK, "stage": "rl", "init_from": stage_two.checkpoint}


def _rl_model(tiny_name, settings: dict):
    config = Config("NaviGen", tiny_name, config_dict=settings, cmd_args=[])
    train, _, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return NaviGen(config, train._dataset), train, test


@pytest.fixture()
def rl_model(tiny_name, rl_base):
    """A NaviGen in the RL stage (a small adapter), its training and test data, and the stage-2 checkpoint."""
    model, train, test = _rl_model(tiny_name, rl_base)
    return model, train, rl_base["init_from"], test


def test_one_grpo_step_changes_only_the_adapter(rl_model, tmp_path, monkeypatch):
    import recbole_navigen.rl.rollout as rollout

    model, train, stage_two, _ = rl_model
    # The random backbone earns every sample the same reward (no advantage, no gradient): vary it by code.
    monkeypatch.setattr(rollout, "cid_reward", lambda predicted, *args: predicted[0] / 8)
    model.rl_objective.task_ratios = {"cid2cid": 1.0}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    interaction = next(iter(train))
    loss = model.calculate_loss(interaction[torch.arange(4)])
    assert torch.isfinite(loss) and loss.requires_grad
    record = model.rl_objective.records[0]
    assert record["kl"] == pytest.approx(0.0, abs=1e-6)  # a fresh adapter is the reference policy
    assert record["completions"] == 4 * 3 and 0.0 <= record["valid_format_rate"] <= 1.0
    assert record["cid2cid_completions"] == 12 and record["reward_std"] > 0
    loss.backward()
    optimizer.step()
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed and changed <= trainable
    model.calculate_loss(interaction[torch.arange(4)])
    assert model.rl_objective.records[1]["kl"] > 0  # the policy has moved away from the reference

    model.rl_objective.task_ratios = {"cid2ins": 1.0}  # free sampling, judged when well formed
    model.calculate_loss(interaction[torch.arange(2)])
    record = model.rl_objective.records[2]
    assert record["cid2ins_completions"] == 6 and record["judge"] == "offline"
    assert {"cid2ins_gate_mean", "cid2ins_penalty_mean", "cid2ins_ins_vs_true_mean"} <= set(record)

    csv_path, plot = write_rl_log(model.rl_objective.records, tmp_path / "log")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 3 and float(rows[0]["completions"]) == 12 and plot.stat().st_size > 1000


def test_cid2cid_rollouts_name_catalogue_items_and_are_rewarded(rl_model):
    from recbole_navigen.rl.rollout import rollout_cid2cid

    model, train, _, _ = rl_model
    settings = {"num_generations": 4, "temperature": 1.0, "cid_level_weights": (0.5, 0.3, 0.2),
                "cid_prefix_conditioned": True, "cid_in_range_ratio": 0.3}
    rollout = rollout_cid2cid(model, [[1, 2], [3]], [5, 6], settings, torch.Generator().manual_seed(0))
    assert len(rollout.texts) == 8 and all(model.items.item_of_cid(t[15:-2]) for t in rollout.texts)
    assert rollout.completion_mask.sum(1).tolist() == [model.items.depth + 1] * 8  # code tokens + end token
    for reward in rollout.rewards:
        assert reward.format == 1.0 and reward.task_reward >= 0.15  # a catalogue item earns at least the bonus
        assert reward.reward == pytest.approx(0.9 * reward.task_reward + 0.1)


def test_probe_scores_held_out_users_reproducibly(rl_model):
    from recbole_navigen.rl.probe import probe_cid_rewards

    model, _, _, test = rl_model
    settings = {"num_generations": 3, "temperature": 1.0, "cid_level_weights": (0.5, 0.3, 0.2),
                "cid_prefix_conditioned": True, "cid_in_range_ratio": 0.3}
    first = probe_cid_rewards(model, test, settings, users=10, seed=1)
    assert len(first) == 10 and all(0.9 * 0.15 + 0.1 - 1e-6 <= value <= 1.0 for value in first)
    assert probe_cid_rewards(model, test, settings, users=10, seed=1) == first  # the same random stream


def test_rl_stage_runs_in_the_main_job_and_reloads(tiny_name, tiny_item_config, tiny_text_encoder, tmp_path):
    from recbole_navigen.generation.instructions import load_trained_navigen
    from recbole_navigen.pipeline import run_stages

    settings = {**tiny_item_config, **SMALL_NAVIGEN, "text_encoder": tiny_text_encoder,
                "identifiers_dir": str(tmp_path / "ids"), "pretrained_cache_dir": str(tmp_path / "models"),
                "epochs": 1, "train_steps_per_epoch": 2, "stages": [2, "rl"], "instruction_samples": 0,
                "stage_settings": {2: {"epochs": 1}, "rl": {**RL_QUICK, "rl_task_ratios": {"cid2cid": 1.0}}}}
    final = run_stages("NaviGen", tiny_name, config_dict=settings, cmd_args=[])
    rl_dir = final.config["checkpoint_dir"]
    assert final.config["stage"] == "rl" and rl_dir.endswith("/rl") and "stage2" in final.config["init_from"]
    rows = list(csv.DictReader(open(f"{rl_dir}/rl_log.csv")))
    assert len(rows) == 2 and all(float(row["valid_format_rate"]) == 1.0 for row in rows)
    summary = open(f"{rl_dir}/../summary.md").read()
    assert "| stage 2 | ran |" in summary and "| stage rl | ran |" in summary

    _, reloaded, test = load_trained_navigen(final.checkpoint, [])
    assert reloaded.rl_objective is not None
    trained = torch.load(final.checkpoint, weights_only=False)["state_dict"]
    assert set(trained) == {name for name, p in reloaded.named_parameters() if p.requires_grad}


def test_grpo_raises_a_learnable_reward(tiny_name, rl_base, monkeypatch):
    """Evidence the update learns: with a reward the policy can reach (first code level 0), 40 GRPO steps on
    the same four prompts raise the policy's expected reward, the probability it gives first level 0."""
    import recbole_navigen.rl.rollout as rollout

    model, train, _ = _rl_model(tiny_name, rl_base)
    torch.manual_seed(0)  # LoRA dropout draws from the global stream
    # Two SFT steps leave the code tokens' head rows alike (they start as the mean row): whatever the hidden
    # state, every first code is about as likely. Spread them as SFT would, so the policy can prefer one.
    head = model.llm.get_output_embeddings().weight
    with torch.no_grad():
        codes = model.token_table[model.token_table >= 0]
        head[codes] += torch.randn(len(codes), head.shape[1]) * head.std()
    monkeypatch.setattr(rollout, "cid_reward", lambda predicted, *args: float(predicted[0] == 0))
    model.rl_objective.task_ratios = {"cid2cid": 1.0}
    model.rl_objective.settings["num_generations"] = 8  # enough samples that most groups see a rewarded one
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    interaction = next(iter(train))[torch.arange(4)]
    before = _first_level_zero_probability(model, interaction)
    for _ in range(40):
        optimizer.zero_grad()
        model.calculate_loss(interaction).backward()
        optimizer.step()
    after = _first_level_zero_probability(model, interaction)
    assert after > before + 0.06, (before, after)  # about 0.11 -> 0.20 over seeds 0 to 3


@torch.no_grad()
def _first_level_zero_probability(model, interaction) -> float:
    """The mean probability, over the batch's prompts, that a constrained sample's first code is 0."""
    from recbole_navigen.decoding.beam_search import CausalStepper
    from recbole_navigen.model.navigen_tasks import CID2CID_ANSWER_PREFIX, cid2cid_prompt, encode_prompts, histories

    model.eval()
    history = histories(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
    batch = encode_prompts([cid2cid_prompt(model.items, past, model.history_format) for past in history],
                           model.hf_tokenizer, CID2CID_ANSWER_PREFIX)
    logits = CausalStepper(model.llm, batch["input_ids"], batch["attention_mask"]).start()
    rows, width = len(history), model.trie.k_max
    allowed = model.trie.allowed(torch.empty((rows, 0), dtype=torch.long))[:, :width]
    codes = logits.gather(1, model.token_table[0].clamp(min=0).expand(rows, width))
    probability = torch.softmax(codes.masked_fill(~allowed, float("-inf")), dim=-1)[:, 0].mean()
    model.train()
    return float(probability)
