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
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import transformers


PACKAGE_NAME = "transformers_tests"
_COMPLETE_MARKER = ".complete"

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
        "`ConfigTester.check_config_arguments_init` sets these `PreTrainedConfig` arguments to non-default values and\n"
        'checks that they stick; this is a short list of our own choosing.\n"""\n\n'
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
        "Upstream maps a URL to a copy prefetched for CI; with no prefetched copies the URL itself is the answer.\n"
        '"""\n\n\n'
        "def url_to_local_path(url, *args, **kwargs):\n"
        "    return url\n"
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


def _is_complete(cache_dir: Path) -> bool:
    marker = cache_dir / PACKAGE_NAME / _COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == transformers.__version__


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
        (staging / PACKAGE_NAME / _COMPLETE_MARKER).write_text(version)
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
