"""Glyphs: an offline identity dataset with many identities, rendered from the fonts matplotlib
ships (an Omniglot-like set: each character is an identity, each font one image of it).

Digits give the embedding task 10 identities, too few for an embedding to learn features that
transfer to identities it never saw; a face dataset cannot be downloaded everywhere. Here 129
letters and digits (Latin, Greek, Cyrillic; letters that look like another script's letter are
left out) are drawn in every font that has them: 21 fonts for the Latin letters and digits
(DejaVu Sans, Sans Mono and Serif in four styles each, STIX General in four, five Computer Modern
faces), 16 for Greek and Cyrillic (no Computer Modern). Each glyph sits on a common baseline at one
font size, so case stays visible (o and O differ in size and position, as on a page).
"""

from __future__ import annotations

import functools
import os

import numpy as np

IMAGE_SIZE = 32
FONT_SIZE = 20
BASELINE = 25  # pixels from the top: room for descenders below, capitals and accents above

LATIN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Greek and Cyrillic letters without a look-alike in Latin or in each other (no Alpha, no Cyrillic A).
GREEK = "ΓΔΘΛΞΠΣΨΩαβγδεζηθικλμνξπρστυφχψω"
CYRILLIC = "БДЖИЙЛЦЧШЩЪЫЬЭЮЯбвджзйлмнцчшщъыьэюя"
CHARACTERS = LATIN + GREEK + CYRILLIC

# Text faces only: matplotlib also ships symbol fonts whose character map puts symbols at the
# letters' code points (cmex10, cmsy10, cmmi10) and a font of placeholder boxes (LastResort).
FONT_FILES = tuple(
    [f"DejaVu{family}{style}.ttf" for family in ("Sans", "SansMono", "Serif")
     for style in ("", "-Bold", "-Oblique" if family != "Serif" else "-Italic",
                   "-BoldOblique" if family != "Serif" else "-BoldItalic")]
    + [f"STIXGeneral{style}.ttf" for style in ("", "Bol", "Italic", "BolIta")]
    + [f"cm{face}10.ttf" for face in ("r", "ss", "tt", "ti", "b")])
# Computer Modern maps only ASCII.
_ASCII_ONLY = tuple(font for font in FONT_FILES if font.startswith("cm"))


def font_directory() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


@functools.lru_cache(maxsize=1)
def glyph_images() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Every character in every font that has it.

    Returns:
        (uint8 RGB images [N, 32, 32, 3], white ink on black, int32 identity per image,
        the identities: the characters in `CHARACTERS` order).
    """
    from PIL import Image, ImageDraw, ImageFont

    directory = font_directory()
    images, owners = [], []
    for font_file in FONT_FILES:
        path = os.path.join(directory, font_file)
        if not os.path.exists(path):
            raise FileNotFoundError(f"the glyphs dataset draws with matplotlib's fonts, but {path} is missing; "
                                    "reinstall matplotlib")
        font = ImageFont.truetype(path, FONT_SIZE)
        for identity, character in enumerate(CHARACTERS):
            if font_file in _ASCII_ONLY and not character.isascii():
                continue
            canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
            ImageDraw.Draw(canvas).text((IMAGE_SIZE / 2, BASELINE), character, fill=255, font=font, anchor="ms")
            images.append(np.asarray(canvas))
            owners.append(identity)
    images = np.repeat(np.stack(images)[..., None], 3, axis=-1)
    images.setflags(write=False)
    return images, np.asarray(owners, np.int32), tuple(CHARACTERS)
