"""Monitor: energy-based scoring of sequences, calibration, the streaming model-facing API and its
benchmark."""
