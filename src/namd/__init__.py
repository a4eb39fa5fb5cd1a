"""namd: Nodule-Aligned Multimodal Diffusion for lung nodule progression prediction.

The package follows the paper's pipeline, one module per stage, data flowing one way
through a run directory: cohort -> vae -> (text context) -> prior -> cond -> samples ->
evaluator / eval -> report.
"""

import os

# OpenMP threads that spin while waiting make torch on a small shared CPU up to ten times slower
# (measured: a VAE step 7.3 s spinning vs 0.8 s passive with another process busy on 2 cores).
# Must be set before torch is first imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
