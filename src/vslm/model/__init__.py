"""The model: knows nothing of data or training."""

from vslm.model.accounting import parameter_count, training_flops_per_token
from vslm.model.gpt import GPT

__all__ = ["GPT", "parameter_count", "training_flops_per_token"]
