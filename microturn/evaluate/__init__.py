"""Turn-taking evaluation after Full-Duplex-Bench v1 on our frame grid (docs/evaluation.md).

- ``timeline``: whole-session timelines stitched from a corpus' windows; ``Side`` and ``RolePair``;
- ``fdb``: the metric definitions as pure functions, ``evaluate_pairs`` (the hook a model's outputs
  plug into) and ``evaluate_model``;
- ``baseline``: the human baseline of a corpus and its check against the human norms;
- ``report``: the table `microturn eval` prints.
"""
