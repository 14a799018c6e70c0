"""Train and evaluate one model the RecBole way, and report what a comparison needs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from logging import getLogger
from pathlib import Path
from time import perf_counter

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_navigen.config import Config
from recbole_navigen.evaluation.sampling import apply_eval_user_sample
from recbole_navigen.utils import make_trainer


@dataclass
class RunResult:
    """Everything one train-and-evaluate run reports; `to_json` writes it for the sweep folder."""

    model: str
    dataset: str
    seed: int
    best_valid_score: float
    valid: dict[str, float]
    test: dict[str, float]
    train_seconds: float
    eval_users: int
    total_users: int
    eval_users_per_second: float
    n_params: int
    split_fingerprint: str
    checkpoint: str | None
    config: dict = field(repr=False)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def split_fingerprint(train_data, valid_data, test_data) -> str:
    """A short hash of every split's (user, item) pairs in raw ids: equal hashes mean identical splits."""
    digest = hashlib.sha1()
    for loader in (train_data, valid_data, test_data):
        dataset = loader._dataset
        for field_name in (dataset.uid_field, dataset.iid_field):
            tokens = dataset.id2token(field_name, dataset.inter_feat[field_name].numpy())
            digest.update("\x1f".join(map(str, tokens)).encode())
    return digest.hexdigest()[:16]


def run_model(
    model: str | type,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: list[str] | None = None,
    saved: bool = True,
    init_logging: bool = True,
) -> RunResult:
    """Train `model` on `dataset`, pick the best epoch on validation, evaluate it on test."""
    config = Config(model, dataset, config_file_list, config_dict, cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    if not config["single_spec"]:
        from recbole_navigen.distributed import make_shared_folders

        make_shared_folders(config)
    if init_logging:
        init_logger(config)
    logger = getLogger()
    logger.info(config)

    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    valid_data, test_data = apply_eval_user_sample(config, valid_data, test_data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    recommender = config.model_class(config, train_data._dataset)
    if config["dist_strategy"] != "fsdp":  # FSDP places each rank's shard itself: the whole never goes to a device
        recommender = recommender.to(config["device"])
    logger.info(recommender)
    trainer = make_trainer(config, recommender)

    start = perf_counter()
    best_valid_score, best_valid = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    train_seconds = perf_counter() - start
    start = perf_counter()  # timed with restoring the best checkpoint, as a user would run it
    test = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    eval_seconds = perf_counter() - start

    logger.info(set_color("best valid ", "yellow") + f": {best_valid}")
    logger.info(set_color("test result", "yellow") + f": {test}")
    eval_users = test_data.sample_size
    return RunResult(
        model=config["model"],
        dataset=config["dataset_name"],
        seed=config["seed"],
        best_valid_score=float(best_valid_score),
        valid={key: float(value) for key, value in best_valid.items()},
        test={key: float(value) for key, value in test.items()},
        train_seconds=round(train_seconds, 3),
        eval_users=eval_users,
        total_users=data.user_num - 1,
        eval_users_per_second=round(eval_users / max(eval_seconds, 1e-9), 2),
        n_params=sum(p.numel() for p in recommender.parameters()),
        split_fingerprint=split_fingerprint(train_data, valid_data, test_data),
        checkpoint=trainer.saved_model_file if saved else None,
        config=dict(config.final_config_dict),
    )


def run_identifiers(
    model: str | type,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: list[str] | None = None,
):
    """Build (or load from the cache) the identifiers of `dataset` under `model`'s settings."""
    from recbole_navigen.identifiers.build import build_identifiers

    config = Config(model, dataset, config_file_list, config_dict, cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    return build_identifiers(config, create_dataset(config))


def run_generate(checkpoint: str, users: int, output: str | Path, cmd_args: list[str] | None = None):
    """Predictions and instructions of the NaviGen checkpoint `checkpoint` for the first `users` test users,
    one JSON line each (`recbole_navigen.generation.instructions`); returns the GenerationSummary."""
    from recbole_navigen.generation.instructions import load_trained_navigen, write_generations

    _, model, test_data = load_trained_navigen(checkpoint, cmd_args)
    return write_generations(model, test_data, users, output)
