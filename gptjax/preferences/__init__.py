"""Learning from preferences: pairs labelled by a gold reward, the reward model, DPO and PPO, each
a run through the training loop (`python -m gptjax.preferences`, docs/preferences.md)."""

from gptjax.preferences import dpo_training, pair_sampling, ppo_training, reward_training
