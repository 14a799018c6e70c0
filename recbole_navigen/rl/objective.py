"""NaviGen's loss in the RL stage: RecBole's Trainer calls `calculate_loss` on a batch of users; each user is
a prompt (cid2cid or cid2ins, drawn by `rl_task_ratios`), sampled `rl_num_generations` times; rewards become
group-normalised advantages, and the clipped surrogate with the KL to the reference policy (the adapter
switched off) is returned for the Trainer's backward and optimizer step. One update per rollout (TRL's
default), so the ratio is 1 at the update and the clip fraction 0; `rl_clip_epsilon` still bounds it.
"""

from __future__ import annotations

from statistics import mean, pstdev

import torch

from recbole_navigen.model.navigen_tasks import histories, task_mix
from recbole_navigen.rl.grpo import clipped_surrogate, completion_logprobs, group_advantages
from recbole_navigen.rl.judge import make_judge
from recbole_navigen.rl.rollout import Rollout, rollout_cid2cid, rollout_cid2ins
from recbole_navigen.rl.served import RolloutServer

RL_TASKS = ("cid2cid", "cid2ins")
# Extras logged as a count per step (the sum), not as mean and std per completion.
COUNTED_EXTRAS = ("judge_failures", "server_invalid")


def rollout_settings(config) -> dict:
    """The `rl_*` keys the rollouts and rewards read (samples per prompt, temperature, CID reward weights...)."""
    settings = {
        "num_generations": config["rl_num_generations"],
        "temperature": config["rl_temperature"],
        "max_new_tokens": config["rl_max_new_tokens"],
        "cid_level_weights": tuple(config["rl_cid_level_weights"]),
        "cid_prefix_conditioned": config["rl_cid_prefix_conditioned"],
        "cid_in_range_ratio": config["rl_cid_in_range_ratio"],
        "judge_failure_reward": config["rl_judge_failure_reward"],
    }
    if settings["num_generations"] < 2:
        raise ValueError("rl_num_generations must be at least 2: advantages compare samples of one prompt")
    return settings


class GRPOObjective:
    """Rollouts, rewards and the GRPO loss for NaviGen; `records` holds one row of diagnostics per step."""

    def __init__(self, config) -> None:
        self.task_ratios = dict(config["rl_task_ratios"])
        unknown = sorted(set(self.task_ratios) - set(RL_TASKS))
        if unknown:
            raise ValueError(f"rl_task_ratios: unknown tasks {unknown}; the RL stage trains {list(RL_TASKS)}")
        self.settings = rollout_settings(config)
        self.beta, self.clip_epsilon, self.scale = config["rl_beta"], config["rl_clip_epsilon"], config["rl_scale_rewards"]
        self.judge = make_judge(config) if self.task_ratios.get("cid2ins") else None
        self.generator = torch.Generator().manual_seed(config["seed"])
        self.server = RolloutServer.from_config(config)  # None: rollouts sampled locally
        self.records: list[dict] = []

    def __call__(self, model, interaction) -> torch.Tensor:
        history = histories(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
        targets = interaction[model.POS_ITEM_ID].tolist()
        tasks = task_mix(self.task_ratios, len(targets), self.generator)
        if self.server is not None:
            self.server.begin_step(model)  # syncs the served adapter with the policy when due
        rollouts = []
        for task in RL_TASKS:
            rows = [row for row, drawn in enumerate(tasks) if drawn == task]
            if not rows:
                continue
            past, goal = [history[row] for row in rows], [targets[row] for row in rows]
            if task == "cid2cid":
                sample = self.server.rollout_cid2cid if self.server else rollout_cid2cid
                rollouts.append(sample(model, past, goal, self.settings, self.generator))
            else:
                sample = self.server.rollout_cid2ins if self.server else rollout_cid2ins
                rollouts.append(sample(model, past, goal, self.settings, self.judge))
        total = sum(len(rollout.texts) for rollout in rollouts)
        loss, kls, clips = 0.0, [], []
        for rollout in rollouts:
            part, stats = self._loss(model, rollout)
            loss = loss + part * len(rollout.texts) / total
            kls.append(stats.kl)
            clips.append(stats.clip_fraction)
        self.records.append(self._record(rollouts, mean(kls), mean(clips)))
        return loss

    def _loss(self, model, rollout: Rollout):
        advantages = group_advantages(rollout.reward_tensor, self.settings["num_generations"], self.scale)
        inputs = (rollout.input_ids, rollout.attention_mask, rollout.completion_mask)
        with torch.no_grad(), model.llm.disable_adapter():
            reference = completion_logprobs(model.llm, *inputs)
        logps = completion_logprobs(model.llm, *inputs)
        return clipped_surrogate(logps, logps.detach(), reference, advantages.to(logps.device),
                                 rollout.completion_mask, self.clip_epsilon, self.beta)

    def _record(self, rollouts: list[Rollout], kl: float, clip_fraction: float) -> dict:
        rewards = [reward for rollout in rollouts for reward in rollout.rewards]
        row = {"step": len(self.records) + 1, "completions": len(rewards), "kl": kl, "clip_fraction": clip_fraction,
               "completion_length": mean(float(length) for rollout in rollouts
                                         for length in rollout.completion_mask.sum(dim=1).tolist()),
               "valid_format_rate": mean(reward.format for reward in rewards),
               "judge": self.judge.label if self.judge else "none"}
        row.update(_mean_std("reward", [reward.reward for reward in rewards]))
        for rollout in rollouts:
            task = rollout.task
            row[f"{task}_completions"] = len(rollout.rewards)
            for part in ("reward", "task_reward", "gate", "format", "penalty"):
                row.update(_mean_std(f"{task}_{part}", [getattr(reward, part) for reward in rollout.rewards]))
            for name, values in rollout.extras.items():
                counted = name in COUNTED_EXTRAS
                row.update({f"{task}_{name}": sum(values)} if counted else _mean_std(f"{task}_{name}", values))
        return row


def _mean_std(name: str, values: list[float]) -> dict[str, float]:
    return {f"{name}_mean": mean(values), f"{name}_std": pstdev(values)} if values else {}
