"""LISA's dataset readers on tiny generated trees: refer (refCOCO family, gRefCOCO), semantic (ADE20K, COCO-Stuff,
Mapillary, PASCAL-Part, PACO-LVIS), VQA (LLaVA-Instruct), the training sources over them, and ``data check``."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reasonseg.cli.main import main as cli_main
from reasonseg.data import lisa_tree, refer, semantic, vqa
from reasonseg.errors import InputError
from reasonseg.training.config import DatasetSpec, TrainingConfig
from reasonseg.training.datasets import (
    ReferSegSource,
    SemSegSource,
    VqaSource,
    build_training_dataset,
)

H, W = 6, 8
COCO_DIR = Path("refer_seg/images/mscoco/images/train2014")


def rect(x0, y0, x1, y1):
    """A COCO polygon of the box whose pixels are x0..x1-1, y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def box(x0, y0, x1, y1):
    out = np.zeros((H, W), np.uint8)
    out[y0:y1, x0:x1] = 1
    return out


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = mask.T.reshape(-1)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def image(path: Path, size=(W, H)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def label_png(path: Path, array: np.ndarray, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.new(mode, (array.shape[1], array.shape[0]))
    picture.putdata([int(v) for v in np.asarray(array).reshape(-1)])
    if mode == "P":
        picture.putpalette([v for i in range(256) for v in (i, i, i)])
    picture.save(path)


def write_json(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_refer(root: Path, name: str, refs, images, annotations, refs_file=None, pickled=True):
    folder = root / "refer_seg" / name
    folder.mkdir(parents=True, exist_ok=True)
    refs_file = refs_file or refer.refs_candidates(name)[0]
    if pickled and refs_file.endswith(".p"):
        (folder / refs_file).write_bytes(pickle.dumps(refs, protocol=2))
    else:
        write_json(folder / refs_file, refs)
    write_json(folder / "instances.json", {"images": images, "annotations": annotations, "categories": []})
    image_dir = refer.image_folder(root / "refer_seg", name)
    for info in images:
        image(image_dir / info["file_name"], (info["width"], info["height"]))


def coco_image(image_id, name=None):
    return {"id": image_id, "file_name": name or f"COCO_train2014_{image_id:012d}.jpg", "height": H, "width": W}


def sentence(text):
    return {"sent": text, "raw": text, "tokens": text.split(), "sent_id": abs(hash(text)) % 10000}


def ref(ref_id, image_id, ann_id, texts, split="train"):
    return {"ref_id": ref_id, "image_id": image_id, "ann_id": ann_id, "category_id": 1, "split": split,
            "sentences": [sentence(t) for t in texts]}


def make_tree(root: Path) -> Path:
    """A tiny LISA ``dataset/`` tree with every kind of data."""
    # ---- refer_seg: refcoco (polygon + RLE), refcocog (umd), grefcoco (multi-target and no-target)
    left, right = box(0, 0, 3, 4), box(4, 2, 8, 6)
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [rect(0, 0, 3, 4)]},
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": {"size": [H, W], "counts": rle_counts(right)}},
        {"id": 12, "image_id": 2, "category_id": 1, "segmentation": [rect(1, 1, 5, 4)]},
    ]
    refs = [
        ref(0, 1, 10, ["Left Box", "the box on the left"]),
        ref(1, 1, 11, ["right box"]),
        ref(2, 2, 12, ["middle thing"]),
        ref(3, 2, 12, ["validation phrase"], split="val"),
    ]
    write_refer(root, "refcoco", refs, [coco_image(1), coco_image(2)], anns)
    write_refer(root, "refcocog", [ref(0, 1, 10, ["the left one"])], [coco_image(1)], anns[:2])
    grefs = [ref(0, 1, [10, 11], ["both boxes"]), ref(1, 1, [-1], ["a purple cow"])]
    write_refer(root, "grefcoco", grefs, [coco_image(1)], anns[:2], pickled=False)

    # ---- sem_seg label maps
    ade = np.array([[0, 1, 1, 3, 3, 3, 0, 0]] * H)
    image(root / "ade20k/images/training/ADE_train_1.jpg")
    label_png(root / "ade20k/annotations/training/ADE_train_1.png", ade)
    stuff = np.full((H, W), 255)
    stuff[:2] = 0  # person
    stuff[2:4] = 95  # building-other: ignored as in LISA
    stuff[4:] = 156  # sky
    image(root / "coco/train2017/000000000009.jpg")
    label_png(root / "cocostuff/train2017/000000000009.png", stuff)
    write_json(root / "mapillary/config_v2.0.json",
               {"labels": [{"readable": "Road"}, {"readable": "Car"}, {"readable": "Unlabeled"}]})
    mapillary = np.zeros((H, W))
    mapillary[:, 5:] = 1
    mapillary[0] = 2
    image(root / "mapillary/training/images/m1.jpg")
    label_png(root / "mapillary/training/v2.0/labels/m1.png", mapillary, mode="P")

    # ---- part datasets (COCO format)
    image(root / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/2008_000001.jpg")
    write_json(root / "vlpart/pascal_part/train.json", {
        "images": [{"id": 1, "file_name": "2008_000001.jpg", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "dog:leg"}, {"id": 2, "name": "dog:head"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [rect(0, 3, 2, 6)]},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [rect(5, 3, 7, 6)]},
            {"id": 3, "image_id": 1, "category_id": 2, "segmentation": [rect(2, 0, 6, 2)]},
        ],
    })
    image(root / "coco/train2017/000000000042.jpg")
    write_json(root / "vlpart/paco/annotations/paco_lvis_v1_train.json", {
        "images": [{"id": 42, "file_name": "train2017/000000000042.jpg", "height": H, "width": W}],
        "categories": [{"id": 7, "name": "trash_can:lid"}, {"id": 8, "name": "mug_(drinking_container)"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 7, "segmentation": [rect(0, 0, 4, 2)]},
            {"id": 2, "image_id": 42, "category_id": 8, "segmentation": [rect(4, 2, 8, 6)]},
        ],
    })

    # ---- vqa
    write_json(root / "llava_dataset/llava_instruct_150k.json", [
        {"id": "9", "image": "000000000009.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the sky?"},
            {"from": "gpt", "value": "Nothing but clouds."},
            {"from": "human", "value": "And below?"},
            {"from": "gpt", "value": "A person."},
        ]},
    ])

    # ---- reason_seg
    train = root / "reason_seg/ReasonSeg/train"
    image(train / "r1.jpg")
    write_json(train / "r1.json", {"text": ["what holds the water?"], "is_sentence": True,
                                   "shapes": [{"label": "target", "points": [[0, 0], [4, 0], [4, 3], [0, 3]]}]})
    return root


