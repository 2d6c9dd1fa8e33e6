"""Independent references written from the published definitions, checked on constructed inputs.

Each test here re-implements a formula the project relies on in the plainest way (Python loops, closed forms),
straight from its published definition, and compares the project's vectorised code with it. None needs
../shared: they run on every clone. Each one is there because a plausible one-line bug in the code passed the
rest of the suite (issue 21's mutation table); the docstring names the bug it catches.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtkd.archs.dctswin_arch import WindowSelfAttention
from mtkd.archs.imdn_arch import ContrastAwareChannelAttention, InformationMultiDistillationBlock
from mtkd.losses.dtkd_loss import ReliabilityAttentionLoss, reliability_mask
from mtkd.losses.feature_kd_loss import AttentionTransferLoss
from mtkd.methods.entropy_routing import EntropyRouter
from mtkd.metrics.evaluation import score_images, y_planes
from mtkd.transforms.matlab_resize import imresize


# ---- MATLAB imresize (bicubic, antialiased), one output value at a time ----------------------------------------
def _matlab_cubic(x: float) -> float:
    """MATLAB's ``cubic`` (imresize.m): Keys' kernel with a = -0.5 (Keys, IEEE TASSP 1981, eq. 15)."""
    absx = abs(x)
    absx2, absx3 = absx ** 2, absx ** 3
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((1 < absx) and (absx <= 2)))


def _matlab_round(value: float) -> int:
    """MATLAB's double → uint8 conversion: round half away from zero, then saturate to [0, 255]."""
    rounded = math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)
    return min(255, max(0, rounded))


