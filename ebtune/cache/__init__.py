"""The cache engine: wrap a model's ungated attention/MLP branches so a `Schedule` decides compute or reuse.

`engine` attaches and restores, `adapters/` finds the branches of each model family, and
`step_counter` drives the step index from inside a third-party denoising loop, and `fast` runs
ebtune's DiT blocks as compiled graphs, one per cache state, over an attached cache.
"""