@pytest.fixture()
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "dataset")


# ---------------------------------------------------------------------------------------------------- refer


def test_refcoco_masks_and_expressions(tree):
    data = refer.load_refer_dataset(tree / "refer_seg", "refcoco", strict=True)
    assert [img.image_id for img in data.images] == [1, 2]
    assert data.num_refs == 3 and data.num_expressions == 4  # the val ref is left out
    first = data.images[0]
    assert first.path == tree / COCO_DIR / "COCO_train2014_000000000001.jpg"
    by_text = {e.text: e for e in first.expressions}
    assert set(by_text) == {"Left Box", "the box on the left", "right box"}
    assert np.array_equal(data.mask(first, by_text["Left Box"]), box(0, 0, 3, 4))  # polygon, via pycocotools
    assert np.array_equal(data.mask(first, by_text["right box"]), box(4, 2, 8, 6))  # uncompressed RLE
    assert np.array_equal(data.mask(data.images[1], data.images[1].expressions[0]), box(1, 1, 5, 4))
    val = refer.load_refer_dataset(tree / "refer_seg", "refcoco", split="val", strict=True)
    assert [e.text for img in val.images for e in img.expressions] == ["validation phrase"]


def test_compressed_rle_and_refcocog_umd(tree):
    from pycocotools import mask as mask_utils

    target = box(2, 1, 6, 5)
    encoded = mask_utils.encode(np.asfortranarray(target))
    segmentation = {"size": [H, W], "counts": encoded["counts"].decode("ascii")}
    assert np.array_equal(refer.segmentation_mask(segmentation, H, W), target)
    assert refer.segmentation_problem(segmentation, H, W) is None
    assert refer.compressed_rle_counts(encoded["counts"]) == rle_counts(target)
    assert "corrupt" in refer.segmentation_problem({"size": [H, W], "counts": "zz~"}, H, W)
    assert "add up" in refer.segmentation_problem({"size": [H, W], "counts": "1"}, H, W)
    data = refer.load_refer_dataset(tree / "refer_seg", "refcocog", strict=True)
    assert data.refs_path.name == "refs(umd).p" and data.split_by == "umd"
    assert [e.text for e in data.images[0].expressions] == ["the left one"]


