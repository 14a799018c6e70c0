"""GRPO rollouts from a served model (vLLM or any OpenAI-compatible server), the catalogue trie passed along.

With `rl_rollout_server` set, the RL stage samples its completions on the server instead of in the training
process. Everything after sampling is the local rollout's (`rl/rollout.py`): the same prompts, the same token
layout (the prompt left padded, then the completion), the same rewards; the GRPO loss recomputes every
log-probability with the local policy, so the update is exactly the one a local rollout of these samples gives.

- cid2cid: the completions API gets the cid2cid prompt with its forced answer prefix (ending in
  `<|cid_begin|>`), `n` = G, and the catalogue as a structured-output constraint: `choice` lists what may
  follow the prefix for every item (its code tokens and `<|cid_end|>`), `regex` spells the same set as one
  trie-shaped pattern. vLLM reads `structured_outputs` from 0.11 on and the older `guided_choice` /
  `guided_regex` until 0.11 (removed in 0.12); a field it does not know is ignored with HTTP 200, output
  unconstrained. Both spellings therefore go out (the same constraint twice; 0.11, which reads both, takes
  one kind of constraint either way), so old and new servers alike constrain.
  `allowed_token_ids` (the code tokens, the end marker, eos) keeps the server to the one spelling of each
  code that the local trie sampler draws from. A reply that names no catalogue item (a server that ignored
  the constraint) gets reward 0 and format 0, no gradient (its completion mask is 0), and is counted
  (`cid2cid_server_invalid` in the RL log); a step in which every reply does so is an error.
- cid2ins: plain sampling after the forced `<think>`, the sampling parameters pinned (top_p 1, top_k off,
  no min_p or repetition penalty), since a server otherwise applies the model's generation_config.json
  defaults; the sampled token ids are used when the server returns them (`return_token_ids`), else the text
  is tokenized locally.
- Weights: the server runs the merged stage-2 backbone with the code tokens (`export_backbone`, or
  `python run_recbole_navigen.py export`) with LoRA enabled. Every `rl_rollout_sync_every` steps the RL
  adapter is saved (peft) under `rl_rollout_adapter_dir` and loaded through vLLM's runtime LoRA endpoint
  (`POST /v1/load_lora_adapter`; the server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) under a fresh name,
  `navigen-rl-step-<N>`, which the rollouts then request; the previous adapter is unloaded and its folder
  removed. `rl_rollout_sync_every: 0` never updates the served model (`rl_rollout_model`). Samples from an
  adapter up to `rl_rollout_sync_every - 1` steps old (or in the server's lower precision) are slightly
  off-policy: the ratio is taken against the local policy, which does not correct for that.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch

from recbole_navigen.model.navigen_tasks import (
    CID2CID_ANSWER_PREFIX,
    THINK_OPEN,
    cid2cid_prompt,
    cid2ins_prompt,
    encode_prompts,
    render_prompt,
)
from recbole_navigen.rl.rewards import combine
from recbole_navigen.rl.rollout import Rollout, reward_cid2cid, score_cid2ins
from recbole_navigen.teacher.client import KEYLESS_API_KEY

logger = logging.getLogger(__name__)

CONSTRAINTS = ("choice", "regex")
ADAPTER_PREFIX = "navigen-rl-step-"
EXPORT_FILE = "navigen_export.json"  # written beside an exported backbone: which identifiers and checkpoint
TIMEOUT = 600.0  # seconds per request: one request carries a whole batch's rollouts
# Sampling as the local rollouts do it, whatever defaults the served model's generation_config.json sets.
_PLAIN_SAMPLING = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}


class RolloutServerError(RuntimeError):
    """The rollout server could not be used; the message names `rl_rollout_server` and what to do."""


# ----- the catalogue as a constraint -----


def catalogue_completions(items) -> list[str]:
    """What may follow the forced `<|cid_begin|>` of a cid2cid answer: each catalogue item's code tokens and
    the end marker, in item order (the `choice` constraint)."""
    return [items.cid(item)[len(items.BEGIN):] for item in range(1, items.n_items)]


def catalogue_regex(items) -> str:
    """The same strings as one regular expression shaped like the trie (shared prefixes written once)."""

    def branch(codes: list[list[int]], level: int) -> str:
        if level == items.depth:
            return ""
        children: dict[int, list[list[int]]] = {}
        for code in codes:
            children.setdefault(code[level], []).append(code)
        parts = [re.escape(items.level_token(level, value)) + branch(rest, level + 1)
                 for value, rest in sorted(children.items())]
        return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"

    return branch(items.codes_tensor[1:].tolist(), 0) + re.escape(items.END)


def constraint_fields(items, kind: str) -> dict:
    """The request fields that constrain a cid2cid completion to the catalogue, in both of vLLM's spellings."""
    if kind == "choice":
        choices = catalogue_completions(items)
        return {"structured_outputs": {"choice": choices}, "guided_choice": choices}
    if kind == "regex":
        pattern = catalogue_regex(items)
        return {"structured_outputs": {"regex": pattern}, "guided_regex": pattern}
    raise ValueError(f"rl_rollout_constraint must be one of {list(CONSTRAINTS)}, not {kind!r}")


