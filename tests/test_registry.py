"""get_model / get_trainer: the plugin's classes first, RecBole's otherwise, clear error if neither."""

from __future__ import annotations

import pytest
from recbole.model.sequential_recommender import GRU4Rec, SASRec
from recbole.trainer import Trainer
from recbole.utils import ModelType

import recbole_navigen
import recbole_navigen.model
import recbole_navigen.trainer


def test_recbole_models_resolve():
    assert recbole_navigen.get_model("SASRec") is SASRec
    assert recbole_navigen.get_model("GRU4Rec") is GRU4Rec


def test_plugin_model_wins_over_recbole(monkeypatch):
    class SASRec(GRU4Rec):  # a plugin class that shares a RecBole model's name
        pass

    monkeypatch.setattr(recbole_navigen.model, "SASRec", SASRec, raising=False)
    assert recbole_navigen.get_model("SASRec") is SASRec


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError) as error:
        recbole_navigen.get_model("SASRek")
    message = str(error.value)
    assert "Unknown model 'SASRek'" in message
    assert "SASRec" in message and "GRU4Rec" in message and "Plugin models" in message


def test_trainer_lookup(monkeypatch):
    assert recbole_navigen.get_trainer(ModelType.SEQUENTIAL, "SASRec") is Trainer

    class SASRecTrainer(Trainer):
        pass

    monkeypatch.setattr(recbole_navigen.trainer, "SASRecTrainer", SASRecTrainer, raising=False)
    assert recbole_navigen.get_trainer(ModelType.SEQUENTIAL, "SASRec") is SASRecTrainer
