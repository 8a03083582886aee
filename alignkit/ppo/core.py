"""The maths of PPO for RLHF, as small pure functions on tensors.

Shapes: `(batch, response_length)` for per-token tensors, `(batch,)` for per-sequence ones; `mask` is 1 on
response tokens (the stop token included) and 0 on padding. Statistics that must span every process take an
`all_reduce` callable (sum over processes); the default is single-process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` where `mask` is 1 (over all elements, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_mean_var(
    x: torch.Tensor, mask: torch.Tensor, all_reduce: Reduce = _identity
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Mean and unbiased variance of `x` over the masked elements of every process. Two passes (mean, then squared
    deviations) rather than E[x^2] - E[x]^2, which cancels catastrophically when the mean is large.
    """
    mask = mask.to(x.dtype)
    total, count = all_reduce(torch.stack([(x * mask).sum(), mask.sum()])).unbind()
    mean = total / count.clamp(min=1)
    squares = all_reduce(((x - mean) ** 2 * mask).sum())
    var = squares / (count - 1).clamp(min=1)  # Bessel's correction
    return mean, var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_reduce: Reduce = _identity
) -> torch.Tensor:
    """
    `x` scaled to unit variance over the masked elements (and centred when `shift_mean`); padded positions are
    ignored by the statistics and set to 0 in the result.
    """
    mean, var = masked_mean_var(x, mask, all_reduce)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Generalised advantage estimation (Schulman et al. 2016) over right-padded responses:
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},
    with V and A zero after the last response token (the episode ends there). Returns (advantages, returns),
    returns = advantages + values being the value-loss target.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # zero past the end: no bootstrap from padding
    advantages = torch.zeros_like(values)
    next_advantage = torch.zeros_like(values[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, advantages + values


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """
    Per-token estimate of KL(policy || reference) from log-probabilities of tokens sampled from the policy
    (Schulman, "Approximating KL divergence"): k1 = log p - log q (unbiased, can be negative); k3 = (r - 1) - log r
    with r = q / p (unbiased, never negative, lower variance).
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"Unknown KL estimator '{estimator}'; use 'k1' or 'k3'.")


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """The reward PPO maximises: -kl_coef * kl_t at every response token, plus the score at the last one."""
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores.to(kl.dtype)
    return rewards


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    PPO's clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = pi/pi_old.
    Returns (loss, clipfrac: share of tokens where the clip was active, approx_kl: k3 estimate of KL(old || new)).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(-log_ratio) + log_ratio, mask)
    return loss, clipfrac, approx_kl


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Clipped value loss: 0.5 * mean over tokens of max((V - R)^2, (V_clip - R)^2), where V_clip keeps the new value
    within `cliprange_value` of the value at rollout time. Returns (loss, clipfrac).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clipfrac


def truncate_after_stop(
    responses: torch.Tensor, stop_token_id: int | None, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Cut each response after its first `stop_token_id` (which is kept) and pad the rest with `pad_token_id`.
    Returns (responses, lengths, stopped). Lengths come from the stop position, never from `== pad_token_id`:
    the pad token may be the stop token itself.
    """
    width = responses.shape[1]
    if stop_token_id is None:
        lengths = torch.full((len(responses),), width, device=responses.device)
        return responses, lengths, torch.zeros(len(responses), dtype=torch.bool, device=responses.device)
    is_stop = responses == stop_token_id
    stopped = is_stop.any(1)
    first_stop = torch.where(stopped, is_stop.int().argmax(1), width - 1)
    lengths = first_stop + 1
    keep = torch.arange(width, device=responses.device)[None, :] < lengths[:, None]
    return responses.masked_fill(~keep, pad_token_id), lengths, stopped


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) mask with 1 on the first `lengths[i]` positions of row i."""
    return (torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]).long()


def missing_eos_penalty(scores: torch.Tensor, stopped: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Subtract `penalty` from the score of every response that never produced its stop token."""
    if penalty is None:
        return scores
    return scores - penalty * (~stopped).to(scores.dtype)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, all_reduce: Reduce = _identity
) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over valid tokens: 1 is a perfect critic, 0 no better than a constant."""
    _, var_returns = masked_mean_var(returns, mask, all_reduce)
    _, var_error = masked_mean_var(returns - values, mask, all_reduce)
    return 1 - var_error / var_returns.clamp(min=1e-8)


class KLController:
    """
    The KL coefficient beta. Fixed, or adaptive (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences"): after each update with mean KL `kl` over `n_steps` episodes,
        e = clip(kl / target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n_steps / horizon),
    so beta grows while the policy drifts further than `target` from the reference and shrinks while it stays
    closer.
    """

    def __init__(self, kl_coef: float, adaptive: bool = False, target: float | None = None, horizon: float | None = None):
        self.value = float(kl_coef)
        self.adaptive = adaptive
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n_steps: int) -> None:
        if not self.adaptive:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
