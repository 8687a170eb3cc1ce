"""Loads transformers' own common test mixins at test time.

The mixins (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`, `ProcessorTesterMixin`, ...) are not part
of the transformers wheel; they ship in its source distribution. They are fetched once per installed transformers
version and never copied into this repository:

- `CATSEG_TRANSFORMERS_TESTS`, if set, names the cache folder; otherwise it is
  `~/.cache/catseg-hf/transformers-<version>-tests`.
- If the cache is incomplete, `python -m pip download --no-deps --no-binary :all: transformers==<version>` fetches the
  source distribution into a temporary folder and only its `tests/` folder is extracted, into
  `<cache>/transformers_tests/`. Our own repository also has a `tests` package, hence the different package name.
- The source distribution lacks a few modules that the mixin modules import. The loader writes minimal stand-ins for
  them (see `_STAND_INS`); they are ours, not transformers' code.
- Some mixin tests load images from the Hub (`url_to_local_path(url)`, which upstream CI points at prefetched copies).
  Tests run offline here, so the loader writes a synthetic image for every image URL the test files name (a smooth
  colour pattern with noise, seeded by the URL) and the stand-in `url_to_local_path` returns it. Other URLs are
  returned unchanged.
- Under `CI=true` a failure to fetch or import raises (the test fails); elsewhere the calling test module is skipped
  with the reason.

Usage, at the top of a test module:

```python
from tests.transformers_common import load_transformers_test_module

image_processing_common = load_transformers_test_module("test_image_processing_common")
```
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path
from types import ModuleType

import transformers


PACKAGE_NAME = "transformers_tests"
_COMPLETE_MARKER = ".complete"
# Bumped when what the loader writes changes, so that older caches are rebuilt.
_CACHE_LAYOUT = 2
_HUB_IMAGE_URL = re.compile(r"https://huggingface\.co/datasets/[^\s\"']+?\.(?:png|jpg|jpeg)")

# Stand-ins for the modules the source distribution lacks, keyed by their path in the cache. They only provide what
# the mixin modules import, with no tests of their own.
_STAND_INS = {
    f"{PACKAGE_NAME}/exporters/__init__.py": "",
    f"{PACKAGE_NAME}/exporters/test_export.py": (
        '"""catseg-hf stand-in: the source distribution lacks tests/exporters/test_export.py."""\n\n\n'
        "class ExportTesterMixin:\n"
        '    """Empty stand-in: contributes no export tests."""\n'
    ),
    f"{PACKAGE_NAME}/generation/__init__.py": "",
    f"{PACKAGE_NAME}/generation/test_utils.py": (
        '"""catseg-hf stand-in: the source distribution lacks tests/generation/test_utils.py."""\n\n\n'
        "class GenerationTesterMixin:\n"
        '    """Empty stand-in: contributes no generation tests."""\n'
    ),
    f"{PACKAGE_NAME}/utils/__init__.py": "",
    f"{PACKAGE_NAME}/utils/test_configuration_utils.py": (
        '"""catseg-hf stand-in: the source distribution lacks tests/utils/test_configuration_utils.py.\n\n'
        "`ConfigTester.check_config_arguments_init` sets these `PreTrainedConfig` arguments to non-default\n"
        'values and checks that they stick; this is a short list of our own choosing.\n"""\n\n'
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["BertModel"],\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
    "utils/fetch_hub_objects_for_ci.py": (
        '"""catseg-hf stand-in: the source distribution lacks utils/fetch_hub_objects_for_ci.py.\n\n'
        "Upstream maps a URL to a copy prefetched for CI. Here the copies are synthetic images that\n"
        "tests/transformers_common.py wrote next to this file (see there); other URLs are returned as they are.\n"
        '"""\n\n'
        "from pathlib import Path\n\n\n"
        "def url_to_local_path(url, *args, **kwargs):\n"
        '    local = Path(__file__).parent / "fixtures" / url.rsplit("/", 1)[-1]\n'
        "    return str(local) if local.is_file() else url\n"
    ),
}


class TransformersTestsUnavailable(RuntimeError):
    """The transformers test mixins could not be fetched or imported."""


def transformers_tests_cache_dir() -> Path:
    """The folder holding `transformers_tests/` (and the stand-in `utils/`) for the installed transformers."""
    configured = os.environ.get("CATSEG_TRANSFORMERS_TESTS")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "catseg-hf" / f"transformers-{transformers.__version__}-tests"


