"""download_file and the pretrained-weights fetcher, against a local HTTP server on 127.0.0.1 (no internet)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import sys
import threading

import pytest
import yaml

from mtkd.weights.download import ChecksumError, DownloadError, download_file
from mtkd.weights.pretrained import DEFAULT_MANIFEST, ManifestError, fetch_pretrained, load_manifest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'scripts'))
import download_pretrained  # noqa: E402
from conftest import SHARED_WEIGHT_FILES, official_weight  # noqa: E402

FILES = {'tiny_a.pth': b'fake checkpoint A ' * 1000, 'tiny_b.pth': b'fake checkpoint B ' * 77,
         'tiny_unhashed.pt': b'no hash recorded ' * 50}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; counts GET requests per path; a few special paths misbehave on purpose."""

    requests: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path == '/truncated.pth':  # promises 1000 bytes, sends 10, then closes
            self.send_response(200)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', '1000')
            self.end_headers()
            self.wfile.write(b'0123456789')
            self.close_connection = True
            return
        if self.path == '/confirm.pth':  # what Google Drive sends for large files
            body = b'<html><body>Google Drive can\'t scan this file for viruses.</body></html>'
            self.send_response(200)
            self.send_header('Content-Type', 'text/html; charset=utf-8')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / 'served'
    served.mkdir()
    for name, data in FILES.items():
        (served / name).write_bytes(data)
    CountingHandler.requests = []
    handler = functools.partial(CountingHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


def write_manifest(path, entries):
    with open(path, 'w') as handle:
        yaml.safe_dump({'files': entries}, handle)
    return str(path)


def entry(name, sha, **extra):
    return {'name': name, 'network': 'Fake', 'scale': 4, 'url': f'https://example.invalid/{name}', 'sha256': sha,
            'key_format': 'basicsr', 'param_key': 'auto', **extra}


def leftovers(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith('.'))


# ---- download_file ----

def test_download_file_streams_verifies_and_skips_when_present(server, tmp_path):
    destination = str(tmp_path / 'out' / 'tiny_a.pth')
    assert download_file(f'{server}/tiny_a.pth', destination, sha256(FILES['tiny_a.pth']), progress=False) \
        == destination
    assert open(destination, 'rb').read() == FILES['tiny_a.pth']
    assert leftovers(tmp_path / 'out') == []
    assert CountingHandler.requests == ['/tiny_a.pth']

    download_file(f'{server}/tiny_a.pth', destination, sha256(FILES['tiny_a.pth']), progress=False)
    assert CountingHandler.requests == ['/tiny_a.pth']  # verified and skipped: no second request


def test_download_file_replaces_a_present_file_with_the_wrong_hash(server, tmp_path):
    destination = tmp_path / 'tiny_b.pth'
    destination.write_bytes(b'stale')
    download_file(f'{server}/tiny_b.pth', str(destination), sha256(FILES['tiny_b.pth']), progress=True)
    assert destination.read_bytes() == FILES['tiny_b.pth']


def test_download_file_checksum_mismatch_removes_the_download(server, tmp_path):
    destination = tmp_path / 'tiny_a.pth'
    wrong = '0' * 64
    with pytest.raises(ChecksumError) as caught:
        download_file(f'{server}/tiny_a.pth', str(destination), wrong, progress=False)
    message = str(caught.value)
    assert f'expected {wrong}, got {sha256(FILES["tiny_a.pth"])}' in message
    assert f'{server}/tiny_a.pth' in message
    assert isinstance(caught.value, ValueError)
    assert not destination.exists() and leftovers(tmp_path) == []


def test_download_file_http_404_names_the_url_and_the_manual_path(server, tmp_path):
    destination = tmp_path / 'absent.pth'
    with pytest.raises(DownloadError, match=rf'HTTP 404 .* for {server}/absent\.pth\. .*download .* by hand .* '
                                            rf'place it at {destination}'):
        download_file(f'{server}/absent.pth', str(destination), None, progress=False)
    assert not destination.exists() and leftovers(tmp_path) == []


def test_download_file_unreachable_host(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=rf'Cannot reach http://127\.0\.0\.1:{port}/x\.pth .*by hand'):
        download_file(f'http://127.0.0.1:{port}/x.pth', str(tmp_path / 'x.pth'), None, progress=False)
    assert os.listdir(tmp_path) == []


def test_download_file_truncated_transfer_and_html_page_are_refused(server, tmp_path):
    out = tmp_path / 'out'
    with pytest.raises(DownloadError, match=r'truncated\.pth (ended after 10 of 1000 bytes|broke off)'):
        download_file(f'{server}/truncated.pth', str(out / 'truncated.pth'), None, progress=False)
    with pytest.raises(DownloadError, match=r'confirm\.pth answered with an HTML page'):
        download_file(f'{server}/confirm.pth', str(out / 'confirm.pth'), None, progress=False)
    assert os.listdir(out) == []


def test_download_file_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r'sha256 must be 64 hex digits or None'):
        download_file('http://127.0.0.1/x', str(tmp_path / 'x'), 'abc')
    with pytest.raises(ValueError, match=r'is a folder'):
        download_file('http://127.0.0.1/x', str(tmp_path), None)