def test_grefcoco_multi_target_and_no_target(tree):
    data = refer.load_refer_dataset(tree / "refer_seg", "grefcoco", strict=True)
    assert data.refs_path.name == "grefs(unc).json"
    both, none = data.images[0].expressions
    assert both.ann_ids == (10, 11) and none.ann_ids == ()
    assert np.array_equal(data.mask(data.images[0], both), box(0, 0, 3, 4) | box(4, 2, 8, 6))
    assert not data.mask(data.images[0], none).any()


def test_refs_pickle_is_read_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 0, "payload": Evil()}], protocol=2))
    with pytest.raises(InputError, match=r"refs\(unc\)\.p: refused pickle .*system"):
        refer.load_data_pickle(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps([{"a": {1, 2}, "b": (1.5, "x")}], protocol=2)[:-5])  # truncated
    with pytest.raises(InputError, match=r"refs\(unc\)\.p: not a readable pickle"):
        refer.load_data_pickle(path)
    path.write_bytes(pickle.dumps([{"a": {1, 2}, "b": (1.5, "x"), "c": frozenset([3])}], protocol=2))
    assert refer.load_data_pickle(path) == [{"a": {1, 2}, "b": (1.5, "x"), "c": frozenset([3])}]
    # Python 2 byte strings (SHORT_BINSTRING), as the original refs files hold them: UTF-8, else Latin-1
    path.write_bytes(b"\x80\x02]}U\x04sentU\x05caf\xc3\xa9sa.")
    assert refer.load_data_pickle(path) == [{"sent": "caf\u00e9"}]
    path.write_bytes(b"\x80\x02]}U\x04sentU\x04caf\xe9sa.")
    assert refer.load_data_pickle(path) == [{"sent": "caf\u00e9"}]


def test_refer_malformed_records_reported_skipped_or_fatal(tree):
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [rect(0, 0, 3, 4)]},
        {"id": 13, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 3, 3]]},  # 2 points
        {"id": 14, "image_id": 1, "category_id": 1, "segmentation": {"size": [4, 4], "counts": [16]}},
    ]
    refs = [
        ref(0, 1, 10, ["good"]),
        ref(1, 1, 99, ["unknown annotation"]),
        ref(2, 1, 13, ["two points"]),
        ref(3, 1, 14, ["wrong rle size"]),
        ref(4, 1, 10, []),
        ref(5, 7, 10, ["unknown image"]),
        ref(6, 2, 10, ["missing file"]),
        "not a ref",
    ]
    images = [coco_image(1), coco_image(2, "COCO_train2014_missing.jpg")]
    write_refer(tree, "refcoco+", refs, images[:1], anns)
    write_json(tree / "refer_seg/refcoco+/instances.json", {"images": images, "annotations": anns})
    problems: list[str] = []
    data = refer.load_refer_dataset(tree / "refer_seg", "refcoco+", problems=problems)
    assert [e.text for img in data.images for e in img.expressions] == ["good"]
    refs_file = str(tree / "refer_seg/refcoco+/refs(unc).p")
    reasons = [
        "annotation 99 is not in instances.json",
        "annotation 13: a polygon has 2 point(s); at least 3 are needed",
        "annotation 14: an RLE of size 4x4 on a 8x6 image",
        "no sentences",
        "image 7 is not in instances.json",
        "image file not found",
        "ref 7: must be an object",
    ]
    assert len(problems) == len(reasons)
    for line, reason in zip(problems, reasons):
        assert "\n" not in line and reason in line
        assert line.startswith(refs_file) or line.startswith(str(tree / COCO_DIR / "COCO_train2014_missing.jpg"))
    with pytest.raises(InputError, match="annotation 99 is not in instances.json"):
        refer.load_refer_dataset(tree / "refer_seg", "refcoco+", strict=True)


