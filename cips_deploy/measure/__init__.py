"""Measurements that need the build extra: ``bench`` against the official way of computing,
scale consistency and image metrics (PyTorch)."""
