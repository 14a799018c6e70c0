"""The RL stage's reward measured on fixed held-out users: each user's mean cid2cid reward over G samples
drawn under the catalogue trie with a seeded generator, so two checkpoints are compared on the same users
and the same random stream. The training log's per-step means move with each batch's users; this does not.
"""

from __future__ import annotations

import torch

from recbole_navigen.model.navigen_tasks import histories
from recbole_navigen.rl.rollout import rollout_cid2cid


@torch.no_grad()
def probe_cid_rewards(model, loader, settings: dict, users: int, seed: int) -> list[float]:
    """Per-user mean cid2cid reward of the first `users` users of an evaluation loader (history -> its target)."""
    generator = torch.Generator().manual_seed(seed)
    group = settings["num_generations"]
    per_user: list[float] = []
    for interaction, *_ in loader:
        interaction = interaction[torch.arange(min(len(interaction), users - len(per_user)))].to(model.device)
        history = histories(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
        rollout = rollout_cid2cid(model, history, interaction[model.POS_ITEM_ID].tolist(), settings, generator)
        per_user += rollout.reward_tensor.view(-1, group).mean(dim=1).tolist()
        if len(per_user) >= users:
            break
    return per_user
