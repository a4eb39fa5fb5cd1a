"""namd: Nodule-Aligned Multimodal Diffusion for lung nodule progression prediction.

The package follows the paper's pipeline, one module per stage, data flowing one way
through a run directory: cohort -> vae -> (text context) -> prior -> cond -> samples ->
evaluator / eval -> report.
"""

__version__ = "0.1.0"