# ----- the served base model -----


def backbone_state_dict(llm, merge_adapters: bool) -> dict[str, torch.Tensor]:
    """The weights of a backbone under the names of the plain model: a PEFT-wrapped one's LoRA adapters are
    merged in (`merge_adapters`) or left out; the model itself is not changed."""
    from peft import PeftModel

    if not isinstance(llm, PeftModel):
        return dict(llm.state_dict())
    base = llm.get_base_model()
    state = {name.replace(".base_layer.", "."): tensor for name, tensor in base.state_dict().items()
             if ".lora_" not in name}
    if merge_adapters:
        for name, module in base.named_modules():
            if not hasattr(module, "get_delta_weight") or getattr(module, "merged", False):
                continue
            for adapter in module.active_adapters:
                if adapter in getattr(module, "lora_A", {}):
                    key = f"{name}.weight"
                    state[key] = state[key] + module.get_delta_weight(adapter).to(state[key].dtype)
    return state


def export_backbone(model, folder: str | Path, merge_adapters: bool = True, checkpoint: str | None = None) -> Path:
    """Write a NaviGen's backbone (the code tokens in its vocabulary) as a Hugging Face folder for
    `vllm serve <folder> --enable-lora`: model and tokenizer `save_pretrained`, and `navigen_export.json`
    (identifiers, checkpoint). `merge_adapters=False` leaves a PEFT adapter out: in the RL stage, the base the
    RL adapter trains on. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    llm = model.llm
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    base.save_pretrained(folder, state_dict=backbone_state_dict(llm, merge_adapters))
    model.hf_tokenizer.save_pretrained(folder)
    note = {"identifiers": model.identifiers_key, "checkpoint": checkpoint, "adapters_merged": merge_adapters}
    (folder / EXPORT_FILE).write_text(json.dumps(note, indent=1), encoding="utf-8")
    return folder


def export_checkpoint(checkpoint: str | Path, output: str | Path, cmd_args: list[str] | None = None) -> Path:
    """`export_backbone` of a trained NaviGen checkpoint (rebuilt from its saved configuration), every adapter
    it trained merged in: export the stage-2 checkpoint an RL stage starts from to serve its rollouts."""
    from recbole_navigen.generation.instructions import load_trained_navigen

    _, model, _ = load_trained_navigen(checkpoint, cmd_args)
    return export_backbone(model, output, merge_adapters=True, checkpoint=str(checkpoint))


def save_adapter(llm, folder: Path) -> Path:
    """The PEFT adapter of `llm` (adapter_config.json and its weights, no embedding rows) in `folder`."""
    if folder.exists():
        shutil.rmtree(folder)
    llm.save_pretrained(str(folder), save_embedding_layers=False)
    return folder


# ----- the server -----


class RolloutServer:
    """Samples rollouts on an OpenAI-compatible server and keeps its LoRA adapter in step with the policy.

    Nothing is sent before the first training step, so a model rebuilt from an RL checkpoint (evaluation,
    `generate`) needs no server."""

    def __init__(self, base_url: str, model: str | None = None, constraint: str = "choice", sync_every: int = 1,
                 adapter_dir: str | Path = "rollout_adapters", init_from: str | None = None, seed: int = 0,
                 timeout: float = TIMEOUT) -> None:
        import openai

        if constraint not in CONSTRAINTS:
            raise ValueError(f"rl_rollout_constraint must be one of {list(CONSTRAINTS)}, not {constraint!r}")
        if sync_every < 0:
            raise ValueError(f"rl_rollout_sync_every must be 0 (never) or a number of steps, not {sync_every}")
        self.base_url = base_url.rstrip("/")
        # The LoRA endpoints live at the server's root + /v1, whatever the completions base URL ends with.
        self.root = re.sub(r"/v1$", "", self.base_url)
        self.base_model, self.constraint, self.sync_every = model, constraint, sync_every
        self.adapter_dir, self.init_from = Path(adapter_dir), init_from
        self._openai = openai
        self.client = openai.OpenAI(api_key=KEYLESS_API_KEY, base_url=self.base_url, timeout=timeout, max_retries=2)
        self.adapter: tuple[str, Path] | None = None  # (name, folder) of the adapter the server holds now
        self.steps = 0
        self.generator = torch.Generator().manual_seed(seed)  # the cid2ins requests' seeds
        self._checked = False
        self._constraint: dict | None = None

    @classmethod
    def from_config(cls, config) -> RolloutServer | None:
        """The server of `rl_rollout_server`, None when it is unset (rollouts are sampled locally)."""
        if not config["rl_rollout_server"]:
            return None
        sync_every = config["rl_rollout_sync_every"]
        return cls(config["rl_rollout_server"], config["rl_rollout_model"], config["rl_rollout_constraint"] or "choice",
                   1 if sync_every is None else int(sync_every),
                   config["rl_rollout_adapter_dir"] or Path(config["checkpoint_dir"] or "saved") / "rollout_adapters",
                   config["init_from"], config["seed"] or 0)

    # ----- requests -----

    def _request(self, what: str, send):
        """`send()`, its failures turned into errors that name the server's config key and the way out."""
        try:
            return send()
        except self._openai.APIConnectionError as error:
            raise RolloutServerError(
                f"rl_rollout_server {self.base_url}: cannot reach the server to {what} ({error}); start it "
                "(README: Scaling out) or set rl_rollout_server: ~ to sample rollouts locally") from None
        except self._openai.APIStatusError as error:
            hint = ""
            if "lora" in what and error.status_code in (404, 405):
                hint = ("; start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or set "
                        "rl_rollout_sync_every: 0 to sample from a fixed served model")
            raise RolloutServerError(f"rl_rollout_server {self.base_url}: {what} failed with HTTP "
                                     f"{error.status_code}: {error.message}{hint}") from None

    def _post(self, endpoint: str, body: dict, what: str) -> str:
        return self._request(what, lambda: self.client.post(f"{self.root}/v1/{endpoint}", body=body, cast_to=str))

    def served_model(self) -> str:
        """The model name rollouts request: the synced adapter, else `rl_rollout_model` (default: the base
        model the server lists)."""
        if self.adapter is not None:
            return self.adapter[0]
        if self.base_model is None:
            self.base_model = self._base_card().id
        return self.base_model

    def _base_card(self):
        """The served base model: the one `rl_rollout_model` names, else the first that is no adapter."""
        cards = self._request("list its models", lambda: list(self.client.models.list()))
        if self.base_model is not None:
            bases = [card for card in cards if card.id == self.base_model]
        else:
            bases = [card for card in cards if not getattr(card, "parent", None)]
        if not bases:
            named = f" named {self.base_model!r} (rl_rollout_model)" if self.base_model else ""
            raise RolloutServerError(f"rl_rollout_server {self.base_url} serves no model{named}; it serves "
                                     f"{[card.id for card in cards]}")
        return bases[0]

    def check_base(self, model) -> None:
        """Compare the served base model's `navigen_export.json` (when the server's model folder is readable
        here) with this model: other identifiers are an error, another checkpoint a warning."""
        card = self._base_card()
        note_file = Path(str(getattr(card, "root", None) or card.id)) / EXPORT_FILE
        if not note_file.is_file():
            logger.info(f"rl_rollout_server: cannot read {note_file}; not checking the served base model")
            return
        note = json.loads(note_file.read_text(encoding="utf-8"))
        if note.get("identifiers") != model.identifiers_key:
            raise RolloutServerError(
                f"rl_rollout_server {self.base_url} serves {note_file.parent}, exported for identifiers "
                f"{note.get('identifiers')}, but this model uses {model.identifiers_key}: export this run's "
                "stage-2 checkpoint (python run_recbole_navigen.py export) and serve that folder")
        exported = note.get("checkpoint")
        if self.init_from and exported and Path(exported).resolve() != Path(self.init_from).resolve():
            logger.warning(f"rl_rollout_server serves the export of {note['checkpoint']}; this RL stage starts "
                           f"from {self.init_from}: rollouts come from another policy than the one trained")

    # ----- weights -----

    def begin_step(self, model) -> None:
        """Before a training step's rollouts: check the served base once, then sync the adapter when due."""
        if not self._checked:
            self.check_base(model)
            self._checked = True
        if self.sync_every and self.steps % self.sync_every == 0:
            self.sync(model.llm)
        self.steps += 1

    def sync(self, llm) -> str:
        """Save the policy's adapter and load it into the server under a fresh name; unload the previous one."""
        name = f"{ADAPTER_PREFIX}{self.steps}{_rank_suffix()}"
        folder = save_adapter(llm, (self.adapter_dir / name).resolve())
        body = {"lora_name": name, "lora_path": str(folder)}
        try:
            self._post("load_lora_adapter", body, f"load the lora adapter {name}")
        except RolloutServerError as error:
            if "already" not in str(error):  # a restarted run's adapter of the same name: replace it
                raise
            self._post("unload_lora_adapter", {"lora_name": name}, f"unload the lora adapter {name}")
            self._post("load_lora_adapter", body, f"load the lora adapter {name}")
        previous, self.adapter = self.adapter, (name, folder)
        if previous is not None and previous[0] != name:
            self._post("unload_lora_adapter", {"lora_name": previous[0]}, f"unload the lora adapter {previous[0]}")
            shutil.rmtree(previous[1], ignore_errors=True)
        return name

    # ----- rollouts -----

    def _sample(self, prompts: list[str], group: int, temperature: float, max_tokens: int, fields: dict,
                generator: torch.Generator | None) -> list:
        """`group` completions per prompt, prompt-major (the order of the local rollouts)."""
        seed = None if generator is None else int(torch.randint(2**31 - 1, (1,), generator=generator))
        body = {"add_special_tokens": False, **_PLAIN_SAMPLING, **fields}
        response = self._request("sample rollouts", lambda: self.client.completions.create(
            model=self.served_model(), prompt=prompts, n=group, temperature=temperature, top_p=1.0,
            max_tokens=max_tokens, seed=seed, extra_body=body))
        choices = sorted(response.choices, key=lambda choice: choice.index)
        if len(choices) != len(prompts) * group:
            raise RolloutServerError(f"rl_rollout_server {self.base_url} returned {len(choices)} completions for "
                                     f"{len(prompts)} prompts x n={group}")
        return choices

    @torch.no_grad()
    def rollout_cid2cid(self, model, history: list[list[int]], targets: list[int], settings: dict,
                        generator: torch.Generator | None = None) -> Rollout:
        """`rollout.rollout_cid2cid` with the codes sampled on the server under the catalogue constraint."""
        group, items, tokenizer = settings["num_generations"], model.items, model.hf_tokenizer
        prompts = [cid2cid_prompt(items, past, model.history_format) for past in history]
        batch = encode_prompts(prompts, tokenizer, CID2CID_ANSWER_PREFIX)
        if self._constraint is None:  # the same catalogue every step: built once
            allowed = sorted({*model.token_table[model.token_table >= 0].tolist(), model.end_id, *_stop_ids(model)})
            self._constraint = {**constraint_fields(items, self.constraint), "allowed_token_ids": allowed}
        choices = self._sample([render_prompt(prompt, tokenizer) + CID2CID_ANSWER_PREFIX for prompt in prompts],
                               group, settings["temperature"], items.depth + 2,
                               self._constraint, generator)
        table, rows, valid, texts, rewards = model.token_table.cpu(), [], [], [], []
        for row, choice in enumerate(choices):
            item = items.item_of_cid(items.BEGIN + choice.text)
            if item is None:  # the server ignored the constraint: no item, no reward, no gradient
                text = '{"target_cid":"' + items.BEGIN + choice.text
                rows.append([model.end_id] * (items.depth + 1))
                texts.append(text)
                rewards.append(combine("cid2cid", 0.0, text, 0.0, think_required=False))
                valid.append(0)
                continue
            code = items.code(item)
            rows.append([int(table[level, value]) for level, value in enumerate(code)] + [model.end_id])
            text, reward = reward_cid2cid(model, item, code, targets[row // group], settings)
            texts.append(text)
            rewards.append(reward)
            valid.append(1)
        invalid = len(valid) - sum(valid)
        if invalid == len(valid):
            raise RolloutServerError(
                f"rl_rollout_server {self.base_url}: none of {len(valid)} cid2cid replies names a catalogue item "
                f"(first: {choices[0].text[:80]!r}); the server ignored the {self.constraint} constraint (vLLM "
                "reads structured_outputs from 0.11 on, guided_* up to 0.11)")
        if invalid:
            logger.warning(f"rl_rollout_server: {invalid} of {len(valid)} cid2cid replies name no catalogue item")
        device = model.token_table.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        completion = torch.tensor(rows, dtype=torch.long, device=device)
        completion_mask = torch.tensor(valid, dtype=torch.long, device=device).unsqueeze(1).expand_as(completion)
        rollout = Rollout(
            "cid2cid",
            torch.cat([ids.repeat_interleave(group, dim=0), completion], dim=1),
            torch.cat([mask.repeat_interleave(group, dim=0), torch.ones_like(completion)], dim=1),
            torch.cat([torch.zeros_like(mask).repeat_interleave(group, dim=0), completion_mask], dim=1),
            texts, rewards,
        )
        rollout.extras["server_invalid"] = [float(invalid)]
        return rollout

    @torch.no_grad()
    def rollout_cid2ins(self, model, history: list[list[int]], targets: list[int], settings: dict,
                        judge) -> Rollout:
        """`rollout.rollout_cid2ins` with the replies sampled on the server (no constraint)."""
        group, tokenizer = settings["num_generations"], model.hf_tokenizer
        prompts = [cid2ins_prompt(model.items, past, model.history_format) for past in history]
        batch = encode_prompts(prompts, tokenizer, THINK_OPEN)
        choices = self._sample([render_prompt(prompt, tokenizer) + THINK_OPEN for prompt in prompts], group,
                               settings["temperature"], settings["max_new_tokens"], {"return_token_ids": True},
                               self.generator)
        stops, budget = _stop_ids(model), settings["max_new_tokens"]
        sequences = []
        for choice in choices:
            ids = getattr(choice, "token_ids", None) or tokenizer(choice.text, add_special_tokens=False)["input_ids"]
            ids = list(ids)
            if choice.finish_reason == "stop" and (not ids or ids[-1] not in stops):
                ids.append(tokenizer.eos_token_id)  # the server dropped the stop token from its text
            sequences.append(ids[:budget])
        width, pad = max(1, max(len(ids) for ids in sequences)), tokenizer.pad_token_id
        device = model.token_table.device
        completion = torch.tensor([ids + [pad] * (width - len(ids)) for ids in sequences], device=device)
        completion_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences],
                                       device=device)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        texts = tokenizer.batch_decode(completion * completion_mask + pad * (1 - completion_mask),
                                       skip_special_tokens=True)
        rollout = Rollout(
            "cid2ins",
            torch.cat([ids.repeat_interleave(group, dim=0), completion], dim=1),
            torch.cat([mask.repeat_interleave(group, dim=0), completion_mask], dim=1),
            torch.cat([torch.zeros_like(mask).repeat_interleave(group, dim=0), completion_mask], dim=1),
            [THINK_OPEN + text for text in texts],
        )
        return score_cid2ins(model, rollout, history, targets, settings, judge)


def _stop_ids(model) -> set[int]:
    """Token ids that end a completion: the tokenizer's eos and the generation config's."""
    configured = getattr(getattr(model.llm, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return {token for token in [model.hf_tokenizer.eos_token_id, *configured] if token is not None}


def _rank_suffix() -> str:
    """`-rank<R>` in a multi-process run, where every process syncs its own copy of the adapter."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1:
        return f"-rank{distributed.get_rank()}"
    return ""
