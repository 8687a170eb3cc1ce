"""The official-checkpoint converter on bad inputs: every one stops with a one-line `ConversionError` naming the
offending file, tensor or value, before anything is written; a failed conversion leaves nothing at the output and
never changes an input or an existing folder; no pickled payload ever runs."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from catseg_hf import conversion
from catseg_hf.conversion import (
    CheckpointMismatchError,
    ConversionError,
    config_from_official,
    convert_official_checkpoint,
    load_official_state_dict,
)
from catseg_hf.testing_utils import load_script

from .conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "convert_official_checkpoint.py"


# ------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def official_state_dict(official_tiny_dir: Path) -> dict[str, torch.Tensor]:
    return load_official_state_dict(official_tiny_dir / "checkpoint.pth")


@pytest.fixture(scope="module")
def official_config(official_tiny_dir: Path) -> dict:
    return json.loads((official_tiny_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT, "convert_official_checkpoint_script")


@pytest.fixture
def checkpoint_never_loaded(monkeypatch):
    """Fails the test if the conversion gets as far as reading the checkpoint's tensors."""

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was read before every argument was checked")

    monkeypatch.setattr(conversion, "load_official_state_dict", refuse)


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    torch.save({"model": state_dict}, path)
    return path


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Content and modification time of every file under `folder`."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_names(error: pytest.ExceptionInfo, *values: object) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for value in values:
        assert str(value) in message, (value, message)


def assert_nothing_left(folder: Path, *expected: str) -> None:
    """`folder` holds only the `expected` names: no output, no temporary folder left behind."""
    assert sorted(path.name for path in folder.iterdir()) == sorted(expected)


# ---------------------------------------------------------------------------------------------- checkpoint files
def _truncated_zip(tmp_path: Path, official_tiny_dir: Path) -> bytes:
    return (official_tiny_dir / "checkpoint.pth").read_bytes()[:1_000_000]


