"""Judges that score steered continuations: the shared protocol, an OpenAI-compatible API, an
embedding model, and a reference language model."""
