"""Steering: Jacobian steering (Algorithm 1), baselines, steered generation, runs and their evaluation."""