def test_refer_unusable_files(tree):
    root = tree / "refer_seg"
    with pytest.raises(InputError, match=r"refclef: referring dataset folder not found"):
        refer.load_refer_dataset(root, "refclef")
    (root / "refcoco/instances.json").write_text("{not json")
    with pytest.raises(InputError, match=r"refcoco/instances\.json: unreadable instances JSON"):
        refer.load_refer_dataset(root, "refcoco")
    (root / "refcoco/refs(unc).p").unlink()
    with pytest.raises(InputError, match=r"refcoco: no refs\(unc\)\.p or refs\(unc\)\.json"):
        refer.load_refer_dataset(root, "refcoco")
    (root / "refcocog/refs(umd).p").write_bytes(pickle.dumps({"refs": []}))
    with pytest.raises(InputError, match=r"refs\(umd\)\.p: refs must be a list"):
        refer.load_refer_dataset(root, "refcocog")


# ---------------------------------------------------------------------------------------------------- semantic


def test_ade20k_cocostuff_mapillary_class_maps(tree):
    ade = semantic.list_ade20k(tree, strict=True)
    label = ade.read_label(0)
    assert label[0].tolist() == [255, 0, 0, 2, 2, 2, 255, 255]  # 0 ignored, v -> v - 1
    assert [ade.classes[c] for c in semantic.classes_present(label)] == ["wall", "sky"]
    drawn = semantic.draw_classes(ade, 0, random.Random(0), 3)
    assert sorted(drawn.prompts) == ["sky", "wall"]
    columns = {"wall": slice(1, 3), "sky": slice(3, 6)}
    for prompt, mask in zip(drawn.prompts, drawn.masks):
        expected = np.zeros((H, W), np.uint8)
        expected[:, columns[prompt]] = 1
        assert np.array_equal(mask, expected), prompt
    assert len(semantic.draw_classes(ade, 0, random.Random(0), 1).prompts) == 1

    stuff = semantic.list_cocostuff(tree, strict=True)
    assert stuff.pairs[0][0] == tree / "coco/train2017/000000000009.jpg"
    drawn = semantic.draw_classes(stuff, 0, random.Random(1), 3)
    assert sorted(drawn.prompts) == ["person", "sky"]  # building-other is ignored
    masks = dict(zip(drawn.prompts, drawn.masks))
    assert masks["person"][:2].all() and masks["person"].sum() == 2 * W
    assert masks["sky"][4:].all() and masks["sky"].sum() == 2 * W

    mapillary = semantic.list_mapillary(tree, strict=True)
    assert mapillary.classes == ("road", "car", "unlabeled")
    drawn = semantic.draw_classes(mapillary, 0, random.Random(2), 3)
    masks = dict(zip(drawn.prompts, drawn.masks))
    assert sorted(masks) == ["car", "road"]
    assert masks["car"].sum() == 3 * (H - 1) and masks["road"].sum() == 5 * (H - 1)


def test_part_datasets_union_masks_and_phrasing(tree):
    parts = semantic.load_pascal_part(tree, strict=True)
    assert parts.class_names == {1: ("dog", "leg"), 2: ("dog", "head")}
    image_record = parts.images[0]
    assert np.array_equal(parts.mask(image_record, 1), box(0, 3, 2, 6) | box(5, 3, 7, 6))
    phrasings = {semantic.part_prompt(("dog", "leg"), random.Random(s)) for s in range(20)}
    assert phrasings == {"dog leg", "the leg of the dog"}
    assert semantic.tidy_question("Can you segment the the leg of the dog in this image?") == (
        "Can you segment the leg of the dog in this image?")
    drawn = semantic.draw_classes(parts, 0, random.Random(0), 3)
    assert len(drawn.prompts) == 2 and drawn.masks.shape == (2, H, W)

    paco = semantic.load_paco_lvis(tree, strict=True)
    assert paco.class_names == {7: ("trash can", "lid"), 8: "mug"}
    assert paco.images[0].path == tree / "coco/train2017/000000000042.jpg"
    assert np.array_equal(paco.mask(paco.images[0], 8), box(4, 2, 8, 6))


