"""GRPO's arithmetic: group-normalised advantages, per-token log-probabilities of completions, and the
clipped surrogate with a KL penalty to the reference policy (the k3 estimator, as in DeepSeekMath and TRL).

    loss = mean over completions of mean over their tokens of
           -( min(r * A, clip(r, 1 - eps, 1 + eps) * A) - beta * KL_t ),   r = exp(logp - logp_old)
    KL_t = exp(ref - logp) - (ref - logp) - 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Each reward minus its group's mean, divided by the group's std when `scale` (groups are consecutive
    runs of `group_size`, one prompt's samples). A group whose samples all score alike gets 0 everywhere."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.reshape(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True, unbiased=True if group_size > 1 else False) + eps)
    return centred.reshape(-1)


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        completion_mask: torch.Tensor) -> torch.Tensor:
    """Log-probability under `model` of each token of `input_ids` given the tokens before it, `[rows,
    length]`, zero outside `completion_mask` (the first token, never predicted, included)."""
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), dim=-1).gather(2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    logps = torch.cat([logps.new_zeros((len(logps), 1)), logps], dim=1)
    return logps * completion_mask


@dataclass(frozen=True)
class SurrogateStats:
    """Per-step diagnostics: mean KL per token, share of tokens whose ratio was clipped."""

    kl: float
    clip_fraction: float


def clipped_surrogate(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor,
                      advantages: torch.Tensor, mask: torch.Tensor, clip_epsilon: float,
                      beta: float) -> tuple[torch.Tensor, SurrogateStats]:
    """GRPO's loss over completions `[rows, length]` (tokens where `mask` is 1) and its diagnostics; each
    completion's tokens are averaged first, so long and short completions weigh the same."""
    mask = mask.float()
    ratio = torch.exp(logps - old_logps)
    advantage = advantages.unsqueeze(1)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon) * advantage
    objective = torch.minimum(unclipped, clipped)
    delta = ref_logps - logps
    kl = torch.exp(delta) - delta - 1
    per_token = -(objective - beta * kl)
    lengths = mask.sum(dim=1).clamp(min=1)
    loss = ((per_token * mask).sum(dim=1) / lengths).mean()
    tokens = mask.sum().clamp(min=1)
    kl, ratio = kl.detach(), ratio.detach()
    was_clipped = ((ratio < 1 - clip_epsilon) | (ratio > 1 + clip_epsilon)).float()
    stats = SurrogateStats(kl=float((kl * mask).sum() / tokens), clip_fraction=float((was_clipped * mask).sum() / tokens))
    return loss, stats
