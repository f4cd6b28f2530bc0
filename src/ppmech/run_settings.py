"""The settings of a measurement run, declared once with their roles (no model code).

:class:`RunSettings` holds every field of a run's configuration and the role each one
plays (:mod:`ppmech.settings`): what is measured (PROTOCOL), what is computed from the stored
steps (ANALYSIS), how it is computed (EXECUTION). It sits in the foundation layer so that
readers of stored runs (Table 5's grouping in :mod:`ppmech.claims.scaling`, the sweep's names)
can ask which settings matter without importing the recorder. :class:`ppmech.measure.MeasureConfig`
adds the checks that need the engine (batch size, compile mode, decoding) and is what users build.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppmech.settings import ModelSpec, Role, setting


@dataclass(frozen=True)
class RunSettings(ModelSpec):
    """Every setting of a measurement run; each field declares its role once.

    The model fields (``model``, ``weights``, ``dtype``, ``device``, ``revision``,
    ``trust_remote_code``) are :class:`~ppmech.settings.ModelSpec`'s. The rest are
    documented on their :func:`~ppmech.settings.setting` (the same text ``--help`` shows).
    """

    corpus: str = setting(
        "wiki-en", role=Role.PROTOCOL, help="wiki-en, wiki-es, wiki-fr, a .txt/.jsonl file or dataset"
    )
    text_field: str = setting("text", role=Role.PROTOCOL, help="text field of JSONL records and dataset rows")
    prompts: int = setting(100, role=Role.PROTOCOL, help="number of trajectories (prompts)")
    context_tokens: int = setting(
        50, role=Role.PROTOCOL, help="prompt length in tokens (before the model's BOS, if any)"
    )
    new_tokens: int = setting(100, role=Role.PROTOCOL, help="steps recorded per trajectory (at least 2)")
    decoding: str = setting(
        "greedy",
        role=Role.PROTOCOL,
        help="how each next token is chosen (see above)",
        choices=("greedy", "sample", "teacher"),
    )
    temperature: float = setting(1.0, role=Role.PROTOCOL, help="sampling temperature (sample only)")
    top_k: int | None = setting(
        None, role=Role.PROTOCOL, help="sample from the k most probable tokens (sample only; default: all)"
    )
    top_p: float | None = setting(
        None, role=Role.PROTOCOL, help="nucleus mass in (0, 1] (sample only; default: 1, no cut)"
    )
    stop_at_eos: bool = setting(
        False, role=Role.PROTOCOL, help="end a trajectory at EOS (default: fixed length, as in the paper)"
    )
    seed: int = setting(
        0,
        role=Role.PROTOCOL,
        help="seed (0 to 2**32-1) of the prompt choice, random init, sampling, bootstrap",
    )
    batch_size: int | str = setting(
        "auto",
        role=Role.EXECUTION,
        help="trajectories per batch, or auto: the largest that fits, halved on out-of-memory (CPU: 50)",
    )
    save_hidden: bool = setting(
        False, role=Role.PROTOCOL, help="also store h_t (hidden/*.npy, float32): changes what is recorded"
    )
    n_boot: int = setting(1000, role=Role.ANALYSIS, help="bootstrap replicates for the CIs (0: none)")
    compile: str = setting(
        "auto",
        role=Role.EXECUTION,
        help="static KV cache + compiled decode step (CUDA graphs on CUDA); auto: only when it repays "
        "its warm-up (never on the CPU, where it does not pay)",
        choices=("auto", "on", "off"),
    )
