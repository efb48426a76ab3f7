"""The one sampling loop (noise, timesteps, guidance, cache lifecycle, ε scaling) and its steps."""
