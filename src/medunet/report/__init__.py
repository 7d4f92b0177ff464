"""Curves, overlays and reports."""