def _truncated_legacy_pickle(tmp_path: Path, official_tiny_dir: Path) -> bytes:
    path = tmp_path / "legacy.bin"
    torch.save({"model": {"w": torch.zeros(1000)}}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.unlink()
    return data[: len(data) // 2]


def _truncated_safetensors(tmp_path: Path, official_tiny_dir: Path) -> bytes:
    from safetensors.torch import save_file

    path = tmp_path / "full.bin"
    save_file({"w": torch.zeros(1000)}, str(path))
    data = path.read_bytes()
    path.unlink()
    return data[:100]


def _corrupt_safetensors(tmp_path: Path, official_tiny_dir: Path) -> bytes:
    header = b'{"w": {"dtype": "F32", "shape": [10], "data_offsets": [0, 40]}'  # no closing brace
    return len(header).to_bytes(8, "little") + header + bytes(40)


BAD_FILES = {
    "empty": (lambda tmp, fixture: b"", "empty"),
    "truncated zip": (_truncated_zip, "truncated or corrupt"),
    "truncated legacy pickle": (_truncated_legacy_pickle, "truncated"),
    "text": (lambda tmp, fixture: b"these are not the weights you are looking for\n", "not a PyTorch"),
    "random bytes": (lambda tmp, fixture: random.Random(0).randbytes(4096), "not a PyTorch"),
    "random bytes after a pickle header": (lambda tmp, fixture: b"\x80" + random.Random(0).randbytes(4096), "corrupt"),
    "truncated safetensors": (_truncated_safetensors, "truncated"),
    "corrupt safetensors": (_corrupt_safetensors, "corrupt"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_unreadable_checkpoint_files(kind, suffix, tmp_path, official_tiny_dir):
    make, problem = BAD_FILES[kind]
    path = tmp_path / f"model{suffix}"  # the name does not matter: the format is told by the content
    path.write_bytes(make(tmp_path, official_tiny_dir))
    before = path.read_bytes()
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(path, output_dir=tmp_path / "out")
    assert_names(error, path, problem)
    assert path.read_bytes() == before
    assert_nothing_left(tmp_path, path.name)


def test_missing_checkpoint_and_folder_checkpoint(tmp_path):
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(tmp_path / "nowhere.pth", output_dir=tmp_path / "out")
    assert_names(error, tmp_path / "nowhere.pth", "does not exist")
    with pytest.raises(ConversionError) as error:
        load_official_state_dict(tmp_path)
    assert_names(error, tmp_path, "is a folder")
    assert_nothing_left(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"PK\x03\x04")
    path.chmod(0)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(path, output_dir=tmp_path / "out")
    assert_names(error, path, "cannot be read")


@pytest.mark.parametrize(
    "content, named",
    [
        (torch.zeros(3), "Tensor"),
        ([torch.zeros(3)], "list"),
        ("weights", "str"),
        ({}, "empty state dict"),
        ({"model": {"head.weight": torch.zeros(1), "iteration": 5}}, "'iteration' is a int"),
        ({"weights": [torch.zeros(1)]}, "'weights' is a list"),
    ],
    ids=["tensor", "list", "string", "empty dict", "int entry", "list entry"],
)
def test_pickle_that_is_not_a_state_dict(content, named, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(content, path)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(path, output_dir=tmp_path / "out")
    assert_names(error, path, named)
    assert_nothing_left(tmp_path, "model.pth")


class Payload:
    """Pickles as a call of `os.system`: what a malicious checkpoint would run on unpickling."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("layout", ["torch zip", "raw pickle"])
def test_malicious_pickle_never_runs(layout, tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "model.pth"
    if layout == "torch zip":
        torch.save({"model": {"weight": torch.zeros(1), "bias": Payload(marker)}}, path)
    else:  # plain pickle (no tensors: pickle itself would store them through a global torch.load refuses first)
        path.write_bytes(pickle.dumps({"model": {"bias": Payload(marker)}}, protocol=2))
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(path, output_dir=tmp_path / "out")
    assert not marker.exists()
    assert_names(error, path, "system", "were not run")
    assert_nothing_left(tmp_path, "model.pth")


def test_non_finite_tensor(official_state_dict, tmp_path):
    key = "sem_seg_head.predictor.transformer.head.weight"
    broken = dict(official_state_dict)
    broken[key] = official_state_dict[key].clone()
    broken[key].view(-1)[3] = float("nan")
    path = save_checkpoint(tmp_path / "model.pth", broken)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(path, output_dir=tmp_path / "out")
    assert_names(error, path, key, "1 NaN/Inf")
    assert_nothing_left(tmp_path, "model.pth")


# --------------------------------------------------------------------------------------------- tensors and shapes
@pytest.mark.parametrize(
    "key, how",
    [
        ("sem_seg_head.predictor.transformer.head.weight", "copy"),
        ("sem_seg_head.predictor.clip_model.visual.transformer.resblocks.2.mlp.c_fc.weight", "copy"),
        ("sem_seg_head.predictor.clip_model.transformer.resblocks.1.attn.in_proj_bias", "split"),
        ("sem_seg_head.predictor.clip_model.text_projection", "transpose"),
        ("sem_seg_head.predictor.transformer.layers.1.attention.padding_tokens", "flatten"),
        ("upsample2.weight", "copy"),
    ],
)
def test_wrong_shaped_tensor_is_named_with_both_shapes(key, how, official_state_dict, tmp_path):
    original = official_state_dict[key]
    wrong_shape = (*original.shape[:-1], original.shape[-1] - 1)
    broken = dict(official_state_dict)
    broken[key] = torch.zeros(wrong_shape)
    path = save_checkpoint(tmp_path / "model.pth", broken)
    with pytest.raises(CheckpointMismatchError) as error:
        convert_official_checkpoint(path, output_dir=tmp_path / "out", official_config=None, variant="base")
    assert_names(error, repr(key), wrong_shape, tuple(original.shape))
    assert_nothing_left(tmp_path, "model.pth")


def test_mismatch_message_is_one_line_and_bounded(official_state_dict, official_config):
    broken = dict(official_state_dict)
    for index in range(20):
        broken[f"sem_seg_head.predictor.transformer.mystery{index}.weight"] = torch.zeros(1)
    config = config_from_official(official_state_dict, official_config=official_config)
    with pytest.raises(CheckpointMismatchError) as error:
        conversion.convert_official_state_dict(broken, config)
    assert_names(error, "20 checkpoint tensor(s)", "mystery0.weight", "and 12 more")


def test_state_dict_of_another_model(tmp_path):
    path = save_checkpoint(tmp_path / "resnet.pth", {"conv1.weight": torch.zeros(8, 3, 3, 3)})
    with pytest.raises(CheckpointMismatchError) as error:
        convert_official_checkpoint(path)
    assert_names(error, "sem_seg_head.predictor.clip_model.visual.conv1.weight", "not an official CAT-Seg")


# ------------------------------------------------------------------------------------------------ official config
def _with(config: dict, dotted: str, value) -> dict:
    config = json.loads(json.dumps(config))
    *sections, last = dotted.split("/")
    target = config
    for section in sections:
        target = target[section]
    target[last] = value
    return config


@pytest.mark.parametrize(
    "dotted, value, named",
    [
        ("aggregator/window_sizes", 0, "aggregator.window_sizes"),
        ("aggregator/window_sizes", -12, "aggregator.window_sizes"),
        ("aggregator/window_sizes", "12", "aggregator.window_sizes"),
        ("aggregator/window_sizes", 12.5, "aggregator.window_sizes"),
        ("aggregator/window_sizes", True, "aggregator.window_sizes"),
        ("aggregator/window_sizes", None, "aggregator.window_sizes"),
        ("aggregator/num_heads", 0, "aggregator.num_heads"),
        ("aggregator/hidden_dims", 130, "aggregator.hidden_dims"),
        ("aggregator/num_layers", 0, "aggregator.num_layers"),
        ("aggregator/pad_len", 0, "aggregator.pad_len"),
        ("aggregator/decoder_dims", [64], "aggregator.decoder_dims"),
        ("aggregator/attention_type", "full", "aggregator.attention_type"),
        ("pooling_sizes/train", [0, 2], "pooling_sizes.train"),
        ("pooling_sizes/eval", 1, "pooling_sizes.eval"),
        ("templates", [], "templates"),
        ("templates", ["a photo"], "templates"),
        ("official_cfg/MODEL.CLIP_PIXEL_STD", [0.0, 1.0, 1.0], "MODEL.CLIP_PIXEL_STD"),
        ("catseg/clip_resolution", [384, 336], "catseg.clip_resolution"),
        ("catseg/upsample1", 256, "catseg.upsample1"),
        ("aggregator", "linear", "'aggregator'"),
    ],
)
def test_impossible_official_config_values(
    dotted, value, named, official_config, official_tiny_dir, tmp_path, checkpoint_never_loaded
):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_with(official_config, dotted, value)))
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(
            official_tiny_dir / "checkpoint.pth", output_dir=tmp_path / "out", official_config=path
        )
    assert_names(error, path, named, repr(value) if dotted != "aggregator/hidden_dims" else 130)
    assert_nothing_left(tmp_path, "config.json")


@pytest.mark.parametrize(
    "dotted, value, named",
    [
        ("aggregator/window_sizes", 7, "24x24"),  # does not cut the 24x24 CLIP grid into windows
        ("catseg/clip_resolution", 380, "patch size (16)"),
        ("catseg/layer_indexes", [3, 20], "20"),
    ],
)
def test_official_config_values_impossible_for_the_checkpoint(
    dotted, value, named, official_config, official_tiny_dir, tmp_path
):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_with(official_config, dotted, value)))
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(
            official_tiny_dir / "checkpoint.pth", output_dir=tmp_path / "out", official_config=path
        )
    assert_names(error, named, value if not isinstance(value, list) else "")
    assert_nothing_left(tmp_path, "config.json")


@pytest.mark.parametrize(
    "content, named",
    [
        (None, "does not exist"),
        (b"", "empty"),
        (b'{"aggregator": {"window_sizes": 12,}}', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe\x00garbage", "not a text"),
    ],
    ids=["missing", "empty", "invalid json", "not an object", "binary"],
)
def test_unreadable_official_config(content, named, official_tiny_dir, tmp_path, checkpoint_never_loaded):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(
            official_tiny_dir / "checkpoint.pth", output_dir=tmp_path / "out", official_config=path
        )
    assert_names(error, path, named)
    assert not (tmp_path / "out").exists()


def test_unknown_variant(official_tiny_dir, tmp_path, checkpoint_never_loaded):
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", output_dir=tmp_path / "out", variant="huge")
    assert_names(error, "'huge'", "base")
    assert_nothing_left(tmp_path)


# ------------------------------------------------------------------------------------------------------ BPE file
def test_missing_bpe_fails_before_anything_is_saved(official_tiny_dir, tmp_path, checkpoint_never_loaded):
    bpe = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", output_dir=tmp_path / "out", bpe_path=bpe)
    assert_names(error, bpe, "does not exist")
    assert_nothing_left(tmp_path)


def test_broken_bpe_fails_before_anything_is_saved(official_tiny_dir, bpe_path, tmp_path, checkpoint_never_loaded):
    truncated = tmp_path / "truncated.txt.gz"
    truncated.write_bytes(bpe_path.read_bytes()[:20_000])
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\na b\n"))
    for bpe in (truncated, short):
        with pytest.raises(ConversionError) as error:
            convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", output_dir=tmp_path / "out", bpe_path=bpe)
        assert_names(error, bpe)
    assert_nothing_left(tmp_path, "truncated.txt.gz", "short.txt.gz")


def test_folder_only_arguments_need_an_output_dir(official_tiny_dir, bpe_path, checkpoint_never_loaded):
    with pytest.raises(ConversionError, match="output_dir"):
        convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", bpe_path=bpe_path)
    with pytest.raises(ConversionError, match="output_dir"):
        convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", model_card="# card")


# ------------------------------------------------------------------------------------------------- output folder
def users_folder(path: Path) -> Path:
    path.mkdir()
    (path / "README.md").write_text("my notes\n")
    (path / "config.json").write_text('{"mine": true}\n')
    return path


def test_non_empty_output_is_refused_without_overwrite(official_tiny_dir, tmp_path, checkpoint_never_loaded):
    output = users_folder(tmp_path / "out")
    before = snapshot(output)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", output_dir=output, model_card="# card")
    assert_names(error, output, "not empty", "README.md", "--overwrite")
    assert snapshot(output) == before
    assert_nothing_left(tmp_path, "out")


def test_output_that_is_a_file_or_below_a_file(official_tiny_dir, tmp_path, checkpoint_never_loaded):
    file = tmp_path / "notes.txt"
    file.write_text("keep me\n")
    for output, problem in ((file, "is a file"), (file / "out", "cannot be created")):
        for overwrite in (False, True):
            with pytest.raises(ConversionError) as error:
                convert_official_checkpoint(
                    official_tiny_dir / "checkpoint.pth", output_dir=output, overwrite=overwrite
                )
            assert_names(error, output, problem)
    assert file.read_text() == "keep me\n"
    assert_nothing_left(tmp_path, "notes.txt")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes whatever the mode")
def test_unwritable_output(official_tiny_dir, tmp_path, checkpoint_never_loaded):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(ConversionError) as error:
            convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", output_dir=parent / "out")
        assert_names(error, parent / "out", "cannot be written")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def test_overwrite_never_deletes_an_input(official_tiny_dir, tmp_path, checkpoint_never_loaded):
    output = users_folder(tmp_path / "out")
    config = output / "official.json"
    config.write_text((official_tiny_dir / "config.json").read_text())
    before = snapshot(output)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(
            official_tiny_dir / "checkpoint.pth", output_dir=output, official_config=config, overwrite=True
        )
    assert_names(error, output, config, "would delete")
    assert snapshot(output) == before


def test_output_symlink_is_refused(official_tiny_dir, tmp_path, checkpoint_never_loaded):
    target = users_folder(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    before = snapshot(target)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", output_dir=link, overwrite=True)
    assert_names(error, link, "symbolic link")
    assert snapshot(target) == before


def test_overwrite_replaces_the_folder_once_complete(official_tiny_dir, tmp_path):
    output = users_folder(tmp_path / "out")
    (output / "extra.txt").write_text("old\n")
    convert_official_checkpoint(
        official_tiny_dir / "checkpoint.pth",
        output_dir=output,
        official_config=official_tiny_dir / "config.json",
        model_card=lambda config: f"# converted at {config.clip_resolution} px\n",
        overwrite=True,
    )
    assert (output / "README.md").read_text() == "# converted at 384 px\n"
    assert json.loads((output / "config.json").read_text())["model_type"] == "catseg"
    assert (output / "model.safetensors").is_file() and not (output / "extra.txt").exists()
    assert_nothing_left(tmp_path, "out")


def fail_while_saving(monkeypatch):
    """Makes `save_pretrained` write part of the folder and then fail as a full disk would."""

    def save_pretrained(self, directory, *args, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(conversion.CATSegForSemanticSegmentation, "save_pretrained", save_pretrained)


def test_failed_write_leaves_an_existing_folder_untouched(official_tiny_dir, tmp_path, monkeypatch):
    output = users_folder(tmp_path / "out")
    before = snapshot(output)
    fail_while_saving(monkeypatch)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(
            official_tiny_dir / "checkpoint.pth", output_dir=output, model_card="# card", overwrite=True
        )
    assert_names(error, output, "No space left on device")
    assert snapshot(output) == before
    assert_nothing_left(tmp_path, "out")


def test_failed_write_leaves_nothing_at_a_new_output(official_tiny_dir, tmp_path, monkeypatch):
    fail_while_saving(monkeypatch)
    with pytest.raises(ConversionError):
        convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", output_dir=tmp_path / "new" / "deep" / "out")
    assert_nothing_left(tmp_path)  # the parent folders created for it are gone too


def test_complete_folder_with_processor_in_an_empty_output(official_tiny_dir, bpe_path, tmp_path):
    from catseg_hf import CATSegForSemanticSegmentation, CATSegProcessor

    output = tmp_path / "out"
    output.mkdir()  # an empty folder needs no --overwrite
    convert_official_checkpoint(
        official_tiny_dir / "checkpoint.pth",
        output_dir=output,
        official_config=official_tiny_dir / "config.json",
        model_card="# card\n",
        bpe_path=bpe_path,
    )
    assert (output / "README.md").read_text() == "# card\n"
    processor = CATSegProcessor.from_pretrained(output)
    assert processor.prompt_templates == ["A photo of a {} in the scene"]
    assert processor(text=["cat"], return_tensors="pt")["input_ids"].flatten()[0].item() == 49406  # start token
    assert CATSegForSemanticSegmentation.from_pretrained(output).config.window_size == 12
    assert_nothing_left(tmp_path, "out")


# ------------------------------------------------------------------------------------------------------- script
def _script_cases(tmp_path: Path, fixture: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    window = tmp_path / "window0.json"
    official = json.loads((fixture / "config.json").read_text())
    window.write_text(json.dumps(_with(official, "aggregator/window_sizes", 0)))
    users_folder(tmp_path / "users")
    checkpoint = str(fixture / "checkpoint.pth")
    return {
        "empty checkpoint": (["--checkpoint", str(empty), "--output", str(tmp_path / "out")], str(empty)),
        "window_sizes 0": (
            ["--checkpoint", checkpoint, "--output", str(tmp_path / "out"), "--official-config", str(window)],
            "aggregator.window_sizes must be a positive integer, got 0",
        ),
        "missing bpe": (
            ["--checkpoint", checkpoint, "--output", str(tmp_path / "out"), "--bpe", str(tmp_path / "no.gz")],
            str(tmp_path / "no.gz"),
        ),
        "non-empty output": (["--checkpoint", checkpoint, "--output", str(tmp_path / "users")], "--overwrite"),
    }


@pytest.mark.parametrize("case", ["empty checkpoint", "window_sizes 0", "missing bpe", "non-empty output"])
def test_script_reports_one_line_errors(case, script, official_tiny_dir, tmp_path, capsys):
    argv, named = _script_cases(tmp_path, official_tiny_dir)[case]
    before = snapshot(tmp_path)
    assert script.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and named in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # no output, no temporary folder, the user's folder unchanged


def test_script_rejects_unknown_variant(script, official_tiny_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        checkpoint = str(official_tiny_dir / "checkpoint.pth")
        script.main(["--checkpoint", checkpoint, "--output", str(tmp_path / "o"), "--variant", "huge"])
    assert exit_info.value.code == 2
    assert "'huge'" in capsys.readouterr().err
    assert_nothing_left(tmp_path)


def test_script_process_exit_status_without_traceback(tmp_path):
    text = tmp_path / "model.pth"
    text.write_text("not a checkpoint\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--checkpoint", str(text), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert str(text) in result.stderr
    assert_nothing_left(tmp_path, "model.pth")


def test_permission_denied_next_to_the_output(official_tiny_dir, tmp_path, monkeypatch, checkpoint_never_loaded):
    """As a read-only folder would answer (simulated: the tests may run as root, who may write anywhere)."""
    mkdir = Path.mkdir

    def refusing_mkdir(self, *args, **kwargs):
        if self.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refusing_mkdir)
    with pytest.raises(ConversionError) as error:
        convert_official_checkpoint(official_tiny_dir / "checkpoint.pth", output_dir=tmp_path / "out")
    assert_names(error, tmp_path / "out", "cannot be written", "Permission denied")
    assert_nothing_left(tmp_path)


def test_failed_conversion_leaves_an_empty_output_folder_as_it_was(official_state_dict, tmp_path):
    broken = dict(official_state_dict)
    del broken["sem_seg_head.predictor.transformer.head.bias"]
    path = save_checkpoint(tmp_path / "model.pth", broken)
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointMismatchError) as error:
        convert_official_checkpoint(path, output_dir=tmp_path / "out")
    assert_names(error, "aggregator.head.bias")
    assert_nothing_left(tmp_path, "model.pth", "out")
    assert list((tmp_path / "out").iterdir()) == []
