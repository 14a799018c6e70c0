"""Each shim of recbole_navigen.compat, shown by the RecBole call that failed without it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from recbole.config import Config as RecBoleConfig
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer

from recbole_navigen import compat
from recbole_navigen.config import Config


def test_recbole_config_builds_on_numpy_2(tiny_name, tiny_config):
    # RecBole's own Config, not the plugin's: compatibility_settings() reads the numpy 1 aliases.
    config = RecBoleConfig("SASRec", tiny_name, config_dict={**tiny_config, "train_neg_sample_args": None})
    assert config["model"] == "SASRec"
    assert np.float_ is np.float64 and np.bool8 is np.bool_


def test_recbole_quick_start_imports_without_pkg_resources():
    # recbole.quick_start imports ray.tune, which imports pkg_resources (gone in setuptools >= 81).
    from recbole.quick_start import load_data_and_model, run_recbole

    import pkg_resources

    assert callable(run_recbole) and callable(load_data_and_model)
    assert pkg_resources.get_distribution("numpy").version == np.__version__
    with pytest.raises(pkg_resources.DistributionNotFound):
        pkg_resources.get_distribution("no-such-distribution-here")


def test_sine_import_leaves_anomaly_mode_as_it_was():
    assert not torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(True)
    try:
        compat._sine_anomaly_mode()
        assert torch.is_anomaly_enabled()
    finally:
        torch.autograd.set_detect_anomaly(False)


def test_checkpoint_written_by_fit_reloads(tiny_name, tiny_config):
    config = Config("SASRec", tiny_name, config_dict=tiny_config, cmd_args=[])
    train, valid, test = data_preparation(config, create_dataset(config))
    model = config.model_class(config, train._dataset)
    trainer = Trainer(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # so that only a real reload can restore the trained weights
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    assert set(result) >= {"recall@10", "ndcg@10", "mrr@10"}
    assert any(parameter.abs().sum() > 0 for parameter in model.parameters())

    from recbole.quick_start import load_data_and_model

    loaded_config, loaded_model, *_ = load_data_and_model(trainer.saved_model_file)
    assert loaded_config["model"] == "SASRec"
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded_model.state_dict()[name])


def test_other_callers_keep_torch_safe_loading(tiny_name, tiny_config, tmp_path):
    # Only RecBole's own loaders trust pickled checkpoints; code elsewhere keeps weights_only=True.
    path = tmp_path / "pickled.pt"
    torch.save({"config": Config("SASRec", tiny_name, config_dict=tiny_config, cmd_args=[])}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    assert torch.load(path, weights_only=False)["config"]["model"] == "SASRec"
