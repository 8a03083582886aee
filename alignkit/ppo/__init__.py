"""alignkit's PPO for RLHF: config, trainer and model loading (TRL removed its PPOTrainer after 1.12.0)."""

from alignkit.ppo.config import PPOConfig
from alignkit.ppo.models import PPOModels, load_ppo_models
from alignkit.ppo.trainer import PPOStoppedError, PPOTrainer

__all__ = ["PPOConfig", "PPOModels", "PPOStoppedError", "PPOTrainer", "load_ppo_models"]
