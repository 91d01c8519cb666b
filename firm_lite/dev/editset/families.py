"""The edit families: what an instruction asks for, in varied wording, and how each is carried out
fully, partly, in the wrong place or the wrong way.

A family owns three things the labels depend on: the parameters an instruction names (region,
colour, direction...), the levels it can be done at (:data:`LEVEL_STRENGTH`: full, mostly,
partial, weak, or "half", the edit applied to half its region), and its wrong variants (the
same edit with another region/colour, or its contrary: darker for brighter, the other axis).
Whether an edit is *local* (``changed_box`` names one region) or global decides how a wrong
edit counts against consistency (see :mod:`firm_lite.dev.editset.labels`). Families register themselves by
subclassing :class:`EditFamily`; the generator only ever goes through :data:`FAMILIES`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from firm_lite.dev.editset import pixels as px
from firm_lite.dev.editset.pixels import Box

LEVEL_STRENGTH: dict[str, float] = {"full": 1.0, "mostly": 0.7, "partial": 0.45, "weak": 0.2, "half": 1.0}
WHOLE: Box = (0.0, 0.0, 1.0, 1.0)
REGIONS: dict[str, Box] = {
    "top-left": (0.0, 0.0, 0.5, 0.5), "top-right": (0.0, 0.5, 0.5, 1.0),
    "bottom-left": (0.5, 0.0, 1.0, 0.5), "bottom-right": (0.5, 0.5, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75)}
REGION_WORDS: dict[str, tuple[str, ...]] = {
    "top-left": ("top-left corner", "upper left corner", "top left part"),
    "top-right": ("top-right corner", "upper right corner", "top right part"),
    "bottom-left": ("bottom-left corner", "lower left corner", "bottom left part"),
    "bottom-right": ("bottom-right corner", "lower right corner", "bottom right part"),
    "center": ("center", "middle", "central area")}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 230), "yellow": (240, 210, 40),
    "purple": (140, 50, 190), "orange": (245, 140, 30)}
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, "white": (250, 250, 250), "black": (12, 12, 12)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_RADIUS = 0.15  # of the short side


def pick(rng: np.random.Generator, seq: Any) -> Any:
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))]


def _other(rng: np.random.Generator, seq: Any, current: Any) -> Any:
    return pick(rng, [s for s in seq if s != current])


def a_or_an(word: str) -> str:
    """The indefinite article for ``word`` followed by the word ("an orange", "a red")."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _words(rng: np.random.Generator, templates: tuple[str, ...], **fields: str) -> str:
    text = pick(rng, templates).format(**fields)
    return text if rng.uniform() < 0.7 else text.rstrip(".")


FAMILIES: dict[str, EditFamily] = {}