# ---- fetch_pretrained and the script ----

def test_fetch_success_then_skip(server, tmp_path):
    manifest = write_manifest(tmp_path / 'manifest.yaml', [entry('tiny_a.pth', sha256(FILES['tiny_a.pth'])),
                                                          entry('tiny_b.pth', sha256(FILES['tiny_b.pth']))])
    dest = tmp_path / 'official'
    results = fetch_pretrained(None, str(dest), manifest, base_url=server, progress=False)
    assert [(r.name, r.status) for r in results] == [('tiny_a.pth', 'downloaded'), ('tiny_b.pth', 'downloaded')]
    assert (dest / 'tiny_b.pth').read_bytes() == FILES['tiny_b.pth']
    assert sorted(CountingHandler.requests) == ['/tiny_a.pth', '/tiny_b.pth']

    results = fetch_pretrained(None, str(dest), manifest, base_url=server, progress=False)
    assert [r.status for r in results] == ['verified', 'verified']
    assert len(CountingHandler.requests) == 2  # nothing fetched again


def test_fetch_checksum_mismatch_and_404_are_reported_per_file(server, tmp_path):
    manifest = write_manifest(tmp_path / 'manifest.yaml', [entry('tiny_a.pth', 'f' * 64),
                                                          entry('gone.pth', 'e' * 64),
                                                          entry('tiny_b.pth', sha256(FILES['tiny_b.pth']))])
    dest = tmp_path / 'official'
    results = {r.name: r for r in fetch_pretrained(None, str(dest), manifest, base_url=server, progress=False)}
    assert results['tiny_a.pth'].status == 'failed'
    assert f'expected {"f" * 64}, got {sha256(FILES["tiny_a.pth"])}' in results['tiny_a.pth'].message
    assert results['gone.pth'].status == 'failed' and 'HTTP 404' in results['gone.pth'].message
    assert f'{server}/gone.pth' in results['gone.pth'].message
    assert results['tiny_b.pth'].status == 'downloaded'  # one failure does not stop the others
    assert sorted(os.listdir(dest)) == ['tiny_b.pth']


def test_fetch_unverified_needs_allow_unverified(server, tmp_path):
    data = FILES['tiny_unhashed.pt']
    manifest = write_manifest(tmp_path / 'manifest.yaml', [entry('tiny_unhashed.pt', None)])
    dest = tmp_path / 'official'
    [result] = fetch_pretrained(None, str(dest), manifest, base_url=server, progress=False)
    assert result.status == 'failed' and result.sha256 == sha256(data)
    assert '--allow-unverified' in result.message and sha256(data) in result.message
    assert os.listdir(dest) == []

    [result] = fetch_pretrained(None, str(dest), manifest, base_url=server, allow_unverified=True, progress=False)
    assert result.status == 'unverified' and (dest / 'tiny_unhashed.pt').read_bytes() == data
    assert os.listdir(dest) == ['tiny_unhashed.pt']


def test_fetch_unverified_404_names_the_final_path(server, tmp_path):
    manifest = write_manifest(tmp_path / 'manifest.yaml', [entry('gone.pt', None, download_page='https://x.invalid')])
    dest = tmp_path / 'official'
    [result] = fetch_pretrained(None, str(dest), manifest, base_url=server, progress=False)
    assert result.status == 'failed' and 'HTTP 404' in result.message
    assert f'place it at {dest / "gone.pt"}.' in result.message and '.unverified' not in result.message
    assert os.listdir(dest) == []


def test_fetch_checks_the_published_hash_prefix(server, tmp_path):
    data = FILES['tiny_unhashed.pt']
    manifest = write_manifest(tmp_path / 'manifest.yaml', [entry('tiny_unhashed.pt', None, sha256_prefix='00000000')])
    dest = tmp_path / 'official'
    [result] = fetch_pretrained(None, str(dest), manifest, base_url=server, allow_unverified=True, progress=False)
    assert result.status == 'failed' and 'does not start with 00000000' in result.message
    assert os.listdir(dest) == []
    manifest = write_manifest(tmp_path / 'manifest.yaml',
                              [entry('tiny_unhashed.pt', None, sha256_prefix=sha256(data)[:8])])
    [result] = fetch_pretrained(None, str(dest), manifest, base_url=server, allow_unverified=True, progress=False)
    assert result.status == 'unverified'


