"""Teacher-output cache and TeacherPairedImageDataset: exact outputs, keys, resume, crop/flip alignment."""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import threading

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from skimage import data as skimage_data
from torch import nn

from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from mtkd.config.validate import dataset_problems
from mtkd.data.teacher_paired_dataset import TeacherPairedImageDataset
from mtkd.metrics.evaluation import benchmark_pairs, image_to_tensor, read_image, score_images, tensor_to_image
from mtkd.teachers import cache as teacher_cache
from mtkd.teachers.cache import TeacherCacheError, TeacherOutputCache, dataset_key, image_stem
from mtkd.teachers.ensemble import TeacherEnsemble, TeacherMismatchError, TeacherSpec, teacher_specs_from_options

from conftest import dataset_dir, load_script, official_weight

SCALE = 2
GT_SIZE = 16


class CacheTestNearestUpsampler(nn.Module):
    """A "teacher" whose output is exactly the nearest-neighbour upsampled input (times a stored gain of 1)."""

    def __init__(self, upscale: int = 2):
        super().__init__()
        self.upscale = upscale
        self.gain = nn.Parameter(torch.ones(1))

    def forward(self, image):
        return F.interpolate(image, scale_factor=self.upscale, mode='nearest') * self.gain


if 'CacheTestNearestUpsampler' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register()(CacheTestNearestUpsampler)

NEAREST_NETWORK = {'type': 'CacheTestNearestUpsampler', 'upscale': SCALE}
EDSR_NETWORK = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': SCALE}
# (image, top, left, GT height, GT width): textured crops, sides even so GT = LR × 2 exactly.
CROPS = [('astronaut', 180, 160, 48, 40), ('coffee', 150, 250, 36, 52), ('chelsea', 80, 160, 44, 44),
         ('rocket', 200, 300, 40, 60), ('immunohistochemistry', 100, 100, 52, 36)]


def save_weights(network_options: dict, path, seed: int) -> str:
    torch.manual_seed(seed)
    network = build_network(dict(network_options))
    if network_options['type'] == 'EDSR':
        for parameter in network.parameters():
            nn.init.uniform_(parameter, -0.2, 0.2)
    torch.save(network.state_dict(), str(path))
    return str(path)


