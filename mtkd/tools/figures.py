"""Paper-style visual comparison figures (as Fig. 2/3 of MTKD, Jiang et al., ECCV 2024): the full HR image with a
box drawn on it, then the same crop of HR and of each method's SR image, enlarged, each captioned with the method
and its PSNR/SSIM on the whole image (:func:`mtkd.metrics.evaluation.score_images`: Y channel, border of ``scale``
cropped).

Drawn with OpenCV only (no matplotlib). Images are uint8 BGR ``(H, W, 3)`` as :func:`mtkd.metrics.evaluation.read_image`
gives them; the box is ``(x, y, width, height)`` in HR pixels, ``x``/``y`` the top-left corner.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from mtkd.metrics.evaluation import ImageScore, read_image, score_images
from mtkd.tools.inference import IMAGE_EXTENSIONS, write_png

#: BGR colours.
BOX_COLOUR = (0, 0, 255)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Panel:
    """One crop of the figure: ``crop`` uint8 BGR ``(h, w, 3)``; ``score`` None for the HR crop."""
    label: str
    crop: np.ndarray
    score: ImageScore | None
    caption: tuple[str, ...]


@dataclass(frozen=True)
class FigureLayout:
    """Where things are on the canvas, ``(x, y, width, height)`` in canvas pixels."""
    overview: tuple[int, int, int, int]
    panels: tuple[tuple[int, int, int, int], ...]
    size: tuple[int, int]  # (width, height)


def check_box(box: Sequence[int], image_shape: Sequence[int], what: str = 'HR image') -> tuple[int, int, int, int]:
    """``box`` as four ints, or a ValueError when it is empty or leaves the ``(H, W, ...)`` image."""
    if len(box) != 4:
        raise ValueError(f'a box is x y width height, got {box}')
    x, y, width, height = (int(value) for value in box)
    if width < 1 or height < 1 or x < 0 or y < 0 or x + width > image_shape[1] or y + height > image_shape[0]:
        raise ValueError(f'box x={x} y={y} w={width} h={height} is not inside the {what} '
                         f'({image_shape[1]}x{image_shape[0]}, width x height)')
    return x, y, width, height


def crop(image: np.ndarray, box: Sequence[int], what: str = 'image') -> np.ndarray:
    """The ``(x, y, width, height)`` crop of an ``(H, W, C)`` image (a copy)."""
    x, y, width, height = check_box(box, image.shape, what)
    return image[y:y + height, x:x + width].copy()


def score_caption(score: ImageScore, psnr_digits: int = 2, ssim_digits: int = 4) -> str:
    """``'32.17 dB / 0.8954'``, as the field's tables round."""
    return f'{score.psnr:.{psnr_digits}f} dB / {score.ssim:.{ssim_digits}f}'


def comparison_panels(hr: np.ndarray, methods: Mapping[str, np.ndarray], box: Sequence[int], scale: int,
                      hr_label: str = 'HR') -> list[Panel]:
    """The HR crop then one crop per method (in ``methods`` order), each method scored on its whole image.

    Each SR image must be the HR size, or smaller by less than ``scale`` (HR not a multiple of the scale);
    ``score_images`` then crops HR to it (top-left), and the box must lie inside it.
    """
    if not methods:
        raise ValueError('no methods to compare: give at least one --method LABEL=PATH or --results-dir')
    panels = [Panel(hr_label, crop(hr, box, 'HR image'), None, (hr_label, 'PSNR / SSIM'))]
    for label, sr in methods.items():
        if sr.ndim != 3 or any(hr_side - sr_side not in range(scale) for hr_side, sr_side in
                               zip(hr.shape[:2], sr.shape[:2])):
            raise ValueError(f"{label}: SR image {sr.shape[1]}x{sr.shape[0]} does not match the HR image "
                             f'{hr.shape[1]}x{hr.shape[0]} at x{scale} (wrong image, scale or crop?)')
        score = score_images(sr, hr, scale)
        panels.append(Panel(label, crop(sr, box, f'{label} image'), score, (label, score_caption(score))))
    return panels


def _fitting_font_scale(lines: Sequence[str], width: int, font_scale: float, thickness: int) -> float:
    """``font_scale``, reduced until every line fits in ``width`` pixels."""
    widest = max(cv2.getTextSize(line, FONT, font_scale, thickness)[0][0] for line in lines)
    return font_scale if widest <= width else font_scale * width / widest


