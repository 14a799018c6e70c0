"""Item text, keyphrase TIDs and the cached identifier build on tiny data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from recbole.data import create_dataset

import run_recbole_navigen
from recbole_navigen.config import Config
from recbole_navigen.identifiers import build as build_module
from recbole_navigen.identifiers.build import build_identifiers
from recbole_navigen.identifiers.item_text import ItemTexts, build_item_texts
from recbole_navigen.identifiers.tid_keyphrase import extract_terms_keyphrase


@pytest.fixture()
def identifier_config(tiny_item_config, tiny_text_encoder, tmp_path) -> dict:
    return {**tiny_item_config, "text_encoder": tiny_text_encoder, "identifiers_dir": str(tmp_path / "ids"),
            "cid_codebook_size": 8, "kmeans_niter": 5}


def _dataset(tiny_name, config_dict):
    config = Config("SASRec", tiny_name, config_dict=config_dict, cmd_args=[])
    return config, create_dataset(config)


def test_item_texts_follow_the_configured_fields(tiny_name, tiny_item_config, caplog):
    _, dataset = _dataset(tiny_name, tiny_item_config)
    caplog.set_level(logging.WARNING)
    items = build_item_texts(dataset, ["movie_title", "class"])
    toy_story = items.item_ids.index("1")
    assert items.texts[toy_story] == "movie_title: Toy Story; class: Animation Children's Comedy"
    assert items.texts[0] == "" and len(items.texts) == dataset.item_num
    # The fixture blanks one item: it is reported, and its raw id becomes its text.
    assert len(items.missing) == 1 and items.report()["missing_text"] == 1
    assert items.texts[items.item_ids.index(items.missing[0])] == items.missing[0]
    assert "1 items have no text" in caplog.text
    with pytest.raises(ValueError, match="no text"):
        build_item_texts(dataset, ["movie_title"], missing_rule="error")


def test_unknown_text_field_names_it_and_the_loaded_ones(tiny_name, tiny_item_config):
    _, dataset = _dataset(tiny_name, tiny_item_config)
    with pytest.raises(KeyError, match="'movie_titel'.*movie_title"):
        build_item_texts(dataset, ["movie_titel"])


def test_keyphrase_terms_lead_with_category_and_brand():
    fields = {
        "title": ["", "Fender Stratocaster electric guitar", "Yamaha acoustic guitar strings set", "Boss tuner pedal"],
        "brand": ["", "Fender", "Yamaha", "Boss"],
        "categories": ["", "Instruments | Guitars | Electric Guitars", "Instruments | Strings", "Instruments | Tuners"],
    }
    items = ItemTexts(["[PAD]", "a", "b", "c"], fields, ["", "x", "y", "z"], [])
    terms = extract_terms_keyphrase(items, 4, ["title"], "categories", "brand")
    assert terms[0] == []
    assert terms[1][:2] == ["Electric Guitars", "Fender"] and len(terms[1]) <= 4
    assert terms[2][:2] == ["Strings", "Yamaha"]
    for item_terms in terms[1:]:
        lowered = [term.lower() for term in item_terms]
        assert len(lowered) == len(set(lowered))
        words = [word for term in lowered[2:] for word in term.split()]
        assert len(words) == len(set(words))  # phrases never restate one another
    assert any("stratocaster" in term for term in terms[1])


def test_build_caches_and_rebuilds_on_change(tiny_name, identifier_config, monkeypatch):
    config, dataset = _dataset(tiny_name, identifier_config)
    first = build_identifiers(config, dataset)
    codes = first.tokenizer.codes_tensor[1:]
    assert codes.shape[0] == dataset.item_num - 1
    assert len({tuple(row) for row in codes.tolist()}) == codes.shape[0]  # every item has its own code
    stats = json.loads((first.folder / "stats.json").read_text())
    assert stats["cid"]["method"] == "rq_kmeans" and stats["tid"]["method"] == "keyphrase"
    assert 0 < stats["cid"]["utilisation"][0] <= 1

    def must_not_build(*_, **__):
        raise AssertionError("identifiers were rebuilt although nothing changed")

    monkeypatch.setattr("recbole_navigen.identifiers.quantize.build_cids", must_not_build)
    again = build_identifiers(config, dataset)
    assert again.folder == first.folder and again.tokenizer.cid(5) == first.tokenizer.cid(5)

    monkeypatch.undo()
    cached = []
    real = build_module.load_or_build_embeddings

    def spy(*args):
        matrix, stats = real(*args)
        cached.append((stats["cached"], stats["dim"], stats["seconds"] >= 0))
        return matrix, stats

    monkeypatch.setattr(build_module, "load_or_build_embeddings", spy)
    changed, _ = _dataset(tiny_name, {**identifier_config, "cid_codebook_size": 4})
    rebuilt = build_identifiers(changed, dataset)
    assert rebuilt.folder != first.folder and rebuilt.tokenizer.level_sizes[:3] == [4, 4, 4]
    assert cached == [(True, 32, True)]  # only the quantizer changed: embeddings and their stats from the cache


def test_identifiers_command_prints_stats_and_samples(tiny_name, identifier_config, tmp_path, capsys):
    import yaml

    path = tmp_path / "ids.yaml"
    path.write_text(yaml.safe_dump(identifier_config))
    run_recbole_navigen.main(["identifiers", f"--dataset={tiny_name}", f"--config_files={path}"])
    printed = capsys.readouterr().out
    assert "| level | codebook size |" in printed and "collisions after: 0" in printed
    assert printed.count("<|cid_begin|>") == 10


def test_collaborative_and_fused_embeddings(tiny_name, identifier_config):
    from recbole_navigen.identifiers.embeddings import item_embeddings

    config, dataset = _dataset(tiny_name, {**identifier_config, "collab_epochs": 1, "item_embedding": "fused",
                                           "fused_text_weight": 0.25})
    items = build_item_texts(dataset, config["item_text_fields"])
    fused = item_embeddings(config, items.texts[1:], items.item_ids)
    # SASRec's item table (hidden_size 16 in the tiny config) after the 32-dim text encoder's output.
    assert fused.shape == (dataset.item_num - 1, 32 + 16)
    norms = np.linalg.norm(fused, axis=1)
    assert np.allclose(norms, np.sqrt(0.25**2 + 0.75**2), atol=1e-5)  # each part unit length, then weighted
    config, _ = _dataset(tiny_name, {**identifier_config, "collab_epochs": 1, "item_embedding": "collaborative"})
    collaborative = item_embeddings(config, items.texts[1:], items.item_ids)
    assert np.allclose(collaborative, fused[:, 32:] / 0.75, atol=1e-5)  # same seed, same training
