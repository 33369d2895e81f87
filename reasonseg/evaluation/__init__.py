"""Evaluation: LISA's gIoU / cIoU, reproduced exactly, beside the numbers of the model answering by itself.

* :func:`evaluate` -- a model on a dataset (``"KIND:PATH"``), in ``lisa`` (forced ``[SEG]``) and / or ``generate``
  mode; batched, sharded over ``accelerate launch`` processes, resumable (:mod:`.runner`);
* :func:`load_dataset` / :func:`parse_data_spec` -- the items of ``reasonseg``, ``refcoco``, ``refcoco+``,
  ``refcocog``, ``grefcoco`` and ``custom`` data (:mod:`.datasets`);
* :func:`evaluate_mask_folder` -- predicted mask files against a ReasonSeg folder (:mod:`.mask_eval`);
* :class:`SegmentationMeter`, :class:`GeneralizedReferringMeter` -- the metrics (:mod:`.metrics`).
"""

from .datasets import EvalDataset, EvalItem, load_dataset, parse_data_spec
from .mask_eval import evaluate_mask_folder
from .metrics import GeneralizedReferringMeter, SegmentationMeter, mask_intersection_union
from .runner import EvalResult, evaluate, forced_predictions, lisa_question

__all__ = [
    "EvalDataset",
    "EvalItem",
    "EvalResult",
    "GeneralizedReferringMeter",
    "SegmentationMeter",
    "evaluate",
    "evaluate_mask_folder",
    "forced_predictions",
    "lisa_question",
    "load_dataset",
    "mask_intersection_union",
    "parse_data_spec",
]
