"""DCTSwin (mtkd/archs/dctswin_arch.py): shapes, exact parameter counts, the DCT really used, shifted windows
kept apart across the wrap-around border, global residual, gradients everywhere."""
from __future__ import annotations

import pytest
import torch

from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.archs.dctswin_arch import (BLOCK_TYPES, DCTSwin, DCTSwinLayer, merge_windows, mixer_hidden_tokens,
                                     partition_windows)
from mtkd.transforms.dct import dct_2d

# Paper configuration: N = 3 teachers, C = 24, B = 4 blocks of L = 2 layers, Ws = 8, 6 heads, MLP ratio 2, x4.
# conv_first 144->24 (31,128) + 8 layers x 6,222 + 4 block convs x 5,208 + conv_after_body 5,208 + upsampler
# 24->48 (10,416). 'mixer' replaces each attention (3,750) by a token MLP 64->29->64 (3,805).
PAPER_PARAMS = {'dctswin': 117_360, 'swin': 117_360, 'mixer': 117_800}


def _tiny(**overrides) -> DCTSwin:
    kwargs = dict(num_teachers=2, num_feat=12, num_block=2, num_layer=2, window_size=4, num_heads=3, upscale=2)
    kwargs.update(overrides)
    return DCTSwin(**kwargs)


def _randomized(layer: torch.nn.Module) -> torch.nn.Module:
    """Weights of order one: Swin's initialisation (std 0.02) leaves the window mixing near 1e-7."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return layer


def test_registered_in_basicsr():
    assert ARCH_REGISTRY.get('DCTSwin') is DCTSwin


@pytest.mark.parametrize('block_type', BLOCK_TYPES)
def test_paper_configuration_parameter_count(block_type):
    network = DCTSwin(block_type=block_type)
    assert sum(parameter.numel() for parameter in network.parameters()) == PAPER_PARAMS[block_type]
    # The DCT matrix and the bias index are buffers outside the state dict.
    assert set(network.state_dict()) == {name for name, _ in network.named_parameters()}


def test_mixer_width_matches_attention_budget():
    assert mixer_hidden_tokens(24, 8, 6) == 29
    # Attention: 4*24^2 + 4*24 + 15^2*6 = 3,750; token MLP 2*64*29 + 29 + 64 = 3,805.
    layer = DCTSwinLayer(24, 6, 8, shifted=False, mlp_ratio=2., block_type='mixer')
    assert sum(parameter.numel() for parameter in layer.mixer.parameters()) == 3_805


@pytest.mark.parametrize('block_type', BLOCK_TYPES)
@pytest.mark.parametrize('upscale', [2, 3, 4])
def test_output_shape_for_odd_sizes(block_type, upscale):
    network = DCTSwin(block_type=block_type, upscale=upscale).eval()
    with torch.no_grad():
        output = network(torch.rand(1, 9, 13 * upscale, 21 * upscale))
    assert output.shape == (1, 3, 13 * upscale, 21 * upscale)
    assert torch.isfinite(output).all()


def test_input_smaller_than_the_window():
    network = DCTSwin().eval()
    with torch.no_grad():
        assert network(torch.rand(1, 9, 20, 12)).shape == (1, 3, 20, 12)


@pytest.mark.parametrize('block_type', BLOCK_TYPES)
def test_batch_elements_are_independent(block_type):
    torch.manual_seed(0)
    network = _tiny(block_type=block_type).eval()
    images = torch.rand(2, 6, 22, 18)
    with torch.no_grad():
        together = network(images)
        alone = network(images[1:])
    assert torch.allclose(together[1:], alone, atol=1e-6)


def test_global_residual_adds_the_teacher_mean_exactly():
    torch.manual_seed(0)
    teacher_outputs = torch.rand(2, 9, 32, 48)
    expected_mean = teacher_outputs.reshape(2, 3, 3, 32, 48).mean(dim=1)
    for global_residual, expected in ((True, expected_mean), (False, torch.zeros_like(expected_mean))):
        network = DCTSwin(global_residual=global_residual)
        last_conv = network.upsampler[0]
        with torch.no_grad():
            last_conv.weight.zero_()
            last_conv.bias.zero_()
            assert torch.equal(network(teacher_outputs), expected)


def test_window_dct_buffer_is_the_2d_dct_of_each_window():
    layer = DCTSwinLayer(6, 2, 4, shifted=False, mlp_ratio=2., block_type='dctswin')
    windows = torch.randn(2, 5, 16, 6)
    through_buffer = layer.mixer.window_dct @ windows
    grids = windows.reshape(2, 5, 4, 4, 6).permute(0, 1, 4, 2, 3)
    expected = dct_2d(grids).permute(0, 1, 3, 4, 2).reshape(2, 5, 16, 6)
    assert torch.allclose(through_buffer, expected, atol=1e-5)


def test_dct_is_really_used():
    torch.manual_seed(0)
    frequency_layer = _randomized(DCTSwinLayer(12, 3, 4, shifted=False, mlp_ratio=2., block_type='dctswin'))
    pixel_layer = DCTSwinLayer(12, 3, 4, shifted=False, mlp_ratio=2., block_type='swin')
    assert 'window_dct' not in dict(pixel_layer.named_buffers())
    assert 'mixer.window_dct' in dict(frequency_layer.named_buffers())
    pixel_layer.load_state_dict(frequency_layer.state_dict())
    features = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        with_dct = frequency_layer(features)
        frequency_layer.mixer.window_dct.copy_(torch.eye(16))
        without_dct = frequency_layer(features)
        pixel = pixel_layer(features)
    assert (with_dct - without_dct).abs().max() > 1e-2
    # With the identity in place of the DCT the layer is exactly the 'swin' layer with the same weights.
    assert torch.allclose(without_dct, pixel, atol=1e-6)


@pytest.mark.parametrize('block_type', BLOCK_TYPES)
def test_every_parameter_gets_a_gradient(block_type):
    torch.manual_seed(0)
    network = _tiny(block_type=block_type)  # global_residual starts its last conv at zero: tested below
    network(torch.rand(2, 6, 16, 24)).abs().mean().backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def _swin_region_labels(height: int, width: int, window_size: int) -> torch.Tensor:
    """Swin's region map of the rolled feature map: 9 regions, those of the wrapped windows differ."""
    shift = window_size // 2
    labels = torch.zeros(1, height, width, 1)
    count = 0
    for rows in (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None)):
        for cols in (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None)):
            labels[:, rows, cols] = count
            count += 1
    return labels


