"""Sa2VA (InternVL + SAM2, and Qwen-VL + SAM2) on reasonseg's interface."""

from .configuration_sa2va import Sa2VAConfig
from .configuration_sa2va_qwen import Sa2VAQwenConfig
from .modeling_sa2va import Sa2VAForCausalLM
from .modeling_sa2va_qwen import Sa2VAQwenForCausalLM

__all__ = ["Sa2VAConfig", "Sa2VAForCausalLM", "Sa2VAQwenConfig", "Sa2VAQwenForCausalLM"]
