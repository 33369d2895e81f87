"""Sa2VA (InternVL + SAM2) on reasonseg's interface."""

from .configuration_sa2va import Sa2VAConfig
from .modeling_sa2va import Sa2VAForCausalLM

__all__ = ["Sa2VAConfig", "Sa2VAForCausalLM"]