def _cyclic_reference(layer: DCTSwinLayer, features: torch.Tensor, masked: bool = True) -> torch.Tensor:
    """Swin's roll-and-mask shifted layer; for 'dctswin'/'mixer', each wrapped window region by region."""
    window_size = layer.window_size
    shift = window_size // 2
    _, height, width, _ = features.shape
    rolled = torch.roll(layer.norm1(features), (-shift, -shift), (1, 2))
    windows = partition_windows(rolled, window_size)
    label_windows = partition_windows(_swin_region_labels(height, width, window_size), window_size)[0, :, :, 0]
    if not masked:
        mixed = layer.mixer(windows)
    elif layer.block_type == 'swin':
        different = label_windows[:, :, None] != label_windows[:, None, :]
        mask = torch.zeros(different.shape, dtype=features.dtype).masked_fill(different, -100.)
        mixed = layer.mixer(windows, mask[:, None])
    else:
        mixed = torch.zeros_like(windows)
        for label in range(9):
            inside = (label_windows == label)[None, :, :, None].to(features.dtype)
            mixed = mixed + layer.mixer(windows * inside) * inside
    merged = torch.roll(merge_windows(mixed, window_size, height, width), (shift, shift), (1, 2))
    features = features + merged
    return features + layer.mlp(layer.norm2(features))


@pytest.mark.parametrize('block_type', BLOCK_TYPES)
def test_shifted_layer_equals_the_cyclic_shift_with_separated_regions(block_type):
    torch.manual_seed(0)
    layer = _randomized(DCTSwinLayer(8, 2, 4, shifted=True, mlp_ratio=2., block_type=block_type)).double()
    features = torch.randn(2, 8, 12, 8, dtype=torch.float64)
    with torch.no_grad():
        output = layer(features)
        assert torch.allclose(output, _cyclic_reference(layer, features), atol=1e-10)
        # Without separating the regions the wrapped windows leak across the border: the test can fail.
        assert (output - _cyclic_reference(layer, features, masked=False)).abs().max() > 1e-3


@pytest.mark.parametrize('block_type', BLOCK_TYPES)
def test_shifted_windows_do_not_leak_across_the_wrap_around_border(block_type):
    torch.manual_seed(0)
    # Ws = 4, shift 2: the last cyclic window holds rows {6, 7, 0, 1} x cols {6, 7, 0, 1} of this 8x8 map.
    layer = _randomized(DCTSwinLayer(8, 2, 4, shifted=True, mlp_ratio=2., block_type=block_type))
    features = torch.randn(1, 8, 8, 8)
    perturbed = features.clone()
    perturbed[0, 0, 0, 0] += 5.0  # one channel: LayerNorm would cancel a shift of all of them
    with torch.no_grad():
        change = (layer(perturbed) - layer(features)).abs().sum(-1)[0]
    for row, col in [(7, 7), (6, 6), (7, 0), (6, 1), (0, 7), (1, 6)]:
        assert change[row, col] == 0, (row, col)
    # ...while the perturbed pixel's own region, inside the same window, does see it.
    assert change[1, 1] > 1e-2 and change[0, 1] > 1e-2


