"""Prompt templates and class names for zero-shot classification.

Built-in template sets: `clip_imagenet` (CLIP's 80 ImageNet prompts), `clip_imagenet_short`
(the 7 of them CLIP's prompt-engineering notebook recommends), `simple` ("a photo of a {}.")
and `demo` (the demo data's caption prefixes). Class names come from the dataset's metadata
after `canonical()`, from the built-in `imagenet` list (CLIP's curated ImageNet-1k names), or
from a list in the config.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from vlx.data import demo
from vlx.errors import ConfigError, DataError

_WNID = re.compile(r"^n\d{8}$")


@functools.cache
def _imagenet() -> dict:
    return json.loads((Path(__file__).parent / "imagenet.json").read_text())


def template_sets() -> dict[str, tuple[str, ...]]:
    return {
        "clip_imagenet": tuple(_imagenet()["templates"]),
        "clip_imagenet_short": tuple(_imagenet()["templates_short"]),
        "simple": ("a photo of a {}.",),
        "demo": demo.TEMPLATES,
    }


CLASSNAME_SETS = ("imagenet",)


def templates(setting: str | tuple[str, ...], *, key: str) -> tuple[str, ...]:
    """A built-in set's name, or a tuple of templates with one `{}` each."""
    if isinstance(setting, str):
        sets = template_sets()
        if setting not in sets:
            raise ConfigError(
                f"{key}={setting!r} is not a template set; choose one of {', '.join(sets)} "
                "or give a tuple of templates such as ('a photo of a {}.',)"
            )
        return sets[setting]
    bad = [t for t in setting if t.count("{}") != 1]
    if not setting or bad:
        raise ConfigError(f"{key}: every template needs exactly one {{}}; got {bad or 'none'}")
    return tuple(setting)


def canonical(names: tuple[str, ...]) -> tuple[str, ...]:
    """Dataset label names as a text tower should read them.

    ImageNet WordNet IDs (`n01440764`) become CLIP's curated names (`tench`), so TFDS's
    imagenet2012, imagenet_v2, imagenet_a/r, imagenette, ... need no class list; otherwise
    underscores become spaces (`aquarium_fish` -> `aquarium fish`) and whitespace is collapsed.
    """
    if names and all(_WNID.match(n) for n in names):
        table = dict(zip(_imagenet()["wnids"], _imagenet()["classnames"], strict=True))
        missing = [n for n in names if n not in table]
        if not missing:
            return tuple(table[n] for n in names)
    return tuple(" ".join(n.replace("_", " ").split()) for n in names)


def check_classnames(setting: str | tuple[str, ...], *, key: str) -> None:
    if isinstance(setting, str) and setting not in ("", *CLASSNAME_SETS):
        raise ConfigError(
            f"{key}={setting!r}: choose '' (the dataset's own), "
            f"{', '.join(map(repr, CLASSNAME_SETS))} or a tuple of names"
        )
    if isinstance(setting, tuple) and not all(isinstance(n, str) and n for n in setting):
        raise ConfigError(f"{key}: class names must be non-empty strings")


def classnames(setting: str | tuple[str, ...], source, *, key: str) -> tuple[str, ...]:
    """The class names for `source`'s labels: its own (canonical), a built-in list, or a tuple."""
    own = tuple(getattr(source, "classes", ()) or ())
    if setting == "":
        if not own:
            raise DataError(
                f"{key}: zero-shot needs class names and {source!r} has none; build it with "
                "--classname-col, use a "
                f"labelled TFDS dataset, or set {key} to a tuple of names or one of "
                f"{', '.join(CLASSNAME_SETS)}"
            )
        return canonical(own)
    check_classnames(setting, key=key)
    names = tuple(_imagenet()["classnames"]) if setting == "imagenet" else tuple(setting)
    if own and len(own) != len(names):
        raise DataError(
            f"{key}: {len(names)} class names for a dataset with {len(own)} classes ({source!r})"
        )
    return names
