"""Item embeddings that the CID quantizer reads, from one of three sources (`item_embedding`):

- `text`: a sentence-embedding model (`text_encoder`: a local folder, a hub name, or the offline alias
  `all-minilm-l6-v2`) over each item's text, mean-pooled and L2-normalised;
- `collaborative`: the item embedding table of a RecBole model (`collab_model`, e.g. SASRec) trained on
  the training split, with the validation split for early stopping; test interactions are never seen;
- `fused`: both, each L2-normalised, concatenated with weights `fused_text_weight` and 1 - that.

Row i is internal item id i + 1: the padding item 0 has no embedding.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)
SOURCES = ("text", "collaborative", "fused")


def _normalise(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


class SentenceEncoder:
    """A sentence-embedding model (a folder, hub name or offline alias), loaded once: mean-pooled,
    L2-normalised embeddings of texts."""

    def __init__(self, encoder: str, cache_dir: str, max_length: int) -> None:
        from transformers import AutoModel, AutoTokenizer

        from recbole_navigen.llm.pretrained import resolve_pretrained

        folder = resolve_pretrained(encoder, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        # Never past the model's own positions, whatever `text_encoder_max_length` asks.
        self.max_length = min(max_length, getattr(self.model.config, "max_position_embeddings", max_length))

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """[len(texts), dim] float32 rows, one per text."""
        # Longest texts first, so each batch pads to similar lengths; the order is restored at the end.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        rows = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="text embeddings", unit="batch") if progress else starts:
            index = order[start : start + batch_size]
            batch = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            rows[index] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
        return _normalise(rows)


def text_embeddings(
    texts: list[str], encoder: str, cache_dir: str, batch_size: int, max_length: int
) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings of `texts` ([len(texts), dim] float32)."""
    return SentenceEncoder(encoder, cache_dir, max_length).encode(texts, batch_size, progress=True)


def collaborative_embeddings(config, item_ids: list[str]) -> np.ndarray:
    """The item table of `config['collab_model']` trained on `config`'s training split (rows = items 1..n).

    `item_ids` are the raw ids the identifiers are built for; the collaborative model's dataset must
    number them identically."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_navigen.config import Config
    from recbole_navigen.utils import get_trainer

    # The user's own settings (files, dict, command line) give the dataset exactly as `config` sees it.
    settings = {**config.external_config_dict, "epochs": config["collab_epochs"], "seed": config["seed"]}
    collab = Config(config["collab_model"], config["dataset_name"], config_dict=settings, cmd_args=[])
    init_seed(collab["seed"], collab["reproducibility"])
    dataset = create_dataset(collab)
    if list(dataset.field2id_token[dataset.iid_field]) != list(item_ids):
        raise ValueError(f"collab_model {collab['model']} numbers the items of {config['dataset_name']} differently")
    train_data, valid_data, _ = data_preparation(collab, dataset)
    model = collab.model_class(collab, train_data._dataset)
    if not isinstance(getattr(model, "item_embedding", None), torch.nn.Embedding):
        raise ValueError(f"collab_model {collab['model']} has no item_embedding table to take embeddings from")
    trainer = get_trainer(collab["MODEL_TYPE"], collab["model"])(collab, model)
    logger.info("collaborative embeddings: training %s on the training split", collab["model"])
    trainer.fit(train_data, valid_data, saved=True, show_progress=collab["show_progress"])
    # The best epoch is in the checkpoint this trainer just wrote (the model in memory is the last one).
    state = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)["state_dict"]
    return _normalise(state["item_embedding.weight"][1:].numpy().astype(np.float32))


def item_embeddings(config, texts: list[str], item_ids: list[str]) -> np.ndarray:
    """Embeddings of items 1..n from the source `config['item_embedding']` names."""
    source = config["item_embedding"]
    if source not in SOURCES:
        raise ValueError(f"item_embedding must be one of {SOURCES}, not {source!r}")
    parts = []
    if source in ("text", "fused"):
        parts.append(text_embeddings(texts, config["text_encoder"], config["pretrained_cache_dir"],
                                     config["text_encoder_batch_size"], config["text_encoder_max_length"]))
    if source in ("collaborative", "fused"):
        parts.append(collaborative_embeddings(config, item_ids))
    if source == "fused":
        weight = float(config["fused_text_weight"])
        return np.concatenate([parts[0] * weight, parts[1] * (1 - weight)], axis=1).astype(np.float32)
    return parts[0]
