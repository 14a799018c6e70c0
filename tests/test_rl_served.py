"""GRPO rollouts from a served model, against a fake vLLM-like server on 127.0.0.1 (no network, no vLLM): the
catalogue constraint in the requests, the same tensors as a local rollout, weight sync through the runtime
LoRA endpoints, off-catalogue replies, and the exported backbone."""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import product
from pathlib import Path

import pytest
import torch
from recbole.data import create_dataset, data_preparation

from recbole_navigen.config import Config
from recbole_navigen.model.navigen import NaviGen
from recbole_navigen.model.navigen_tasks import (
    CID2CID_ANSWER_PREFIX,
    THINK_OPEN,
    cid2cid_prompt,
    cid2ins_prompt,
    render_prompt,
)
from recbole_navigen.rl.rewards import JudgeScores
from recbole_navigen.rl.rollout import rollout_cid2cid
from recbole_navigen.rl.served import (
    EXPORT_FILE,
    RolloutServer,
    RolloutServerError,
    catalogue_completions,
    catalogue_regex,
    export_backbone,
)
from tests.conftest import TINY, TINY_CONFIG
from tests.test_navigen import SMALL_NAVIGEN
from tests.test_rl_grpo import RL_QUICK

BASE = "navigen-base"
SETTINGS = {"num_generations": 3, "temperature": 1.0, "max_new_tokens": 24, "cid_level_weights": (0.5, 0.3, 0.2),
            "cid_prefix_conditioned": True, "cid_in_range_ratio": 0.3, "judge_failure_reward": 0.0}


