"""Learning from preferences: pairs labelled by a gold reward, the reward model, DPO and PPO, each
a run through the training loop (`python -m gptjax.preferences`, docs/preferences.md)."""

from gptjax import lazy_exports

SUBMODULES = ('dpo_training', 'pair_sampling', 'pairs', 'ppo_training', 'reward_training')
# Public names -> the submodule that defines each.
NAMES: dict[str, str] = {}
__all__ = [*SUBMODULES, *NAMES]
__getattr__, __dir__ = lazy_exports(__name__, SUBMODULES, NAMES)