def test_semantic_malformed_inputs(tree):
    label_png(tree / "ade20k/annotations/training/orphan.png", np.zeros((H, W)))
    image(tree / "ade20k/images/training/lonely.jpg")
    problems: list[str] = []
    ade = semantic.list_ade20k(tree, problems=problems)
    assert len(ade) == 1
    assert problems == [f"{tree / 'ade20k/images/training/lonely.jpg'}: no label map "
                        f"{tree / 'ade20k/annotations/training/lonely.png'}"]
    with pytest.raises(InputError, match="lonely.jpg: no label map"):
        semantic.list_ade20k(tree, strict=True)

    label_png(tree / "cocostuff/train2017/000000000077.png", np.zeros((H, W)))
    problems = []
    semantic.list_cocostuff(tree, problems=problems)
    assert problems == [f"{tree / 'cocostuff/train2017/000000000077.png'}: no image "
                        f"{tree / 'coco/train2017/000000000077.jpg'} for this label map"]

    bad_value = np.full((H, W), 200)
    label_png(tree / "ade20k/annotations/training/ADE_train_1.png", bad_value)
    with pytest.raises(InputError, match=r"ADE_train_1\.png: label value 200 is outside the 150 classes of ade20k"):
        ade.read_label(0)
    Image.new("RGB", (W, H)).save(tree / "ade20k/annotations/training/ADE_train_1.png")
    with pytest.raises(InputError, match=r"ADE_train_1\.png: label map must be a single-channel PNG"):
        ade.read_label(0)
    (tree / "ade20k/annotations/training/ADE_train_1.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"ADE_train_1\.png: unreadable label map"):
        ade.read_label(0)

    write_json(tree / "vlpart/pascal_part/train.json", {
        "images": [{"id": 1, "file_name": "2008_000001.jpg", "height": H, "width": W}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "dog:head"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [rect(0, 3, 2, 6)]},
            {"id": 3, "image_id": 1, "category_id": 2, "segmentation": []},
            {"id": 4, "image_id": 5, "category_id": 2, "segmentation": [rect(0, 0, 2, 2)]},
        ],
    })
    problems = []
    parts = semantic.load_pascal_part(tree, problems=problems)
    assert len(parts) == 0
    json_path = str(tree / "vlpart/pascal_part/train.json")
    assert all(p.startswith(json_path) for p in problems) and len(problems) == 4
    assert "categories[0]: category name 'dog' should look like 'object:part'" in problems[0]
    assert "annotation 1: category 1 is unknown or malformed" in problems[1]
    assert "annotation 3: segmentation is empty" in problems[2]
    assert "annotation 4: image 5 is not in 'images'" in problems[3]
    write_json(tree / "mapillary/config_v2.0.json", {"labels": [{"name": "road"}]})
    with pytest.raises(InputError, match=r"config_v2\.0\.json: labels\[0\] needs a string 'readable' name"):
        semantic.list_mapillary(tree)


# ---------------------------------------------------------------------------------------------------- vqa


def test_llava_instruct_turns(tree):
    [record] = vqa.load_llava_instruct(tree, strict=True)
    assert record.image == tree / "coco/train2017/000000000009.jpg"
    assert record.turns == [("What is in the sky?", "Nothing but clouds."), ("And below?", "A person.")]
    assert vqa.parse_turns([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "<image>q"},
                            {"from": "gpt", "value": "a"}, {"from": "human", "value": "dangling"}]) == [("q", "a")]


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


