"""Pictures from the instructions a trained NaviGen wrote: each user's instruction in a run's
`instructions.jsonl` goes through a diffusers text-to-image pipeline (or a text-to-video one).

    python run_recbole_navigen.py render --run=results/ml-100k/NaviGen-ml-100k-KEY --pipeline=stabilityai/sd-turbo

A user's picture goes to `<run>/images/<user>.png` (a video pipeline's frames to `<user>.gif`), and
`images/index.json` maps each user to its file, instruction, seed, pipeline, steps and size. A user whose file
exists is skipped, so a killed render resumes. The seed is fixed per user by `seed_from`: `user` hashes the
user id (the first 4 bytes of its SHA-256), `user_chars` sums the code points of its characters (the public
release's rule, which gives "12" and "21" the same seed), and an integer gives every user that seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from recbole_navigen.fileio import read_jsonl, write_text_atomic

INSTRUCTIONS_NAME, IMAGES_DIR, INDEX_NAME = "instructions.jsonl", "images", "index.json"
MEDIA_SUFFIXES = (".png", ".gif")  # a still image; a video's frames


@dataclass(frozen=True)
class RenderSummary:
    """Where the pictures went and how many were made now or found from an earlier render."""

    folder: Path
    rendered: int
    skipped: int

    def describe(self) -> str:
        return (f"{self.rendered} rendered, {self.skipped} already there (skipped); "
                f"index: {self.folder / INDEX_NAME}")


def instructions_path(run: str | Path) -> Path:
    """The instructions file of `run`: a results folder holding `instructions.jsonl`, or the file itself."""
    run = Path(run)
    path = run / INSTRUCTIONS_NAME if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"no instructions file at {path}: run the main job with instruction_samples, "
                                "or `generate`, first")
    return path


def user_seed(user: str, seed_from: str = "user") -> int:
    """The generator seed of `user` under `seed_from` (`user`, `user_chars` or an integer; module docstring)."""
    if seed_from == "user":
        return int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:4], "big")
    if seed_from == "user_chars":
        return sum(map(ord, user))
    if re.fullmatch(r"-?\d+", seed_from):
        return int(seed_from)
    raise ValueError(f"seed_from must be 'user', 'user_chars' or an integer, not {seed_from!r}")


def media_stem(user: str) -> str:
    """A file name for `user`: the id itself when it is a safe name, else a cleaned id and a short hash."""
    if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", user):
        return user
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", user)[:60].lstrip(".")
    return f"{cleaned}-{hashlib.sha256(user.encode('utf-8')).hexdigest()[:8]}"


def read_index(folder: Path) -> dict[str, dict]:
    """`<folder>/index.json` of a render (user -> image file, instruction, seed, ...); {} when there is none."""
    path = folder / INDEX_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_pipeline(name: str) -> Any:
    """`DiffusionPipeline.from_pretrained(name)` (a folder or a hub name): bfloat16 on CUDA, else float32 on
    the CPU; its own progress bar off (ours counts users)."""
    from diffusers import DiffusionPipeline

    device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    try:
        pipeline = DiffusionPipeline.from_pretrained(name, dtype=dtype)
    except Exception as error:  # diffusers raises OSError, ValueError, ImportError... by cause; name the pipeline
        raise RuntimeError(f"cannot load the diffusers pipeline {name!r}: {type(error).__name__}: {error}") from error
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def render_instructions(run: str | Path, pipeline: str, users: int | None = None, steps: int = 20,
                        size: int = 512, seed_from: str = "user") -> RenderSummary:
    """Render the instruction of each of the first `users` users that have one (all when None) at
    `size` x `size` in `steps` denoising steps; users whose picture exists are skipped."""
    path = instructions_path(run)
    rows = read_jsonl(path)
    wanted = [row for row in rows if row.get("instruction")][:users]
    if not wanted:
        statuses = dict(Counter(row.get("parse_status") for row in rows))
        raise ValueError(f"{path}: no instruction to render among {len(rows)} rows (parse status {statuses})")
    seeds = {row["user"]: user_seed(row["user"], seed_from) for row in wanted}
    folder = path.parent / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    index = read_index(folder)
    pending = []
    for row in wanted:
        existing = _existing_media(folder, row["user"])
        if existing is None:
            pending.append(row)
        elif row["user"] not in index:  # made before the index was lost: what made it is unknown
            index[row["user"]] = _entry(existing, row, seeds[row["user"]], None, None, None)
    if pending:
        model = load_pipeline(pipeline)
        for row in tqdm(pending, desc="render", unit="user"):
            generator = torch.Generator(device=model.device).manual_seed(seeds[row["user"]])
            output = model(prompt=row["instruction"], num_inference_steps=steps, height=size, width=size,
                           generator=generator)
            media = save_media(output, folder / media_stem(row["user"]))
            index[row["user"]] = _entry(media, row, seeds[row["user"]], pipeline, steps, size)
            _write_index(folder, index)  # after every picture: the index always matches the files
    _write_index(folder, index)
    return RenderSummary(folder, len(pending), len(wanted) - len(pending))


def save_media(output: Any, stem: Path) -> Path:
    """Save a pipeline output's first result as `<stem>.png` (`.images`) or `<stem>.gif` (`.frames`, a
    video); written under a hidden name first, so a killed render never leaves a file that looks done."""
    frames = getattr(output, "frames", None)
    path = stem.with_name(stem.name + (".gif" if frames is not None else ".png"))  # a user id may hold a dot
    partial = path.with_name("." + path.name)
    if frames is not None:
        from diffusers.utils import export_to_gif

        export_to_gif([_pil(frame) for frame in frames[0]], str(partial))
    else:
        _pil(output.images[0]).save(partial)
    os.replace(partial, path)
    return path


def _pil(picture: Any):
    """A PIL image from a PIL image, or an HxWxC array or tensor with values in [0, 1]."""
    from PIL import Image

    if isinstance(picture, Image.Image):
        return picture
    array = picture.float().cpu().numpy() if isinstance(picture, torch.Tensor) else np.asarray(picture)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def _existing_media(folder: Path, user: str) -> Path | None:
    stem = media_stem(user)
    return next((folder / (stem + suffix) for suffix in MEDIA_SUFFIXES if (folder / (stem + suffix)).is_file()),
                None)


def _entry(media: Path, row: dict, seed: int, pipeline: str | None, steps: int | None, size: int | None) -> dict:
    return {"image": media.name, "instruction": row["instruction"], "seed": seed, "pipeline": pipeline,
            "steps": steps, "size": size}


def _write_index(folder: Path, index: dict[str, dict]) -> None:
    write_text_atomic(folder / INDEX_NAME, json.dumps(index, indent=2, ensure_ascii=False) + "\n")
