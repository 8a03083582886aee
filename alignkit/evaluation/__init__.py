"""Measure a trained stage, split by job:

- `generation`: prompts in (`load_prompts`, `prompt_conversation`), answers out (`generate_tokens`, `generate`);
- `measures`: `reward_scores`, `win_rate`, `per_token_kl` (`per_token_kl_values`) — on loaded models, so the report
  and PPO reuse them (the computations on plain numbers are `alignkit.metrics.scores`, also `evaluate` metrics);
- `judges`: model-free raters named as plug-ins (`module:function`; the demo's is `alignkit.demo.judge:gold_judge`);
- `compare`: `evaluate_policy`, a policy against its reference on the same prompts, and `format_report`;
- `cli`: `alignkit eval`.

Loading a stage's output for inference is `alignkit.models`' job (`load_for_inference`, `load_reward_model`).
"""

from alignkit.evaluation.compare import evaluate_policy, format_report
from alignkit.evaluation.generation import Conversation, generate, generate_tokens, load_prompts, prompt_conversation
from alignkit.evaluation.judges import Judge, judge_rates, load_judge
from alignkit.evaluation.measures import per_token_kl, per_token_kl_values, reward_scores, win_rate
from alignkit.models import load_for_inference, load_reward_model

__all__ = [
    "Conversation", "Judge", "evaluate_policy", "format_report", "generate", "generate_tokens", "judge_rates", "load_for_inference",
    "load_judge", "load_prompts", "load_reward_model", "per_token_kl", "per_token_kl_values", "prompt_conversation", "reward_scores",
    "win_rate",
]
