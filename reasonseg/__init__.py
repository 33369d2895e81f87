"""reasonseg: reasoning segmentation with a multimodal LLM whose [SEG] tokens prompt a SAM mask decoder."""

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
