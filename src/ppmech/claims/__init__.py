"""Claims: the paper's figures as data, the rules that judge them, the analyses that measure them,
the verify driver and the per-layer lens."""