def figure_layout(hr_shape: Sequence[int], crop_shape: Sequence[int], panel_count: int, panel_height: int,
                  caption_height: int, columns: int, margin: int) -> FigureLayout:
    """Overview on the left (as tall as the panel grid), panels in a grid of ``columns``, ``margin`` around all."""
    rows = math.ceil(panel_count / columns)
    panel_width = max(1, round(crop_shape[1] * panel_height / crop_shape[0]))
    grid_height = rows * (panel_height + caption_height) + (rows - 1) * margin
    overview_width = max(1, round(hr_shape[1] * grid_height / hr_shape[0]))
    overview = (margin, margin, overview_width, grid_height)
    left = 2 * margin + overview_width
    panels = tuple((left + (index % columns) * (panel_width + margin),
                    margin + (index // columns) * (panel_height + caption_height + margin), panel_width, panel_height)
                   for index in range(panel_count))
    size = (left + columns * (panel_width + margin), grid_height + 2 * margin)
    return FigureLayout(overview, panels, size)


def compose_figure(hr: np.ndarray, panels: Sequence[Panel], box: Sequence[int], panel_height: int = 160,
                   columns: int | None = None, margin: int = 8, font_scale: float = 0.5,
                   box_thickness: int = 2) -> tuple[np.ndarray, FigureLayout]:
    """The figure as uint8 BGR, and its layout.

    Crops are enlarged with nearest-neighbour interpolation to ``panel_height`` (pixels stay visible); the overview
    is resized (area interpolation) to the grid's height. ``columns`` defaults to all panels in one row.
    """
    x, y, width, height = check_box(box, hr.shape, 'HR image')
    columns = len(panels) if columns is None else max(1, min(columns, len(panels)))
    line_height = cv2.getTextSize('Ag', FONT, font_scale, 1)[0][1] + cv2.getTextSize('Ag', FONT, font_scale, 1)[1]
    caption_height = 2 * (line_height + 4) + 2
    layout = figure_layout(hr.shape, (height, width), len(panels), panel_height, caption_height, columns, margin)
    canvas = np.full((layout.size[1], layout.size[0], 3), BACKGROUND, np.uint8)

    ox, oy, overview_width, overview_height = layout.overview
    zoom = overview_width / hr.shape[1]
    canvas[oy:oy + overview_height, ox:ox + overview_width] = cv2.resize(
        hr, (overview_width, overview_height), interpolation=cv2.INTER_AREA)
    corner = (ox + round(x * zoom), oy + round(y * zoom))
    far_corner = (ox + round((x + width) * zoom) - 1, oy + round((y + height) * zoom) - 1)
    cv2.rectangle(canvas, corner, far_corner, BOX_COLOUR, box_thickness)

    for panel, (px, py, panel_width, panel_height_) in zip(panels, layout.panels):
        canvas[py:py + panel_height_, px:px + panel_width] = cv2.resize(
            panel.crop, (panel_width, panel_height_), interpolation=cv2.INTER_NEAREST)
        scale_for_text = _fitting_font_scale(panel.caption, panel_width, font_scale, 1)
        baseline_y = py + panel_height_ + 2
        for line in panel.caption:
            (text_width, text_height), descent = cv2.getTextSize(line, FONT, scale_for_text, 1)
            baseline_y += text_height + 4
            cv2.putText(canvas, line, (px + max(0, (panel_width - text_width) // 2), baseline_y), FONT, scale_for_text,
                        TEXT_COLOUR, 1, cv2.LINE_AA)
            baseline_y += descent
    return canvas, layout


def find_result_image(folder: str, name: str) -> str:
    """The SR image of HR image ``name`` (its stem) in a results folder: ``<name>.<ext>`` or ``<name>_<suffix>.<ext>``
    (``scripts/infer.py`` and BasicSR's ``save_img`` write the latter)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'results folder {folder} does not exist')
    candidates = sorted(file for file in os.listdir(folder) if file.lower().endswith(IMAGE_EXTENSIONS)
                        and (os.path.splitext(file)[0] == name or file.startswith(name + '_')))
    exact = [file for file in candidates if os.path.splitext(file)[0] == name]
    chosen = exact or candidates
    if len(chosen) != 1:
        found = ', '.join(chosen) if chosen else 'none'
        raise FileNotFoundError(f"results folder {folder}: expected one image named '{name}' or '{name}_<suffix>', "
                                f'found {found}; pass that method as --method LABEL=PATH instead')
    return os.path.join(folder, chosen[0])


def make_comparison_figure(hr_path: str, methods: Mapping[str, str], box: Sequence[int], scale: int,
                           output_path: str | None = None, **layout_options) -> tuple[np.ndarray, list[Panel]]:
    """Read the HR image and each method's SR image (``label -> path``), compose the figure, write it as PNG when
    ``output_path`` is given. Returns the figure and its panels (HR first)."""
    hr = read_image(hr_path)
    panels = comparison_panels(hr, {label: read_image(path) for label, path in methods.items()}, box, scale)
    figure, _ = compose_figure(hr, panels, box, **layout_options)
    if output_path is not None:
        write_png(figure, output_path)
    return figure, panels


__all__ = ['FigureLayout', 'Panel', 'check_box', 'comparison_panels', 'compose_figure', 'crop', 'figure_layout',
           'find_result_image', 'make_comparison_figure', 'score_caption']
