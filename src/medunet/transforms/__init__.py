"""Geometry, intensity normalisation and batch augmentation."""
