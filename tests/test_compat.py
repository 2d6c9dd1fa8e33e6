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


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only path')
def test_resume_state_loads_on_a_cpu_only_machine(tmp_path):
    import basicsr.train as basicsr_train

    states = tmp_path / 'experiments' / 'run' / 'training_states'
    states.mkdir(parents=True)
    torch.save({'iter': 7, 'epoch': 1, 'optimizers': [], 'schedulers': [{'milestones': collections.Counter([3])}]},
               states / '7.state')
    torch.save({'iter': 3, 'epoch': 0, 'optimizers': [], 'schedulers': []}, states / '3.state')
    options = {'auto_resume': True, 'name': 'run', 'root_path': str(tmp_path), 'path': {}, 'is_train': True}
    state = basicsr_train.load_resume_state(options)
    assert state['iter'] == 7 and options['path']['resume_state'].endswith('7.state')
    # BasicSR's own version maps onto torch.cuda.current_device() and cannot run here.
    with pytest.raises((RuntimeError, AssertionError)):
        basicsr_train.load_resume_state.__wrapped__({**options, 'path': {'resume_state': str(states / '7.state')},
                                                     'auto_resume': False})
