"""PPO's maths against values worked out by hand."""

import math

import pytest
import torch

from alignkit.ppo import core

T = torch.tensor


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-6)


def test_masked_mean_ignores_padding():
    assert core.masked_mean(T([1.0, 2.0, 3.0, 100.0]), T([1, 1, 1, 0])).item() == pytest.approx(2.0)
    rows = core.masked_mean(T([[1.0, 3.0], [5.0, 100.0]]), T([[1, 1], [1, 0]]), dim=1)
    assert rows.tolist() == pytest.approx([2.0, 5.0])


def test_whitening_uses_only_valid_tokens():
    # Valid: 2, 4, 6 -> mean 4, unbiased variance (4 + 0 + 4) / 2 = 4, std 2 -> -1, 0, 1; padding becomes 0.
    x, mask = T([[2.0, 4.0], [6.0, 1000.0]]), T([[1, 1], [1, 0]])
    close(core.masked_whiten(x, mask), [[-1.0, 0.0], [1.0, 0.0]])
    # Without shifting the mean, only the spread changes: 4 + (-1, 0, 1).
    close(core.masked_whiten(x, mask, shift_mean=False), [[3.0, 4.0], [5.0, 0.0]])


def test_whitening_statistics_span_every_process():
    # A second process holding the same data doubles every sum: the result must equal whitening both copies at once.
    x, mask = T([[1.0, 2.0, 7.0]]), T([[1, 1, 1]])
    both = core.masked_whiten(torch.cat([x, x], 1), torch.cat([mask, mask], 1))[:, :3]
    close(core.masked_whiten(x, mask, all_reduce=lambda t: 2 * t), both)


def test_whitening_on_two_ranks_with_different_data_equals_whitening_their_union():
    # Two "ranks" as threads, each with its own rows and padding; all_reduce sums a tensor over both.
    import threading

    xs = [T([[1.0, 2.0, 7.0, 9.0]]), T([[-3.0, 5.0, 0.0, 0.0], [4.0, 4.5, 6.0, 1.0]])]
    masks = [T([[1, 1, 1, 0]]), T([[1, 1, 0, 0], [1, 1, 1, 1]])]
    barrier, shared, results = threading.Barrier(2), [None, None], [None, None]

    def run(rank):
        def all_reduce(t):
            shared[rank] = t
            barrier.wait()
            total = shared[0] + shared[1]
            barrier.wait()  # both have read before either writes again
            return total

        results[rank] = core.masked_whiten(xs[rank], masks[rank], all_reduce=all_reduce)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    union = core.masked_whiten(torch.cat(xs), torch.cat(masks))
    close(torch.cat(results), union)
    # Whitening each rank on its own gives something else.
    alone = torch.cat([core.masked_whiten(x, m) for x, m in zip(xs, masks)])
    assert (alone - union).abs().max() > 0.1


def test_gae_matches_a_hand_worked_example():
    # gamma = 0.9, lam = 0.8, rewards (0, 0, 1), values (0.5, 0.6, 0.7); V after the end is 0.
    #   t=2: delta = 1 + 0.9 * 0   - 0.7 = 0.3    A2 = 0.3
    #   t=1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03   A1 = 0.03 + 0.72 * 0.3   = 0.246
    #   t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04   A0 = 0.04 + 0.72 * 0.246 = 0.21712
    # The second row is the same episode right-padded with junk rewards and values, which must not leak in.
    rewards = T([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 5.0]])
    values = T([[0.5, 0.6, 0.7, 0.0], [0.5, 0.6, 0.7, 9.0]])
    mask = T([[1, 1, 1, 0], [1, 1, 1, 0]])
    advantages, returns = core.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for row in range(2):
        assert advantages[row].tolist() == pytest.approx([0.21712, 0.246, 0.3, 0.0], abs=1e-6)
        assert returns[row].tolist() == pytest.approx([0.71712, 0.846, 1.0, 0.0], abs=1e-6)


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value():
    rewards, values = T([[0.1, -0.2, 1.0]]), T([[0.3, 0.4, 0.5]])
    advantages, returns = core.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert returns.tolist()[0] == pytest.approx([0.9, 0.8, 1.0])
    assert advantages.tolist()[0] == pytest.approx([0.6, 0.4, 0.5])


def test_kl_estimators():
    logp, ref = T([math.log(0.5)]), T([math.log(0.25)])
    assert core.kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))  # log p - log q
    assert core.kl_penalty(logp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))  # (q/p - 1) - log(q/p)
    assert core.kl_penalty(ref, logp, "k3").item() == pytest.approx(1.0 - math.log(2))
    assert core.kl_penalty(logp, logp, "k1").item() == 0.0 and core.kl_penalty(logp, logp, "k3").item() == 0.0
    assert (core.kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1"):
        core.kl_penalty(logp, ref, "k2")


def test_per_token_rewards_add_the_score_at_the_last_response_token():
    kl, mask = T([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]]), T([[1, 1, 1], [1, 0, 0]])
    rewards = core.per_token_rewards(T([1.0, 2.0]), kl, mask, kl_coef=0.5)
    close(rewards, [[-0.05, -0.1, 0.85], [1.8, 0.0, 0.0]])


