"""`reasonseg average`: the weighted mean of checkpoints, tensor by tensor, and one-line refusals of the rest."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from reasonseg.checkpoints.averaging import PROVENANCE_FILE
from reasonseg.checkpoints.loading import load_model_and_processor
from reasonseg.cli.main import main
from reasonseg.modeling.tiny import build_tiny_model


@pytest.fixture()
def two_models(tmp_path):
    """Two tiny models with one config and processor and different random weights, saved as two shards each."""
    directories = []
    for seed in (0, 1):
        model, processor = build_tiny_model(seed=seed)
        directory = tmp_path / f"seed{seed}"
        model.save_pretrained(directory, max_shard_size="2MB")
        processor.save_pretrained(directory)
        directories.append(directory)
    return directories


def _tensors(directory):
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def test_average_is_the_weighted_mean_of_every_tensor(two_models, tmp_path, capsys):
    first, second = two_models
    assert len(list(first.glob("*.safetensors"))) > 1, "the fixture should exercise sharded checkpoints"
    out = tmp_path / "mean"
    assert main(["average", str(first), str(second), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    a, b, mean = _tensors(first), _tensors(second), _tensors(out)
    assert mean.keys() == a.keys()
    differing = [key for key in a if not torch.equal(a[key], b[key])]
    assert len(differing) > 50  # the random matrices; biases and norms start equal
    for key in a:
        assert mean[key].dtype == a[key].dtype
        torch.testing.assert_close(mean[key], (a[key] + b[key]) / 2, rtol=0, atol=1e-6)
    assert json.loads((out / PROVENANCE_FILE).read_text()) == {"sources": [str(first), str(second)], "weights": [0.5, 0.5]}
    # the result is a complete checkpoint: it loads with its processor and its parameters are the averaged ones
    model, processor = load_model_and_processor(str(out), precision="fp32", device="cpu")
    loaded = dict(model.named_parameters())
    for key in differing:
        if key in loaded:
            torch.testing.assert_close(loaded[key], mean[key])
    assert processor.tokenizer.convert_tokens_to_ids("[SEG]") == model.config.seg_token_id

    weighted = tmp_path / "weighted"
    assert main(["average", str(first), str(second), "--weights", "3", "1", "--out", str(weighted)]) == 0
    for key, tensor in _tensors(weighted).items():
        torch.testing.assert_close(tensor, 0.75 * a[key] + 0.25 * b[key], rtol=0, atol=1e-6)


def test_average_of_one_checkpoint_with_itself_is_that_checkpoint(two_models, tmp_path):
    first, _ = two_models
    # a copy saved from another place records that in its tokenizer config; it is still the same processor
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    settings = json.loads((moved / "tokenizer_config.json").read_text())
    settings.update(is_local=not settings.get("is_local", True), name_or_path="somewhere/else")
    (moved / "tokenizer_config.json").write_text(json.dumps(settings))
    assert main(["average", str(first), str(moved), "--out", str(tmp_path / "same")]) == 0
    original, averaged = _tensors(first), _tensors(tmp_path / "same")
    assert all(torch.equal(original[key], averaged[key]) for key in original)


def _copy_with_one_tensor_changed(source, target, change: str):
    """A copy of a sharded checkpoint with its first shard's first tensor dropped, or one extra tensor added."""
    from safetensors.torch import save_file

    shutil.copytree(source, target)
    index_path = target / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard_name = sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(str(target / shard_name))
    if change == "drop":
        key = sorted(tensors)[0]
        del tensors[key], index["weight_map"][key]
    else:
        tensors["extra.weight"] = torch.zeros(2)
        index["weight_map"]["extra.weight"] = shard_name
    save_file(tensors, str(target / shard_name), metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))


def _expect_error(capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_incompatible_checkpoints_and_bad_arguments_are_refused_in_one_line(two_models, tmp_path, capsys):
    first, second = two_models
    out = tmp_path / "out"

    other_config = tmp_path / "other_config"
    shutil.copytree(second, other_config)
    config = json.loads((other_config / "config.json").read_text())
    config["dice_loss_weight"] = config["dice_loss_weight"] + 1
    (other_config / "config.json").write_text(json.dumps(config))
    _expect_error(capsys, ["average", str(first), str(other_config), "--out", str(out)], "differ in config (dice_loss_weight)")

    other_processor = tmp_path / "other_processor"
    shutil.copytree(second, other_processor)
    settings = json.loads((other_processor / "reasonseg_processor.json").read_text())
    settings["conv_type"] = "llava_llama_2"
    (other_processor / "reasonseg_processor.json").write_text(json.dumps(settings))
    _expect_error(capsys, ["average", str(first), str(other_processor), "--out", str(out)], "differ in reasonseg_processor.json")

    for change, message in (("drop", "lacks tensor"), ("add", "holds tensors")):
        other_tensors = tmp_path / f"{change}_tensor"
        _copy_with_one_tensor_changed(second, other_tensors, change)
        _expect_error(capsys, ["average", str(first), str(other_tensors), "--out", str(out)], message)

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    _expect_error(capsys, ["average", str(first), str(tmp_path / "bert"), "--out", str(out)], "'bert'")
    _expect_error(capsys, ["average", str(first), "--out", str(out)], "at least two checkpoints")
    _expect_error(capsys, ["average", str(first), str(second), "--weights", "1", "--out", str(out)],
                  "1 weights for 2 checkpoints")
    _expect_error(capsys, ["average", str(first), str(second), "--weights", "1", "0", "--out", str(out)],
                  "weights must be positive")
    _expect_error(capsys, ["average", str(first), str(tmp_path / "missing"), "--out", str(out)], "not found")
    assert not out.exists(), "a refused average leaves no output behind"

    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    _expect_error(capsys, ["average", str(first), str(second), "--out", str(out)], "not empty")
    assert (out / "keep.txt").read_text() == "earlier work"
