"""Models: loading (embedded, GGUF, hub, local), identity, and the readout of each architecture."""
