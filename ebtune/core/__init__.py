"""The plain-PyTorch core: the DiT, its diffusion, the `Schedule` value, ε scaling and exact MACs.

Nothing here imports Ray, MLflow, Hydra or any other ebtune package.
"""
