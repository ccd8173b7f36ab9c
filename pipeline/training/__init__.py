"""Fitting registered architectures: labelled scenes, tile sampling, losses, the training loop."""