def test_llava_instruct_malformed(tree):
    path = tree / "llava_dataset/llava_instruct_150k.json"
    write_json(path, [
        {"image": "000000000009.jpg", "conversations": [human("q"), human("q")]},
        {"image": "nope.jpg", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversations": []},
        {"image": "000000000009.jpg", "conversations": [{"from": "robot", "value": "q"}]},
        {"image": "000000000009.jpg", "conversations": [human("q"), gpt("a")]},
    ])
    problems: list[str] = []
    records = vqa.load_llava_instruct(tree, problems=problems)
    assert len(records) == 1
    assert problems == [
        f"{path}: record 0: messages must alternate human/gpt (message 1 breaks it)",
        f"{tree / 'coco/train2017/nope.jpg'}: image file not found ({path}: record 1)",
        f"{path}: record 2: needs a string 'image'",
        f"{path}: record 3: message 0 needs 'from' equal to 'human' or 'gpt'",
    ]
    with pytest.raises(InputError, match="record 0: messages must alternate"):
        vqa.load_llava_instruct(tree, strict=True)
    path.write_text('{"a": 1}')
    with pytest.raises(InputError, match="must be a list"):
        vqa.load_llava_instruct(tree)


# ---------------------------------------------------------------------------------------------------- training sources


def seg_count(sample) -> int:
    return sum(answer.count("[SEG]") for turns in sample.conversations for _, answer in turns)


def test_sources_draw_consistent_samples(tree):
    sem = SemSegSource(str(tree), "ade20k||cocostuff||mapillary||pascal_part||paco_lvis", strict=True)
    assert len(sem) == 5 and sem.names == list(semantic.SEM_SEG_DATASETS[:3]) + ["pascal_part", "paco_lvis"]
    for index in range(len(sem)):
        sample = sem.draw(index, random.Random(index), 3)
        assert seg_count(sample) == len(sample.masks) == len(sample.conversations) >= 1
        assert sample.masks.shape[1:] == (sample.image.height, sample.image.width)
        for (question, answer), in sample.conversations:
            assert "the the" not in question and question == question.strip()
    ade_sample = sem.draw(0, random.Random(0), 3)
    questions = " ".join(q for (q, _), in ade_sample.conversations)
    assert "wall" in questions and "sky" in questions

    ref = ReferSegSource(str(tree), ["refcoco", "grefcoco"], strict=True)
    assert len(ref) == 3
    sample = ref.draw(0, random.Random(3), 3)  # refcoco image 1: three expressions
    assert len(sample.conversations) == 3 and seg_count(sample) == 3
    texts = {"left box": box(0, 0, 3, 4), "the box on the left": box(0, 0, 3, 4), "right box": box(4, 2, 8, 6)}
    for ((question, _),), mask in zip(sample.conversations, sample.masks):
        [text] = [t for t in texts if t in question]  # lower-cased as LISA does
        assert np.array_equal(mask, texts[text])
    assert len(ref.draw(0, random.Random(3), 1).conversations) == 1

    vqa_source = VqaSource(str(tree))
    sample = vqa_source.draw(0, random.Random(0), 3)
    assert sample.conversations == [[("What is in the sky?", "Nothing but clouds."), ("And below?", "A person.")]]
    assert sample.masks.shape == (0, H, W)


def test_lisa_mixture_from_config_is_deterministic(tree):
    config = TrainingConfig(model="x", seed=5, conversations_per_image=3, datasets=[
        DatasetSpec("sem_seg", str(tree), 9),
        DatasetSpec("refer_seg", str(tree), 3, subsets=["refcoco", "refcocog"]),
        DatasetSpec("vqa", str(tree), 3),
        DatasetSpec("reason_seg", str(tree), 1, subsets="ReasonSeg|train", explanatory_rate=0.1),
    ])
    # refclef is in LISA's default list but absent here: named sub-datasets must exist
    with pytest.raises(InputError, match="refclef: referring dataset folder not found"):
        build_training_dataset(TrainingConfig(model="x", datasets=[DatasetSpec("refer_seg", str(tree))]), 4)
    dataset = build_training_dataset(config, 40)
    kinds = [type(s).__name__ for s in dataset.sources]
    assert kinds == ["SemSegSource", "ReferSegSource", "VqaSource", "ReasonSegTreeSource"]
    seen = set()
    for index in range(40):
        sample = dataset[index]
        again = dataset[index]
        assert sample.conversations == again.conversations and np.array_equal(sample.masks, again.masks)
        assert seg_count(sample) == len(sample.masks)
        seen.add(sample.source.split(":")[0])
    assert any("llava_instruct_150k.json" in s for s in seen) and any("refs(" in s for s in seen)


def test_source_skips_or_stops_on_bad_drawn_record(tree):
    image(tree / "ade20k/images/training/ADE_train_2.jpg", (W + 1, H))  # size differs from its label
    label_png(tree / "ade20k/annotations/training/ADE_train_2.png", np.ones((H, W)))
    strict = SemSegSource(str(tree), ["ade20k"], strict=True)
    with pytest.raises(InputError, match=r"ADE_train_2\.jpg: image is 9x6 but its masks are 8x6"):
        strict.draw(1, random.Random(0), 3)
    lenient = SemSegSource(str(tree), ["ade20k"])
    with pytest.warns(UserWarning, match="ADE_train_2.jpg"):
        sample = lenient.draw(1, random.Random(0), 3)
    assert sample.source.endswith("ADE_train_1.jpg") and len(lenient.problems) >= 1


# ---------------------------------------------------------------------------------------------------- data check


def test_data_check_reports_missing_and_malformed_by_name(tree, monkeypatch, capsys):
    import shutil

    shutil.rmtree(tree / "mapillary")
    (tree / "refer_seg/refcocog/instances.json").write_text("[1, 2")
    # no image is opened: any attempt fails the test
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("data check opened an image"))

    checks = {c.name: c for c in lisa_tree.check_tree(tree)}
    assert checks["mapillary"].status == "missing" and str(tree / "mapillary") in checks["mapillary"].detail
    assert checks["refcocog"].status == "unusable"
    assert "refcocog/instances.json: unreadable instances JSON" in checks["refcocog"].detail
    assert checks["refclef"].status == "missing"
    expected = {"ade20k": 1, "cocostuff": 1, "pascal_part": 1, "paco_lvis": 1, "refcoco": 2, "grefcoco": 1,
                "llava_instruct_150k": 1, "ReasonSeg|train": 1}
    for name, count in expected.items():
        assert (checks[name].status, checks[name].samples) == ("ok", count), name
    assert "3 refs, 4 expressions" in checks["refcoco"].detail

    code = cli_main(["data", "check", "--dataset-dir", str(tree)])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line for line in out.splitlines() if line.split() and line.split()[0] in lisa_tree.KINDS]
    lines = {line.split()[1]: line for line in rows}
    assert lines["mapillary"].split()[2] == "missing"
    assert lines["refcocog"].split()[2] == "unusable" and "instances.json" in lines["refcocog"]
    assert lines["ade20k"].split()[2:4] == ["ok", "1"]
    assert "missing" in out.splitlines()[-1]

    code = cli_main(["data", "check", "--dataset-dir", str(tree), "--datasets", "sem_seg,refcoco", "--json"])
    report = json.loads(capsys.readouterr().out)
    names = {d["name"]: d["status"] for d in report["datasets"]}
    assert names == {"ade20k": "ok", "cocostuff": "ok", "mapillary": "missing", "pascal_part": "ok",
                     "paco_lvis": "ok", "refcoco": "ok"}
    assert code == 1  # a named dataset is missing
    assert cli_main(["data", "check", "--dataset-dir", str(tree), "--datasets", "ade20k,ReasonSeg|train"]) == 0


def test_data_check_lists_record_problems(tree, capsys):
    (tree / "reason_seg/ReasonSeg/train/r2.json").write_text('{"text": "x"}')
    (tree / "reason_seg/ReasonSeg/val").mkdir()
    image(tree / "reason_seg/ReasonSeg/val/v1.jpg")
    code = cli_main(["data", "check", "--dataset-dir", str(tree), "--datasets", "reason_seg"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{tree / 'reason_seg/ReasonSeg/train/r2.json'}: no image r2.jpg or r2.png beside it" in out
    assert f"{tree / 'reason_seg/ReasonSeg/val/v1.jpg'}: no annotation v1.json beside it" in out
    assert cli_main(["data", "check", "--dataset-dir", str(tree / "nowhere")]) == 1
    assert "dataset folder not found" in capsys.readouterr().err