class EditFamily:
    """One kind of edit. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    colour_only: ClassVar[bool] = False  # meaningless on a grey photo
    levels: ClassVar[tuple[str, ...]] = ("full",)
    contrary: ClassVar[bool] = False  # has an opposite (brighter/darker, horizontal/vertical)
    respecifiable: ClassVar[bool] = False  # has a wrong-parameter variant (region, colour)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # abstract intermediates (no name of their own) stay out
            FAMILIES[cls.name] = cls()

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        raise NotImplementedError

    def describe(self, p: dict[str, Any]) -> str:
        """Canonical phrase of what was asked (the critic's templated reasoning uses it)."""
        raise NotImplementedError

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        raise NotImplementedError

    def changed_box(self, p: dict[str, Any]) -> Box | None:
        """The region a local edit changes (None: the whole frame)."""
        return None

    def can_respecify(self, p: dict[str, Any]) -> bool:
        """Whether these parameters have a wrong-parameter variant."""
        return self.respecifiable

    def wrong_params(self, rng: np.random.Generator, p: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def opposite(self, p: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class Greyscale(EditFamily):
    name = "greyscale"
    colour_only = True
    levels = ("full", "mostly", "partial", "weak", "half")

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        return _words(rng, ("Convert the photo to black and white.", "Make this image grayscale.",
                            "Turn the picture into a greyscale photo.", "Remove all the colour from the image.",
                            "make it black-and-white.", "Desaturate the photo completely."))

    def describe(self, p: dict[str, Any]) -> str:
        return "convert the image to black and white"

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        if level == "half":
            return px.in_box(img, px.luminance(img), px.half_box(WHOLE, vertical=False))
        return px.blend(img, px.luminance(img), LEVEL_STRENGTH[level])


class Tint(EditFamily):
    name = "tint"
    levels = ("full", "mostly", "partial", "weak")
    respecifiable = True

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"colour": pick(rng, COLOURS)}

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        return _words(rng, ("Give the whole photo {ac} tint.", "Add {ac} colour cast to the image.",
                            "tint the picture {c}.", "Apply {ac} filter over the entire image.",
                            "Make everything in the photo look {c}."), c=p["colour"], ac=a_or_an(p["colour"]))

    def describe(self, p: dict[str, Any]) -> str:
        return f"give the image {a_or_an(p['colour'])} tint"

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        colour = np.array(COLOURS[p["colour"]], dtype=np.float32) / 255.0
        tinted = np.clip(px.luminance(img) * colour * 1.5, 0, 255)
        return px.blend(img, tinted, 0.7 * LEVEL_STRENGTH[level])

    def wrong_params(self, rng: np.random.Generator, p: dict[str, Any]) -> dict[str, Any]:
        return {"colour": _other(rng, COLOURS, p["colour"])}


class Brightness(EditFamily):
    name = "brightness"
    levels = ("full", "mostly", "partial", "weak")
    contrary = True

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"direction": pick(rng, ("up", "down"))}

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        if p["direction"] == "up":
            return _words(rng, ("Make the image brighter.", "Brighten the photo.", "increase the brightness.",
                                "Raise the exposure so the scene looks lighter."))
        return _words(rng, ("Darken the image.", "make the photo darker.", "Lower the brightness.",
                            "Reduce the exposure of the picture."))

    def describe(self, p: dict[str, Any]) -> str:
        return "make the image brighter" if p["direction"] == "up" else "make the image darker"

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        s = LEVEL_STRENGTH[level]
        if p["direction"] == "up":
            return px.blend(img, np.full_like(img, 255.0), 0.6 * s)
        return img * (1.0 - 0.65 * s)

    def opposite(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"direction": "down" if p["direction"] == "up" else "up"}


class Flip(EditFamily):
    name = "flip"
    contrary = True

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"axis": pick(rng, ("horizontal", "vertical"))}

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        if p["axis"] == "horizontal":
            return _words(rng, ("Flip the image horizontally.", "Mirror the photo left to right.",
                                "make a left-right mirror image of the picture."))
        return _words(rng, ("Flip the image vertically.", "flip the photo upside down.",
                            "Mirror the picture top to bottom."))

    def describe(self, p: dict[str, Any]) -> str:
        return f"flip the image {p['axis']}ly"

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1] if p["axis"] == "horizontal" else img[::-1])

    def opposite(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"axis": "vertical" if p["axis"] == "horizontal" else "horizontal"}


class Rotate(EditFamily):
    name = "rotate"
    levels = ("full", "partial")  # partial: half the angle
    contrary = True

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"degrees": pick(rng, (90, -90, 180))}  # counter-clockwise positive

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        templates = {90: ("Rotate the image 90 degrees counterclockwise.", "turn the photo a quarter turn to the left.",
                          "Rotate the picture 90° anticlockwise."),
                     -90: ("Rotate the image 90 degrees clockwise.", "turn the photo a quarter turn to the right.",
                           "Rotate the picture 90° clockwise."),
                     180: ("Rotate the photo by 180 degrees.", "turn the picture around by 180°.",
                           "Rotate the image half a turn.")}
        return _words(rng, templates[p["degrees"]])

    def describe(self, p: dict[str, Any]) -> str:
        how = {90: "90 degrees counterclockwise", -90: "90 degrees clockwise", 180: "by 180 degrees"}
        return f"rotate the image {how[p['degrees']]}"

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        return px.rotate(img, p["degrees"] * (0.5 if level == "partial" else 1.0))

    def opposite(self, p: dict[str, Any]) -> dict[str, Any]:
        # half a turn has no contrary direction; the quarter turn the other way is its wrong twin
        return {"degrees": {90: -90, -90: 90, 180: 90}[p["degrees"]]}


