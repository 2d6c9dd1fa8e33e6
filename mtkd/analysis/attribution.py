"""Which teacher does the aggregated image come from: Local Attribution Maps over the KA network's input.

Local Attribution Maps (LAM): Gu and Dong, "Interpreting Super-Resolution Networks with Local Attribution Maps",
CVPR 2021 (official code X-Lowlevel-Vision/LAM_Demo: ``SaliencyModel/BackProp.py`` for the paths,
``SaliencyModel/attributes.py`` for the detector, ``SaliencyModel/utils.py`` for the kernel and the Gini
coefficient). MTKD (Jiang, Feng, Zhang and Bull, ECCV 2024, Fig. 4) uses LAM to show that every teacher
contributes to the aggregated image MT of its knowledge-aggregation (KA) network. Here the attributed input is
that network's input: the N teacher outputs concatenated on channels, ``(1, 3N, sH, sW)``; the attribution of
teacher k is the part of the map on its channels ``3k .. 3k+2``.

LAM, as the official code computes it (``Path_gradient`` + ``saliency_map_PG``), for an input image ``x``:

* path (``GaussianBlurPath(sigma, fold, l)``): ``fold + 1`` isotropic Gaussian kernels of size ``l`` with sigmas
  ``linspace(sigma, 0, fold + 1)`` (``isotropic_gaussian_kernel``: ``exp(-(u² + v²) / (2 (s + 1e-5)²))``,
  normalised; the 1e-5 makes the last kernel a delta). Path point ``i = 0 .. fold - 1`` is ``x`` blurred with
  kernel ``i + 1`` (from slightly less than ``sigma`` down to the image itself) and its derivative along the path
  is ``x`` filtered with ``fold * (kernel[i + 1] - kernel[i])``. The baseline (blur with ``sigma``) itself is
  never evaluated; ``cv2.filter2D`` pads by reflection without repeating the edge (BORDER_REFLECT_101).
* target (``attr_grad(output, h, w, window, reduce='sum')``): forward differences of the output,
  ``sqrt((y[i, j] - y[i+1, j])² + (y[i, j] - y[i, j+1])²)`` per channel on an ``(H - 1, W - 1)`` grid, summed over
  channels and over the window rows ``h .. h+window-1``, columns ``w .. w+window-1`` (LAM's gradient detector
  D_xy; forward differences, not a Sobel filter).
* attribution: ``mean_i grad(target)(path_i) * derivative_i`` per input pixel and channel (a right-endpoint
  Riemann sum of LAM's path-integrated gradient); its sum is about ``target(x) - target(baseline)``.
* map and diffusion index (``grad_abs_norm``, ``gini``): ``|sum over channels|`` normalised by its maximum;
  DI = ``(1 - Gini) * 100``, the Gini coefficient of that 2-D map.

Where this module differs, and why:

* the input is the stacked teacher outputs at HR size, not the LR image: every channel of every teacher output is
  blurred along the path, each teacher image as LAM blurs its LR image. LAM's demo settings (``sigma=1.2``,
  ``fold=50``, ``l=9``) are the defaults; at HR size that blur removes less of the image content than LAM's blur
  of an LR image does (raise ``sigma`` and ``kernel_size`` together for a comparable baseline).
* the region is a ``height x width`` rectangle at ``(top, left)`` (LAM: a square window at ``(h, w)``). As in
  LAM, the detector grid has ``H - 1`` rows and ``W - 1`` columns, so a region touching the bottom or right border
  loses its last row or column; the detector at pixel ``(i, j)`` reads output pixels ``(i+1, j)`` and
  ``(i, j+1)``, so the attribution of a region reaches one pixel further at the bottom and right.
* the square root of the detector gets gradient 0 where the output's local gradient is exactly 0 (its
  subgradient of least norm). LAM's code gets NaN there and zeroes every input gradient the NaN reaches; both agree
  wherever no window pixel has an exactly flat neighbourhood. A NaN or infinite gradient from the network itself
  raises instead of being zeroed.
* per-teacher maps sum the absolute attribution over the teacher's channels (``channel_reduction='abs_sum'``,
  default): opposite signs on two colour channels are both influence and should not cancel in a share. LAM's
  own reduction, ``|sum over channels|``, is ``channel_reduction='lam'``.
* the Gini coefficient is exact: no normalisation by the maximum (the coefficient is scale invariant) and no
  ``+1e-7`` added to every value (LAM adds it to avoid dividing by zero; adding a constant keeps the order, so
  LAM's coefficient is ours times ``S / (S + n * 1e-7)``, ``S`` the sum of the max-normalised map of ``n`` pixels).
  An all-zero map has no Gini coefficient: its DI is NaN (LAM's code gives 100).
* path points run in batches of ``chunk_size`` (one backward per batch, only input gradients; the network's
  ``.grad`` are untouched) instead of one at a time: same numbers for any network without cross-sample
  operations in eval mode, with memory bounded by the batch.

Two cheaper methods: ``method='gradient'`` (input gradient x input, one backward; Simonyan et al. 2014 / Shrikumar
et al. 2016) and ``method='integrated_gradients'`` (straight line from a baseline, Sundararajan et al., ICML 2017;
LAM's ``GaussianLinearPath`` with ``baseline='blur'``, its ``LinearPath`` with ``baseline='zero'``), integrated with
the same right-endpoint rule and ``fold`` steps as the blur path (LAM's code samples ``linspace(0, 1, fold)``,
both ends, and averages).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

METHODS = ('lam', 'gradient', 'integrated_gradients')
BASELINES = ('blur', 'zero')
CHANNEL_REDUCTIONS = ('abs_sum', 'lam')
#: LAM's demo settings (LAM_Demo notebook: ``sigma = 1.2; fold = 50; l = 9``).
LAM_SIGMA = 1.2
LAM_FOLD = 50
LAM_KERNEL_SIZE = 9
#: LAM's kernel adds this to sigma so that sigma 0 gives a delta kernel instead of 0 / 0.
_SIGMA_EPSILON = 1e-5


@dataclass(frozen=True)
class Region:
    """An output window of the KA network: ``height x width`` pixels from row ``top``, column ``left`` (HR pixels)."""
    top: int
    left: int
    height: int
    width: int

    @classmethod
    def parse(cls, region) -> Region:
        """A :class:`Region` from itself or a ``(top, left, height, width)`` sequence of integers."""
        if isinstance(region, Region):
            return region
        values = list(region) if isinstance(region, Sequence) and not isinstance(region, str) else None
        if values is None or len(values) != 4 or not all(
                isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
            raise ValueError(f'region must be (top, left, height, width) as 4 integers (HR pixels), got {region!r}')
        return cls(*(int(value) for value in values))

    def check_inside(self, height: int, width: int) -> None:
        """Raise naming ``region`` unless it lies inside an ``height x width`` output with a detector pixel."""
        if self.height < 1 or self.width < 1 or self.top < 0 or self.left < 0:
            raise ValueError(f'region {self.as_tuple()}: top and left must be >= 0 and height, width >= 1')
        if self.top + self.height > height or self.left + self.width > width:
            raise ValueError(f'region {self.as_tuple()} (top, left, height, width) goes outside the {height}x{width} '
                             f'output; choose top + height <= {height} and left + width <= {width} (HR pixels)')
        if self.top >= height - 1 or self.left >= width - 1:
            raise ValueError(f'region {self.as_tuple()} starts on the last row or column of the {height}x{width} '
                             'output, where LAM\'s forward-difference detector has no pixel; move it up or left')

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.height, self.width


def gaussian_kernel(size: int, sigma: float, dtype: torch.dtype = torch.float64,
                    device: str | torch.device = 'cpu') -> torch.Tensor:
    """LAM's isotropic Gaussian kernel ``(size, size)``, summing to 1 (``isotropic_gaussian_kernel``).

    Gu and Dong, CVPR 2021 (the Gaussian blur of the progressive blurring path). ``sigma + 1e-5`` as in LAM's
    code, so that ``sigma = 0`` is a delta. ``size`` must be odd (LAM's offsets ``-size//2 + 1 .. size//2`` are
    off-centre for an even size).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f'kernel_size must be an odd positive integer (LAM: 9), got {size!r}')
    if not sigma >= 0:
        raise ValueError(f'sigma must be >= 0 (LAM: 1.2), got {sigma!r}')
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    kernel = torch.exp(-squared / (2.0 * (sigma + _SIGMA_EPSILON) ** 2))
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter every channel of ``(B, C, H, W)`` with one ``(l, l)`` kernel, reflecting at the border as
    ``cv2.filter2D`` does (BORDER_REFLECT_101, LAM's blur); same size out.

    H and W must exceed ``l // 2`` (reflection needs that many pixels).
    """
    channels = images.shape[1]
    radius = kernel.shape[-1] // 2
    if radius >= images.shape[-2] or radius >= images.shape[-1]:
        raise ValueError(f'kernel_size {kernel.shape[-1]} is too large for a {images.shape[-2]}x{images.shape[-1]} '
                         f'input: reflection needs H, W > {radius}; pass a smaller kernel_size')
    padded = F.pad(images, (radius, radius, radius, radius), mode='reflect') if radius else images
    weight = kernel.to(images).expand(channels, 1, *kernel.shape[-2:])
    return F.conv2d(padded, weight, groups=channels)


def blur_path_kernels(sigma: float, fold: int, kernel_size: int, dtype: torch.dtype = torch.float64,
                      device: str | torch.device = 'cpu') -> torch.Tensor:
    """The ``fold + 1`` kernels ``(fold + 1, l, l)`` of LAM's ``GaussianBlurPath``: sigma down to 0.

    Gu and Dong, CVPR 2021, Sec. 3 (the progressive blurring path): sigmas ``linspace(sigma, 0, fold + 1)``,
    ``l = kernel_size``.
    """
    sigmas = np.linspace(sigma, 0.0, fold + 1)
    return torch.stack([gaussian_kernel(kernel_size, float(value), dtype, device) for value in sigmas])


def gradient_detector(images: torch.Tensor, region: Region) -> torch.Tensor:
    """LAM's gradient detector D_xy of a window (``attr_grad``, reduce ``sum``): one value per image, ``(B,)``.

    Gu and Dong, CVPR 2021, Sec. 3 (the gradient detector; LAM's ``attr_grad``): forward-difference gradient magnitude
    ``sqrt((y[i, j] - y[i+1, j])² + (y[i, j] - y[i, j+1])²)`` per channel on the ``(H - 1, W - 1)`` grid, summed over
    channels and the region's pixels of that grid. Where the magnitude is exactly 0 its gradient is taken as 0 (the
    square root has none there). Input ``(B, C, H, W)``, any range (the KA output, nominally [0, 1]).
    """
    vertical = (images[:, :, :-1, :-1] - images[:, :, 1:, :-1]) ** 2
    horizontal = (images[:, :, :-1, :-1] - images[:, :, :-1, 1:]) ** 2
    squared = (vertical + horizontal)[:, :, region.top:region.top + region.height,
                                      region.left:region.left + region.width]
    positive = squared > 0
    # sqrt's backward at 0 is inf * 0 = NaN; feed it 1 there and mask the value, so the gradient is exactly 0.
    magnitude = torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))),
                            torch.zeros_like(squared))
    return magnitude.flatten(1).sum(dim=1)


def gini_coefficient(values) -> float:
    """Gini coefficient of non-negative values (any shape, flattened): 0 for equal values, ``(n - 1) / n`` for one
    non-zero value among ``n``; NaN when all are 0.

    Gu and Dong, CVPR 2021 (the Gini coefficient behind the diffusion index):
    ``G = sum_i sum_j |g_i - g_j| / (2 n² mean(g))``, computed in float64 from the sorted values as
    ``sum_i (2i - n - 1) g_(i) / (n sum g)``. Exact: no ``+1e-7`` offset as in LAM's code.
    """
    flat = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if flat.size == 0:
        raise ValueError('gini_coefficient needs at least one value')
    if not np.all(np.isfinite(flat)) or flat[0] < 0:
        raise ValueError('gini_coefficient needs finite non-negative values (an absolute attribution map)')
    total = flat.sum()
    if total == 0:
        return math.nan
    count = flat.size
    ranks = np.arange(1, count + 1, dtype=np.float64)
    return float(np.sum((2 * ranks - count - 1) * flat) / (count * total))


def diffusion_index(attribution_map) -> float:
    """LAM's diffusion index ``DI = (1 - Gini) * 100`` of an absolute attribution map.

    Gu and Dong, CVPR 2021 (LAM_Demo: ``(1 - gini(map)) * 100``). Map: any shape of non-negative values, e.g.
    ``(H, W)``.

    Low: the attribution sits on few pixels; 100: spread evenly over all of them. One non-zero pixel among ``n``
    gives ``100 / n``. NaN for an all-zero map.
    """
    return (1.0 - gini_coefficient(attribution_map)) * 100.0


@dataclass(frozen=True)
class PathAttribution:
    """Signed attribution of one input image (``(C, H, W)`` float64) to a region's detector, with its targets."""
    attribution: np.ndarray
    output: torch.Tensor
    target: float
    baseline_target: float | None


def _check_method(method: str, baseline: str, channel_reduction: str, fold: int, chunk_size: int) -> None:
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS} (default lam), got {method!r}')
    if baseline not in BASELINES:
        raise ValueError(f'baseline must be one of {BASELINES} (integrated_gradients only), got {baseline!r}')
    if channel_reduction not in CHANNEL_REDUCTIONS:
        raise ValueError(f'channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}')
    for name, value in (('fold', fold), ('chunk_size', chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')


def _integrate(network: nn.Module, region: Region, fold: int, chunk_size: int,
               path_chunk: Callable[[range], tuple[torch.Tensor, torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    """``mean_i grad(detector)(point_i) * derivative_i`` over ``fold`` path points, ``chunk_size`` at a time."""
    total = torch.zeros(like.shape[1:], dtype=torch.float64, device=like.device)
    for start in range(0, fold, chunk_size):
        points, derivatives = path_chunk(range(start, min(start + chunk_size, fold)))
        points = points.detach().requires_grad_(True)
        with torch.enable_grad():
            targets = gradient_detector(network(points), region)
            (gradients,) = torch.autograd.grad(targets.sum(), points)
        if not torch.isfinite(gradients).all():
            raise FloatingPointError('the KA network returned NaN or infinite input gradients on the attribution path; '
                                     'check its weights and input range')
        total += (gradients * derivatives).sum(dim=0, dtype=torch.float64)
    return total / fold


def local_attribution(network: nn.Module, image: torch.Tensor, region, method: str = 'lam', *,
                      sigma: float = LAM_SIGMA, fold: int = LAM_FOLD, kernel_size: int = LAM_KERNEL_SIZE,
                      baseline: str = 'blur', chunk_size: int = 2) -> PathAttribution:
    """Signed attribution of every input pixel and channel of ``network`` to LAM's detector of an output region.

    Gu and Dong, CVPR 2021 (LAM: path-integrated gradients along the progressive blurring path,
    ``method='lam'``), or the cheaper ``'gradient'`` (gradient x input) and ``'integrated_gradients'`` (straight
    line from ``baseline``): see the module docstring for the exact definitions and where they differ from LAM's
    code. ``network`` maps ``(B, C, H', W')`` to ``(B, C_out, H, W)`` with samples independent of each other; it
    runs in eval mode (its mode is restored after) and its parameters' ``.grad`` are not touched.

    Args:
        image: ``(1, C, H', W')``, the network's input (for the KA network, teacher outputs in [0, 1]).
        region: ``(top, left, height, width)`` of the output, in output pixels.
        sigma, fold, kernel_size: the blur path (LAM: 1.2, 50, 9); ``fold`` is also the number of steps of
            integrated gradients; ``sigma``/``kernel_size`` also make its ``'blur'`` baseline.
        chunk_size: path points per forward/backward; memory grows with it (the light DCTSwin on a 512x512 MT
            needs about 0.7 GB per point on the CPU).
    Returns:
        attribution ``(C, H', W')`` float64 numpy, the output at ``image`` (``(1, C_out, H, W)``, CPU), the detector
        there, and the detector at the path's start (None for ``'gradient'``).
    """
    _check_method(method, baseline, 'abs_sum', fold, chunk_size)
    if not torch.is_tensor(image) or image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f'image must be one (1, C, H, W) tensor (LAM explains one image), got '
                         f'{tuple(getattr(image, "shape", ())) or type(image).__name__}')
    region = Region.parse(region)
    image = image.detach()
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            output = network(image)
        if output.dim() != 4 or output.shape[0] != 1:
            raise ValueError(f'the network must return (1, C, H, W) for one image, got {tuple(output.shape)}')
        region.check_inside(*output.shape[-2:])
        target = float(gradient_detector(output, region)[0])
        baseline_image = None
        if method == 'gradient':
            attribution = _integrate(network, region, 1, 1, lambda _: (image, image), image)
        elif method == 'lam':
            kernels = blur_path_kernels(sigma, fold, kernel_size, image.dtype, image.device)
            baseline_image = gaussian_blur(image, kernels[0])

            def blur_chunk(indices: range) -> tuple[torch.Tensor, torch.Tensor]:
                points = torch.cat([gaussian_blur(image, kernels[index + 1]) for index in indices])
                derivatives = torch.cat([gaussian_blur(image, (kernels[index + 1] - kernels[index]) * fold)
                                         for index in indices])
                return points, derivatives

            attribution = _integrate(network, region, fold, chunk_size, blur_chunk, image)
        else:
            baseline_image = (gaussian_blur(image, gaussian_kernel(kernel_size, sigma, image.dtype, image.device))
                              if baseline == 'blur' else torch.zeros_like(image))
            difference = image - baseline_image

            def line_chunk(indices: range) -> tuple[torch.Tensor, torch.Tensor]:
                alphas = torch.tensor([(index + 1) / fold for index in indices], dtype=image.dtype,
                                      device=image.device).view(-1, 1, 1, 1)
                return baseline_image + alphas * difference, difference.expand(len(indices), -1, -1, -1)

            attribution = _integrate(network, region, fold, chunk_size, line_chunk, image)
        baseline_target = None
        if baseline_image is not None:
            with torch.no_grad():
                baseline_target = float(gradient_detector(network(baseline_image), region)[0])
    finally:
        network.train(was_training)
    return PathAttribution(attribution=attribution.cpu().numpy(), output=output.detach().cpu(), target=target,
                           baseline_target=baseline_target)


@dataclass(frozen=True)
class AttributionResult:
    """Teacher attribution of one region of the aggregated image (see :func:`teacher_attribution`).

    ``shares``: each teacher's fraction of the total absolute attribution (sum 1). ``maps``: each teacher's
    ``(H, W)`` absolute map; ``total_map`` the map of all teachers together. ``diffusion_index``: LAM's DI of each
    teacher's map; ``overall_diffusion_index``: of ``total_map``. ``attribution``: the signed ``(3N, H, W)``
    attribution. ``aggregated``: the KA output ``(1, 3, H, W)`` (CPU). ``target``/``baseline_target``: the detector
    at the input and at the path's start; for path methods ``attribution.sum()`` approximates their difference.
    """
    names: list[Hashable]
    shares: dict[Hashable, float]
    maps: dict[Hashable, np.ndarray]
    total_map: np.ndarray
    diffusion_index: dict[Hashable, float]
    overall_diffusion_index: float
    attribution: np.ndarray
    aggregated: torch.Tensor
    target: float
    baseline_target: float | None
    region: Region
    method: str
    settings: dict = field(default_factory=dict)

    @property
    def completeness_gap(self) -> float | None:
        """``attribution.sum() - (target - baseline_target)``: the path integral's error (None for ``'gradient'``)."""
        if self.baseline_target is None:
            return None
        return float(self.attribution.sum() - (self.target - self.baseline_target))


def teacher_attribution(ka_network: nn.Module, teacher_outputs: Sequence[torch.Tensor], region, method: str = 'lam', *,
                        names: Sequence[Hashable] | None = None, sigma: float = LAM_SIGMA, fold: int = LAM_FOLD,
                        kernel_size: int = LAM_KERNEL_SIZE, baseline: str = 'blur',
                        channel_reduction: str = 'abs_sum', chunk_size: int = 2) -> AttributionResult:
    """Each teacher's share of a region of the aggregated image MT, by LAM over the KA network's input.

    MTKD (Jiang et al., ECCV 2024), Fig. 4, with LAM (Gu and Dong, CVPR 2021): the attribution of
    :func:`local_attribution` on the stacked teacher outputs, split by teacher. Teacher k's map is
    ``sum over its channels |attribution|`` (``channel_reduction='abs_sum'``) or LAM's ``|sum over its channels|``
    (``'lam'``); its share is its map's sum over the sum of all teachers' maps. ``total_map`` reduces all ``3N``
    channels the same way (for ``'abs_sum'`` it is the sum of the teachers' maps).

    Args:
        ka_network: maps ``(B, sum of C_k, H, W)`` (the outputs concatenated in teacher order) to ``(B, 3, H, W)``.
        teacher_outputs: N tensors ``(1, C_k, H, W)`` (``C_k = 3``: RGB in [0, 1]), in the KA network's order.
        region: ``(top, left, height, width)`` of MT in HR pixels.
        names: one per teacher (keys of ``shares``/``maps``); default the indices 0 .. N-1.
        method, sigma, fold, kernel_size, baseline, chunk_size: as :func:`local_attribution`.
    Raises ValueError when the region's attribution is zero everywhere (a flat region: LAM's detector measures
    edges and texture).
    """
    _check_method(method, baseline, channel_reduction, fold, chunk_size)
    if torch.is_tensor(teacher_outputs) or not isinstance(teacher_outputs, Sequence) or not teacher_outputs:
        raise ValueError('teacher_outputs must be a non-empty list of (1, 3, H, W) tensors, one per teacher in the KA '
                         "network's order (TeacherEnsemble.forward gives it)")
    shapes = [tuple(output.shape) for output in teacher_outputs]
    if any(len(shape) != 4 or shape[0] != 1 or shape[2:] != shapes[0][2:] for shape in shapes):
        raise ValueError(f'teacher_outputs must all be (1, C, H, W) with one H, W; got {shapes}')
    names = list(range(len(teacher_outputs))) if names is None else list(names)
    if len(names) != len(teacher_outputs) or len(set(names)) != len(names):
        raise ValueError(f'names must be {len(teacher_outputs)} distinct labels, one per teacher output; got {names}')
    stacked = torch.cat([output.detach() for output in teacher_outputs], dim=1)
    result = local_attribution(ka_network, stacked, region, method, sigma=sigma, fold=fold, kernel_size=kernel_size,
                               baseline=baseline, chunk_size=chunk_size)
    attribution = result.attribution
    bounds = np.cumsum([0] + [shape[1] for shape in shapes])
    if channel_reduction == 'abs_sum':
        maps = {name: np.abs(attribution[start:stop]).sum(axis=0)
                for name, start, stop in zip(names, bounds[:-1], bounds[1:])}
        total_map = sum(maps.values())
    else:
        maps = {name: np.abs(attribution[start:stop].sum(axis=0))
                for name, start, stop in zip(names, bounds[:-1], bounds[1:])}
        total_map = np.abs(attribution.sum(axis=0))
    sums = {name: float(value.sum()) for name, value in maps.items()}
    grand_total = sum(sums.values())
    if not grand_total > 0:
        raise ValueError(f'region {Region.parse(region).as_tuple()}: the attribution is zero everywhere (a flat region '
                         "of MT: LAM's detector measures edges and texture); choose a region with structure")
    return AttributionResult(
        names=names, shares={name: value / grand_total for name, value in sums.items()}, maps=maps,
        total_map=total_map, diffusion_index={name: diffusion_index(value) for name, value in maps.items()},
        overall_diffusion_index=diffusion_index(total_map), attribution=attribution, aggregated=result.output,
        target=result.target, baseline_target=result.baseline_target, region=Region.parse(region), method=method,
        settings={'sigma': sigma, 'fold': fold, 'kernel_size': kernel_size, 'baseline': baseline,
                  'channel_reduction': channel_reduction, 'chunk_size': chunk_size})


__all__ = ['AttributionResult', 'BASELINES', 'CHANNEL_REDUCTIONS', 'LAM_FOLD', 'LAM_KERNEL_SIZE', 'LAM_SIGMA',
           'METHODS', 'PathAttribution', 'Region', 'blur_path_kernels', 'diffusion_index', 'gaussian_blur',
           'gaussian_kernel', 'gini_coefficient', 'gradient_detector', 'local_attribution', 'teacher_attribution']
