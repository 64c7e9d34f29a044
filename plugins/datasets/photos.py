"""Real images that ship inside wheels: photographs of scikit-image and scikit-learn cut into deterministic
crops (hundreds of natural-image samples, no network), and scikit-learn's labelled handwritten digits."""

from __future__ import annotations

from typing import Any

from PIL import Image

from prh_bench.plugin import BadInput, DatasetManifest, Sample, SampleSet, hookimpl, np, takes_options

#: names in skimage.data that are no image loaders
NOT_IMAGES = {"data_dir", "download_all", "file_hash", "lbp_frontal_face_cascade_filename"}


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    if name not in skimage.data.__all__ or name in NOT_IMAGES:
        raise AttributeError(f"skimage.data has no image '{name}'")
    return getattr(skimage.data, name)()


def _sklearn(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return load_sample_image(f"{name}.jpg")


SOURCES = {"skimage": _skimage, "sklearn": _sklearn}


def load_photo(ref: str) -> Image.Image:
    """'skimage:astronaut' or 'sklearn:china' as an RGB PIL image."""
    src, _, name = ref.partition(":")
    if src not in SOURCES:
        raise BadInput(f"photo '{ref}': expected 'skimage:NAME' or 'sklearn:NAME'")
    try:
        arr = SOURCES[src](name)
    except (AttributeError, ImportError, OSError, ValueError) as exc:  # unknown, or a download (pooch) offline
        raise BadInput(f"photo '{ref}' is not available offline ({type(exc).__name__}: {exc})") from None
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise BadInput(f"photo '{ref}' is an array of shape {arr.shape}, not a grey or colour image")
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) / max(arr.max(), 1) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def crop_boxes(
    width: int, height: int, scales: list[float], grids: list[int]
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Square crops: for each scale s (side = s * short side) a g x g grid of evenly spaced positions."""
    boxes = []
    short = min(width, height)
    for s, g in zip(scales, grids, strict=True):
        side = round(s * short)
        for r in range(g):
            for c in range(g):
                left = 0 if g == 1 else round(c * (width - side) / (g - 1))
                top = 0 if g == 1 else round(r * (height - side) / (g - 1))
                if g == 1:
                    left, top = (width - side) // 2, (height - side) // 2
                boxes.append((f"s{s:g}-r{r}c{c}", (left, top, left + side, top + side)))
    return boxes


@takes_options("photos", "size", "scales", "grids")
def photo_crops(m: DatasetManifest) -> SampleSet:
    opts: dict[str, Any] = {"size": 256, "scales": [1.0, 0.7, 0.45], "grids": [1, 2, 3], **m.options}
    if not opts.get("photos"):
        raise BadInput(
            f"dataset '{m.id}': field 'options.photos': expected a non-empty list like ['skimage:astronaut']"
        )
    if len(opts["scales"]) != len(opts["grids"]):
        raise BadInput(f"dataset '{m.id}': fields 'options.scales' and 'options.grids' must have the same length")
    samples = []
    for ref in opts["photos"]:
        img = load_photo(ref)
        for tag, box in crop_boxes(*img.size, opts["scales"], opts["grids"]):
            crop = img.crop(box).resize((opts["size"], opts["size"]), Image.Resampling.BICUBIC)
            samples.append(Sample(id=f"{ref}/{tag}", image=crop, group=ref))  # crops of one photo are alike
    return SampleSet(tuple(samples))


@takes_options("size", "limit", "seed")
def sklearn_digits(m: DatasetManifest) -> SampleSet:
    """The 1797 labelled digits (or a seeded subset of `limit`), upscaled to `size` pixels."""
    from sklearn.datasets import load_digits

    from .images import subset

    opts = {"size": 32, **m.options}
    digits = load_digits()
    samples = []
    for i in subset(len(digits.images), opts):
        img = Image.fromarray((digits.images[i] / 16.0 * 255).astype(np.uint8))
        img = img.resize((opts["size"],) * 2, Image.Resampling.NEAREST).convert("RGB")
        samples.append(Sample(id=f"digits/{i:04d}", image=img, label=int(digits.target[i])))
    return SampleSet(tuple(samples))


@takes_options("path")
def image_captions(m: DatasetManifest) -> SampleSet:
    """Image-caption pairs from a JSON-lines file (`options.path`): one {"id", "image", "text"} object per line,
    image paths relative to the file. Each model reads its own modality of the same samples; the captions of one
    image form a group (their image features are identical)."""
    import json
    from pathlib import Path

    path = Path(m.options.get("path", ""))
    if not path.is_file():
        raise BadInput(f"dataset '{m.id}': field 'options.path': no such file '{path}'")
    samples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = Image.open(path.parent / row["image"]).convert("RGB")
            samples.append(Sample(id=str(row["id"]), image=image, text=str(row["text"]), group=str(row["image"])))
        except (ValueError, KeyError, OSError) as exc:
            raise BadInput(f"{path}:{n}: expected {{'id', 'image', 'text'}} with a readable image ({exc})") from None
    return SampleSet(tuple(samples))


@hookimpl
def prh_dataset_loaders() -> dict[str, Any]:
    return {"photo_crops": photo_crops, "sklearn_digits": sklearn_digits, "image_captions": image_captions}