@pytest.fixture
def folders(tmp_path):
    """GT and LR folders in BasicSR's benchmark layout (``name.png`` / ``namex2.png``)."""
    gt_dir, lq_dir = tmp_path / 'HR', tmp_path / 'LR'
    gt_dir.mkdir()
    lq_dir.mkdir()
    for name, top, left, height, width in CROPS:
        gt_rgb = getattr(skimage_data, name)()[top:top + height, left:left + width]
        gt_bgr = np.ascontiguousarray(gt_rgb[..., ::-1])
        lq_bgr = cv2.resize(gt_bgr, (width // SCALE, height // SCALE), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(gt_dir / f'{name}.png'), gt_bgr)
        cv2.imwrite(str(lq_dir / f'{name}x{SCALE}.png'), lq_bgr)
    lq_paths = sorted(str(lq_dir / f'{name}x{SCALE}.png') for name, *_ in CROPS)
    return {'gt': str(gt_dir), 'lq': str(lq_dir), 'lq_paths': lq_paths, 'root': str(tmp_path / 'cache')}


@pytest.fixture
def specs(tmp_path):
    return [TeacherSpec('nearest', NEAREST_NETWORK, save_weights(NEAREST_NETWORK, tmp_path / 'nearest.pth', 0)),
            TeacherSpec('edsr', EDSR_NETWORK, save_weights(EDSR_NETWORK, tmp_path / 'edsr.pth', 1))]


def make_cache(folders, ensemble, **kwargs) -> TeacherOutputCache:
    return TeacherOutputCache(folders['root'], ensemble.fingerprint(), dataset_key(folders['lq_paths']), SCALE,
                              **kwargs)


def count_forward(ensemble, fail_at: int | None = None) -> list:
    """Count ``ensemble.forward`` calls on images; raise at call ``fail_at`` (an interrupted build). The run on the
    behavioural-fingerprint probe (every build and check makes one) is not counted."""
    calls, original = [], ensemble.forward

    def forward(lq, **kwargs):
        if lq.shape == teacher_cache.probe_image().shape and torch.equal(lq.cpu(), teacher_cache.probe_image()):
            return original(lq, **kwargs)
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt('simulated interruption')
        return original(lq, **kwargs)

    ensemble.forward = forward
    return calls


def reference_outputs(ensemble, lq_path) -> list[np.ndarray]:
    """The ensemble run on the full LR image now, HWC, cast to float16 like the cache."""
    outputs = ensemble.forward(image_to_tensor(read_image(lq_path)))
    return [output[0].permute(1, 2, 0).numpy().astype(np.float16) for output in outputs]


def dataset_options(folders, **extra) -> dict:
    options = {'name': 'train', 'type': 'TeacherPairedImageDataset', 'phase': 'train', 'scale': SCALE,
               'dataroot_gt': folders['gt'], 'dataroot_lq': folders['lq'], 'filename_tmpl': '{}x2',
               'io_backend': {'type': 'disk'}, 'gt_size': GT_SIZE, 'use_hflip': True, 'use_rot': True}
    options.update(extra)
    return options


def test_built_outputs_equal_teacher_outputs_in_float16(folders, specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    cache = make_cache(folders, ensemble)
    assert cache.path == os.path.join(folders['root'], cache.key) and len(cache.key) == 16
    assert not cache.is_complete([image_stem(path) for path in folders['lq_paths']])
    report = cache.build(ensemble, folders['lq_paths'], progress=False)
    assert (report.computed, report.reused) == (5, 0)
    stems = [image_stem(path) for path in folders['lq_paths']]
    assert cache.is_complete(stems)
    for path, stem in zip(folders['lq_paths'], stems):
        for name, expected in zip(ensemble.names, reference_outputs(ensemble, path)):
            stored = np.load(os.path.join(cache.path, name, f'{stem}.npy'))
            assert stored.dtype == np.float16 and stored.shape == expected.shape
            assert np.array_equal(stored, expected)
            assert np.array_equal(cache.read_full(name, stem), expected.astype(np.float32))
            assert np.array_equal(cache.read_crop(name, stem, 4, 6, 10), expected[4:14, 6:16].astype(np.float32))
    with open(cache.manifest_path) as handle:
        manifest = json.load(handle)
    assert manifest['complete'] and manifest['dtype'] == 'float16' and manifest['scale'] == SCALE
    assert manifest['teacher_names'] == ['nearest', 'edsr'] and manifest['images'] == stems
    assert manifest['teachers'] == ensemble.fingerprint() and manifest['format_version'] == 1
    assert manifest['dataset_key'] == dataset_key(folders['lq_paths']) and manifest['created']
    with pytest.raises(ValueError, match='outside'):
        cache.read_crop('edsr', stems[0], 0, 0, 1000)


def test_reused_when_unchanged_rebuilt_when_weights_or_data_change(folders, specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    first = make_cache(folders, ensemble)
    first.build(ensemble, folders['lq_paths'], progress=False)

    again = TeacherEnsemble(specs, SCALE)
    calls = count_forward(again)
    same = make_cache(folders, again)
    assert same.path == first.path
    report = same.build(again, folders['lq_paths'], progress=False)
    assert (len(calls), report.computed, report.reused) == (0, 0, 5)

    save_weights(EDSR_NETWORK, specs[1].weights, seed=7)  # the weights file changes
    changed = TeacherEnsemble(specs, SCALE)
    calls = count_forward(changed)
    rebuilt = make_cache(folders, changed)
    assert rebuilt.path != first.path and not rebuilt.is_complete([image_stem(p) for p in folders['lq_paths']])
    with pytest.raises(TeacherMismatchError):
        first.build(changed, folders['lq_paths'], progress=False)
    assert rebuilt.build(changed, folders['lq_paths'], progress=False).computed == 5 and len(calls) == 5
    assert not np.array_equal(rebuilt.read_full('edsr', image_stem(folders['lq_paths'][0])),
                              first.read_full('edsr', image_stem(folders['lq_paths'][0])))

    image = cv2.imread(folders['lq_paths'][0])
    image[0, 0] = 255 - image[0, 0]
    cv2.imwrite(folders['lq_paths'][0], image)  # the data changes
    assert make_cache(folders, changed).path != rebuilt.path
    with pytest.raises(TeacherCacheError, match='LR images given differ'):
        rebuilt.build(changed, folders['lq_paths'], progress=False)


def test_interrupted_build_resumes(folders, specs, monkeypatch):
    ensemble = TeacherEnsemble(specs, SCALE)
    cache = make_cache(folders, ensemble)
    count_forward(ensemble, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        cache.build(ensemble, folders['lq_paths'], progress=False)
    stems = [image_stem(path) for path in folders['lq_paths']]
    assert [stem for stem in stems if os.path.isfile(os.path.join(cache.path, 'edsr', f'{stem}.npy'))] == stems[:2]
    assert not cache.is_complete(stems) and not cache.read_manifest()['complete']

    # A write killed half-way leaves neither a truncated file nor (after the next start) a temporary one.
    def broken_save(handle, array, allow_pickle=False):
        handle.write(b'\x93NUMPY partial')
        raise KeyboardInterrupt('killed while writing')

    fresh = TeacherEnsemble(specs, SCALE)
    monkeypatch.setattr(teacher_cache.np, 'save', broken_save)
    with pytest.raises(KeyboardInterrupt):
        cache.build(fresh, folders['lq_paths'], progress=False)
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(cache.path, 'nearest', f'{stems[2]}.npy'))
    leftover = os.path.join(cache.path, 'edsr', f'.{stems[2]}.npy.stale.tmp')
    open(leftover, 'wb').close()

    resumed = TeacherEnsemble(specs, SCALE)
    calls = count_forward(resumed)
    report = cache.build(resumed, folders['lq_paths'], progress=False)
    assert (len(calls), report.computed, report.reused) == (3, 3, 2)
    assert cache.is_complete(stems) and not os.path.exists(leftover)
    reference = TeacherEnsemble(specs, SCALE)
    for path, stem in zip(folders['lq_paths'], stems):
        for name, expected in zip(reference.names, reference_outputs(reference, path)):
            assert np.array_equal(cache.read_full(name, stem), expected.astype(np.float32))


def test_a_second_build_waits_for_the_first_and_reuses_its_outputs(folders, specs):
    """Two runs started together build the cache once: the second waits on the build lock, does not clean up the
    first one's half-written files, and then computes nothing."""
    first_ensemble, second_ensemble = TeacherEnsemble(specs, SCALE), TeacherEnsemble(specs, SCALE)
    cache = make_cache(folders, first_ensemble)
    first_is_running, let_first_go, second_waits = threading.Event(), threading.Event(), threading.Event()
    original_forward = first_ensemble.forward

    def held_forward(lq, **kwargs):
        first_is_running.set()
        assert let_first_go.wait(30), 'the test never released the first build'
        return original_forward(lq, **kwargs)

    first_ensemble.forward = held_forward
    second_calls = count_forward(second_ensemble)

    class WaitingHandler(logging.Handler):
        def emit(self, record):
            if 'another process is building it' in record.getMessage():
                second_waits.set()

    logger = logging.getLogger('test_teacher_cache.second_build')
    logger.setLevel(logging.INFO)
    logger.addHandler(WaitingHandler())
    reports = {}
    first = threading.Thread(target=lambda: reports.update(
        first=cache.build(first_ensemble, folders['lq_paths'], progress=False)))
    first.start()
    assert first_is_running.wait(30)
    in_flight = os.path.join(cache.path, 'edsr', '.in-flight.npy.first.tmp')  # the first build's half-written file
    os.makedirs(os.path.dirname(in_flight), exist_ok=True)
    open(in_flight, 'wb').close()
    second = threading.Thread(target=lambda: reports.update(
        second=cache.build(second_ensemble, folders['lq_paths'], progress=False, logger=logger)))
    second.start()
    assert second_waits.wait(30), 'the second build did not wait for the first'
    assert os.path.exists(in_flight) and not second_calls
    let_first_go.set()
    first.join(60)
    second.join(60)
    assert (reports['first'].computed, reports['first'].reused) == (5, 0)
    assert (reports['second'].computed, reports['second'].reused) == (0, 5) and not second_calls
    assert cache.is_complete([image_stem(path) for path in folders['lq_paths']])


def _dihedral(image, hflip, vflip, rot90):
    """BasicSR's ``augment`` on an HWC array: horizontal flip, vertical flip, then transpose."""
    if hflip:
        image = image[:, ::-1]
    if vflip:
        image = image[::-1]
    if rot90:
        image = image.transpose(1, 0, 2)
    return image


def _locate(crop, image):
    """Every (top, left, transform) such that transform(image[top:, left:] window) == crop."""
    found = []
    size = crop.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size, 3))[..., 0, :, :, :]
    for transform in [(h, v, r) for h in (0, 1) for v in (0, 1) for r in (0, 1)]:
        # Invert: transpose first, then the flips (which commute).
        original = crop.transpose(1, 0, 2) if transform[2] else crop
        original = _dihedral(original, transform[0], transform[1], False)
        for top, left in zip(*np.nonzero(np.all(windows == original, axis=(2, 3, 4)))):
            found.append((int(top), int(left), transform))
    return found


def test_dataset_crops_teacher_outputs_like_gt(folders, specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    cache = make_cache(folders, ensemble)
    cache.build(ensemble, folders['lq_paths'], progress=False)
    dataset = TeacherPairedImageDataset(dataset_options(folders, teacher_cache_dir=cache.path,
                                                        teacher_names=['nearest', 'edsr']))
    assert len(dataset) == 5
    full_lq = {path: image_to_tensor(read_image(path))[0].permute(1, 2, 0).numpy() for path in folders['lq_paths']}
    full_edsr = {path: reference_outputs(ensemble, path)[1] for path in folders['lq_paths']}
    random.seed(0)
    transforms_seen, located = set(), 0
    for index in range(64):
        sample = dataset[index % len(dataset)]
        lq, gt, outputs = sample['lq'], sample['gt'], sample['teacher_outputs']
        assert lq.shape == (3, GT_SIZE // SCALE, GT_SIZE // SCALE) and gt.shape == (3, GT_SIZE, GT_SIZE)
        assert outputs.shape == (2, 3, GT_SIZE, GT_SIZE) and outputs.dtype == torch.float16  # as stored
        outputs = outputs.float()  # as the models widen them on the device
        # Teacher 0 upsamples exactly: its crop must be the nearest upsampling of the (flipped) LQ crop.
        expected = F.interpolate(lq[None], scale_factor=SCALE, mode='nearest')[0].half().float()
        assert torch.equal(outputs[0], expected)
        # Teacher 1 (a conv net): recover where and how LQ was cropped, then cut the full-image output there.
        matches = _locate(lq.permute(1, 2, 0).numpy(), full_lq[sample['lq_path']])
        assert matches
        candidates = [_dihedral(full_edsr[sample['lq_path']][top * SCALE:(top + 8) * SCALE,
                                                             left * SCALE:(left + 8) * SCALE], *transform)
                      for top, left, transform in matches]
        crop = outputs[1].permute(1, 2, 0).numpy()
        assert any(np.array_equal(crop, candidate.astype(np.float32)) for candidate in candidates)
        if len(matches) == 1:
            located += 1
            transforms_seen.add(matches[0][2])
    assert located >= 48 and len(transforms_seen) >= 6  # flips and rotations did happen


def test_validation_phase_and_lmdb_backend(folders, specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    npy_cache = make_cache(folders, ensemble)
    npy_cache.build(ensemble, folders['lq_paths'], progress=False)
    lmdb_cache = make_cache(folders, ensemble, backend='lmdb')
    assert lmdb_cache.path != npy_cache.path
    lmdb_cache.build(ensemble, folders['lq_paths'], progress=False)
    calls = count_forward(ensemble)
    assert lmdb_cache.build(ensemble, folders['lq_paths'], progress=False).reused == 5 and not calls
    assert os.path.isdir(os.path.join(lmdb_cache.path, 'teacher_outputs.lmdb'))
    for path in folders['lq_paths']:
        for name in ensemble.names:
            stem = image_stem(path)
            assert np.array_equal(lmdb_cache.read_full(name, stem), npy_cache.read_full(name, stem))
            assert np.array_equal(lmdb_cache.read_crop(name, stem, 2, 4, 8), npy_cache.read_crop(name, stem, 2, 4, 8))

    dataset = TeacherPairedImageDataset(dataset_options(folders, phase='val', teacher_cache_dir=lmdb_cache.path))
    dataset = pickle.loads(pickle.dumps(dataset))  # as data-loader workers receive it
    sample = dataset[1]
    stem = image_stem(sample['lq_path'])
    sr_size = tuple(SCALE * side for side in sample['lq'].shape[-2:])
    assert sample['gt'].shape[-2:] == sample['teacher_outputs'].shape[-2:] == sr_size
    for index, name in enumerate(ensemble.names):
        assert torch.equal(sample['teacher_outputs'][index].float(),
                           torch.from_numpy(npy_cache.read_full(name, stem)).permute(2, 0, 1))

    # Forked data-loader workers open the LMDB although the parent holds it open (here even for writing, the
    # case py-lmdb refuses in a child unless the parent closes it before forking).
    train = TeacherPairedImageDataset(dataset_options(folders, teacher_cache_dir=lmdb_cache.path))
    lmdb_cache._storage.prepare_for_writing()
    loader = torch.utils.data.DataLoader(train, batch_size=5, num_workers=2,
                                         multiprocessing_context='fork')
    for batch in loader:
        assert batch['teacher_outputs'].shape == (5, 2, 3, GT_SIZE, GT_SIZE)
        nearest = F.interpolate(batch['lq'], scale_factor=SCALE, mode='nearest').half().float()
        assert torch.equal(batch['teacher_outputs'][:, 0].float(), nearest)


def test_tiled_cache_matches_untiled(folders, specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    untiled, tiled = make_cache(folders, ensemble), make_cache(folders, ensemble, tile_size=8, tile_overlap=8)
    assert tiled.path != untiled.path
    for cache in (untiled, tiled):
        cache.build(ensemble, folders['lq_paths'], progress=False)
    assert tiled.read_manifest()['tile_size'] == 8
    for path in folders['lq_paths']:
        stem = image_stem(path)
        difference = np.abs(tiled.read_full('edsr', stem) - untiled.read_full('edsr', stem)).max()
        assert difference <= 2 ** -10  # at most one float16 step of values below 2


def test_dataset_finds_and_checks_its_cache(folders, specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    cache = make_cache(folders, ensemble)
    cache.build(ensemble, folders['lq_paths'], progress=False)
    fingerprints = ensemble.fingerprint()

    found = TeacherPairedImageDataset(dataset_options(folders, teacher_cache_root=folders['root'],
                                                      teacher_fingerprints=fingerprints))
    assert found.cache.path == cache.path
    with pytest.raises(TeacherMismatchError, match='current order: edsr, nearest'):
        TeacherPairedImageDataset(dataset_options(folders, teacher_cache_dir=cache.path,
                                                  teacher_fingerprints=fingerprints[::-1]))
    with pytest.raises(TeacherCacheError, match=r"teacher_names \['edsr', 'nearest'\] differ"):
        TeacherPairedImageDataset(dataset_options(folders, teacher_cache_dir=cache.path,
                                                  teacher_names=['edsr', 'nearest']))
    with pytest.raises(ValueError, match='set teacher_cache_dir'):
        TeacherPairedImageDataset(dataset_options(folders))

    stem = image_stem(folders['lq_paths'][3])
    os.remove(os.path.join(cache.path, 'edsr', f'{stem}.npy'))
    with pytest.raises(TeacherCacheError, match=rf'lacks {stem} \(edsr\); finish it with `python '
                                                r'scripts/build_teacher_cache.py -opt'):
        TeacherPairedImageDataset(dataset_options(folders, teacher_cache_dir=cache.path))

    cv2.imwrite(folders['lq_paths'][0], 255 - cv2.imread(folders['lq_paths'][0]))
    with pytest.raises(TeacherCacheError, match='built from other LR images'):
        TeacherPairedImageDataset(dataset_options(folders, teacher_cache_dir=cache.path))


def test_option_schema_and_script(folders, specs, tmp_path, capsys):
    block = dataset_options(folders, teacher_cache_dir='x')
    block.pop('phase')
    block.pop('scale')
    datasets, problems = dataset_problems({'train': block}, SCALE, True)
    assert not problems and datasets['train'].teacher_cache_root == 'datasets/teacher_cache'
    _, problems = dataset_problems({'train': dict(block, teacher_cache_dri='x')}, SCALE, True)
    assert len(problems) == 1 and "did you mean 'teacher_cache_dir'" in problems[0].message

    options = {'name': 'stage1', 'scale': SCALE,
               'teachers': [{'name': spec.name, 'network': spec.network, 'weights': spec.weights} for spec in specs],
               'datasets': {'train': dict(block, teacher_cache_root=folders['root'])}}
    option_file = tmp_path / 'stage1.yml'
    option_file.write_text(yaml.safe_dump(options))
    module = load_script('build_teacher_cache')
    assert module.main(['-opt', str(option_file), '--device', 'cpu', '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert '5 images computed, 0 reused' in printed
    expected = make_cache(folders, TeacherEnsemble(teacher_specs_from_options(options['teachers']), SCALE))
    assert f'teacher_cache_dir: {expected.path}' in printed  # absolute: outside the repository
    assert expected.is_complete([image_stem(path) for path in folders['lq_paths']])


def test_cached_official_teachers_give_published_psnr(tmp_path):
    """IMDN, RLFN, PAN and RFDN x4 outputs read back from the float16 cache score the shared README's Set5
    PSNR, and so does their pixel mean (32.350 dB)."""
    set5 = dataset_dir('Set5')
    specs = teacher_specs_from_options([
        {'name': 'IMDN', 'network': {'type': 'IMDN', 'upscale': 4}, 'weights': official_weight('IMDN_x4.pth')},
        {'name': 'RLFN', 'network': {'type': 'RLFN', 'upscale': 4, 'img_range': 255.0},
         'weights': official_weight('rlfn_x4.pth')},
        {'name': 'PAN', 'network': {'type': 'PAN', 'upscale': 4}, 'weights': official_weight('PANx4_DF2K.pth')},
        {'name': 'RFDN', 'network': {'type': 'RFDN', 'upscale': 4, 'img_range': 255.0},
         'weights': official_weight('RFDN_AIM.pth')}])
    ensemble = TeacherEnsemble(specs, 4)
    pairs = benchmark_pairs(set5, 4)
    lq_paths = [lr_path for _, _, lr_path in pairs]
    cache = TeacherOutputCache(str(tmp_path), ensemble.fingerprint(), dataset_key(lq_paths), 4)
    cache.build(ensemble, lq_paths, progress=False)
    scores = {name: [] for name in ensemble.names + ['mean']}
    for _, hr_path, lr_path in pairs:
        ground_truth = read_image(hr_path)
        outputs = [torch.from_numpy(cache.read_full(name, image_stem(lr_path))).permute(2, 0, 1)[None]
                   for name in ensemble.names]
        for name, output in zip(ensemble.names, outputs):
            scores[name].append(score_images(tensor_to_image(output), ground_truth, 4).psnr)
        scores['mean'].append(score_images(tensor_to_image(ensemble.average(outputs)), ground_truth, 4).psnr)
    published = {'IMDN': 32.210, 'RLFN': 32.238, 'PAN': 32.131, 'RFDN': 32.159, 'mean': 32.350}
    for name, value in published.items():
        assert np.mean(scores[name]) == pytest.approx(value, abs=0.003), name


# ---- behavioural fingerprint: a cache notices that a network's code changed --------------------------------
class CacheProbeEDSR(build_network(dict(EDSR_NETWORK)).__class__):
    """EDSR under its own registered name, so that a test can change its forward (monkeypatch) and only its."""


if 'CacheProbeEDSR' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register()(CacheProbeEDSR)

PROBE_NETWORK = dict(EDSR_NETWORK, type='CacheProbeEDSR')


@pytest.fixture
def probe_specs(tmp_path):
    return [TeacherSpec('nearest', NEAREST_NETWORK, save_weights(NEAREST_NETWORK, tmp_path / 'nearest.pth', 0)),
            TeacherSpec('probe', PROBE_NETWORK, save_weights(EDSR_NETWORK, tmp_path / 'probe.pth', 1))]


def _change_forward(monkeypatch, delta: float, relative: bool = False) -> None:
    """Replace CacheProbeEDSR's forward by the original plus ``delta`` (or times ``1 + delta``): a code change."""
    original = build_network(dict(EDSR_NETWORK)).__class__.forward

    def changed(self, image):
        output = original(self, image)
        return output * (1 + delta) if relative else output + delta

    monkeypatch.setattr(CacheProbeEDSR, 'forward', changed)


def test_a_changed_forward_makes_the_cache_stale_and_float_noise_does_not(folders, probe_specs, monkeypatch,
                                                                            caplog):
    ensemble = TeacherEnsemble(probe_specs, SCALE)
    cache = make_cache(folders, ensemble)
    cache.build(ensemble, folders['lq_paths'], progress=False)
    behaviour = cache.read_manifest()['behaviour']
    assert set(behaviour['outputs']) == {'nearest', 'probe'}
    assert behaviour['outputs']['probe']['shape'] == [3, 2 * teacher_cache.PROBE_SIZE, 2 * teacher_cache.PROBE_SIZE]
    assert teacher_cache.behaviour_differences(behaviour, cache.check_behaviour(ensemble)) == {}

    _change_forward(monkeypatch, 2e-6, relative=True)  # float noise (another BLAS, GPU vs CPU): accepted
    cache.check_behaviour(ensemble)

    _change_forward(monkeypatch, 0.01)  # a real change of the code
    with pytest.raises(teacher_cache.StaleTeacherCacheError) as caught:
        cache.check_behaviour(ensemble)
    message = str(caught.value)
    assert "'probe': probe output changed by up to 0.01" in message and "'nearest'" not in message
    assert cache.path in message and '--accept-stale' in message and 'accept_stale_teacher_cache: true' in message
    with caplog.at_level(logging.WARNING):
        cache.check_behaviour(ensemble, accept_stale=True)
    assert 'used anyway (accept-stale)' in caplog.text

    # Building over stale outputs is refused too; --accept-stale keeps them and records the current behaviour.
    with pytest.raises(teacher_cache.StaleTeacherCacheError):
        cache.build(ensemble, folders['lq_paths'], progress=False)
    report = cache.build(ensemble, folders['lq_paths'], progress=False, accept_stale=True)
    assert (report.computed, report.reused) == (0, 5)
    cache.check_behaviour(ensemble)
    monkeypatch.undo()
    with pytest.raises(teacher_cache.StaleTeacherCacheError, match="'probe': probe output changed"):
        cache.check_behaviour(ensemble)


def test_the_dataset_refuses_a_stale_cache_unless_told_and_old_caches_without_a_record(folders, probe_specs,
                                                                                     monkeypatch):
    ensemble = TeacherEnsemble(probe_specs, SCALE)
    cache = make_cache(folders, ensemble)
    cache.build(ensemble, folders['lq_paths'], progress=False)
    teachers = [{'name': spec.name, 'network': spec.network, 'weights': spec.weights} for spec in probe_specs]
    block = dataset_options(folders, teacher_cache_dir=cache.path, teachers=teachers)
    assert len(TeacherPairedImageDataset(block)) == 5
    _change_forward(monkeypatch, -0.05)
    with pytest.raises(teacher_cache.StaleTeacherCacheError, match=r"'probe': probe output changed by up to 0\.05"):
        TeacherPairedImageDataset(block)
    assert len(TeacherPairedImageDataset(dict(block, accept_stale_teacher_cache=True))) == 5
    monkeypatch.undo()

    manifest = cache.read_manifest()  # a cache built before the fingerprint existed
    del manifest['behaviour']
    with open(cache.manifest_path, 'w') as handle:
        json.dump(manifest, handle)
    with pytest.raises(teacher_cache.StaleTeacherCacheError, match='records no behavioural fingerprint'):
        TeacherPairedImageDataset(block)


def test_build_script_accept_stale_flag(folders, probe_specs, tmp_path, monkeypatch, capsys):
    teachers = [{'name': spec.name, 'network': spec.network, 'weights': spec.weights} for spec in probe_specs]
    block = dataset_options(folders)
    options = {'name': 'stage1', 'scale': SCALE, 'teachers': teachers,
               'datasets': {'train': dict(block, teacher_cache_root=folders['root'])}}
    option_file = tmp_path / 'stage1.yml'
    option_file.write_text(yaml.safe_dump(options))
    module = load_script('build_teacher_cache')
    arguments = ['-opt', str(option_file), '--device', 'cpu', '--no-progress']
    assert module.main(arguments) == 0
    _change_forward(monkeypatch, 0.02)
    with pytest.raises(teacher_cache.StaleTeacherCacheError, match='--accept-stale'):
        module.main(arguments)
    capsys.readouterr()
    assert module.main(arguments + ['--accept-stale']) == 0
    assert '0 images computed, 5 reused' in capsys.readouterr().out
    assert module.main(arguments) == 0  # the current behaviour is now the recorded one


# ---- a damaged cache file names itself and is rebuilt alone ------------------------------------------------
@pytest.mark.parametrize('keep_bytes', [200, 20])  # data cut short; header cut short
def test_a_truncated_cache_file_is_named_and_the_build_recomputes_only_it(folders, specs, keep_bytes):
    ensemble = TeacherEnsemble(specs, SCALE)
    cache = make_cache(folders, ensemble)
    cache.build(ensemble, folders['lq_paths'], progress=False)
    stems = [image_stem(path) for path in folders['lq_paths']]
    damaged = os.path.join(cache.path, 'edsr', f'{stems[1]}.npy')
    intact = cache.read_full('edsr', stems[1])
    with open(damaged, 'r+b') as handle:
        handle.truncate(keep_bytes)
    with pytest.raises(TeacherCacheError) as caught:
        cache.read_crop('edsr', stems[1], 0, 0, 4)
    message = str(caught.value)
    assert damaged in message and 'corrupt' in message and 'scripts/build_teacher_cache.py' in message
    assert 'mmap length' not in message
    assert cache.missing(stems) == [('edsr', stems[1])] and not cache.is_complete(stems)
    with pytest.raises(TeacherCacheError, match=f'lacks {stems[1]} \\(edsr\\)'):
        TeacherPairedImageDataset(dataset_options(folders, teacher_cache_dir=cache.path))

    calls = count_forward(ensemble)
    report = cache.build(ensemble, folders['lq_paths'], progress=False)
    assert (len(calls), report.computed, report.reused) == (1, 1, 4)
    assert np.array_equal(cache.read_full('edsr', stems[1]), intact) and cache.is_complete(stems)