@pytest.mark.parametrize(
    "ratio, advantage, loss, clipped",
    [
        (1.1, 1.0, -1.1, 0.0),  # inside the range: plain ratio objective
        (1.5, 1.0, -1.2, 1.0),  # good action pushed past 1 + eps: the gain is capped at 1.2
        (1.5, -1.0, 1.5, 0.0),  # bad action made likelier: the loss stays unclipped (pessimistic bound)
        (0.5, -1.0, 0.8, 1.0),  # bad action pushed below 1 - eps: the gain is capped at 0.8
        (0.5, 1.0, -0.5, 0.0),  # good action made rarer: unclipped
    ],
)
def test_clipped_policy_loss(ratio, advantage, loss, clipped):
    old = torch.zeros(1, 2)
    new = T([[math.log(ratio), 5.0]])  # the second token is padding
    out, clipfrac, approx_kl = core.policy_loss(new, old, T([[advantage, 9.0]]), T([[1, 0]]), cliprange=0.2)
    assert out.item() == pytest.approx(loss)
    assert clipfrac.item() == clipped
    assert approx_kl.item() == pytest.approx((1 / ratio - 1) + math.log(ratio))  # k3 of KL(old || new)


@pytest.mark.parametrize(
    "new_value, loss, clipped",
    [
        (0.1, 0.5 * 0.81, 0.0),  # inside the range: 0.5 * (0.1 - 1)^2
        (0.5, 0.5 * 0.64, 1.0),  # moved 0.5 towards the return, clipped to 0.2: 0.5 * (0.2 - 1)^2
        (-0.5, 0.5 * 2.25, 0.0),  # moved away from the return: the larger, unclipped error counts
    ],
)
def test_clipped_value_loss(new_value, loss, clipped):
    out, clipfrac = core.value_loss(T([[new_value, 3.0]]), T([[0.0, 0.0]]), T([[1.0, 7.0]]), T([[1, 0]]), 0.2)
    assert out.item() == pytest.approx(loss)
    assert clipfrac.item() == clipped


def test_truncation_keeps_the_stop_token_and_pads_after_it():
    responses = T([[5, 2, 7, 8], [5, 6, 7, 8], [2, 9, 9, 9]])
    out, lengths, stopped = core.truncate_after_stop(responses, stop_token_id=2, pad_token_id=1)
    assert out.tolist() == [[5, 2, 1, 1], [5, 6, 7, 8], [2, 1, 1, 1]]
    assert lengths.tolist() == [2, 4, 1]
    assert stopped.tolist() == [True, False, True]
    assert core.length_mask(lengths, 4).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_truncation_when_pad_is_the_stop_token():
    out, lengths, stopped = core.truncate_after_stop(T([[5, 2, 2, 2], [5, 6, 7, 8]]), stop_token_id=2, pad_token_id=2)
    assert out.tolist() == [[5, 2, 2, 2], [5, 6, 7, 8]]
    assert lengths.tolist() == [2, 4]  # the EOS is part of the response, not padding
    assert stopped.tolist() == [True, False]


def test_without_a_stop_token_every_response_runs_to_full_length():
    out, lengths, stopped = core.truncate_after_stop(T([[5, 2, 7]]), stop_token_id=None, pad_token_id=1)
    assert out.tolist() == [[5, 2, 7]] and lengths.tolist() == [3] and stopped.tolist() == [False]


def test_missing_eos_penalty_hits_only_responses_that_never_stopped():
    scores, stopped = T([1.0, 1.0]), T([True, False])
    assert core.missing_eos_penalty(scores, stopped, 0.5).tolist() == [1.0, 0.5]
    assert core.missing_eos_penalty(scores, stopped, None).tolist() == [1.0, 1.0]


def test_explained_variance():
    returns, mask = T([[1.0, 2.0, 4.0]]), torch.ones(1, 3)
    assert core.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    constant = torch.full_like(returns, 7.0 / 3)
    assert core.explained_variance(constant, returns, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_controller():
    fixed = core.KLController(0.1)
    fixed.update(kl=100.0, n_steps=256)
    assert fixed.value == 0.1
    # e = clip(kl / target - 1, -0.2, 0.2); beta *= 1 + e * n_steps / horizon
    adaptive = core.KLController(0.1, adaptive=True, target=6.0, horizon=10000)
    adaptive.update(kl=9.0, n_steps=256)  # e = 0.5 -> clipped to 0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    adaptive.update(kl=6.0, n_steps=256)  # on target: unchanged
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    low = core.KLController(0.1, adaptive=True, target=6.0, horizon=10000)
    low.update(kl=5.4, n_steps=100)  # e = -0.1
    assert low.value == pytest.approx(0.1 * (1 - 0.1 * 100 / 10000))
    restored = core.KLController(1.0, adaptive=True, target=6.0, horizon=10000)
    restored.load_state_dict(low.state_dict())
    assert restored.value == low.value
