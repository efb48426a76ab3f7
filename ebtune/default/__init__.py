"""The embedded default: a tiny DiT trained on scikit-learn's handwritten digits, and its FID network."""
