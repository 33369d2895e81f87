"""The shapes world: seeded scenes of coloured shapes with reasoning-segmentation queries (docs/toy_world.md).

    sample = generate_sample(7)         # same seed, same bytes
    sample.image                        # HxWx3 uint8
    sample.objects[0].mask              # its visible pixels; also .point, .box, .shape, .colour, .size
    sample.queries[0]                   # Query(family, kind, text, is_sentence, answer with [SEG]s, targets, ...)
    sample.qa, sample.caption           # text-only pairs for language pre-training
    write_reasonseg_split("data/toy", "train", 1000)   # ReasonSeg layout + qa.jsonl + instances.jsonl
"""

from .queries import FAMILIES, QAPair, Query, all_queries, caption, make_qa, make_queries
from .sample import (
    SPLIT_OFFSETS,
    SPLIT_SIZE,
    Sample,
    generate_sample,
    generate_scene,
    phase_train_index,
    sample_from_scene,
    split_of_seed,
    split_seed,
    split_seeds,
)
from .scene import BackgroundSpec, ObjectSpec, Scene, SceneObject, render_scene, sample_scene
from .vocab import BACKGROUNDS, COLOURS, CORNERS, MIXES, SHAPES, SIZES
from .writer import (
    mask_iou,
    mask_to_polygon,
    object_polygon,
    polygon_to_mask,
    reasonseg_record,
    write_example,
    write_reasonseg_split,
)

__all__ = [
    "BACKGROUNDS",
    "BackgroundSpec",
    "COLOURS",
    "CORNERS",
    "FAMILIES",
    "MIXES",
    "ObjectSpec",
    "QAPair",
    "Query",
    "SHAPES",
    "SIZES",
    "SPLIT_OFFSETS",
    "SPLIT_SIZE",
    "Sample",
    "Scene",
    "SceneObject",
    "all_queries",
    "caption",
    "generate_sample",
    "generate_scene",
    "make_qa",
    "make_queries",
    "mask_iou",
    "mask_to_polygon",
    "object_polygon",
    "phase_train_index",
    "polygon_to_mask",
    "reasonseg_record",
    "render_scene",
    "sample_from_scene",
    "sample_scene",
    "split_of_seed",
    "split_seed",
    "split_seeds",
    "write_example",
    "write_reasonseg_split",
]
