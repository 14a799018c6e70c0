"""Config layering and dataset resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import recbole_navigen.config as config_module
from recbole_navigen.config import Config, DatasetNotFoundError
from recbole_navigen.paths import DATASET_CONFIGS_DIR, PROPERTIES_DIR


def _write(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_each_layer_overrides_the_one_below(tmp_path, monkeypatch, tiny_name, tiny_config):
    properties, datasets = tmp_path / "properties", tmp_path / "dataset_configs"
    properties.mkdir(), datasets.mkdir()
    monkeypatch.setattr(config_module, "PROPERTIES_DIR", properties)
    monkeypatch.setattr(config_module, "DATASET_CONFIGS_DIR", datasets)
    # key_N is set by layer N and by the layer above it, which must win.
    _write(properties / "overall.yaml", {"stopping_step": 3, "train_neg_sample_args": None, "key_1": "overall", "key_2": "overall"})
    _write(properties / "SASRec.yaml", {"key_2": "model", "key_3": "model"})
    _write(datasets / f"{tiny_name}.yaml", {"key_3": "dataset", "key_4": "dataset"})
    user_file = _write(tmp_path / "user.yaml", {"key_4": "file", "key_5": "file"})
    config = Config(
        "SASRec",
        tiny_name,
        config_file_list=[user_file],
        config_dict={**tiny_config, "key_5": "dict", "key_6": "dict"},
        cmd_args=["--key_6=cmd"],
    )
    assert config["stopping_step"] == 3  # overall.yaml over RecBole's default of 10
    assert config["key_1"] == "overall"
    assert config["key_2"] == "model"
    assert config["key_3"] == "dataset"
    assert config["key_4"] == "file"
    assert config["key_5"] == "dict"
    assert config["key_6"] == "cmd"


def test_shipped_defaults_give_the_standard_protocol(tiny_name, tiny_config):
    config = Config("SASRec", tiny_name, config_dict=tiny_config, cmd_args=[])
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert config["eval_args"]["order"] == "TO" and config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert config["MAX_ITEM_LIST_LENGTH"] == 20
    assert config["topk"] == [5, 10, 20]
    assert config["metrics"] == ["Recall", "NDCG", "MRR"]


def test_ml_100k_uses_recbole_bundled_copy():
    config = Config("SASRec", "ml-100k", cmd_args=[])
    assert Path(config["data_path"], "ml-100k.inter").is_file()
    assert (PROPERTIES_DIR / "overall.yaml").is_file() and (DATASET_CONFIGS_DIR / "ml-100k.yaml").is_file()


def _amazon_like(root: Path) -> Path:
    folder = root / "amazon-instruments"
    folder.mkdir(parents=True)
    (folder / "amazon-instruments.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    return root


def test_amazon_alias_resolves_from_data_path_option(tmp_path):
    root = _amazon_like(tmp_path / "data")
    config = Config("SASRec", "amazon", cmd_args=[f"--data_path={root}"])
    assert config["dataset"] == "amazon-instruments" and config["dataset_name"] == "amazon"
    assert Path(config["data_path"]) == root / "amazon-instruments"
    assert config["load_col"]["item"] == ["item_id", "title", "brand", "categories", "description"]


def test_data_path_from_environment_and_option_wins(tmp_path, monkeypatch):
    from_env, from_option = _amazon_like(tmp_path / "env"), _amazon_like(tmp_path / "option")
    monkeypatch.setenv("NAVIGEN_DATA_PATH", str(from_env))
    assert Path(Config("SASRec", "amazon", cmd_args=[])["data_path"]).parent == from_env
    config = Config("SASRec", "amazon", config_dict={"data_path": str(from_option)}, cmd_args=[])
    assert Path(config["data_path"]).parent == from_option


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        Config("SASRec", "amazon", cmd_args=[f"--data_path={tmp_path}"])
    message = str(error.value)
    assert str(tmp_path / "amazon-instruments" / "amazon-instruments.inter") in message
    assert "--data_path" in message and "NAVIGEN_DATA_PATH" in message and "prepare_amazon" in message


def test_profile_sits_between_dataset_config_and_user_settings(tiny_name, tiny_config):
    config = Config("SASRec", "ml-100k", cmd_args=["--profile=cpu-small"])
    assert config["epochs"] == 6 and config["eval_user_sample"] == 100  # over ml-100k.yaml's epochs: 20
    config = Config("SASRec", "ml-100k", cmd_args=["--profile=cpu-small", "--epochs=7"])
    assert config["epochs"] == 7
    with pytest.raises(FileNotFoundError, match="unknown profile 'fast'.*cpu-small"):
        Config("SASRec", tiny_name, config_dict=tiny_config, cmd_args=["--profile=fast"])
