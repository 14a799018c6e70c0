"""Predictions and instructions of a trained NaviGen for test users, one JSON line per user.

A checkpoint is reloaded with the configuration it was trained with (RecBole stores it beside the weights),
so the backbone, identifiers, stage and adapters are rebuilt exactly; `--key=value` arguments still win
(a moved `data_path`, another `device`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_logger, init_seed

from recbole_navigen.config import Config
from recbole_navigen.distributed import one_process_settings
from recbole_navigen.fileio import write_text_atomic
from recbole_navigen.model.navigen_tasks import histories as histories_of

NOT_TRAINED = "not trained"  # parse status of a model that never saw cid2ins supervision


@dataclass(frozen=True)
class GenerationSummary:
    """Where the lines went and how the instruction replies parsed (`ok`, `ok after retry`, `failed`)."""

    path: Path
    users: int
    parse_status: dict[str, int]
    supervision: str | None

    def describe(self) -> str:
        return f"{self.users} users written to {self.path}; instructions: {dict(self.parse_status)}"


def load_trained_navigen(checkpoint: str | Path, cmd_args: list[str] | None = None):
    """(config, model, test loader) of a NaviGen checkpoint, rebuilt from the configuration it saved."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: train first (its path is in the run's log)")
    # Our own RecBole checkpoint: it pickles the Config beside the weights, which the safe loader refuses.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved_config = saved.get("config") if isinstance(saved, dict) else None
    if saved_config is None or "state_dict" not in saved:
        raise ValueError(f"{checkpoint} is not a checkpoint written by RecBole's trainer")
    model_name = saved_config["model"]
    # One process, whichever way it was trained (a distributed run's keys would join its process group).
    config = Config(model_name, saved_config["dataset_name"], None,
                    one_process_settings(saved_config.external_config_dict), list(cmd_args or []))
    if not hasattr(config.model_class, "generate_instructions"):
        raise ValueError(f"generate needs a NaviGen checkpoint; {checkpoint} holds a {model_name}")
    if config["device"].type == "cuda" and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    model = config.model_class(config, train_data._dataset).to(config["device"])
    model.load_checkpoint(str(checkpoint))
    model.eval()
    return config, model, test_data


def write_generations(model, test_data, users: int, output: str | Path) -> GenerationSummary:
    """The first `users` test users' lines: history, target (with its true terms), ranked items, the model's
    terms for its top item, and (when it trained on cid2ins) its reasoning, predicted terms and instruction
    with parse status."""
    dataset, items = test_data._dataset, model.items
    instructed = model.supervision is not None and model.task_ratios.get("cid2ins", 0) > 0
    lines: list[str] = []
    statuses: Counter[str] = Counter()

    def item(index: int) -> dict:
        return {"item": items.item_ids[index], "title": item_title(model.item_texts[index]),
                "text": model.item_texts[index], "tid": items.tid(index)}

    for interaction, *_ in test_data:
        interaction = interaction[torch.arange(min(len(interaction), users - len(lines)))].to(model.device)
        ranked = model.beam_search(interaction)
        top_tids = model.describe(ranked.items[:, 0].tolist())
        history = histories_of(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
        replies = model.generate_instructions(history) if instructed else [None] * len(history)
        targets = interaction[model.POS_ITEM_ID].tolist()
        for row, past in enumerate(history):
            line = {
                "user": str(dataset.id2token(dataset.uid_field, int(interaction[model.USER_ID][row]))),
                "history": [item(i) for i in past],
                "target": item(targets[row]),
                "predicted": [{"item": items.item_ids[i], "cid": items.cid(i), "score": round(float(score), 4)}
                              for i, score in zip(ranked.items[row].tolist(), ranked.scores[row].tolist(),
                                                  strict=True) if i > 0],
                "top_item_tid": top_tids[row],
                "supervision": model.supervision.teacher if instructed else None,
                **_instruction_fields(replies[row]),
            }
            statuses[line["parse_status"]] += 1
            lines.append(json.dumps(line, ensure_ascii=False))
        if len(lines) >= users:
            break
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, "\n".join(lines) + "\n")
    summary = GenerationSummary(output, len(lines), dict(statuses),
                                model.supervision.teacher if instructed else None)
    getLogger().info(f"generate: {summary.describe()}")
    return summary


def _instruction_fields(reply) -> dict:
    if reply is None:
        return {"predicted_tid": None, "instruction": None, "reasoning": None, "parse_status": NOT_TRAINED,
                "parse_error": None}
    answer, attempts = reply
    status = "failed" if answer.error else ("ok" if attempts == 1 else "ok after retry")
    return {"predicted_tid": answer.target_tid, "instruction": answer.instruction, "reasoning": answer.reasoning,
            "parse_status": status, "parse_error": answer.error}


def item_title(text: str) -> str:
    """An item's title: the value of the first field of its text (`movie_title: Heat; class: Action` ->
    `Heat`; `item_text_fields` start with the title). An item without text has its raw id as text."""
    first = text.split("; ", 1)[0]
    return first.split(": ", 1)[1] if ": " in first else first
