"""Data contract, manifests, splits, samplers and the pretraining data module."""
