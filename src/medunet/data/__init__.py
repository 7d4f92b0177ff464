"""Datasets: pairing files, mask encodings, the RAM cache, the demo data."""
