"""ppmech: momentum-point-perplexity mechanics of language models.

Record how a model's final hidden state moves from token to token, measure the
log-energy ``H_t = ln(½‖h_t - h_{t-1}‖²) + ln(1/p(x_t))``, test the paper's
claims, steer generation with minimal-action Jacobian steering, and monitor
models with the conserved quantity.
"""

__version__ = "0.1.0"

from ppmech.errors import PPMechError

__all__ = ["PPMechError", "__version__"]