def test_unshifted_layer_mixes_the_whole_window():
    torch.manual_seed(0)
    layer = _randomized(DCTSwinLayer(8, 2, 4, shifted=False, mlp_ratio=2., block_type='dctswin'))
    features = torch.randn(1, 8, 8, 8)
    perturbed = features.clone()
    perturbed[0, 0, 0, 0] += 5.0  # one channel: LayerNorm would cancel a shift of all of them
    with torch.no_grad():
        change = (layer(perturbed) - layer(features)).abs().sum(-1)[0]
    assert (change[:4, :4] > 1e-2).all()
    assert (change[4:] == 0).all() and (change[:, 4:] == 0).all()


def test_bad_arguments_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match='num_heads=5 must divide num_feat=24'):
        DCTSwin(num_heads=5)
    with pytest.raises(ValueError, match='block_type'):
        DCTSwin(block_type='conv')
    with pytest.raises(ValueError, match='num_block must be a positive integer'):
        DCTSwin(num_block=0)
    network = DCTSwin()
    with pytest.raises(ValueError, match='multiples of upscale=4'):
        network(torch.rand(1, 9, 50, 52))
    with pytest.raises(ValueError, match='set num_teachers'):
        network(torch.rand(1, 6, 32, 32))


def test_global_residual_starts_exactly_at_the_teacher_average():
    """With global_residual the upsampler conv starts at zero: the untrained output is the teacher mean."""
    import mtkd.archs.dctswin_arch as dctswin

    torch.manual_seed(0)
    network = dctswin.DCTSwin(num_teachers=3, num_feat=8, num_block=1, num_layer=2, window_size=4, num_heads=2,
                              upscale=2, global_residual=True)
    teachers = torch.rand(1, 9, 16, 16)
    expected = teachers.view(1, 3, 3, 16, 16).mean(dim=1)
    assert torch.allclose(network(teachers), expected, atol=1e-6)
    loss = (network(teachers) - torch.rand(1, 3, 16, 16)).abs().mean()
    loss.backward()
    assert network.upsampler[0].weight.grad.abs().sum() > 0  # the zero conv learns first, the rest follows
    torch.optim.SGD(network.parameters(), lr=0.1).step()
    network.zero_grad()
    (network(teachers) - torch.rand(1, 3, 16, 16)).abs().mean().backward()
    assert all(parameter.grad.abs().sum() > 0 for parameter in network.parameters())


def test_cpu_attention_matches_sdpa_values_and_gradients():
    from mtkd.archs.dctswin_arch import _attention
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(5, 2, 16, 4, generator=generator, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 2, 16, 16, generator=generator)
    bias[..., :3] = float('-inf')  # masked keys, as the swin padding mask
    bias.requires_grad_(True)
    ours = _attention(query, key, value, bias)
    reference = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), (query, bias))
    reference_grads = torch.autograd.grad(reference.square().sum(), (query, bias))
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_teacher_weights_head_starts_at_zero_and_can_select_one_teacher():
    """teacher_weights adds Σ_i Δ_i T_i: nothing at initialisation; with Δ = one-hot(teacher 1) - 1/N and the
    image head at zero, the global-residual output is exactly teacher 1 (weights act per pixel on every colour)."""
    torch.manual_seed(0)
    teachers = torch.rand(2, 9, 16, 24)
    plain = _tiny(num_teachers=3, global_residual=True)
    weighted = _tiny(num_teachers=3, global_residual=True, teacher_weights=True)
    weighted.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(weighted(teachers), plain(teachers))
    head = weighted.weight_head[0]
    with torch.no_grad():
        weighted.upsampler[0].weight.zero_()
        weighted.upsampler[0].bias.zero_()
        head.weight.zero_()
        offsets = torch.full((3,), -1 / 3)
        offsets[1] += 1.
        head.bias.copy_(offsets.repeat_interleave(2 ** 2))  # PixelShuffle: channel i * s**2 + k goes to map i
        assert torch.allclose(weighted(teachers), teachers[:, 3:6], atol=1e-6)


def test_teacher_weights_head_gets_gradients_and_counts_its_parameters():
    network = _tiny(num_teachers=3, teacher_weights=True)
    extra = sum(p.numel() for p in network.parameters()) - sum(p.numel() for p in _tiny(num_teachers=3).parameters())
    assert extra == 12 * 3 * 2 ** 2 * 9 + 3 * 2 ** 2  # 3x3 conv C -> N s^2 with bias
    (network(torch.rand(1, 9, 16, 16)) - torch.rand(1, 3, 16, 16)).abs().mean().backward()
    assert network.weight_head[0].weight.grad.abs().sum() > 0