def _reference_resize_line(line: list[int], out_length: int, scale: float) -> tuple[list[int], int]:
    """One MATLAB pass over one line (imresize.m ``contributions`` + ``resizeAlongDim``), uint8 in and out.

    Output pixel ``x`` (1-based) sits at ``u = x / scale + 0.5 (1 - 1 / scale)`` in the input; when shrinking the
    kernel is ``scale * cubic(scale * d)`` of width ``4 / scale``; taps ``floor(u - width / 2) + 0 .. ceil(width) +
    1``; weights normalised to sum 1; taps outside mirrored with the edge repeated (``[1..n, n..1]``). Returns the
    line and how many exact ties ``k + 0.5`` with even ``k`` it rounded (where ``np.round`` would go down).
    """
    in_length = len(line)
    width = 4.0 / scale if scale < 1 else 4.0
    kernel = (lambda d: scale * _matlab_cubic(scale * d)) if scale < 1 else _matlab_cubic
    mirror = list(range(in_length)) + list(range(in_length - 1, -1, -1))
    output, even_ties = [], 0
    for x in range(1, out_length + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [left + k for k in range(math.ceil(width) + 2)]
        weights = [kernel(u - tap) for tap in taps]
        total = sum(weights)
        value = 0.0
        for tap, weight in zip(taps, weights):
            value += weight / total * line[mirror[(tap - 1) % (2 * in_length)]]
        if value - math.floor(value) == 0.5 and math.floor(value) % 2 == 0:
            even_ties += 1
        output.append(_matlab_round(value))
    return output, even_ties


def _reference_imresize(image: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """MATLAB ``imresize(image, scale, 'bicubic')`` of a uint8 ``(H, W, C)`` image: height first (equal factors),
    then width, rounding to uint8 after each pass. Also returns the number of even ties met."""
    height, width, channels = image.shape
    out_height, out_width = math.ceil(scale * height), math.ceil(scale * width)
    ties = 0
    columns_done = np.zeros((out_height, width, channels), np.uint8)
    for c, j in itertools.product(range(channels), range(width)):
        column, count = _reference_resize_line([int(v) for v in image[:, j, c]], out_height, scale)
        columns_done[:, j, c] = column
        ties += count
    result = np.zeros((out_height, out_width, channels), np.uint8)
    for c, i in itertools.product(range(channels), range(out_height)):
        row, count = _reference_resize_line([int(v) for v in columns_done[i, :, c]], out_width, scale)
        result[i, :, c] = row
        ties += count
    return result, ties


@pytest.mark.parametrize('scale, shape', [(1 / 2, (40, 36, 3)), (1 / 3, (27, 24, 2)), (1 / 4, (32, 28, 2)),
                                          (2, (10, 9, 2))])
def test_matlab_imresize_equals_a_plain_loop_reference_bit_for_bit(scale, shape):
    """Catches: MATLAB's round-half-away-from-zero after each pass replaced by ``np.round`` (half to even).

    The factors 1/2 and 2 give exact ties ``k + 0.5`` in float64 (weights with small power-of-two denominators);
    the test asserts it meets some with even ``k``, where the two roundings differ. The published LR images check
    the same without a reference (tests/test_matlab_resize.py), but only with ../shared.
    """
    image = np.random.default_rng(21).integers(0, 256, size=shape, dtype=np.uint8)
    expected, even_ties = _reference_imresize(image, scale)
    np.testing.assert_array_equal(imresize(image, scale), expected)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (C, H, W) uint8: the torch path
    np.testing.assert_array_equal(imresize(tensor, scale).numpy().transpose(1, 2, 0), expected)
    if scale in (1 / 2, 2):
        assert even_ties > 0, 'the image must contain ties that half-to-even rounding would round down'


# ---- PSNR / SSIM on images with a closed-form answer ------------------------------------------------------------
def _y_offset(grey_levels: float) -> float:
    """Y (BT.601, [16, 235]) change of an RGB change of ``grey_levels`` in every channel: 219 / 255 per level."""
    return grey_levels * (65.481 + 128.553 + 24.966) / 255


def _ssim_of_constants(a: float, b: float) -> float:
    """SSIM (Wang et al., IEEE TIP 2004, Eq. 13) of two constant images: no variance, so only the luminance term,
    ``(2 a b + C1) / (a^2 + b^2 + C1)``, C1 = (0.01 * 255)^2."""
    c1 = (0.01 * 255) ** 2
    return (2 * a * b + c1) / (a * a + b * b + c1)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_psnr_and_ssim_crop_scale_pixels_and_equal_the_closed_form(scale):
    """Catches: ``crop_border = scale`` → 0 in :func:`score_images` (the field's protocol crops ``scale`` pixels).

    GT is a constant grey; SR is GT + 2 grey levels inside and GT + 40 in a band of ``scale`` pixels along every
    side, so with the border cropped the Y error is the constant ``2 * 219 / 255``: PSNR
    ``10 log10(255^2 / MSE)`` and SSIM of two constants, in closed form. The GT is larger than the SR (its extra
    rows/columns are ignored, as the mod-crop convention wants).
    """
    height, width = 9 * scale + 4, 10 * scale + 6
    gt = np.full((height + 3, width + 2, 3), 100, np.uint8)
    sr = np.full((height, width, 3), 102, np.uint8)
    sr[:scale], sr[-scale:], sr[:, :scale], sr[:, -scale:] = 140, 140, 140, 140
    score = score_images(sr, gt, scale)
    mse = _y_offset(2) ** 2
    assert score.psnr == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-4)
    y_gt = 16 + _y_offset(100)
    assert score.ssim == pytest.approx(_ssim_of_constants(y_gt, y_gt + _y_offset(2)), abs=1e-6)
    # y_planes (used by error correlation and fusion bounds) crops the same border.
    planes, target = y_planes({'sr': sr}, gt, scale)
    assert planes.shape == (1, height - 2 * scale, width - 2 * scale)
    np.testing.assert_allclose(planes[0] - target, _y_offset(2), atol=1e-3)


# ---- IMDN's contrast-aware channel attention, by hand ------------------------------------------------------------
def _reference_cca(features: torch.Tensor, block: ContrastAwareChannelAttention) -> torch.Tensor:
    """IMDN (Hui et al., ACM MM 2019, Sec. 3.2, Eq. 4-6): per channel ``z = std + mean`` over space (population
    standard deviation), then ``sigmoid(W2 relu(W1 z + b1) + b2)`` scales the channel."""
    down, up = block.conv_du[0], block.conv_du[2]
    w1, b1 = down.weight[:, :, 0, 0].tolist(), down.bias.tolist()
    w2, b2 = up.weight[:, :, 0, 0].tolist(), up.bias.tolist()
    batch, channels, height, width = features.shape
    output = torch.empty_like(features)
    for b in range(batch):
        statistic = []
        for c in range(channels):
            values = features[b, c].flatten().tolist()
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            statistic.append(std + mean)
        hidden = [max(0.0, sum(w * z for w, z in zip(row, statistic)) + bias) for row, bias in zip(w1, b1)]
        for c in range(channels):
            gate = 1 / (1 + math.exp(-(sum(w * h for w, h in zip(w2[c], hidden)) + b2[c])))
            output[b, c] = features[b, c] * gate
    return output


def test_imdn_contrast_aware_attention_equals_std_plus_mean_gating():
    """Catches: the CCA statistic losing its ``+ mean`` (contrast only); also a sample instead of population std.

    Features with channel means far from zero, so the mean changes the gate (the official weights are needed to
    see it on benchmark numbers, in tests/test_arch_imdn.py, only with ../shared).
    """
    torch.manual_seed(0)
    block = ContrastAwareChannelAttention(16, reduction=4)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(torch.randn_like(parameter))
        features = torch.randn(2, 16, 5, 6) * 0.5 + torch.linspace(-2, 2, 16).view(1, 16, 1, 1)
        torch.testing.assert_close(block(features), _reference_cca(features, block), rtol=1e-5, atol=1e-6)


def test_imdn_block_is_four_distillation_steps_fused_after_the_attention():
    """IMDB (paper Fig. 2): three 3x3 conv + leaky ReLU(0.05) steps keep C/4 channels each, a fourth 3x3 conv gives
    the last C/4; the four parts, weighted by CCA, are fused by a 1x1 conv and added to the input."""
    torch.manual_seed(1)
    block = InformationMultiDistillationBlock(16).eval()
    features = torch.randn(1, 16, 6, 7)
    kept = []
    remaining = features
    with torch.no_grad():
        for conv in (block.c1, block.c2, block.c3):
            out = torch.nn.functional.leaky_relu(conv(remaining), 0.05)
            kept.append(out[:, :4])
            remaining = out[:, 4:]
        kept.append(block.c4(remaining))
        gathered = torch.cat(kept, dim=1)
        expected = block.c5(_reference_cca(gathered, block.cca)) + features
        torch.testing.assert_close(block(features), expected, rtol=1e-5, atol=1e-5)


# ---- DCTSwin window attention in the DCT domain, by hand ---------------------------------------------------------
def _dct_basis(n: int) -> list[list[float]]:
    """Orthonormal DCT-II basis (Ahmed, Natarajan and Rao 1974): ``basis[k][i] = a_k cos(pi (2 i + 1) k / 2n)``,
    ``a_0 = sqrt(1/n)``, ``a_k = sqrt(2/n)``."""
    return [[(math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)) * math.cos(math.pi * (2 * i + 1) * k / (2 * n))
             for i in range(n)] for k in range(n)]


