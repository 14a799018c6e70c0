"""The supervision samples: one per user, taken from the training split only (the user's last training
target and the history before it), so no validation or test item ever reaches the teacher."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass

import numpy as np

from recbole_navigen.identifiers.item_tokenizer import ItemTokenizer


@dataclass(frozen=True)
class Sample:
    """One user's last training example in raw ids, with the TIDs of its items.

    `history` is the whole training history RecBole keeps (oldest first, at most MAX_ITEM_LIST_LENGTH
    items); the teacher is shown its last `shown` items only (`shown_tids`).
    """

    sample_id: str
    user: str
    history: list[str]
    target: str
    history_tids: list[list[str]]
    target_tid: list[str]
    shown: int

    @property
    def shown_tids(self) -> list[list[str]]:
        """The TIDs of the most recent `shown` history items, oldest first."""
        return self.history_tids[-self.shown:]


def _fields(config, train_dataset) -> tuple[str, str, str, str]:
    names = (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"],
             config["ITEM_LIST_LENGTH_FIELD"], config["ITEM_ID_FIELD"])
    columns = set(train_dataset.inter_feat.columns)
    missing = [name for name in names if name not in columns]
    if missing:
        raise KeyError(f"the training split lacks the fields {missing} (has {sorted(columns)}): supervision needs "
                       "RecBole's augmented sequential data (a sequential model such as SASRec or NaviGen)")
    return names


def last_training_rows(config, train_dataset) -> dict[int, int]:
    """Internal user id -> row of its longest-history training example; among equally long rows (histories
    are cut at MAX_ITEM_LIST_LENGTH) the last one, whose target is the user's last training item."""
    user_field, _, length_field, _ = _fields(config, train_dataset)
    feat = train_dataset.inter_feat
    users = feat[user_field].numpy()
    lengths = feat[length_field].numpy()
    order = np.lexsort((np.arange(len(users)), lengths, users))  # by user, then length, then row
    last_of_user = np.append(users[order][1:] != users[order][:-1], True)
    return {int(users[row]): int(row) for row in order[last_of_user]}


def choose_users(tokens: list[str], max_users: int | None, seed: int) -> list[str]:
    """All user tokens sorted, or `max_users` of them drawn with `seed` and then sorted."""
    if max_users is not None and (not isinstance(max_users, int) or isinstance(max_users, bool) or max_users < 1):
        raise ValueError(f"supervision_max_users must be a positive integer or ~ (all users), not {max_users!r}")
    ordered = sorted(tokens)
    if max_users is None or max_users >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, max_users))


def training_samples(config, train_dataset, tokenizer: ItemTokenizer, max_users: int | None, seed: int,
                     shown: int) -> list[Sample]:
    """One sample per user (or per drawn user), sorted by user token, from the training split only."""
    if not isinstance(shown, int) or shown < 1:
        raise ValueError(f"supervision_max_history must be a positive integer, not {shown!r}")
    user_field, list_field, length_field, item_field = _fields(config, train_dataset)
    feat = train_dataset.inter_feat
    rows = last_training_rows(config, train_dataset)
    tokens = {str(train_dataset.id2token(user_field, user)): user for user in rows}
    samples = []
    for token in choose_users(list(tokens), max_users, seed):
        row = rows[tokens[token]]
        length = int(feat[length_field][row])
        history = [int(item) for item in feat[list_field][row][:length].tolist()]
        target = int(feat[item_field][row])
        samples.append(Sample(
            sample_id=f"{config['dataset_name']}:{token}",
            user=token,
            history=[tokenizer.item_ids[item] for item in history],
            target=tokenizer.item_ids[target],
            history_tids=[tokenizer.tid(item) for item in history],
            target_tid=tokenizer.tid(target),
            shown=shown,
        ))
    return samples


def fingerprint(samples: list[Sample]) -> str:
    """A short hash of the samples' users, items and TIDs: equal hashes mean the teacher sees the same data."""
    payload = json.dumps([asdict(sample) for sample in samples], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
