"""Dataset preparation: benchmark LR files equal the published ones; DIV2K download, checksum, extraction and
sub-image alignment on a tiny fake archive served from 127.0.0.1."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import threading
import zipfile

import cv2
import numpy as np
import pytest

from conftest import dataset_dir, load_script
from mtkd.data import preparation as data_prep
from mtkd.data.preparation import Div2kLayout, PreparationError, subimage_positions
from mtkd.transforms.matlab_resize import imresize, modcrop
from mtkd.weights import download


# ----------------------------------------------------------------------------------------------------------------
# Benchmarks
# ----------------------------------------------------------------------------------------------------------------
def test_prepare_benchmark_reproduces_published_lr(tmp_path):
    set5, set14 = dataset_dir('Set5'), dataset_dir('Set14')
    hr_dir = tmp_path / 'hr'
    hr_dir.mkdir()
    sources = {'baby': set5, 'butterfly': set5, 'head': set5, 'bridge': set14}  # bridge: single-channel
    for name, root in sources.items():
        shutil.copy(os.path.join(root, 'HR', f'{name}.png'), hr_dir / f'{name}.png')

    script = load_script('prepare_benchmark')
    assert script.main(['--hr-dir', str(hr_dir), '--out-dir', str(tmp_path / 'out'), '--name', 'Mini',
                        '--scales', '2', '3', '4', '--no-progress']) == 0

    made_root = tmp_path / 'out' / 'Mini'
    assert sorted(os.listdir(made_root / 'HR')) == sorted(f'{name}.png' for name in sources)
    for name, root in sources.items():
        original = cv2.imread(os.path.join(root, 'HR', f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(cv2.imread(str(made_root / 'HR' / f'{name}.png'), cv2.IMREAD_UNCHANGED), original)
        for scale in (2, 3, 4):
            file_name = f'{name}x{scale}.png'
            published = cv2.imread(os.path.join(root, 'LR_bicubic', f'X{scale}', file_name), cv2.IMREAD_UNCHANGED)
            made = cv2.imread(str(made_root / 'LR_bicubic' / f'X{scale}' / file_name), cv2.IMREAD_UNCHANGED)
            assert made.shape == published.shape and np.array_equal(made, published), file_name


def test_prepare_benchmark_clear_errors(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('not an image')
    with pytest.raises(PreparationError, match='holds no images'):
        data_prep.prepare_benchmark(str(empty), str(tmp_path / 'out'), 'Empty', progress=False)
    with pytest.raises(PreparationError, match='does not exist'):
        data_prep.prepare_benchmark(str(tmp_path / 'missing'), str(tmp_path / 'out'), 'Missing', progress=False)

    broken = tmp_path / 'broken'
    broken.mkdir()
    cv2.imwrite(str(broken / 'good.png'), np.zeros((8, 8, 3), np.uint8))
    (broken / 'bad.png').write_bytes(b'definitely not a png')
    script = load_script('prepare_benchmark')
    assert script.main(['--hr-dir', str(broken), '--out-dir', str(tmp_path / 'out'), '--name', 'Broken',
                        '--no-progress']) == 1
    assert 'bad.png' in capsys.readouterr().err

    with pytest.raises(PreparationError, match='scales must be integers'):
        data_prep.prepare_benchmark(str(broken), str(tmp_path / 'out'), 'Broken', scales=(1,), progress=False)


# ----------------------------------------------------------------------------------------------------------------
# DIV2K
# ----------------------------------------------------------------------------------------------------------------
def test_subimage_positions_follow_basicsr():
    # A DIV2K image 2040 x 1356: BasicSR's extract_subimages (480/240/0) crops rows at 0..720 plus a last flush
    # one at 1356 - 480 = 876, and columns every 240 up to 1560 (2040 - 480, already flush).
    assert subimage_positions(1356, 480, 240, 0) == [0, 240, 480, 720, 876]
    assert subimage_positions(2040, 480, 240, 0) == [0, 240, 480, 720, 960, 1200, 1440, 1560]
    # Its x4 LR (339 rows, crop 120, step 60) gives exactly the HR rows divided by 4.
    assert [row * 4 for row in subimage_positions(339, 120, 60, 0)] == [0, 240, 480, 720, 876]
    # thresh_size: a leftover of at most thresh_size pixels gets no extra crop.
    assert subimage_positions(1356, 480, 240, 156) == [0, 240, 480, 720]
    assert subimage_positions(100, 480, 240, 0) == []


def _fake_div2k_images() -> dict[str, np.ndarray]:
    # Two real photographs, with sides that are not multiples of 2, 3 or 12, so alignment is really exercised.
    from skimage import data as skimage_data

    astronaut = np.ascontiguousarray(skimage_data.astronaut()[40:171, 100:257, ::-1])  # 131 x 157
    coffee = np.ascontiguousarray(skimage_data.coffee()[50:151, 200:391, ::-1])  # 101 x 191
    return {'0001': astronaut, '0002': coffee}


def _zip_bytes(images: dict[str, np.ndarray], folder: str = 'DIV2K_train_HR') -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name, image in images.items():
            archive.writestr(f'{folder}/{name}.png', cv2.imencode('.png', image)[1].tobytes())
    return buffer.getvalue()


@pytest.fixture()
def served_folder(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (a free port), and its base URL."""
    folder = tmp_path / 'served'
    folder.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_div2k_download_checksum_extraction_and_aligned_subimages(tmp_path, served_folder, capsys):
    folder, base_url = served_folder
    images = _fake_div2k_images()
    payload = _zip_bytes(images)
    (folder / 'DIV2K_train_HR.zip').write_bytes(payload)
    url = f'{base_url}/DIV2K_train_HR.zip'
    digest = hashlib.sha256(payload).hexdigest()
    root = tmp_path / 'DIV2K'

    # A wrong digest fails and leaves no archive behind.
    with pytest.raises(download.ChecksumError):
        data_prep.download_div2k('train', str(root), url=url, sha256='0' * 64, progress=False)
    assert not (root / 'DIV2K_train_HR.zip').exists()
    script = load_script('prepare_div2k')
    assert script.main(['--root', str(root), '--splits', 'train', '--url', url, '--sha256', 'f' * 64,
                        '--no-progress']) == 1
    assert 'sha256 mismatch' in capsys.readouterr().err
    assert script.main(['--root', str(root), '--splits', 'train', '--url', f'{base_url}/missing.zip',
                        '--sha256', digest, '--no-progress']) == 1
    assert 'HTTP 404' in capsys.readouterr().err
    assert not os.path.exists(Div2kLayout(str(root), 'train').hr)

    # The CLI: download, verify, extract, LR x2/x3/x4 and sub-images with a small crop (48, step 24).
    crop_size, step = 48, 24
    assert script.main(['--root', str(root), '--splits', 'train', '--url', url, '--sha256', digest,
                        '--crop-size', str(crop_size), '--step', str(step), '--no-progress']) == 0
    assert (root / 'DIV2K_train_HR.zip').read_bytes() == payload

    layout = Div2kLayout(str(root), 'train')
    for name, image in images.items():
        assert np.array_equal(cv2.imread(os.path.join(layout.hr, f'{name}.png'), cv2.IMREAD_UNCHANGED), image)

    for name, hr in images.items():
        full_lrs = {}
        for scale in (2, 3, 4):
            full_lrs[scale] = cv2.imread(os.path.join(layout.lr(scale), f'{name}x{scale}.png'), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(full_lrs[scale], imresize(modcrop(hr, scale), 1 / scale))

        aligned = modcrop(hr, 12)
        rows = subimage_positions(aligned.shape[0], crop_size, step, 0)
        columns = subimage_positions(aligned.shape[1], crop_size, step, 0)
        positions = [(row, column) for row in rows for column in columns]  # row-major, as BasicSR numbers them
        written = sorted(file for file in os.listdir(layout.hr_sub) if file.startswith(name))
        assert written == [f'{name}_s{index:03d}.png' for index in range(1, len(positions) + 1)]
        for index, (row, column) in enumerate(positions, start=1):
            file_name = f'{name}_s{index:03d}.png'
            hr_sub = cv2.imread(os.path.join(layout.hr_sub, file_name), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(hr_sub, hr[row:row + crop_size, column:column + crop_size])
            for scale in (2, 3, 4):
                lr_sub = cv2.imread(os.path.join(layout.lr_sub(scale), file_name), cv2.IMREAD_UNCHANGED)
                lr_crop = crop_size // scale
                assert lr_sub.shape == (lr_crop, lr_crop, 3)
                assert np.array_equal(
                    lr_sub, full_lrs[scale][row // scale:row // scale + lr_crop,
                                            column // scale:column // scale + lr_crop])
                # Downscaling HR sub-image k gives LR sub-image k away from the crop border, where the kernel
                # (2 s + 1 HR pixels each side) reaches no further than 3 LR pixels.
                resized = imresize(hr_sub, 1 / scale)
                assert np.array_equal(resized[3:-3, 3:-3], lr_sub[3:-3, 3:-3])
    # The last row of crops is flush with the 12-aligned bottom edge (131 -> 120 rows: crops at 0, 24, 48, 72).
    assert subimage_positions(modcrop(images['0001'], 12).shape[0], crop_size, step, 0) == [0, 24, 48, 72]

    # A verified archive already in place is reused: the server no longer has it, and nothing is fetched.
    (folder / 'DIV2K_train_HR.zip').unlink()
    assert data_prep.download_div2k('train', str(root), url=url, sha256=digest, progress=False) == \
        str(root / 'DIV2K_train_HR.zip')


def test_div2k_download_without_sha256_records_the_digest(tmp_path, served_folder, capsys):
    folder, base_url = served_folder
    payload = _zip_bytes(_fake_div2k_images(), folder='DIV2K_valid_HR')
    (folder / 'DIV2K_valid_HR.zip').write_bytes(payload)
    path = data_prep.download_div2k('valid', str(tmp_path), url=f'{base_url}/DIV2K_valid_HR.zip', progress=False)
    digest = hashlib.sha256(payload).hexdigest()
    assert open(path + '.sha256').read().split()[0] == digest
    assert digest in capsys.readouterr().out
    # The official archives are pinned in the manifest (TFDS's recorded sizes and digests).
    assert data_prep.DIV2K_ARCHIVES['train'].sha256 == \
        '9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335'


def test_extract_zip_refuses_bad_archives(tmp_path):
    corrupt = tmp_path / 'corrupt.zip'
    corrupt.write_bytes(b'PK\x03\x04 truncated')
    with pytest.raises(PreparationError, match='not a valid zip'):
        data_prep.extract_zip(str(corrupt), str(tmp_path / 'out'))

    escaping = tmp_path / 'escaping.zip'
    with zipfile.ZipFile(escaping, 'w') as archive:
        archive.writestr('../outside.png', b'x')
    with pytest.raises(PreparationError, match='outside its folder'):
        data_prep.extract_zip(str(escaping), str(tmp_path / 'out'))
    assert not (tmp_path / 'outside.png').exists()

    wrong_folder = tmp_path / 'wrong.zip'
    wrong_folder.write_bytes(_zip_bytes({'0001': np.zeros((4, 4, 3), np.uint8)}, folder='Something'))
    with pytest.raises(PreparationError, match="did not contain the folder 'DIV2K_train_HR'"):
        data_prep.extract_zip(str(wrong_folder), str(tmp_path / 'out'), expected_folder='DIV2K_train_HR')


def test_div2k_split_from_existing_folder_with_workers(tmp_path):
    # --skip-download path, two processes, valid split without sub-images: LR images only.
    layout = Div2kLayout(str(tmp_path), 'valid')
    os.makedirs(layout.hr)
    images = _fake_div2k_images()
    for name, image in images.items():
        cv2.imwrite(os.path.join(layout.hr, f'{name}.png'), image)
    counts = data_prep.prepare_div2k(str(tmp_path), splits=['valid'], scales=[4], download=False,
                                     subimage_splits=[], workers=2, progress=False)
    assert counts == {'valid': 0}
    assert not os.path.exists(layout.hr_sub)
    for name, image in images.items():
        made = cv2.imread(os.path.join(layout.lr(4), f'{name}x4.png'), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(made, imresize(modcrop(image, 4), 1 / 4))
    with pytest.raises(PreparationError, match='multiples of every scale'):
        data_prep.prepare_div2k_split(layout, scales=[3], crop_size=50, step=24, progress=False)