def _reference_window_attention(window: torch.Tensor, layer: WindowSelfAttention) -> torch.Tensor:
    """MTKD's DCTSwin attention (Jiang et al., ECCV 2024) on one ``(Ws*Ws, C)`` window, row-major tokens:
    per channel 2-D DCT ``X[u,v] = sum_ij B[u][i] B[v][j] x[i,j]``; multi-head attention over the frequency tokens
    with Swin's relative bias indexed by the frequency offset; output projection; inverse DCT
    ``x[i,j] = sum_uv B[u][i] B[v][j] X[u,v]``."""
    size, channels, heads = layer.window_size, layer.dim, layer.num_heads
    basis = torch.tensor(_dct_basis(size), dtype=torch.float64)
    pixels = window.double().reshape(size, size, channels)
    frequencies = torch.einsum('ui,vj,ijc->uvc', basis, basis, pixels).reshape(size * size, channels)
    qkv = frequencies @ layer.qkv.weight.double().T + layer.qkv.bias.double()
    head_dim = channels // heads
    coords = [(t // size, t % size) for t in range(size * size)]
    table = layer.relative_bias_table.double()
    outputs = []
    for h in range(heads):
        query = qkv[:, h * head_dim:(h + 1) * head_dim]
        key = qkv[:, channels + h * head_dim:channels + (h + 1) * head_dim]
        value = qkv[:, 2 * channels + h * head_dim:2 * channels + (h + 1) * head_dim]
        bias = torch.tensor([[table[(qi - ki + size - 1) * (2 * size - 1) + (qj - kj + size - 1), h].item()
                              for (ki, kj) in coords] for (qi, qj) in coords], dtype=torch.float64)
        weights = torch.softmax(query @ key.T / math.sqrt(head_dim) + bias, dim=-1)
        outputs.append(weights @ value)
    projected = torch.cat(outputs, dim=1) @ layer.proj.weight.double().T + layer.proj.bias.double()
    back = torch.einsum('ui,vj,uvc->ijc', basis, basis, projected.reshape(size, size, channels))
    return back.reshape(size * size, channels)


def test_dctswin_window_attention_goes_to_the_dct_domain_and_back():
    """Catches: the inverse DCT after the attention replaced by a forward DCT (or the forward one dropped)."""
    torch.manual_seed(2)
    layer = WindowSelfAttention(dim=6, window_size=4, num_heads=2, frequency_domain=True)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
        windows = torch.randn(2, 3, 16, 6)
        output = layer(windows)
    for b, w in itertools.product(range(2), range(3)):
        torch.testing.assert_close(output[b, w].double(), _reference_window_attention(windows[b, w], layer),
                                   rtol=1e-4, atol=1e-5)


# ---- AT with interpolation: bilinear, half-pixel centres --------------------------------------------------------
def _bilinear(grid: list[list[float]], out_height: int, out_width: int) -> list[list[float]]:
    """Bilinear resize with half-pixel centres (``align_corners=False``): output ``y`` samples the input at
    ``(y + 0.5) * in / out - 0.5``, clamped to the edge."""
    in_height, in_width = len(grid), len(grid[0])

    def sample(position: float, length: int) -> tuple[int, int, float]:
        position = min(max(position, 0.0), length - 1)
        low = min(int(math.floor(position)), length - 1)
        return low, min(low + 1, length - 1), position - low

    result = []
    for y in range(out_height):
        y0, y1, fy = sample((y + 0.5) * in_height / out_height - 0.5, in_height)
        row = []
        for x in range(out_width):
            x0, x1, fx = sample((x + 0.5) * in_width / out_width - 0.5, in_width)
            top = grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx
            bottom = grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx
            row.append(top * (1 - fy) + bottom * fy)
        result.append(row)
    return result


def test_attention_transfer_resizes_the_student_map_bilinearly():
    """Catches: the student's attention map resized with ``nearest`` instead of bilinear (``interpolate: true``).

    AT (Zagoruyko & Komodakis, ICLR 2017, Eq. 2, squared form of the official code): ``Q = sum_c F_c^2``, resized
    to the teacher's size, each map L2-normalised, loss = mean of squared differences.
    """
    torch.manual_seed(3)
    student = torch.rand(1, 3, 3, 4) + 0.1
    teacher = torch.rand(1, 5, 6, 8) + 0.1
    raw_student = (student ** 2).sum(dim=1)[0].tolist()
    resized = torch.tensor(_bilinear(raw_student, 6, 8), dtype=torch.float64).flatten()
    raw_teacher = (teacher.double() ** 2).sum(dim=1).flatten()
    difference = resized / resized.norm() - raw_teacher / raw_teacher.norm()
    expected = difference.pow(2).mean().item()
    loss = AttentionTransferLoss(loss_weight=3.0, interpolate=True)(student, teacher)
    assert loss.item() == pytest.approx(3.0 * expected, rel=1e-5)


# ---- DTKD: routing at the threshold, reliability per pixel -----------------------------------------------------
def test_entropy_routing_sends_a_patch_at_the_threshold_to_the_fidelity_teacher():
    """Catches: ``H > threshold`` → ``H >= threshold`` (the released helper: ``H <= threshold`` is fidelity).

    Four grey levels in equal shares have an entropy of exactly 2 bits.
    """
    levels = torch.tensor([0, 60, 120, 180], dtype=torch.float32) / 255
    patch = levels.repeat(4).view(1, 1, 4, 4).expand(1, 3, 4, 4)  # each level on 4 of 16 pixels, grey (R = G = B)
    for threshold, share in ((2.0, 0.0), (2.0 - 1e-4, 1.0), (2.0 + 1e-4, 0.0)):
        routed = EntropyRouter(threshold, mode='hard')(patch)
        assert routed.shape == (1, 1, 4, 4) and torch.all(routed == share), threshold
    windowed = EntropyRouter(2.0, mode='hard', window_size=4)(torch.cat([patch, patch], dim=3))
    assert windowed.shape == (1, 1, 4, 8) and torch.all(windowed == 0)


def test_reliability_mask_compares_channel_means_per_pixel():
    """Catches: the per-pixel error as the channel max instead of the channel mean.

    Pixel 1: student errors (0.3, 0, 0) (mean 0.1, max 0.3), teacher (0.15, 0.15, 0.15): by the mean the teacher is
    farther (mask 0), by the max closer. Pixel 2: the reverse.
    """
    gt = torch.full((1, 3, 1, 2), 0.5)
    student = gt.clone()
    teacher = gt.clone()
    student[0, :, 0, 0] += torch.tensor([0.3, 0.0, 0.0])
    teacher[0, :, 0, 0] += 0.15
    student[0, :, 0, 1] += 0.12
    teacher[0, :, 0, 1] += torch.tensor([0.0, 0.0, 0.3])
    mask = reliability_mask(student, teacher, gt)
    torch.testing.assert_close(mask, torch.tensor([[[[0.0, 1.0]]]]))
    # Loss: mean over the 6 elements of mask * |S - T|; only pixel 2 counts: |0.12 - 0| + |0.12 - 0| + |0.12 - 0.3|.
    loss = ReliabilityAttentionLoss(loss_weight=1.5)(student, teacher, gt)
    assert loss.item() == pytest.approx(1.5 * (0.12 + 0.12 + 0.18) / 6, rel=1e-5)