def test_manual_entry_reports_where_to_get_it(tmp_path):
    manifest = write_manifest(tmp_path / 'manifest.yaml', [
        {**entry('RCAN_BIX4.pt', None), 'url': None, 'manual': True,
         'download_page': 'https://www.dropbox.com/s/example/models.zip', 'notes': 'inside models.zip'}])
    [result] = fetch_pretrained(None, str(tmp_path / 'official'), manifest, progress=False)
    assert result.status == 'missing'
    assert result.message == (f'get it by hand from https://www.dropbox.com/s/example/models.zip and place it at '
                              f'{tmp_path / "official" / "RCAN_BIX4.pt"} (inside models.zip)')


def test_script_exit_codes_and_output(server, tmp_path, capsys):
    manifest = write_manifest(tmp_path / 'manifest.yaml', [entry('tiny_a.pth', sha256(FILES['tiny_a.pth'])),
                                                          entry('gone.pth', 'e' * 64)])
    dest = str(tmp_path / 'official')
    common = ['--manifest', manifest, '--dest', dest, '--base-url', server, '--no-progress']
    assert download_pretrained.main(common + ['--only', 'tiny_a.pth']) == 0
    output = capsys.readouterr().out
    assert 'downloaded tiny_a.pth' in output and 'summary: 1 downloaded' in output
    assert download_pretrained.main(common) == 1
    output = capsys.readouterr().out
    assert 'verified   tiny_a.pth' in output and 'failed     gone.pth: HTTP 404' in output

    assert download_pretrained.main(['--manifest', manifest, '--dest', dest, '--list']) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split()[:2] == ['tiny_a.pth', 'Fake'] and ' yes ' in listing[1]
    with pytest.raises(ValueError, match=r"Unknown checkpoint name\(s\) \['nope.pth'\]"):
        download_pretrained.main(['--manifest', manifest, '--only', 'nope.pth'])


def test_malformed_manifests_are_refused_by_entry_and_field(tmp_path):
    cases = [
        ([entry('a.pth', 'abc')], r"entry 0 \('a\.pth'\): sha256 must be 64"),
        ([entry('a.pth', None, key_format='edsr')], r"key_format 'edsr' is not one of"),
        ([entry('a.pth', None, url=None)], r'no url; set manual: true'),
        ([entry('a.pth', None), entry('a.pth', None)], r"duplicate names \['a\.pth'\]"),
        ([entry('a.pth', None, colour='red')], r"unknown fields \['colour'\]"),
        ([entry('../a.pth', None)], r'name must be a plain file name'),
        ([entry('a.pth', 'a' * 64, sha256_prefix='bbbb')], r'does not start with sha256_prefix bbbb'),
    ]
    for entries, message in cases:
        with pytest.raises(ManifestError, match=message):
            load_manifest(write_manifest(tmp_path / 'bad.yaml', entries))


# ---- the real manifest ----

def test_real_manifest_is_valid_and_covers_the_shared_weights():
    entries = {e.name: e for e in load_manifest(DEFAULT_MANIFEST)}
    assert len(SHARED_WEIGHT_FILES) == 23  # ../shared/README.md's weights table
    assert [name for name in SHARED_WEIGHT_FILES if entries.get(name) is None or entries[name].sha256 is None] == []
    for teacher in ('001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth', '002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth',
                    'edsr_x4-4f62e9ef.pt', 'edsr_baseline_x4-6b446fab.pt', 'RCAN_BIX4.pt'):
        assert entries[teacher].arch['upscale'] == entries[teacher].scale == 4
    assert entries['edsr_x4-4f62e9ef.pt'].key_format == 'edsr_official'
    assert entries['RCAN_BIX4.pt'].key_format == 'rcan_official' and entries['RCAN_BIX4.pt'].manual
    for entry_ in entries.values():  # names that carry a published hash prefix must declare it
        if entry_.sha256_prefix:
            assert entry_.name.rsplit('-', 1)[1].split('.')[0] == entry_.sha256_prefix


@pytest.mark.parametrize('entry_', [e for e in load_manifest(DEFAULT_MANIFEST) if e.sha256 or e.sha256_prefix],
                         ids=lambda e: e.name)
def test_real_manifest_hashes_match_the_files_present(entry_):
    path = official_weight(entry_.name)  # skips when absent
    with open(path, 'rb') as handle:
        actual = sha256(handle.read())
    if entry_.sha256:
        assert actual == entry_.sha256
    if entry_.sha256_prefix:
        assert actual.startswith(entry_.sha256_prefix)


@pytest.mark.parametrize('entry_', load_manifest(DEFAULT_MANIFEST), ids=lambda e: e.name)
def test_real_manifest_files_present_read_with_their_declared_format(entry_):
    from mtkd.weights.loading import read_state_dict

    path = official_weight(entry_.name)  # skips when absent
    state = read_state_dict(path, entry_.param_key, entry_.key_format)
    assert len(state) > 10
    assert not any(key.startswith('module.') for key in state)
