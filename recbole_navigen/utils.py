"""Model and trainer look-up: the plugin's own classes first, then RecBole's."""

from __future__ import annotations

import importlib

from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def _recommenders_in(module) -> dict[str, type]:
    return {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, AbstractRecommender) and name == value.__name__
    }


def plugin_models() -> dict[str, type]:
    """The models this plugin defines, by class name."""
    return _recommenders_in(importlib.import_module("recbole_navigen.model"))


def recbole_models() -> dict[str, type]:
    """Every model RecBole ships whose package imports on this machine, by class name."""
    models = {}
    for package in RECBOLE_MODEL_PACKAGES:
        try:
            module = importlib.import_module(f"recbole.model.{package}")
        except ImportError:  # exlib models need xgboost/lightgbm, which are optional.
            continue
        models.update(_recommenders_in(module))
    return models


def get_model(name: str) -> type[AbstractRecommender]:
    """Return the model class called `name`: the plugin's if it has one, otherwise RecBole's."""
    own = plugin_models()
    if name in own:
        return own[name]
    try:
        return recbole_get_model(name)
    except (ValueError, AttributeError, ImportError):
        # RecBole's search ends in its exlib package, whose import fails without lightgbm/xgboost.
        raise ValueError(
            f"Unknown model '{name}'. Plugin models: {', '.join(sorted(own)) or 'none yet'}. "
            f"RecBole models: {', '.join(sorted(set(recbole_models()) - set(own)))}."
        ) from None


def get_trainer(model_type, model_name: str):
    """Return `<model_name>Trainer` from the plugin if it defines one, otherwise RecBole's choice."""
    trainers = importlib.import_module("recbole_navigen.trainer")
    own = getattr(trainers, f"{model_name}Trainer", None)
    return own if own is not None else recbole_get_trainer(model_type, model_name)


def make_trainer(config, model):
    """The trainer `get_trainer` names for `config`'s model, made for a distributed run when RecBole's
    distributed keys are set (`recbole_navigen.distributed`)."""
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])
    if not config["single_spec"]:
        from recbole_navigen.distributed import distributed_trainer

        trainer = distributed_trainer(trainer)
    return trainer(config, model)
