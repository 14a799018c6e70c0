"""Rendering instructions to pictures, on a tiny random Stable Diffusion pipeline built offline."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import run_recbole_navigen
from recbole_navigen.generation import render
from recbole_navigen.generation.render import media_stem, render_instructions, user_seed


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> str:
    """A random StableDiffusionPipeline a few hundred kB large, with a character-level CLIP tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tiny-sd")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char], vocab[char + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, norm_num_groups=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=16, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                                num_attention_heads=2, num_hidden_layers=2, projection_dim=16,
                                                max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder / "pipeline")
    return str(folder / "pipeline")


def _row(user: str, instruction: str | None) -> dict:
    return {"user": user, "history": [], "target": {"item": "1", "title": "t", "text": "t", "tid": ["t"]},
            "predicted": [], "top_item_tid": None, "supervision": "heuristic", "predicted_tid": ["red"],
            "instruction": instruction, "reasoning": "r", "parse_status": "ok" if instruction else "failed",
            "parse_error": None if instruction else "no closed <think> block"}


def _write_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instructions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def _no_pipeline(name):
    raise AssertionError(f"loaded {name} although every picture existed")


def test_render_writes_images_and_index_and_resumes(tiny_pipeline, tmp_path, monkeypatch):
    run = _write_run(tmp_path / "run", [_row("v7.2", "a red cat at dusk"), _row("12", None),
                                        _row("u/3", "a blue dog on a hill")])
    run_recbole_navigen.main(["render", f"--run={run}", f"--pipeline={tiny_pipeline}", "--steps=2", "--size=32"])
    images = run / "images"
    index = json.loads((images / "index.json").read_text())
    assert list(index) == ["v7.2", "u/3"]  # the user without an instruction has no picture
    assert index["v7.2"] == {"image": "v7.2.png", "instruction": "a red cat at dusk", "seed": user_seed("v7.2"),
                          "pipeline": tiny_pipeline, "steps": 2, "size": 32}
    assert index["u/3"]["image"] == media_stem("u/3") + ".png" and "/" not in index["u/3"]["image"]
    first = np.asarray(Image.open(images / "v7.2.png"))
    assert first.shape == (32, 32, 3)

    monkeypatch.setattr(render, "load_pipeline", _no_pipeline)
    again = render_instructions(run, tiny_pipeline, steps=2, size=32)
    assert (again.rendered, again.skipped) == (0, 2)

    monkeypatch.undo()
    (images / "v7.2.png").unlink()
    resumed = render_instructions(run, tiny_pipeline, steps=2, size=32)
    assert (resumed.rendered, resumed.skipped) == (1, 1)
    assert np.array_equal(np.asarray(Image.open(images / "v7.2.png")), first)  # the user's seed, the same picture
    assert not list(images.glob(".*"))  # no half-written file left behind


def test_render_takes_the_jsonl_path_and_a_user_limit(tiny_pipeline, tmp_path):
    run = _write_run(tmp_path / "run", [_row("1", "a red cat"), _row("2", "a blue dog")])
    summary = render_instructions(run / "instructions.jsonl", tiny_pipeline, users=1, steps=1, size=16,
                                  seed_from="5")
    assert summary.rendered == 1
    assert sorted(path.name for path in (run / "images").iterdir()) == ["1.png", "index.json"]
    assert json.loads((run / "images" / "index.json").read_text())["1"]["seed"] == 5


class _Stub:
    """A loaded pipeline: callable, with a device."""

    device = "cpu"

    def __init__(self, call):
        self.call = call

    def __call__(self, **kwargs):
        return self.call(**kwargs)


def test_a_video_pipeline_writes_an_animated_gif(tmp_path, monkeypatch):
    def video(**kwargs):
        return SimpleNamespace(frames=np.random.default_rng(0).random((1, 3, 8, 8, 3)))

    monkeypatch.setattr(render, "load_pipeline", lambda name: _Stub(video))
    run = _write_run(tmp_path / "run", [_row("9", "a red cat")])
    render_instructions(run, "stub-video", steps=1, size=8)
    gif = Image.open(run / "images" / "9.gif")
    assert gif.n_frames == 3
    assert json.loads((run / "images" / "index.json").read_text())["9"]["image"] == "9.gif"


def test_errors_name_what_is_missing(tiny_pipeline, tmp_path):
    with pytest.raises(FileNotFoundError, match="no instructions file at .*nowhere"):
        render_instructions(tmp_path / "nowhere", tiny_pipeline)
    failed = _write_run(tmp_path / "failed", [_row("1", None), _row("2", None)])
    with pytest.raises(ValueError, match=r"no instruction to render among 2 rows \(parse status \{'failed': 2\}"):
        render_instructions(failed, tiny_pipeline)
    run = _write_run(tmp_path / "run", [_row("1", "a red cat")])
    with pytest.raises(RuntimeError, match="cannot load the diffusers pipeline .*not-a-pipeline"):
        render_instructions(run, str(tmp_path / "not-a-pipeline"))
    with pytest.raises(ValueError, match="seed_from"):
        render_instructions(run, tiny_pipeline, seed_from="time")


def test_user_seeds_are_fixed_per_user():
    assert user_seed("259") == user_seed("259") != user_seed("295")
    assert user_seed("259", "user_chars") == user_seed("295", "user_chars") == sum(map(ord, "259"))
    assert 0 <= user_seed("259") < 2**32 and user_seed("259", "42") == 42
