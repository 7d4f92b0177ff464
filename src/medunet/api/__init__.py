"""The public workflows: train, evaluate, predict, demo. The CLI is a thin layer over these."""
