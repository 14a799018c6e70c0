"""`eval_user_sample`: evaluate on a fixed subset of users, the same for every model and seed.

Generative models rank by beam search, which costs far more per user than a dot product; on a CPU a
sweep may evaluate a subset. Users are drawn by `eval_user_sample_seed` from the raw user ids, so every
model in a sweep (same split) is scored on exactly the same users. An integer is a count, a float in
(0, 1) a share; null evaluates everyone.
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader


def sample_users(raw_user_ids: list[str], sample: int | float, seed: int) -> set[str]:
    """The raw ids of the users to keep: a count or a share of `raw_user_ids`, drawn by `seed`."""
    users = sorted(set(raw_user_ids))
    count = round(sample * len(users)) if isinstance(sample, float) else int(sample)
    if not 0 < count <= len(users) or (isinstance(sample, float) and not 0 < sample < 1):
        raise ValueError(f"eval_user_sample must be a count in 1..{len(users)} or a share in (0, 1), not {sample}")
    chosen = np.random.default_rng(seed).choice(len(users), size=count, replace=False)
    return {users[index] for index in chosen}


def restrict_to_users(loader: FullSortEvalDataLoader, keep: set[str]) -> FullSortEvalDataLoader:
    """A full-sort evaluation loader over the rows of `loader` whose user is in `keep`."""
    dataset = loader._dataset
    raw = dataset.id2token(dataset.uid_field, dataset.inter_feat[dataset.uid_field].numpy())
    rows = torch.from_numpy(np.isin(raw, list(keep))).nonzero().squeeze(1)
    subset = dataset.copy(dataset.inter_feat[rows])
    return FullSortEvalDataLoader(loader.config, subset, loader._sampler, shuffle=False)


def apply_eval_user_sample(config, valid_data, test_data):
    """`valid_data` and `test_data` restricted to the configured user sample (unchanged when unset)."""
    sample = config["eval_user_sample"]
    if not sample:
        return valid_data, test_data
    dataset = test_data._dataset
    raw = dataset.id2token(dataset.uid_field, dataset.inter_feat[dataset.uid_field].numpy())
    keep = sample_users([str(user) for user in raw], sample, config["eval_user_sample_seed"])
    return restrict_to_users(valid_data, keep), restrict_to_users(test_data, keep)
