"""Generation: what ``sciencegen-generate`` (:mod:`sciencegen.pipelines.generate`) runs on.

* :mod:`.model`: the denoiser of a ``model`` config, checked against the dataset (``resolve_denoiser``);
* :mod:`.plan`: the ensemble store as generation plans it (output paths, shards, the chunks still to do,
  the root attributes generation records); the store itself is :mod:`sciencegen.data.ensemble`;
* :mod:`.conditions`: the conditions of a conditional ensemble (held-out cases with their truth, or a user's
  condition file), their inputs and the store's condition axis;
* :mod:`.rollout`: one chunk of a conditional ensemble sampled, one step or a forecast rollout.
"""
