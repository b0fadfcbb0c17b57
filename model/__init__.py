"""The learned image descriptor: encoder architecture, weights, augmentations and training."""
