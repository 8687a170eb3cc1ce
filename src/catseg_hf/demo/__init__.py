"""The CAT-Seg web demo: upload a picture, type any class names, see the segmentation.

```bash
pip install -e ".[demo]"
catseg-hf demo                         # the tiny example model, offline, on http://127.0.0.1:7860
catseg-hf demo --model catseg-base     # a converted official model
```

A [Gradio](https://gradio.app) app (this module imports gradio; the rest of catseg_hf never does). The same app runs as
a Hugging Face Space from `spaces/catseg/`. From Python:

```python
>>> from catseg_hf.demo import build_demo, launch
>>> launch(build_demo("catseg-base"), port=7860)
```

The page takes an image (upload, paste, webcam), class names (one per line; `a, b` lists synonyms of one class) or a
benchmark vocabulary, and the mode, and shows the segmentation as an annotated image (hover a class), the coloured
overlay with its legend as `catseg-hf segment` draws it, a table of the classes present with their pixel fractions,
and downloads of the label map (PNG) and of the JSON record. The class embeddings of a vocabulary are computed once
and reused by later requests; requests are queued and run one at a time; bad input gets a message in the page.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ..evaluation.benchmarks import load_class_names
from ..inference import load_image, predict_logits, prepare_images, to_label_maps
from ..messages import one_line as _one_line
from ..pipelines import default_vocabulary
from ..visualization import class_fractions, colour_hex, display_image, draw_overlay, label_map_image, palette
from ..vocabulary import VocabularyCache


logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
#: The largest vocabulary the page accepts (ADE-847, the largest benchmark, fits).
MAX_CLASSES = 1000
#: The largest image the page accepts, in pixels (4096 x 4096): bigger images take minutes and gigabytes on a CPU.
MAX_IMAGE_PIXELS = 4096 * 4096
#: The largest upload the server accepts (a second guard, before any decoding).
MAX_FILE_SIZE = "50mb"
# Download folders of this many recent requests are kept on disk (older ones are removed).
KEPT_REQUEST_FOLDERS = 16
#: Requests waiting beyond this many are refused with a "queue full" message instead of waiting for minutes.
MAX_QUEUE_SIZE = 64

# The preset dropdown: benchmark vocabularies, by the benchmark keys of catseg_hf.evaluation.
PRESETS = {
    "ADE-150": "a150",
    "ADE-847": "a847",
    "Pascal-Context 59": "pc59",
    "Pascal-Context 459": "pc459",
    "VOC-20": "pas20",
    "COCO-Stuff": "coco_stuff",
}
MODEL_VOCABULARY = "The model's own vocabulary"

# The shipped examples (synthetic scenes of catseg_hf.data.render_scene, which the tiny example model knows): the image
# file and the class names typed with it. The last one shows only held-out combinations, which the tiny model never
# segmented in training (render_scene(15, 160, combos=HELDOUT_COMBOS, min_shapes=2, max_shapes=2)).
EXAMPLES = (
    ("red-circle-green-triangle.png", ("background", "red circle", "green triangle", "blue square")),
    ("red-square-blue-cross.png", ("background", "red square", "blue cross", "yellow circle")),
    ("blue-triangle-yellow-circle.png", ("background", "blue triangle", "yellow circle", "green cross")),
    ("red-triangle-green-cross.png", ("background", "red triangle", "green cross", "red circle", "green square")),
)
UNSEEN_EXAMPLE = "red-triangle-green-cross.png"

MODES = (("sliding window (the paper's protocol)", "sliding"), ("whole image (faster)", "whole"))

EXAMPLE_MODEL_NOTE = (
    "This is **tiny-shapes-catseg**, the tiny example model of catseg-hf (1 M parameters, trained on a CPU on "
    "synthetic coloured shapes, so that the demo works offline), a miniature of CAT-Seg's setting: its tiny CLIP "
    "saw captions of all 16 colour/shape combinations, CAT-Seg was trained to segment 12 of them, and it segments "
    "the other 4 (red triangle, green cross, blue circle, yellow square) from their names alone, though far less "
    "reliably than the seen ones (see its model card); the last example shows two of them. It only knows "
    "`background` and colour + shape names such as `red circle` and is useless on real photos: real images need "
    "the converted official CAT-Seg weights (`catseg-hf demo --model catseg-base`, see the README)."
)


class DemoInputError(ValueError):
    """Bad input from the page; its message is shown to the user."""


@dataclass
class DemoResult:
    """What one successful request produced (the page shows it; tests compare it)."""

    image: Any  # as read (PIL, any mode), for drawing
    label_map: np.ndarray
    labels: list[str]
    label_map_path: Path
    record_path: Path
    record: dict[str, Any]
    seconds: float
    embeddings_reused: bool


def default_model_path() -> Path | None:
    """The tiny example model of the repository (`examples/tiny-shapes-catseg`), if this installation sits in a
    checkout of it; None otherwise (an installed wheel does not ship it)."""
    folder = Path(__file__).resolve().parents[3] / "examples" / "tiny-shapes-catseg"
    return folder if (folder / "config.json").is_file() else None


def parse_class_names(text: str | None) -> list[str]:
    """The class names of the text box: one per line, surrounding spaces and blank lines dropped.

    Commas are kept: `sofa, couch` is one class with a synonym, as everywhere in catseg-hf.
    """
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class SegmentationDemo:
    """The model behind the page: one request at a time, with a cache of class embeddings.

    Args:
        model (`Any`):
            A CAT-Seg model (eval mode, on its device).
        processor (`Any`):
            Its `CATSegProcessor`.
        model_name (`str`, *optional*, defaults to `"CAT-Seg"`):
            How the page names the model.
        is_example_model (`bool`, *optional*, defaults to `False`):
            Whether this is the tiny example model (the page then says what it is).
        max_classes (`int`, *optional*, defaults to `MAX_CLASSES`):
            Most class names the page accepts (see [`MAX_CLASSES`]).
        max_image_pixels (`int`, *optional*, defaults to `MAX_IMAGE_PIXELS`):
            Largest image the page accepts (see [`MAX_IMAGE_PIXELS`]).
        output_dir (`str | Path`, *optional*):
            Where the downloads are written (default: a temporary folder).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        model_name: str = "CAT-Seg",
        is_example_model: bool = False,
        max_classes: int = MAX_CLASSES,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        output_dir: str | Path | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        self.model_name = model_name
        self.is_example_model = is_example_model
        self.max_classes = max_classes
        self.max_image_pixels = max_image_pixels
        self.output_dir = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="catseg-demo-"))
        self.vocabularies = VocabularyCache()
        # Gradio's queue already runs one request at a time; the lock also covers direct calls (tests, notebooks).
        self._lock = threading.Lock()
        self._requests = 0

    # ------------------------------------------------------------------------------------------------- page data
    def default_class_names(self) -> list[str]:
        """The model's stored vocabulary, else the first example's class names."""
        try:
            names = default_vocabulary(self.model.config)
        except ValueError:
            names = []
        return names or list(EXAMPLES[0][1])

    def preset_class_names(self, preset: str | None) -> list[str]:
        """The class names of a preset of the dropdown."""
        if preset is None or preset == MODEL_VOCABULARY:
            return self.default_class_names()
        if preset not in PRESETS:
            raise DemoInputError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        return load_class_names(PRESETS[preset])

    def model_description(self) -> str:
        """Markdown: what the model is."""
        config = self.model.config
        parameters = sum(parameter.numel() for parameter in self.model.parameters())
        text = (
            f"**Model:** `{self.model_name}` · {parameters / 1e6:.1f} M parameters · CLIP views of "
            f"{config.clip_resolution} px · {config.num_prompt_templates} prompt template(s) · on "
            f"`{self.model.device}`"
        )
        if self.is_example_model:
            text += "\n\n" + EXAMPLE_MODEL_NOTE
        return text

    # ------------------------------------------------------------------------------------------------- requests
    def check_inputs(self, image: Any, class_names_text: str | None, mode: str | None) -> tuple[list[str], str]:
        """The class names and mode of a request; raises [`DemoInputError`] with a message for the page."""
        if image is None or (isinstance(image, str) and not image):
            raise DemoInputError("Add an image first: upload one, paste one, use the webcam, or click an example.")
        names = parse_class_names(class_names_text)
        if not names:
            raise DemoInputError("Type at least one class name (one per line), or pick a preset vocabulary.")
        if len(names) > self.max_classes:
            raise DemoInputError(
                f"{len(names)} class names given; this demo takes at most {self.max_classes} (the largest preset, "
                "ADE-847, has 847). Remove some, or run `catseg-hf segment` on your own machine."
            )
        mode = mode or self.processor.image_processor.mode
        if mode not in ("sliding", "whole"):
            raise DemoInputError(f"Unknown mode {mode!r}; choose sliding or whole.")
        return names, mode

    def read_image(self, image: Any) -> tuple[Any, str]:
        """The image of a request (a file path from the page, or a PIL image / array), read with the processor's
        rules, and a short name for the downloads."""
        if not isinstance(image, (str, os.PathLike)):
            return image, "image"
        path = Path(image)
        # Gradio keeps the uploaded file's name; the folder around it is Gradio's cache, of no interest to the user.
        shown = path.name
        try:
            with Image.open(path) as opened:  # reads the header only: the size check costs no decoding
                width, height = opened.size
        except Image.DecompressionBombError as error:
            raise DemoInputError(f"{shown!r} is too large to open safely ({_one_line(error)}).") from error
        except (OSError, ValueError) as error:
            raise DemoInputError(
                f"Cannot read {shown!r} as an image ({_one_line(error)}). Upload a PNG, JPEG, WebP, TIFF or BMP file."
            ) from error
        if width * height > self.max_image_pixels:
            raise DemoInputError(
                f"{shown!r} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); this demo takes images "
                f"up to {self.max_image_pixels / 1e6:.1f} megapixels. Downscale it first."
            )
        try:
            loaded = load_image(path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DemoInputError(f"Cannot read {shown!r} as an image ({_one_line(error)}).") from error
        return loaded, _safe_stem(path.stem)

    def segment(
        self, image: Any, class_names_text: str | None, mode: str | None = None, progress: Any = None
    ) -> DemoResult:
        """Segments one image into the class names of the text box.

        Raises:
            DemoInputError: for bad input (the message says what and what to do).
        """
        step = progress if progress is not None else (lambda *args, **kwargs: None)
        names, mode = self.check_inputs(image, class_names_text, mode)
        with self._lock:
            start = time.perf_counter()
            step(0.05, desc="Reading the image")
            image, stem = self.read_image(image)
            try:
                pixel_values, sizes = prepare_images(self.processor, [image], mode)
                size = sizes[0]
            except (TypeError, ValueError) as error:
                raise DemoInputError(f"Cannot process this image: {_one_line(error)}") from error

            cached = len(self.vocabularies)
            step(0.2, desc=f"Embedding {len(names)} class names")
            try:
                vocabulary = self.vocabularies.get(self.model, self.processor, names)
            except (TypeError, ValueError) as error:
                raise DemoInputError(f"Bad class names: {_one_line(error)}") from error
            reused = len(self.vocabularies) == cached

            step(0.4, desc=f"Segmenting ({mode})")
            try:
                logits = predict_logits(self.model, pixel_values, vocabulary.class_embeddings)
                label_map = to_label_maps(self.processor, logits, sizes)[0]
            except torch.OutOfMemoryError as error:
                raise DemoInputError(
                    f"Out of memory for a {size[1]}x{size[0]} image with {len(names)} classes: try the whole mode, "
                    "fewer classes or a smaller image."
                ) from error
            label_map = label_map.cpu().numpy()
            seconds = time.perf_counter() - start

            step(0.9, desc="Drawing")
            folder = self._new_request_folder()
            label_map_path = folder / f"{stem}_labels.png"
            record_path = folder / f"{stem}.json"
            label_map_image(label_map, len(names)).save(label_map_path)
            record = {
                "image": stem,
                "image_size": list(size),
                "model": self.model_name,
                "mode": mode,
                "prompt_templates": list(self.processor.prompt_templates),
                "labels": names,
                "label_map": label_map_path.name,
                "fractions": class_fractions(label_map, names),
            }
            record_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            return DemoResult(
                image=image,
                label_map=label_map,
                labels=names,
                label_map_path=label_map_path,
                record_path=record_path,
                record=record,
                seconds=seconds,
                embeddings_reused=reused,
            )

    def _new_request_folder(self) -> Path:
        # Gradio copies the returned files into its own cache (cleaned by `delete_cache`); the originals of all but
        # the last few requests can go.
        self._requests += 1
        folder = self.output_dir / f"request-{self._requests:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        stale = self.output_dir / f"request-{self._requests - KEPT_REQUEST_FOLDERS:06d}"
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        return folder

    def run(
        self,
        image: Any,
        class_names_text: str | None,
        mode: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how Gradio hands a handler its progress bar
    ) -> tuple:
        """The Run button: the page's outputs, or a message in the page (and a notice) for bad input."""
        try:
            return self._outputs(self.segment(image, class_names_text, mode, progress=progress))
        except DemoInputError as error:
            return self._error(str(error))
        except Exception as error:  # noqa: BLE001 - the page shows a message, the server keeps serving
            logger.exception("The demo failed on a request")
            return self._error(f"Something went wrong ({type(error).__name__}: {_one_line(error)}).")

    def _outputs(self, result: DemoResult) -> tuple:
        shown = display_image(result.image)
        colours = palette(len(result.labels))
        present = np.unique(result.label_map).tolist()
        annotations = [((result.label_map == index).astype(np.float32), result.labels[index]) for index in present]
        colour_map = {result.labels[index]: colour_hex(colours[index]) for index in present}
        fractions = np.bincount(result.label_map.reshape(-1), minlength=len(result.labels)) / result.label_map.size
        rows = sorted(([index, result.labels[index], round(100.0 * fractions[index], 2)] for index in present),
                      key=lambda row: -row[2])
        status = (
            f"**Done** in {result.seconds:.2f} s: {len(present)} of {len(result.labels)} classes present · "
            f"{result.record['mode']} mode · class embeddings "
            + ("reused from an earlier request." if result.embeddings_reused else "computed (cached for next time).")
        )
        return (
            gr.AnnotatedImage(value=(shown, annotations), color_map=colour_map),
            draw_overlay(result.image, result.label_map, result.labels),
            rows,
            [str(result.label_map_path), str(result.record_path)],
            status,
        )

    @staticmethod
    def _error(message: str) -> tuple:
        gr.Warning(message)
        return None, None, None, None, f"**Error:** {message}"


# ---------------------------------------------------------------------------------------------------- the page
def image_input(**kwargs: Any) -> gr.Image:
    """A `gr.Image` that leaves unreadable uploads to the demo's own check, which explains them in the page.

    Gradio opens every upload with PIL before the event handler runs; a file that is not an image would fail there
    with Gradio's generic error instead of the demo's message. (The instance's `preprocess` is wrapped rather than
    the class subclassed: Gradio writes a `.pyi` stub beside every module that defines a component class.)
    """
    component = gr.Image(**kwargs)
    strict = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return strict(payload)
        except Exception:  # noqa: BLE001 - any decoding failure; SegmentationDemo.read_image says what it was
            return None if payload is None or payload.path is None else str(payload.path)

    component.preprocess = preprocess
    return component


def build_demo(
    model: Any = None,
    processor: Any = None,
    *,
    model_name: str | None = None,
    is_example_model: bool | None = None,
    device: str | torch.device = "auto",
    trust_remote_code: bool = False,
    max_classes: int = MAX_CLASSES,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    output_dir: str | Path | None = None,
) -> gr.Blocks:
    """The demo page.

    Args:
        model (`Any`, *optional*):
            A CAT-Seg model, or a folder / Hub id to load one from (with its processor), or None for the tiny
            example model of the repository.
        processor (`Any`, *optional*):
            The model's processor (when `model` is a model).
        model_name (`str`, *optional*):
            How the page names the model (default: the folder / Hub id).
        is_example_model (`bool`, *optional*):
            Whether to say on the page that this is the tiny example model (default: when `model` is
            None).
        device (`str | torch.device`, *optional*, defaults to `"auto"`):
            Where to load a model given by name: `"auto"` (cuda when available), `"cpu"`, `"cuda"`, or a device.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run the modelling code of the model folder instead of the installed catseg_hf.
        max_classes (`int`, *optional*, defaults to `MAX_CLASSES`):
            Most class names the page accepts.
        max_image_pixels (`int`, *optional*, defaults to `MAX_IMAGE_PIXELS`):
            Largest image the page accepts.
        output_dir (`str | Path`, *optional*):
            Where the downloads are written before Gradio serves them (default: a temporary folder).

    Returns:
        A `gr.Blocks` with its queue set up; serve it with [`launch`].
    """
    if is_example_model is None:
        is_example_model = model is None
    if model is None:
        model = default_model_path()
        if model is None:
            raise ValueError(
                "No model given and the tiny example model (examples/tiny-shapes-catseg of the catseg-hf repository) "
                "is not beside this installation: pass a converted CAT-Seg folder or Hub id."
            )
    if isinstance(model, (str, os.PathLike)):
        from ..cli import load_model, resolve_device

        model_name = model_name or str(model)
        device = resolve_device(device) if isinstance(device, str) else device
        model, processor = load_model(str(model), trust_remote_code=trust_remote_code, device=device)
    if processor is None:
        raise ValueError("Pass the model's processor along with the model (or a model folder / Hub id instead).")
    demo = SegmentationDemo(
        model,
        processor,
        model_name=model_name or getattr(model.config, "_name_or_path", "") or "CAT-Seg",
        is_example_model=is_example_model,
        max_classes=max_classes,
        max_image_pixels=max_image_pixels,
        output_dir=output_dir,
    )

    # delete_cache: the downloads and uploads of a session are removed an hour after it was last used.
    blocks = gr.Blocks(title="CAT-Seg open-vocabulary segmentation", analytics_enabled=False, delete_cache=(3600, 3600))
    with blocks as page:
        page.segmentation_demo = demo  # for tests and notebooks: the model, its cache and its limits
        gr.Markdown(
            "# CAT-Seg: segment an image into any classes\n"
            "Upload an image, type the classes to find (one per line; `sofa, couch` lists synonyms of one class) or "
            "pick a benchmark vocabulary, and press **Run**. Every pixel gets one of the classes."
        )
        gr.Markdown(demo.model_description(), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1):
                image = image_input(
                    label="Image",
                    type="filepath",
                    image_mode=None,  # keep the file as uploaded: 16-bit images are read by the processor's rules
                    sources=["upload", "clipboard", "webcam"],
                    elem_id="image-input",
                )
                class_names = gr.Textbox(
                    value="\n".join(demo.default_class_names()),
                    label="Class names (one per line)",
                    lines=6,
                    max_lines=16,
                    elem_id="class-names",
                )
                with gr.Row():
                    preset = gr.Dropdown(
                        choices=[MODEL_VOCABULARY, *PRESETS],
                        value=None,
                        label="Preset vocabulary",
                        elem_id="preset",
                    )
                    mode = gr.Radio(
                        choices=list(MODES),
                        value=processor.image_processor.mode,
                        label="Mode",
                        elem_id="mode",
                    )
                run = gr.Button("Run", variant="primary", elem_id="run-button")
            with gr.Column(scale=1):
                annotated = gr.AnnotatedImage(label="Segmentation (hover a class)", elem_id="annotated")
                status = gr.Markdown("Results appear here.", elem_id="status")
        with gr.Row():
            overlay = gr.Image(
                label="Overlay and legend", type="pil", format="png", interactive=False, elem_id="overlay"
            )
            with gr.Column():
                table = gr.Dataframe(
                    headers=["id", "class", "% of pixels"],
                    datatype=["number", "str", "number"],
                    label="Classes present",
                    interactive=False,
                    elem_id="classes-table",
                )
                downloads = gr.File(
                    label="Downloads: label map (PNG, one class id per pixel) and JSON",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
        outputs = [annotated, overlay, table, downloads, status]
        gr.Examples(
            examples=[[str(EXAMPLES_DIR / file), "\n".join(names), "whole"] for file, names in EXAMPLES],
            inputs=[image, class_names, mode],
            outputs=outputs,
            fn=demo.run,
            run_on_click=True,
            cache_examples=False,
            example_labels=[
                ("never segmented in training: " if file == UNSEEN_EXAMPLE else "") + ", ".join(names[1:3])
                for file, names in EXAMPLES
            ],
            label="Examples (synthetic shapes; click one to run it)",
            elem_id="examples",
        )
        run.click(demo.run, inputs=[image, class_names, mode], outputs=outputs, show_progress="full")
        preset.change(_preset_handler(demo), inputs=preset, outputs=class_names)
    page.queue(default_concurrency_limit=1, max_size=MAX_QUEUE_SIZE)
    return page


def _preset_handler(demo: SegmentationDemo):
    def fill(preset: str | None) -> Any:
        if preset is None:
            return gr.skip()
        try:
            return "\n".join(demo.preset_class_names(preset))
        except (DemoInputError, FileNotFoundError, ValueError) as error:
            gr.Warning(f"Cannot load the preset {preset!r}: {_one_line(error)}")
            return gr.skip()

    return fill


def launch(page: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, **kwargs: Any) -> Any:
    """Serves the page (blocking, until interrupted, unless `prevent_thread_lock=True` is passed).

    Extra keyword arguments go to `gr.Blocks.launch`.
    """
    options = {"server_name": host, "server_port": port, "max_file_size": MAX_FILE_SIZE}
    options.update(kwargs)
    return page.launch(**options)


def _safe_stem(stem: str) -> str:
    # Download names: keep letters, digits, dot, dash and underscore.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


__all__ = [
    "DemoInputError",
    "DemoResult",
    "EXAMPLES",
    "UNSEEN_EXAMPLE",
    "MAX_CLASSES",
    "MAX_IMAGE_PIXELS",
    "PRESETS",
    "SegmentationDemo",
    "build_demo",
    "default_model_path",
    "launch",
    "parse_class_names",
]
