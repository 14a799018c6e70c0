"""Where the plugin's own YAML lives: `properties/` and `dataset_configs/` beside the package."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROPERTIES_DIR = PROJECT_ROOT / "properties"
DATASET_CONFIGS_DIR = PROJECT_ROOT / "dataset_configs"
DATA_PATH_ENV = "NAVIGEN_DATA_PATH"