class FakeVLLM:
    """What a vLLM server with runtime LoRA updating answers: /v1/models, /v1/completions (`answer(body)` gives
    one (text, finish_reason, token_ids or None) per prompt x n), /v1/load_lora_adapter, /v1/unload_lora_adapter."""

    def __init__(self) -> None:
        self.base_url, self.root = "", None
        self.completions: list[dict] = []
        self.loads: list[dict] = []
        self.unloads: list[str] = []
        self.adapters: dict[str, str] = {}
        self.answer = lambda body: [("", "stop", None)] * (len(body["prompt"]) * body["n"])

    def handle(self, method: str, path: str, body: dict) -> tuple[int, object]:
        if method == "GET" and path == "/v1/models":
            cards = [{"id": BASE, "object": "model", "created": 0, "owned_by": "vllm", "root": self.root or BASE,
                      "parent": None}]
            cards += [{"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": folder,
                       "parent": BASE} for name, folder in self.adapters.items()]
            return 200, {"object": "list", "data": cards}
        if path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.adapters:
                return 400, {"error": {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."}}
            self.loads.append({**body, "files": sorted(os.listdir(body["lora_path"]))})
            self.adapters[body["lora_name"]] = body["lora_path"]
            return 200, f"Success: LoRA adapter '{body['lora_name']}' added successfully."
        if path == "/v1/unload_lora_adapter":
            self.unloads.append(body["lora_name"])
            self.adapters.pop(body["lora_name"])
            return 200, "Success"
        if path == "/v1/completions":
            self.completions.append(body)
            if body["model"] not in {BASE, *self.adapters}:
                return 404, {"error": {"message": f"The model `{body['model']}` does not exist."}}
            choices = [{"index": index, "text": text, "finish_reason": finish, "logprobs": None,
                        **({"token_ids": ids} if ids is not None else {})}
                       for index, (text, finish, ids) in enumerate(self.answer(body))]
            return 200, {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body["model"],
                         "choices": choices, "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        return 404, {"error": {"message": f"no route {path}"}}


class _Handler(BaseHTTPRequestHandler):
    def _reply(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        status, payload = self.server.fake.handle(method, self.path, body)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply("GET")

    def do_POST(self) -> None:
        self._reply("POST")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.fake = FakeVLLM()
    server.fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.fake
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def rl(tiny_data_path, tiny_text_encoder, tmp_path_factory):
    """(config, model, train loader): a tiny NaviGen in the RL stage (a fresh adapter on the random backbone),
    built once for the module."""
    folder = tmp_path_factory.mktemp("served")
    settings = {**TINY_CONFIG, "data_path": str(tiny_data_path),
                "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                             "item": ["item_id", "movie_title", "release_year", "class"]},
                "item_text_fields": ["movie_title", "release_year", "class"],
                "tid_phrase_fields": ["movie_title", "class"], **SMALL_NAVIGEN, **RL_QUICK,
                "text_encoder": tiny_text_encoder, "identifiers_dir": str(folder / "ids"),
                "pretrained_cache_dir": str(folder / "models"), "checkpoint_dir": str(folder / "saved"),
                "stage": "rl", "rl_task_ratios": {"cid2cid": 1.0}}
    config = Config("NaviGen", TINY, config_dict=settings, cmd_args=[])
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return config, NaviGen(config, train._dataset), train


def _cids(rollout) -> list[str]:
    """The CID each cid2cid completion named (its text is `{"target_cid":"<CID>"}`)."""
    return [text[len('{"target_cid":"'):-2] for text in rollout.texts]


def test_served_cid2cid_rollout_has_the_local_layout_and_the_catalogue_constraint(rl, fake, tmp_path):
    _, model, _ = rl
    items, history, targets = model.items, [[1, 2], [3]], [5, 6]
    local = rollout_cid2cid(model, history, targets, SETTINGS, torch.Generator().manual_seed(0))
    picked = [cid[len(items.BEGIN):] for cid in _cids(local)]  # the server answers what the local sampler drew
    fake.answer = lambda body: [(text, "stop", None) for text in picked]
    server = RolloutServer(fake.base_url, adapter_dir=tmp_path)
    served = server.rollout_cid2cid(model, history, targets, SETTINGS, torch.Generator().manual_seed(1))

    for name in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(getattr(served, name), getattr(local, name)), name
    assert served.texts == local.texts and served.rewards == local.rewards
    assert served.extras == {"server_invalid": [0.0]}

    (body,) = fake.completions
    assert body["model"] == BASE and body["n"] == 3 and body["max_tokens"] == items.depth + 2
    assert body["prompt"] == [render_prompt(cid2cid_prompt(items, past), model.hf_tokenizer) + CID2CID_ANSWER_PREFIX
                              for past in history]
    choices = body["structured_outputs"]["choice"]
    catalogue = [items.cid(item)[len(items.BEGIN):] for item in range(1, items.n_items)]
    assert choices == body["guided_choice"] == catalogue and len(set(choices)) == items.n_items - 1
    assert body["add_special_tokens"] is False and body["top_p"] == 1.0 and body["top_k"] == -1
    codes = set(model.token_table[model.token_table >= 0].tolist())
    assert codes | {model.end_id} <= set(body["allowed_token_ids"]) <= codes | {model.end_id, *_eos(model)}


def _eos(model) -> set[int]:
    return {model.hf_tokenizer.eos_token_id, model.llm.generation_config.eos_token_id} - {None}


def test_regex_constraint_is_the_trie(rl, fake, tmp_path):
    _, model, _ = rl
    items = model.items
    pattern = re.compile(catalogue_regex(items))
    assert all(pattern.fullmatch(text) for text in catalogue_completions(items))
    known = {tuple(code) for code in items.codes_tensor[1:].tolist()}
    other = next(code for code in product(*(range(size) for size in items.level_sizes)) if code not in known)
    spelled = "".join(items.level_token(level, value) for level, value in enumerate(other)) + items.END
    assert not pattern.fullmatch(spelled) and not pattern.fullmatch(catalogue_completions(items)[0][:-1])

    fake.answer = lambda body: [(catalogue_completions(items)[0], "stop", None)] * (len(body["prompt"]) * body["n"])
    RolloutServer(fake.base_url, constraint="regex", adapter_dir=tmp_path).rollout_cid2cid(model, [[1]], [2], SETTINGS)
    (body,) = fake.completions
    assert body["structured_outputs"] == {"regex": pattern.pattern} and body["guided_regex"] == pattern.pattern


def test_off_catalogue_replies_score_zero_and_are_counted(rl, fake, tmp_path):
    _, model, _ = rl
    items = model.items
    good = catalogue_completions(items)[3]
    replies = [good, "Sure! The next item is a movie.", good, good, good, good]
    fake.answer = lambda body: [(text, "stop", None) for text in replies]
    server = RolloutServer(fake.base_url, adapter_dir=tmp_path)
    rollout = server.rollout_cid2cid(model, [[1, 2], [3]], [5, 6], SETTINGS)
    bad = rollout.rewards[1]
    assert bad.reward == 0.0 and bad.format == 0.0 and rollout.extras["server_invalid"] == [1.0]
    assert rollout.completion_mask[1].sum() == 0 and rollout.completion_mask[0].sum() == items.depth + 1
    assert all(reward.format == 1.0 for row, reward in enumerate(rollout.rewards) if row != 1)

    fake.answer = lambda body: [("no codes here", "stop", None)] * 6
    with pytest.raises(RolloutServerError, match="ignored the choice constraint"):
        server.rollout_cid2cid(model, [[1, 2], [3]], [5, 6], SETTINGS)


def test_served_cid2ins_samples_freely_and_is_judged(rl, fake, tmp_path):
    _, model, _ = rl
    tokenizer = model.hf_tokenizer
    reply = 'I liked dramas, so a quiet drama fits.\n</think>\n\n{"target_tid":["drama"],"target_ins":"A calm scene."}'
    canonical = tokenizer(reply, add_special_tokens=False)["input_ids"]
    # The server's own ids (here one token per character: kept as sampled, not re-tokenized) for one reply,
    # text only for the next (tokenized here, eos added as the server stopped), a cut one for the third.
    sampled = [token for char in reply for token in tokenizer(char, add_special_tokens=False)["input_ids"]]
    sampled.append(tokenizer.eos_token_id)
    assert len(sampled) > len(canonical) + 1
    fake.answer = lambda body: [(reply, "stop", sampled), (reply, "stop", None), ("no json", "length", None)] * 2

    class Judge:
        label = "stub"

        def score(self, requests):
            return [JudgeScores(1, 1, 1, 1, 1, 1, 1) for _ in requests]

    server = RolloutServer(fake.base_url, adapter_dir=tmp_path)
    rollout = server.rollout_cid2ins(model, [[1, 2], [3]], [5, 6], {**SETTINGS, "max_new_tokens": 160}, Judge())
    (body,) = fake.completions
    assert not {"structured_outputs", "guided_choice", "guided_regex", "allowed_token_ids"} & set(body)
    assert body["prompt"] == [render_prompt(cid2ins_prompt(model.items, past), tokenizer) + THINK_OPEN
                              for past in ([1, 2], [3])]
    assert body["n"] == 3 and body["max_tokens"] == 160 and body["return_token_ids"] is True
    lengths = rollout.completion_mask.sum(dim=1).tolist()
    assert lengths[:3] == [len(sampled), len(canonical) + 1, len(tokenizer("no json")["input_ids"])]
    assert rollout.input_ids[0][rollout.completion_mask[0].bool()].tolist() == sampled
    assert rollout.input_ids[1][rollout.completion_mask[1].bool()].tolist() == canonical + [tokenizer.eos_token_id]
    assert rollout.input_ids.shape == rollout.completion_mask.shape == rollout.attention_mask.shape
    assert rollout.texts[0] == THINK_OPEN + reply and rollout.texts[2] == THINK_OPEN + "no json"
    assert [reward.format for reward in rollout.rewards[:3]] == [1.0, 1.0, 0.0]
    assert rollout.rewards[0].reward == pytest.approx(1.0) and rollout.extras["judge_failures"] == [0.0]


def test_weight_sync_loads_each_saved_adapter_and_unloads_the_last(rl, fake, tmp_path):
    from safetensors.torch import load_file

    _, model, _ = rl
    server = RolloutServer(fake.base_url, sync_every=2, adapter_dir=tmp_path / "adapters")
    for _ in range(3):
        server.begin_step(model)
    assert [load["lora_name"] for load in fake.loads] == ["navigen-rl-step-0", "navigen-rl-step-2"]
    assert all({"adapter_config.json", "adapter_model.safetensors"} <= set(load["files"]) for load in fake.loads)
    assert fake.unloads == ["navigen-rl-step-0"] and server.served_model() == "navigen-rl-step-2"
    first, last = (Path(load["lora_path"]) for load in fake.loads)
    assert first.is_absolute() and not first.exists()  # unloaded, removed
    saved = load_file(last / "adapter_model.safetensors")
    trainable = {name for name, parameter in model.llm.named_parameters() if parameter.requires_grad}
    assert saved and all("lora_" in name for name in saved) and len(saved) == len(trainable)
    config = json.loads((last / "adapter_config.json").read_text())
    assert config["r"] == RL_QUICK["rl_lora_r"] and set(config["target_modules"]) == {"q_proj", "v_proj"}

    fake.answer = lambda body: [(catalogue_completions(model.items)[0], "stop", None)] * 3
    server.rollout_cid2cid(model, [[1]], [2], SETTINGS)
    assert fake.completions[-1]["model"] == "navigen-rl-step-2"

    restarted = RolloutServer(fake.base_url, adapter_dir=tmp_path / "again")  # an adapter name already loaded
    restarted.steps = 2
    restarted.sync(model.llm)
    assert fake.unloads[-1] == "navigen-rl-step-2" and fake.loads[-1]["lora_path"].startswith(str(tmp_path / "again"))

    fixed, loads = RolloutServer(fake.base_url, sync_every=0, adapter_dir=tmp_path / "fixed"), len(fake.loads)
    fixed.begin_step(model)
    fixed.begin_step(model)
    assert len(fake.loads) == loads and fixed.served_model() == BASE  # never synced: the served model stays


def test_the_exported_backbone_reloads_as_the_policy(rl, fake, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, model, _ = rl
    inputs = torch.tensor([[5, 9, 17, int(model.token_table[0, 1]), model.end_id]])
    lora_b = {name: parameter for name, parameter in model.llm.named_parameters() if "lora_B" in name}
    kept = {name: parameter.detach().clone() for name, parameter in lora_b.items()}
    model.eval()  # no LoRA dropout
    try:
        with torch.no_grad():  # a trained adapter, so that merging it changes the weights
            for parameter in lora_b.values():
                parameter.normal_(std=0.2)
        folder = export_backbone(model, tmp_path / "merged", merge_adapters=True, checkpoint="x.pth")
        with torch.no_grad():
            policy = model.llm(input_ids=inputs).logits
            with model.llm.disable_adapter():
                reference = model.llm(input_ids=inputs).logits
        merged = AutoModelForCausalLM.from_pretrained(folder)
        assert torch.allclose(merged(input_ids=inputs).logits, policy, atol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(export_backbone(model, tmp_path / "base", merge_adapters=False))
        assert torch.allclose(base(input_ids=inputs).logits, reference, atol=1e-5)
        assert not torch.allclose(policy, reference, atol=1e-3)
    finally:
        model.train()
        with torch.no_grad():
            for name, parameter in lora_b.items():
                parameter.copy_(kept[name])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert all(tokenizer.convert_tokens_to_ids(token) == model.hf_tokenizer.convert_tokens_to_ids(token)
               for token in model.items.code_tokens())
    note = json.loads((folder / EXPORT_FILE).read_text())
    assert note == {"identifiers": model.identifiers_key, "checkpoint": "x.pth", "adapters_merged": True}

    fake.root = str(folder)  # the server serves this export: the identifiers match
    RolloutServer(fake.base_url, adapter_dir=tmp_path / "a").begin_step(model)
    note["identifiers"] = "another-catalogue"
    (folder / EXPORT_FILE).write_text(json.dumps(note))
    with pytest.raises(RolloutServerError, match="exported for identifiers another-catalogue"):
        RolloutServer(fake.base_url, adapter_dir=tmp_path / "b").begin_step(model)


def test_the_rl_objective_samples_on_the_server_when_configured(rl, fake, tmp_path):
    from recbole_navigen.rl.objective import GRPOObjective

    config, model, train = rl
    config["rl_rollout_server"], config["rl_rollout_adapter_dir"] = fake.base_url, str(tmp_path)
    try:
        objective = GRPOObjective(config)
    finally:
        config["rl_rollout_server"] = config["rl_rollout_adapter_dir"] = None
    answers = catalogue_completions(model.items)
    fake.answer = lambda body: [(answers[row % 7], "stop", None) for row in range(len(body["prompt"]) * body["n"])]
    loss = objective(model, next(iter(train))[torch.arange(4)])
    assert torch.isfinite(loss) and loss.requires_grad
    record = objective.records[0]
    assert record["cid2cid_completions"] == 4 * RL_QUICK["rl_num_generations"] and record["cid2cid_server_invalid"] == 0
    assert fake.loads[0]["lora_name"] == "navigen-rl-step-0" and fake.completions[0]["model"] == "navigen-rl-step-0"


def test_an_unreachable_server_or_model_is_named(rl, fake, tmp_path):
    _, model, _ = rl
    with pytest.raises(RolloutServerError, match=r"serves no model named 'other' \(rl_rollout_model\)"):
        RolloutServer(fake.base_url, model="other", adapter_dir=tmp_path).begin_step(model)
    server = RolloutServer("http://127.0.0.1:9/v1", adapter_dir=tmp_path)
    server.client = server.client.with_options(max_retries=0)
    with pytest.raises(RolloutServerError, match=r"rl_rollout_server http://127.0.0.1:9/v1: cannot reach"):
        server.begin_step(model)


def test_served_cid2ins_rollout_has_the_local_layout(rl, fake, tmp_path):
    from recbole_navigen.rl.rollout import rollout_cid2ins

    _, model, _ = rl
    tokenizer, history, targets = model.hf_tokenizer, [[1, 2], [3]], [5, 6]

    class Judge:
        label = "stub"

        def score(self, requests):
            return [JudgeScores(0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5) for _ in requests]

    torch.manual_seed(0)
    local = rollout_cid2ins(model, history, targets, {**SETTINGS, "max_new_tokens": 12}, Judge())
    replies = []
    for ids, mask in zip(local.input_ids, local.completion_mask):
        sampled = ids[mask.bool()].tolist()
        stopped = sampled[-1] == tokenizer.eos_token_id
        replies.append((tokenizer.decode(sampled, skip_special_tokens=True), "stop" if stopped else "length", sampled))
    fake.answer = lambda body: replies
    served = RolloutServer(fake.base_url, adapter_dir=tmp_path).rollout_cid2ins(
        model, history, targets, {**SETTINGS, "max_new_tokens": 12}, Judge())
    for name in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(getattr(served, name), getattr(local, name)), name
    assert served.texts == local.texts and served.rewards == local.rewards


def test_export_command_writes_the_base_an_rl_stage_trains_on(rl, tiny_data_path, tmp_path, capsys):
    """`run_recbole_navigen.py export` of a stage-2 checkpoint is the backbone the RL stage starting from it
    wraps with its fresh adapter: the base model vLLM must serve."""
    from transformers import AutoModelForCausalLM

    from recbole_navigen.quick_start import run_model
    from run_recbole_navigen import main

    config, _, _ = rl
    settings = {key: config[key] for key in ("load_col", "item_text_fields", "tid_phrase_fields", "text_encoder",
                                             "identifiers_dir", "pretrained_cache_dir", *TINY_CONFIG, *SMALL_NAVIGEN)}
    settings["data_path"] = str(tiny_data_path)
    stage_two = run_model("NaviGen", TINY, config_dict={**settings, "epochs": 1, "train_steps_per_epoch": 1,
                                                        "checkpoint_dir": str(tmp_path / "saved")}, cmd_args=[])
    main(["export", f"--checkpoint={stage_two.checkpoint}", f"--output={tmp_path / 'served'}"])
    assert "vllm serve" in capsys.readouterr().out
    rl_config = Config("NaviGen", TINY, config_dict={**settings, **RL_QUICK, "stage": "rl",
                                                     "init_from": stage_two.checkpoint}, cmd_args=[])
    train, _, _ = data_preparation(rl_config, create_dataset(rl_config))
    policy = NaviGen(rl_config, train._dataset).eval()
    inputs = torch.tensor([[5, 9, 17, int(policy.token_table[0, 1]), policy.end_id]])
    with torch.no_grad(), policy.llm.disable_adapter():
        reference = policy.llm(input_ids=inputs).logits
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "served")
    assert torch.allclose(exported(input_ids=inputs).logits, reference, atol=1e-5)
    note = json.loads((tmp_path / "served" / EXPORT_FILE).read_text())
    assert note["checkpoint"] == stage_two.checkpoint and note["identifiers"] == policy.identifiers_key