def _marker_text() -> str:
    return f"transformers {transformers.__version__}, layout {_CACHE_LAYOUT}"


def _is_complete(cache_dir: Path) -> bool:
    marker = cache_dir / PACKAGE_NAME / _COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == _marker_text()


def _download_sdist(version: str, destination: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"transformers=={version}", "--dest", str(destination),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise TransformersTestsUnavailable(
            f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    archives = sorted(destination.glob("transformers-*.tar.gz"))
    if not archives:
        raise TransformersTestsUnavailable(f"pip download left no transformers-*.tar.gz in {destination}")
    return archives[0]


def _extract_tests(archive: Path, package_dir: Path) -> None:
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            parts = Path(member.name).parts
            # Only regular files under `<sdist root>/tests/`; links and anything else stay out.
            if len(parts) >= 3 and parts[1] == "tests" and member.isfile():
                member.name = str(Path(*parts[2:]))
                members.append(member)
        if not any(member.name == "test_modeling_common.py" for member in members):
            raise TransformersTestsUnavailable(f"{archive} has no tests/test_modeling_common.py")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(package_dir, members=members, **kwargs)


def _write_synthetic_images(package_dir: Path, fixtures_dir: Path) -> None:
    """One synthetic RGB image (640 x 480) per Hub image URL named in the test files, under the URL's file name."""
    import numpy as np
    from PIL import Image

    urls = set()
    for path in package_dir.rglob("*.py"):
        urls.update(_HUB_IMAGE_URL.findall(path.read_text(encoding="utf-8", errors="replace")))
    fixtures_dir.mkdir(parents=True, exist_ok=True)
    for url in sorted(urls):
        rng = np.random.default_rng(zlib.crc32(url.encode()))
        rows, cols = np.mgrid[0:480, 0:640].astype(np.float32)
        phases = rng.uniform(0, 2 * np.pi, size=3)
        channels = [127.5 + 100 * np.sin(rows / 37 + cols / 53 + phase) for phase in phases]
        pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, size=(480, 640, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(fixtures_dir / url.rsplit("/", 1)[-1])


def _populate(cache_dir: Path) -> None:
    version = transformers.__version__
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build in a sibling folder and move it into place, so that an interrupted run or a concurrent test process never
    # sees a half-extracted package.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as scratch:
        scratch = Path(scratch)
        archive = _download_sdist(version, scratch / "download")
        staging = scratch / "staging"
        _extract_tests(archive, staging / PACKAGE_NAME)
        for relative_path, text in _STAND_INS.items():
            path = staging / relative_path
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text(text)
        (staging / PACKAGE_NAME / "__init__.py").touch()
        _write_synthetic_images(staging / PACKAGE_NAME, staging / "utils" / "fixtures")
        (staging / PACKAGE_NAME / _COMPLETE_MARKER).write_text(_marker_text())
        # The stand-in `utils/` first: the package, whose marker says "complete", goes last.
        for name in ("utils", PACKAGE_NAME):
            target = cache_dir / name
            if target.exists():
                shutil.rmtree(target)
            try:
                os.replace(staging / name, target)
            except OSError:
                if not _is_complete(cache_dir):  # else another process got there first
                    raise


def ensure_transformers_tests() -> Path:
    """Makes sure the mixins of the installed transformers are in the cache and importable; returns the cache dir."""
    cache_dir = transformers_tests_cache_dir()
    if not _is_complete(cache_dir):
        try:
            _populate(cache_dir)
        except TransformersTestsUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - any failure to fetch is reported the same way
            raise TransformersTestsUnavailable(f"fetching the transformers test mixins failed: {error!r}") from error
    if str(cache_dir) not in sys.path:
        sys.path.insert(0, str(cache_dir))
    return cache_dir


def load_transformers_test_module(name: str) -> ModuleType:
    """Imports `transformers_tests.<name>` (e.g. `"test_modeling_common"`) from transformers' source distribution.

    Under `CI=true` any failure raises; elsewhere it skips the calling test module with the reason.
    """
    try:
        ensure_transformers_tests()
        return importlib.import_module(f"{PACKAGE_NAME}.{name}")
    except (TransformersTestsUnavailable, ImportError) as error:
        reason = f"transformers {transformers.__version__} test mixins unavailable: {error}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise TransformersTestsUnavailable(reason) from error
        import pytest

        pytest.skip(reason, allow_module_level=True)
