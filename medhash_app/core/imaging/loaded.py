"""The decoded image as every consumer (viewer, ingest, encoder, trainer) receives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medhash_app.core.imaging.facts import HeaderFacts

Window = tuple[float, float]  # (center, width) in the units of `LoadedImage.pixels`


@dataclass(frozen=True, kw_only=True)
class VoiLut:
    """A VOI LUT from the file, pre-scaled to [0, 1] so `render` needs no header to apply it."""

    first_mapped: int
    table: np.ndarray  # float32, one entry per input value starting at `first_mapped`
    explanation: str = ""


@dataclass(eq=False, kw_only=True)
class LoadedImage:
    """One frame of one file, decoded up to (but not including) the display transform.

    Grey images keep modality-LUT output as float32 so the viewer can re-window without decoding
    again; colour images are final uint8 RGB. MONOCHROME1 is *not* inverted here (`invert` says
    so) because `render` is the single place where inversion happens.
    """

    path: Path
    pixels: np.ndarray  # float32 HxW (grey) or uint8 HxWx3 (RGB)
    is_color: bool
    invert: bool
    default_window: Window | None
    facts: HeaderFacts
    voi_lut: VoiLut | None = None
    frame_count: int = 1
    frame_index: int = 0
    voi_function: str = "LINEAR"  # DICOM VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID
    file_windows: tuple[tuple[str, float, float], ...] = field(default=())  # (name, center, width)
    units: str | None = None  # "HU" when the modality LUT yields Hounsfield units

    @property
    def display(self) -> np.ndarray:
        """The default display rendering (uint8), as the viewer first shows it."""
        from medhash_app.core.imaging.render import render

        return render(self)
