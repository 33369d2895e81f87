"""reasonseg: reasoning segmentation with a multimodal LLM whose [SEG] tokens prompt a SAM mask decoder.

After ``import reasonseg``, transformers' ``AutoConfig``, ``AutoModel``, ``AutoModelForCausalLM`` and
``AutoProcessor`` load reasonseg checkpoints (model_type ``reasonseg``), registered the way transformers documents
for custom models. Importing transformers costs seconds, so the registration runs when transformers is imported
(at once if it already is), not on every ``import reasonseg``.
"""

import logging
import sys

# On import, bitsandbytes' CPU backend tries to fetch an optional 4-bit kernel from the Hugging Face hub through the
# `kernels` package (a transformers dependency) and logs a warning when it cannot (offline, or an untrusted publisher);
# its own CPU path works without it. Training imports accelerate, which imports bitsandbytes, so every run printed it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

_LAZY = {
    "ReasonSegConfig": "reasonseg.modeling.configuration_reasonseg",
    "ReasonSegForCausalLM": "reasonseg.modeling.modeling_reasonseg",
    "ReasonSegProcessor": "reasonseg.processing.processing_reasonseg",
    "Segmenter": "reasonseg.inference.segmenter",
    "Prediction": "reasonseg.inference.segmenter",
    "ChatSession": "reasonseg.inference.segmenter",
    "ReasonSegError": "reasonseg.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reasonseg' has no attribute {name!r}")


class ReasonSegAutoProcessor:
    """What ``AutoProcessor.from_pretrained`` calls for a reasonseg checkpoint: a local directory or a hub id in,
    a :class:`~reasonseg.processing.processing_reasonseg.ReasonSegProcessor` out (transformers' own keyword
    arguments are dropped; keyword arguments naming processor settings, e.g. ``conv_type``, override them)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        from dataclasses import fields

        from .checkpoints.loading import locate_checkpoint
        from .processing.processing_reasonseg import ProcessorSettings, ReasonSegProcessor

        names = {f.name for f in fields(ProcessorSettings)}
        overrides = {key: value for key, value in kwargs.items() if key in names}
        return ReasonSegProcessor.from_pretrained(locate_checkpoint(pretrained_model_name_or_path), **overrides)


def register_with_transformers() -> None:
    """Register model_type ``reasonseg`` with transformers' Auto classes (idempotent): the modeling module does it
    when it is imported (AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor)."""
    import importlib

    importlib.import_module("reasonseg.modeling.modeling_reasonseg")


def _reasonseg_modeling_initializing() -> bool:
    """True while a reasonseg modeling module is half-imported (it is what imported transformers; it registers
    itself when it finishes, and importing it again now would fail)."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.startswith("reasonseg.modeling")
    )


class _RegisterAfterTransformersImport:
    """A ``sys.meta_path`` finder that lets the import of ``transformers`` finish, then registers reasonseg."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            if _reasonseg_modeling_initializing():
                return
            try:
                register_with_transformers()
            except Exception as err:  # never break the user's import of transformers
                import warnings

                warnings.warn(f"reasonseg could not register with transformers' Auto classes: {err}", stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    if not _reasonseg_modeling_initializing():
        register_with_transformers()
elif not any(isinstance(finder, _RegisterAfterTransformersImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformersImport())
