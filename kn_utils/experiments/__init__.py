"""One module per notebook: each holds its notebook's protocol (which facts, which conditions, per-fact tables, the summary rows).

Experiments import mechanisms (``kn_utils.models``, ``attribution``, ``neurons``, ``evaluation``,
``stats``, ...); no mechanism imports an experiment, and notebooks import both.
"""
