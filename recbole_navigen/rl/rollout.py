"""GRPO rollouts of NaviGen: G completions per prompt, their rewards, and the token tensors the loss needs.

- cid2cid: the cid2cid prompt with the answer prefix forced, then codes sampled under the catalogue trie
  (`decoding.sampling`): every completion names an item; its tokens are the code tokens and the end token.
- cid2ins: the cid2ins prompt with `<think>` forced, then free sampling up to eos or `rl_max_new_tokens`.

Forced prefixes sit in the prompt, so they get no policy gradient (the public release trained them as
policy tokens). The ground truth of both tasks is the batch's own target item: its code for cid2cid, its
TID terms for cid2ins, so RL needs no teacher supervision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recbole_navigen.decoding.beam_search import CausalStepper
from recbole_navigen.decoding.sampling import constrained_sample
from recbole_navigen.model.navigen_tasks import (
    CID2CID_ANSWER_PREFIX,
    THINK_OPEN,
    cid2cid_prompt,
    cid2ins_prompt,
    encode_prompts,
)
from recbole_navigen.rl.judge import JudgeInput
from recbole_navigen.rl.rewards import RewardBreakdown, cid_reward, combine, format_reward, parse_answer


@dataclass
class Rollout:
    """One task's completions, user-major (G consecutive rows per prompt)."""

    task: str
    input_ids: torch.Tensor  # [rows, prompt + completion]
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor  # 1 on the completion's tokens
    texts: list[str]  # each completion as the reward reads it
    rewards: list[RewardBreakdown] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)  # judge scores etc., per completion

    @property
    def reward_tensor(self) -> torch.Tensor:
        return torch.tensor([reward.reward for reward in self.rewards], dtype=torch.float32)


@torch.no_grad()
def rollout_cid2cid(model, history: list[list[int]], targets: list[int], settings: dict,
                    generator: torch.Generator) -> Rollout:
    """Sample `settings['num_generations']` catalogue codes per history and reward each against its target."""
    group = settings["num_generations"]
    prompts = [cid2cid_prompt(model.items, past, model.history_format) for past in history]
    batch = encode_prompts(prompts, model.hf_tokenizer, CID2CID_ANSWER_PREFIX)
    device = model.token_table.device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    model.trie = model.trie.to(device)
    stepper = CausalStepper(model.llm, ids, mask)
    sampled = constrained_sample(stepper, len(prompts), model.trie, model.token_table, model.end_id, group,
                                 settings["temperature"], generator)
    completion = sampled.tokens
    rollout = Rollout(
        "cid2cid",
        torch.cat([ids.repeat_interleave(group, dim=0), completion], dim=1),
        torch.cat([mask.repeat_interleave(group, dim=0), torch.ones_like(completion)], dim=1),
        torch.cat([torch.zeros_like(mask).repeat_interleave(group, dim=0), torch.ones_like(completion)], dim=1),
        [],
    )
    for row, item in enumerate(sampled.items.tolist()):
        predicted = tuple(sampled.codes[row].tolist())
        text, reward = reward_cid2cid(model, item, predicted, targets[row // group], settings)
        rollout.texts.append(text)
        rollout.rewards.append(reward)
    return rollout


def reward_cid2cid(model, item: int, predicted: tuple[int, ...], target: int,
                   settings: dict) -> tuple[str, RewardBreakdown]:
    """The answer text of a sampled catalogue item `item` (code `predicted`) and its reward against `target`."""
    text = '{"target_cid":"' + model.items.cid(item) + '"}'
    task_reward = cid_reward(predicted, model.items.code(target), item > 0, settings["cid_level_weights"],
                             settings["cid_prefix_conditioned"], settings["cid_in_range_ratio"])
    fmt = format_reward(text, "cid2cid", lambda cid: model.items.parse_cid(cid) is not None)
    return text, combine("cid2cid", task_reward, text, fmt, think_required=False)


@torch.no_grad()
def rollout_cid2ins(model, history: list[list[int]], targets: list[int], settings: dict, judge) -> Rollout:
    """Sample G cid2ins replies per history; a well-formed reply is judged against the target's terms."""
    group = settings["num_generations"]
    prompts = [cid2ins_prompt(model.items, past, model.history_format) for past in history]
    batch = encode_prompts(prompts, model.hf_tokenizer, THINK_OPEN)
    device = model.token_table.device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    tokenizer = model.hf_tokenizer
    output = model.llm.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                temperature=settings["temperature"], max_new_tokens=settings["max_new_tokens"],
                                num_return_sequences=group, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    completion = output[:, ids.shape[1]:]
    completion_mask = _until_eos(completion, tokenizer.eos_token_id)
    rollout = Rollout(
        "cid2ins",
        output,
        torch.cat([mask.repeat_interleave(group, dim=0), completion_mask], dim=1),
        torch.cat([torch.zeros_like(mask).repeat_interleave(group, dim=0), completion_mask], dim=1),
        [THINK_OPEN + text for text in tokenizer.batch_decode(completion * completion_mask + tokenizer.pad_token_id
                                                              * (1 - completion_mask), skip_special_tokens=True)],
    )
    return score_cid2ins(model, rollout, history, targets, settings, judge)


def score_cid2ins(model, rollout: Rollout, history: list[list[int]], targets: list[int], settings: dict,
                  judge) -> Rollout:
    """Fill `rollout`'s rewards and judge extras: a well-formed reply is judged against its target's terms,
    anything else scores 0 on every edge (as in the release)."""
    group = settings["num_generations"]
    formats = [format_reward(text, "cid2ins") for text in rollout.texts]
    requests = {}
    for row, (text, fmt) in enumerate(zip(rollout.texts, formats)):
        if fmt:  # judged only when well formed, as in the release: anything else scores 0 on every edge
            answer = parse_answer(text)
            past, target = history[row // group], targets[row // group]
            requests[row] = JudgeInput([model.items.tid(i) for i in past], model.items.tid(target),
                                       answer["target_tid"], answer["target_ins"])
    scores = dict(zip(requests, judge.score(list(requests.values())))) if requests else {}
    failures = 0
    for row, (text, fmt) in enumerate(zip(rollout.texts, formats)):
        score = scores.get(row)
        if row in scores and score is None:
            failures += 1
        task_reward = score.semantic() if score is not None else (settings["judge_failure_reward"]
                                                                  if row in scores else 0.0)
        rollout.rewards.append(combine("cid2ins", task_reward, text, fmt))
        for name in ("quality", "ins_vs_true", "ins_vs_pred", "pred_vs_true"):
            rollout.extras.setdefault(name, []).append(getattr(score, name) if score is not None else 0.0)
    rollout.extras["judge_failures"] = [float(failures)]
    return rollout


def _until_eos(completion: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on each row's tokens up to and including its first eos (all of them when there is none)."""
    is_eos = (completion == eos_id).long()
    before = is_eos.cumsum(dim=1) - is_eos  # eos tokens strictly before each position
    return (before == 0).long()
