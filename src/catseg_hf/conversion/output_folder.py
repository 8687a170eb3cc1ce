"""The output folder of a conversion: checked before any work, written in a temporary folder, moved into place when complete."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import zlib
from pathlib import Path

from .errors import ConversionError, _check_input_file, _reason, _show, _some

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- output folder
def _check_output_dir(output_dir: str | os.PathLike, overwrite: bool, inputs: list[tuple[str, Path]]) -> Path:
    """The output folder as an absolute path, once it is known that it may be written (or replaced)."""
    try:
        output = Path(os.path.abspath(output_dir))
    except TypeError:
        raise ConversionError(f"The output folder must be a path, got {output_dir!r}.") from None
    if output.is_symlink():
        raise ConversionError(
            f"The output {_show(output)} is a symbolic link: pass the folder it points to, or another path."
        )
    if output.exists():
        if not output.is_dir():
            raise ConversionError(
                f"The output {_show(output)} is a file, not a folder: choose a folder path (the converter writes a "
                "model folder)."
            )
        try:
            entries = sorted(entry.name for entry in output.iterdir())
        except OSError as error:
            raise ConversionError(
                f"The output folder {_show(output)} cannot be read ({_reason(error)}): choose a folder you can "
                "write to."
            ) from None
        if entries and not overwrite:
            raise ConversionError(
                f"The output folder {_show(output)} is not empty (it holds {_some(entries, 5)}): pass --overwrite "
                "(overwrite=True) to replace it with the converted model, or choose a new or empty folder."
            )
        if entries:
            # Replacing the folder deletes what it holds: never an input of this conversion, nor the working folder.
            real_output = Path(os.path.realpath(output))
            for what, path in [*inputs, ("current working folder", Path.cwd())]:
                real = Path(os.path.realpath(path))
                if real == real_output or real_output in real.parents:
                    raise ConversionError(
                        f"The output folder {_show(output)} holds the {what} {_show(path)}, which --overwrite would "
                        "delete: choose another output folder."
                    )
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(
            f"The output folder {_show(output)} cannot be created: {_show(ancestor)} is a file. Choose another path."
        )
    return output


class _StagedFolder:
    """A temporary folder next to the output, moved into place by `commit` once complete (a rename on the same file
    system, so a user never sees a half-written folder), or deleted by `discard`."""

    def __init__(self, output: Path, overwrite: bool):
        self.output = output
        self.overwrite = overwrite
        self.path: Path | None = None
        self._created_parents: list[Path] = []

    def create(self) -> Path:
        parent = self.output.parent
        missing = []
        ancestor = parent
        while not ancestor.exists():
            missing.append(ancestor)
            ancestor = ancestor.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._created_parents = missing  # deepest first: the order to remove them in
            for _ in range(100):
                candidate = parent / f".{self.output.name}.converting-{secrets.token_hex(4)}"
                try:
                    candidate.mkdir()  # not mkdtemp: the folder keeps the usual umask permissions once in place
                except FileExistsError:
                    continue
                self.path = candidate
                return candidate
            raise FileExistsError(f"no free temporary name in {parent}")
        except OSError as error:
            self.discard()
            raise ConversionError(
                f"The output folder {_show(self.output)} cannot be written ({_reason(error)} in {_show(parent)}): "
                "choose a folder you can write to."
            ) from None

    def commit(self) -> None:
        output, staged = self.output, self.path
        try:
            if output.exists() or output.is_symlink():
                # Checked before the conversion, but the folder may have changed since.
                if output.is_symlink() or not output.is_dir():
                    raise ConversionError(f"The output {_show(output)} appeared as a file during the conversion.")
                if any(output.iterdir()):
                    if not self.overwrite:
                        raise ConversionError(
                            f"The output folder {_show(output)} was filled during the conversion: pass --overwrite or "
                            "choose another folder."
                        )
                    self._replace(output, staged)
                    return
                output.rmdir()  # os.rename cannot replace an existing folder on every platform
            os.rename(staged, output)
        except OSError as error:
            raise ConversionError(
                f"Moving the converted model into {_show(output)} failed ({_reason(error)}): nothing was changed there."
            ) from None

    def _replace(self, output: Path, staged: Path) -> None:
        # The old folder steps aside (a rename), the new one takes its place, and only then is the old one deleted.
        backup = output.parent / f".{output.name}.replaced-{secrets.token_hex(4)}"
        os.rename(output, backup)
        try:
            os.rename(staged, output)
        except BaseException:
            try:
                os.rename(backup, output)
            except OSError:
                raise ConversionError(
                    f"Replacing {_show(output)} failed and the previous folder could not be put back: it is now "
                    f"{_show(backup)}."
                ) from None
            raise
        shutil.rmtree(backup, ignore_errors=True)
        if backup.exists():
            logger.warning("The replaced folder could not be deleted completely: %s is left behind.", backup)

    def discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        for folder in self._created_parents:
            try:
                folder.rmdir()  # only if still empty: never remove anything that was not created here
            except OSError:
                break
        self._created_parents = []


def _check_bpe_file(bpe_path: str | os.PathLike) -> Path:
    path = _check_input_file(bpe_path, "BPE file")
    from ..tokenization import load_clip_bpe_merges

    try:
        load_clip_bpe_merges(path)  # reads and parses the whole file: a broken one fails here, before any work
    except (ValueError, OSError, EOFError, zlib.error) as error:
        raise ConversionError(
            f"The BPE file {_show(path)} cannot be used ({type(error).__name__}: {_reason(error)}): pass OpenAI's "
            "bpe_simple_vocab_16e6.txt.gz."
        ) from None
    return path
