"""Shared fixtures: one torch thread, a temporary working directory, tiny data cut from ml-100k."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import recbole_navigen  # noqa: F401  (applies the compatibility shims before any RecBole use)

TINY = "ml-tiny"
TINY_CONFIG = {
    "epochs": 1,
    "train_batch_size": 256,
    "eval_batch_size": 256,
    "show_progress": False,
    "state": "WARNING",
    "hidden_size": 16,
    "inner_size": 32,
    "embedding_size": 16,
    "n_layers": 1,
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
}

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """RecBole writes ./log, ./log_tensorboard and ./saved: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAVIGEN_DATA_PATH", raising=False)


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory) -> Path:
    """A data folder holding `ml-tiny/ml-tiny.inter`: the last 25 interactions of 40 ml-100k users."""
    import recbole

    source = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    inter = pd.read_csv(source, sep="\t")
    users = sorted(inter["user_id:token"].unique())[:40]
    inter = inter[inter["user_id:token"].isin(users)].sort_values(["user_id:token", "timestamp:float"])
    inter = inter.groupby("user_id:token").tail(25)
    root = tmp_path_factory.mktemp("data")
    (root / TINY).mkdir()
    inter[["user_id:token", "item_id:token", "timestamp:float"]].to_csv(
        root / TINY / f"{TINY}.inter", sep="\t", index=False
    )
    return root


@pytest.fixture()
def tiny_name() -> str:
    return TINY


@pytest.fixture()
def tiny_config(tiny_data_path) -> dict:
    return {**TINY_CONFIG, "data_path": str(tiny_data_path)}
