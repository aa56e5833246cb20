"""The runnable stages: one module per stage kind; `stages.kinds.KINDS` is the one table that maps a config's
`kind` to its module.

A stage module holds its config dataclass (converted and validated at the config boundary before anything runs),
its loss and step where it trains, and `run(cfg, workdir, inputs) -> outputs`: `inputs` maps the names of the
chain's finished stages to their outputs, and the returned outputs (JSON-able: paths, `metrics`, reports) are what
later stages reference as "stage:<name>" and what results.json collects. Stage modules never import each other;
they share the plumbing modules:

  common          weights (`ModelSpec`, `load_weights`), meshes, frozen parameters, the policy train state
  inputs          `DataSpec`: the synthetic world or files -> records -> batches; prompts; margins and curation
  artifacts       saved policies (HF folders) and reward models (spec.json + params.msgpack)
  reward_sources  the reward sources of the online stages (reward models, ensembles, gold, BLEU, Python)
"""
