"""The plugin's `Config`: RecBole's own, with the plugin's YAML layered in and datasets resolved.

Precedence, lowest first: RecBole's defaults < `properties/overall.yaml` < `properties/<Model>.yaml`
< `dataset_configs/<dataset>.yaml` < `properties/profiles/<profile>.yaml` (when `profile` is set) <
`config_file_list` < `config_dict` < command-line `--key=value`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_navigen.paths import DATA_PATH_ENV, DATASET_CONFIGS_DIR, PROPERTIES_DIR
from recbole_navigen.utils import get_model


class DatasetNotFoundError(FileNotFoundError):
    """The atomic files of a dataset are not where the configuration points."""


class Config(RecBoleConfig):
    """RecBole's `Config` that knows the plugin's models, YAML files and dataset folders.

    Args:
        model: a model name (plugin or RecBole) or class.
        dataset: the dataset name; `dataset_configs/<dataset>.yaml` may map it to an atomic folder
            through `dataset_dir`.
        config_file_list: YAML files, later files win.
        config_dict: parameters given in code.
        cmd_args: `--key=value` strings; `None` reads `sys.argv` as RecBole does.
    """

    def __init__(
        self,
        model=None,
        dataset: str | None = None,
        config_file_list: list[str] | None = None,
        config_dict: dict | None = None,
        cmd_args: list[str] | None = None,
    ) -> None:
        self._cmd_args = cmd_args
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_cmd_line(self) -> dict:
        if self._cmd_args is None:
            return super()._load_cmd_line()
        saved_argv = sys.argv
        sys.argv = [saved_argv[0] if saved_argv else "recbole_navigen", *self._cmd_args]
        try:
            return super()._load_cmd_line()
        finally:
            sys.argv = saved_argv

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset) -> None:
        super()._load_internal_config_dict(model, model_class, dataset)
        if not (PROPERTIES_DIR / "overall.yaml").is_file():
            raise FileNotFoundError(
                f"{PROPERTIES_DIR / 'overall.yaml'} is missing: recbole_navigen reads properties/ and "
                "dataset_configs/ from its checkout, so install it with `pip install -e .`."
            )
        dataset_file = DATASET_CONFIGS_DIR / f"{dataset}.yaml"
        files = [PROPERTIES_DIR / "overall.yaml", PROPERTIES_DIR / f"{model}.yaml", dataset_file]
        profile = self.external_config_dict.get("profile")
        if profile:
            files.append(PROPERTIES_DIR / "profiles" / f"{profile}.yaml")
            if not files[-1].is_file():
                known = sorted(path.stem for path in (PROPERTIES_DIR / "profiles").glob("*.yaml"))
                raise FileNotFoundError(f"unknown profile '{profile}': {files[-1]} does not exist; profiles: {known}")
        for file in files:
            if file.is_file():
                loaded = self._update_internal_config_dict(file) or {}
                if file == dataset_file:
                    known = self.parameters["Dataset"]
                    known += [key for key in loaded if key not in known]

    def _init_device(self) -> None:
        """RecBole's, except that a distributed run joins its process group with `dist_backend` (gloo on
        CPUs) instead of NCCL only (`recbole_navigen.distributed`)."""
        if "local_rank" not in self.final_config_dict:
            return super()._init_device()
        from recbole_navigen.distributed import init_process

        gpu_id = self.final_config_dict["gpu_id"]
        self.final_config_dict["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
        os.environ["CUDA_VISIBLE_DEVICES"] = self.final_config_dict["gpu_id"]
        init_process(self.final_config_dict)

    def _set_default_parameters(self) -> None:
        self._resolve_dataset()
        super()._set_default_parameters()
        from recbole_navigen.distributed import check_strategy

        check_strategy(self.final_config_dict)
        if self.final_config_dict.get("check_dataset_files", True):
            check_dataset_files(self.final_config_dict, self.data_path_source)

    def _resolve_dataset(self) -> None:
        """Map the dataset name to its atomic folder and pick the data root the user asked for."""
        final = self.final_config_dict
        final["dataset_name"] = self.dataset
        self.dataset = final.get("dataset_dir") or self.dataset
        if "data_path" in self.external_config_dict:
            self.data_path_source = "the data_path setting"
        elif os.environ.get(DATA_PATH_ENV):
            final["data_path"] = os.environ[DATA_PATH_ENV]
            self.data_path_source = f"the environment variable {DATA_PATH_ENV}"
        else:
            self.data_path_source = "the default data_path"


def read_config_files(files: list[str]) -> dict:
    """The YAML files merged as RecBole merges them: top-level keys, later files win."""
    merged: dict = {}
    for file in files:
        try:
            with open(file, encoding="utf-8") as stream:
                loaded = yaml.safe_load(stream) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {file}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: a config file must hold a mapping of keys to values.")
        merged.update(loaded)
    return merged


def check_dataset_files(config: dict, source: str = "data_path") -> None:
    """Raise `DatasetNotFoundError` when a dataset that RecBole cannot download has no atomic files."""
    name, folder = config["dataset"], Path(config["data_path"])
    if (folder / f"{name}.inter").is_file() or config.get("benchmark_filename"):
        return
    if name in _recbole_downloadable():
        return  # RecBole's own loader downloads it on first use.
    raise DatasetNotFoundError(
        f"Dataset '{config['dataset_name']}' not found: looked for {folder / (name + '.inter')} "
        f"(the folder comes from {source}). Point --data_path or {DATA_PATH_ENV} at the folder that "
        f"holds '{name}/', or build atomic files from Amazon review dumps with "
        f"`python -m recbole_navigen.data.prepare_amazon --reviews R.json.gz --meta M.json.gz "
        f"--out DIR --name {name}`."
    )


def _recbole_downloadable() -> set[str]:
    import recbole

    url_file = Path(recbole.__file__).parent / "properties" / "dataset" / "url.yaml"
    with open(url_file, encoding="utf-8") as stream:
        return set(yaml.safe_load(stream) or {})
