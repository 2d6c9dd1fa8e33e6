"""Each compatibility patch does its job, and only when it is needed."""
from __future__ import annotations

import collections
import io

import pytest
import torch

from mtkd import compat


def test_functional_tensor_stand_in_computes_grayscale():
    from torchvision.transforms.functional_tensor import rgb_to_grayscale  # imported by basicsr's degradations

    image = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1) * torch.ones(3, 2, 2)
    assert torch.allclose(rgb_to_grayscale(image), torch.full((1, 2, 2), 0.2989), atol=1e-6)  # torchvision ITU-R 601-2 weights
    import basicsr.data.degradations  # noqa: F401 - the import that needed the stand-in


def test_torchvision_imports_with_schemas_only_when_its_library_cannot_load():
    import torchvision  # noqa: F401 - fails with 'operator torchvision::nms does not exist' without the patch

    loads = compat._torchvision_extension_loads()
    assert ('torchvision_ops' in compat.APPLIED) == (not loads)
    assert compat.patch_torchvision_ops() is False  # torchvision is imported: nothing more to do
    if not loads:
        boxes, scores = torch.zeros(1, 4), torch.zeros(1)
        with pytest.raises(NotImplementedError):
            torch.ops.torchvision.nms(boxes, scores, 0.5)  # a schema, not a kernel: no silent fake result


def test_training_state_with_counter_loads_with_weights_only():
    from basicsr.models.lr_scheduler import MultiStepRestartLR

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = MultiStepRestartLR(optimizer, milestones=[2, 4])
    buffer = io.BytesIO()
    torch.save({'schedulers': [scheduler.state_dict()]}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state['schedulers'][0]['milestones'] == collections.Counter([2, 4])
    assert compat.patch_safe_globals() is False  # already registered once


class NotAllowed:
    pass


def test_other_pickled_objects_are_still_refused():
    buffer = io.BytesIO()
    torch.save({'x': NotAllowed()}, buffer)
    buffer.seek(0)
    with pytest.raises(Exception, match='NotAllowed'):
        torch.load(buffer, weights_only=True)


def test_resume_state_loads_on_the_cpu_even_with_cuda(tmp_path, monkeypatch):
    """BasicSR maps training states onto the current CUDA device and then hands CUDA tensors to the CPU generator
    setters (``RNG state must be a torch.ByteTensor``); the patched loader always reads onto the CPU."""
    import basicsr.train as basicsr_train

    from mtkd.training.resume import restore_rng_states, rng_states

    experiment = tmp_path / 'experiments' / 'run'
    states, models = experiment / 'training_states', experiment / 'models'
    states.mkdir(parents=True)
    models.mkdir()
    torch.save({'iter': 7, 'epoch': 1, 'optimizers': [], 'schedulers': [{'milestones': collections.Counter([3])}],
                'rng': rng_states()}, states / '7.state')
    torch.save({'params': {}}, models / 'net_g_7.pth')
    seen = []
    original_load = torch.load
    monkeypatch.setattr(torch, 'load', lambda *a, **k: seen.append(k.get('map_location')) or original_load(*a, **k))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    options = {'auto_resume': True, 'name': 'run', 'network_g': {},
               'path': {'training_states': str(states), 'models': str(models), 'experiments_root': str(experiment)}}
    state = basicsr_train.load_resume_state(options)
    assert seen == ['cpu']
    assert state['iter'] == 7 and options['path']['resume_state'].endswith('7.state')
    assert options['path']['pretrain_network_g'] == str(models / 'net_g_7.pth')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    restore_rng_states(state['rng'])  # CPU byte tensors: accepted
    # What BasicSR's own loader would hand over on a GPU machine (here: the meta device) is refused by name.
    meta_state = original_load(states / '7.state', map_location='meta', weights_only=True)
    with pytest.raises(Exception, match='meta'):
        restore_rng_states(meta_state['rng'])
