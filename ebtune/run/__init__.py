"""From plain config values to a run: load a model, build its sampler and schedule, generate images,
and fit an exported schedule file to the run."""
