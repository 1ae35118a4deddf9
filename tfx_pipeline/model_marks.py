"""Marks this project keeps on ML Metadata artifacts, and the resolver that honours them.

`recsys rollback` (rollback.py) sets ``rolled_back=1`` on the Model artifacts behind
the version it takes out of service: the pushed model and every model upstream of
it through ``model`` inputs (the ScaNN model's trainer model, for instance). The
baselines' resolver (LatestUsableBlessedModelStrategy, wired in
wiring/training.py) skips them, so the next run neither warm-starts from nor gates
against a model an operator rolled back. TFX's LatestBlessedModelStrategy has no
filter hook, hence the subclass.
"""

from __future__ import annotations

from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy

ROLLED_BACK = "rolled_back"  # int custom property: 1 on a rolled-back Model artifact
ROLLED_BACK_VERSION = "rolled_back_version"  # string: the serving directory it was pushed to


def is_rolled_back(artifact) -> bool:
    """True for a tfx Artifact marked by `recsys rollback`."""
    return artifact.has_custom_property(ROLLED_BACK) and artifact.get_int_custom_property(ROLLED_BACK) == 1


class LatestUsableBlessedModelStrategy(LatestBlessedModelStrategy):
    """The latest blessed Model that was not rolled back (else nothing: a cold start, no change gate)."""

    def _resolve(self, input_dict, model_channel_key, model_blessing_channel_key):
        usable = {**input_dict, model_channel_key: [m for m in input_dict[model_channel_key] if not is_rolled_back(m)]}
        return super()._resolve(usable, model_channel_key, model_blessing_channel_key)
