"""mtkd.tools.figures and scripts/compare_figure.py: crops equal the HR/SR crops, captions carry score_images' values,
the saved PNG has the computed layout and holds the enlarged crops where the layout says."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from mtkd.metrics.evaluation import read_image, score_images
from mtkd.tools.figures import comparison_panels, compose_figure, figure_layout, find_result_image, score_caption

from conftest import load_script

SCALE = 4
BOX = (10, 6, 12, 8)  # x, y, width, height


def images(seed: int = 0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    noisy = np.clip(hr.astype(int) + rng.integers(-20, 21, hr.shape), 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(hr, (5, 5), 1.5)
    return hr, {'Noisy': noisy, 'Blurred': blurred}


def test_panels_hold_the_crops_and_exact_scores():
    hr, methods = images()
    panels = comparison_panels(hr, methods, BOX, SCALE)
    assert [panel.label for panel in panels] == ['HR', 'Noisy', 'Blurred']
    x, y, width, height = BOX
    assert np.array_equal(panels[0].crop, hr[y:y + height, x:x + width])
    for panel in panels[1:]:
        assert np.array_equal(panel.crop, methods[panel.label][y:y + height, x:x + width])
        expected = score_images(methods[panel.label], hr, SCALE)
        assert panel.score == expected
        assert f'{expected.psnr:.2f} dB / {expected.ssim:.4f}' in panel.caption
    assert panels[1].score.psnr != panels[2].score.psnr


def test_figure_layout_and_pixels():
    hr, methods = images(1)
    panels = comparison_panels(hr, methods, BOX, SCALE)
    figure, layout = compose_figure(hr, panels, BOX, panel_height=40, margin=5)
    # Panels: crop 12x8 enlarged to height 40 -> width 60; overview as tall as the grid (40 + caption).
    grid_height = layout.overview[3]
    assert layout.overview[2] == round(40 * grid_height / 32)
    assert figure.shape == (grid_height + 10, 5 + layout.overview[2] + 5 + 3 * (60 + 5), 3)
    assert layout.size == (figure.shape[1], figure.shape[0]) and grid_height > 40
    order = [panel_x for panel_x, _, _, _ in layout.panels]
    assert order == sorted(order) and order[0] > layout.overview[2]
    for panel, (px, py, width, height) in zip(panels, layout.panels):
        assert (width, height) == (60, 40)
        enlarged = np.repeat(np.repeat(panel.crop, 5, axis=0), 5, axis=1)  # 8x12 -> 40x60 (nearest, exact x5)
        assert np.array_equal(figure[py:py + height, px:px + width], enlarged)
    # The box is drawn in red on the overview.
    ox, oy, _, _ = layout.overview
    zoom = layout.overview[2] / 40
    assert tuple(figure[oy + round(BOX[1] * zoom), ox + round((BOX[0] + 5) * zoom)]) == (0, 0, 255)


def test_two_rows():
    layout = figure_layout((32, 40), (8, 12), panel_count=5, panel_height=40, caption_height=20, columns=3, margin=5)
    assert layout.size == (5 + layout.overview[2] + 5 + 3 * 65, 2 * 60 + 5 + 10)
    assert layout.panels[3][:2] == (layout.panels[0][0], 5 + 60 + 5)


def test_errors():
    hr, methods = images()
    with pytest.raises(ValueError, match='not inside the HR image'):
        comparison_panels(hr, methods, (35, 0, 10, 10), SCALE)
    with pytest.raises(ValueError, match='Small: SR image 20x16 does not match'):
        comparison_panels(hr, {'Small': hr[:16, :20]}, BOX, SCALE)


def test_script_writes_png(tmp_path, capsys):
    hr, methods = images(2)
    cv2.imwrite(str(tmp_path / 'bird.png'), hr)
    (tmp_path / 'noisy').mkdir()
    cv2.imwrite(str(tmp_path / 'noisy' / 'birdx4_EDSR_x4.png'), methods['Noisy'])  # named after the LR file
    cv2.imwrite(str(tmp_path / 'blurred.png'), methods['Blurred'])
    assert find_result_image(str(tmp_path / 'noisy'), 'birdx4').endswith('birdx4_EDSR_x4.png')
    output = tmp_path / 'figure.png'
    script = load_script('compare_figure')
    assert script.main(['--hr', str(tmp_path / 'bird.png'), '--box', *map(str, BOX), '--scale', str(SCALE),
                        '--method', f"Blurred={tmp_path / 'blurred.png'}", '--results-dir', str(tmp_path / 'noisy'),
                        '--output', str(output), '--panel-height', '40']) == 0
    printed = capsys.readouterr().out
    assert score_caption(score_images(methods['Noisy'], hr, SCALE)) in printed
    assert output.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    figure = read_image(str(output))
    panels = comparison_panels(hr, {'Blurred': methods['Blurred'], 'noisy': methods['Noisy']}, BOX, SCALE)
    expected, _ = compose_figure(hr, panels, BOX, panel_height=40)
    assert np.array_equal(figure, expected)
    assert script.main(['--hr', str(tmp_path / 'bird.png'), '--box', *map(str, BOX), '--scale', str(SCALE),
                        '--method', 'nolabel.png', '--output', str(output)]) == 2
    assert 'LABEL=PATH' in capsys.readouterr().err