class _RegionEdit(EditFamily):
    """A local edit of one named region (or, where allowed, the whole image)."""

    respecifiable = True
    whole_allowed: ClassVar[bool] = False
    templates: ClassVar[tuple[str, ...]] = ()
    whole_templates: ClassVar[tuple[str, ...]] = ()
    verb: ClassVar[str] = ""

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        names = list(REGIONS) + (["whole"] if self.whole_allowed else [])
        return {"region": pick(rng, names)}

    def box(self, p: dict[str, Any]) -> Box:
        return WHOLE if p["region"] == "whole" else REGIONS[p["region"]]

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        if p["region"] == "whole":
            return _words(rng, self.whole_templates)
        return _words(rng, self.templates, r=pick(rng, REGION_WORDS[p["region"]]))

    def describe(self, p: dict[str, Any]) -> str:
        where = "the whole image" if p["region"] == "whole" else f"the {REGION_WORDS[p['region']][0]}"
        return f"{self.verb} {where}"

    def changed_box(self, p: dict[str, Any]) -> Box | None:
        return None if p["region"] == "whole" else self.box(p)

    def can_respecify(self, p: dict[str, Any]) -> bool:
        return p["region"] != "whole"  # another region of a whole-image request is a partial edit

    def wrong_params(self, rng: np.random.Generator, p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "region": _other(rng, REGIONS, p["region"])}

    def effect(self, img: np.ndarray, strength: float) -> np.ndarray:
        raise NotImplementedError

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        box = self.box(p)
        if level == "half":
            box = px.half_box(box, vertical=bool(p.get("half_vertical", False)))
        return px.in_box(img, self.effect(img, LEVEL_STRENGTH[level]), box)


class Blur(_RegionEdit):
    name = "blur"
    levels = ("full", "mostly", "partial", "weak", "half")
    whole_allowed = True
    verb = "blur"
    templates = ("Blur the {r} of the image.", "Make the {r} of the photo blurry.",
                 "Apply a strong blur to the {r}.", "soften the {r} with a heavy blur.")
    whole_templates = ("Blur the whole image.", "Make the entire photo blurry.", "apply a strong blur to the picture.")

    def effect(self, img: np.ndarray, strength: float) -> np.ndarray:
        return px.gaussian_blur(img, 0.035 * min(img.shape[:2]) * strength)


class Pixelate(_RegionEdit):
    name = "pixelate"
    levels = ("full", "mostly", "partial", "weak", "half")
    whole_allowed = True
    verb = "pixelate"
    templates = ("Pixelate the {r} of the image.", "Apply a mosaic effect to the {r}.",
                 "censor the {r} with big pixels.", "Make the {r} of the photo blocky and pixelated.")
    whole_templates = ("Pixelate the whole image.", "Apply a mosaic effect to the entire photo.",
                       "make the picture blocky and pixelated.")

    def effect(self, img: np.ndarray, strength: float) -> np.ndarray:
        return px.pixelate(img, max(2, int(round(0.1 * min(img.shape[:2]) * strength))))


