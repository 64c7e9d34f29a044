"""Colours named in a real survey, as a paired data set (PRH Figure 8, Appendix D): each sample is one colour of
matplotlib's XKCD_COLORS (949 names with the RGB their survey respondents gave them), its image a uniform swatch,
its text the colour's name (text backends put it into their templates)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from prh_bench.plugin import BadInput, DatasetManifest, Sample, SampleSet, hookimpl, takes_options

OPTIONS = {"names": "all", "count": 20, "swatch": 32}


@takes_options(*OPTIONS)
def xkcd_colors(m: DatasetManifest) -> SampleSet:
    """`names: all` (949 colours, in the survey's order) or `names: common` (the `count` names the survey gave
    most often: matplotlib lists them last, from purple, green, blue, pink, brown, red on); `swatch`: the
    side of the square swatch in pixels."""
    from matplotlib.colors import XKCD_COLORS, to_rgb

    opts = {**OPTIONS, **m.options}
    colors = [(name.removeprefix("xkcd:"), hexa) for name, hexa in XKCD_COLORS.items()]
    if opts["names"] == "common":
        count = opts["count"]
        if not (isinstance(count, int) and 2 <= count <= len(colors)):
            raise BadInput(f"dataset '{m.id}': field 'options.count' must be an integer in [2, {len(colors)}]")
        colors = colors[::-1][:count]
    elif opts["names"] != "all":
        raise BadInput(f"dataset '{m.id}': field 'options.names': expected 'all' or 'common', got {opts['names']!r}")
    side = opts["swatch"]
    if not (isinstance(side, int) and 1 <= side <= 1024):
        raise BadInput(f"dataset '{m.id}': field 'options.swatch' must be an integer in [1, 1024]")
    samples = []
    for name, hexa in colors:
        rgb = tuple(round(255 * c) for c in to_rgb(hexa))
        samples.append(Sample(id=name, image=Image.new("RGB", (side, side), rgb), text=name))
    return SampleSet(tuple(samples))


@hookimpl
def prh_dataset_loaders() -> dict[str, Any]:
    return {"xkcd_colors": xkcd_colors}
