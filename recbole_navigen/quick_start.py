"""Train and evaluate one model the RecBole way, and report what a comparison needs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from logging import getLogger
from pathlib import Path
from time import perf_counter

import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed, set_color

from recbole_navigen.config import Config
from recbole_navigen.fileio import write_text_atomic
from recbole_navigen.model.navigen_tasks import histories as histories_of
from recbole_navigen.evaluation.sampling import apply_eval_user_sample
from recbole_navigen.utils import get_trainer


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
    if init_logging:
        init_logger(config)
    logger = getLogger()
    logger.info(config)

    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    valid_data, test_data = apply_eval_user_sample(config, valid_data, test_data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    recommender = config.model_class(config, train_data._dataset).to(config["device"])
    logger.info(recommender)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, recommender)

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


def run_stages(
    model: str | type,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: list[str] | None = None,
    init_logging: bool = True,
) -> RunResult:
    """`run_model` once per entry of the model's `stages` key (NaviGen: SFT stage 1, then stage 2), each
    stage starting from the best checkpoint of the one before; a model without `stages` runs once."""
    config_dict = dict(config_dict or {})
    config = Config(model, dataset, config_file_list, config_dict, cmd_args)
    stages = config["stages"]
    if not stages:
        return run_model(model, dataset, config_file_list, config_dict, cmd_args, init_logging=init_logging)
    results: list[RunResult] = []
    for index, stage in enumerate(stages):
        # Each stage checkpoints into its own folder: RecBole names files by model and second only.
        settings = {**config_dict, "stage": stage, "checkpoint_dir": f"{config['checkpoint_dir']}/stage{stage}"}
        if results:
            settings["init_from"] = results[-1].checkpoint
        results.append(run_model(model, dataset, config_file_list, settings, cmd_args,
                                 init_logging=init_logging and index == 0))
    logger = getLogger()
    for stage, result in zip(stages, results, strict=True):
        logger.info(set_color(f"stage {stage}", "blue") + f": test {result.test}, trained {result.train_seconds} s, "
                    f"checkpoint {result.checkpoint}")
    return results[-1]


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


def run_generate(
    model: str | type,
    dataset: str,
    checkpoint: str,
    users: int,
    output: str | Path,
    config_file_list: list[str] | None = None,
    cmd_args: list[str] | None = None,
) -> Path:
    """Predictions of a trained NaviGen for the first `users` test users, one JSON line each: history,
    target, ranked items with CIDs and scores, and the model's own TID for its top item."""
    config = Config(model, dataset, config_file_list, None, cmd_args)
    if not hasattr(config.model_class, "describe"):
        raise ValueError(f"generate needs a model that writes about items (NaviGen), not {config['model']}")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: train first (its path is in the run's log)")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    navigen = config.model_class(config, train_data._dataset).to(config["device"])
    navigen.load_checkpoint(checkpoint)
    navigen.eval()
    dataset_ = test_data._dataset
    items, lines, unparsed = navigen.items, [], 0
    for interaction, *_ in test_data:
        interaction = interaction[torch.arange(min(len(interaction), users - len(lines)))].to(config["device"])
        result = navigen.beam_search(interaction)
        tids = navigen.describe(result.items[:, 0].tolist())
        unparsed += tids.count(None)
        histories = histories_of(interaction[navigen.ITEM_SEQ], interaction[navigen.ITEM_SEQ_LEN])
        for row, history in enumerate(histories):
            lines.append(json.dumps({
                "user": str(dataset_.id2token(dataset_.uid_field, int(interaction[navigen.USER_ID][row]))),
                "history": [{"item": items.item_ids[i], "text": navigen.item_texts[i]} for i in history],
                "target": items.item_ids[int(interaction[navigen.POS_ITEM_ID][row])],
                "predicted": [{"item": items.item_ids[i], "cid": items.cid(i), "score": round(float(score), 4)}
                              for i, score in zip(result.items[row].tolist(), result.scores[row].tolist(),
                                                  strict=True) if i > 0],
                "predicted_tid": tids[row],
                "tid_parsed": tids[row] is not None,
                "instruction": None,  # written once NaviGen trains on cid2ins supervision
            }, ensure_ascii=False))
        if len(lines) >= users:
            break
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, "\n".join(lines) + "\n")
    getLogger().info(f"generate: {len(lines)} users written to {output}; {unparsed} TIDs did not parse; "
                     "instructions need cid2ins supervision, not configured")
    return output