class Remove(_RegionEdit):
    name = "remove"
    levels = ("full", "half")
    verb = "remove the content of"
    templates = ("Remove the object in the {r}.", "Erase everything in the {r} of the photo.",
                 "Paint over the {r} so it blends with the surroundings.",
                 "clean up the {r} by removing what is there.")

    def effect(self, img: np.ndarray, strength: float) -> np.ndarray:
        raise AssertionError("Remove paints its own box")

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        box = self.box(p)
        if level == "half":
            box = px.half_box(box, vertical=bool(p.get("half_vertical", False)))
        return px.fill_from_border(img, box)


class Invert(EditFamily):
    name = "invert"
    levels = ("full", "half")

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        return _words(rng, ("Invert the colours.", "Make a negative of the photo.", "invert the image colors.",
                            "Turn the picture into its colour negative."))

    def describe(self, p: dict[str, Any]) -> str:
        return "invert the colours of the image"

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        box = px.half_box(WHOLE, vertical=True) if level == "half" else WHOLE
        return px.in_box(img, 255.0 - img, box)


class Zoom(EditFamily):
    name = "zoom"
    levels = ("full", "partial")  # partial: half the zoom
    respecifiable = True

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"region": pick(rng, REGIONS)}

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        return _words(rng, ("Zoom in on the {r}.", "Crop the image to its {r} and enlarge it.",
                            "crop to the {r} of the photo.", "Zoom into the {r} of the picture."),
                      r=pick(rng, REGION_WORDS[p["region"]]))

    def describe(self, p: dict[str, Any]) -> str:
        return f"zoom in on the {REGION_WORDS[p['region']][0]}"

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        box = REGIONS[p["region"]]
        if level == "partial":
            box = tuple((a + b) / 2 for a, b in zip(WHOLE, box, strict=True))  # type: ignore[assignment]
        return px.zoom(img, box)

    def wrong_params(self, rng: np.random.Generator, p: dict[str, Any]) -> dict[str, Any]:
        return {"region": _other(rng, REGIONS, p["region"])}


class AddShape(EditFamily):
    name = "add_shape"
    levels = ("full", "mostly", "partial", "weak")  # opacity of the shape
    respecifiable = True

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"shape": pick(rng, SHAPES), "colour": pick(rng, SHAPE_COLOURS), "region": pick(rng, REGIONS)}

    def instruction(self, rng: np.random.Generator, p: dict[str, Any]) -> str:
        return _words(rng, ("Add {ac} {s} in the {r}.", "Draw {ac} {s} at the {r} of the image.",
                            "put {ac} {s} in the {r} of the photo.", "Place a large {c} {s} in the {r}."),
                      c=p["colour"], ac=a_or_an(p["colour"]), s=p["shape"], r=pick(rng, REGION_WORDS[p["region"]]))

    def describe(self, p: dict[str, Any]) -> str:
        return f"add {a_or_an(p['colour'])} {p['shape']} in the {REGION_WORDS[p['region']][0]}"

    def centre(self, p: dict[str, Any]) -> tuple[float, float]:
        y0, x0, y1, x1 = REGIONS[p["region"]]
        return (y0 + y1) / 2, (x0 + x1) / 2

    def apply(self, img: np.ndarray, p: dict[str, Any], level: str = "full") -> np.ndarray:
        return px.paint_shape(img, p["shape"], self.centre(p), SHAPE_RADIUS, SHAPE_COLOURS[p["colour"]],
                              LEVEL_STRENGTH[level])

    def changed_box(self, p: dict[str, Any]) -> Box | None:
        return REGIONS[p["region"]]

    def wrong_params(self, rng: np.random.Generator, p: dict[str, Any]) -> dict[str, Any]:
        if rng.uniform() < 0.6:
            return {**p, "region": _other(rng, REGIONS, p["region"])}
        return {**p, "colour": _other(rng, SHAPE_COLOURS, p["colour"])}


def families_for(colour_photo: bool) -> list[EditFamily]:
    """Families that make sense on the photo (no greyscale request on a grey photo)."""
    return [f for f in FAMILIES.values() if colour_photo or not f.colour_only]
