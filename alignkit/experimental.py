"""TRL's experimental preference trainers that alignkit runs as stages: ORPO and CPO (SimPO is CPO with
`loss_type: simpo`). They live in `trl.experimental`, whose import warns that its API may change; the registry resolves
every stage's config class whenever alignkit parses a config, so they are imported here, once, without that warning
on every command. The stages' titles say they are experimental in TRL.
"""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TRLExperimentalWarning, which cannot be named before trl.experimental is imported
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

__all__ = ["CPOConfig", "CPOTrainer", "ORPOConfig", "ORPOTrainer"]
