"""FeatureTaps: forward hooks by module path capture exactly the submodule's output, through wrappers, per forward."""
import gc
import weakref

import pytest
import torch
from torch import nn

import mtkd  # noqa: F401  (before basicsr: compat patches)
from basicsr.archs.edsr_arch import EDSR
from mtkd.methods.feature_taps import FeatureTaps, describe_module_paths, list_module_paths


def tiny_edsr(seed=0, num_feat=8, num_block=3):
    torch.manual_seed(seed)
    return EDSR(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_block=num_block, upscale=2).eval()


def manual_body_output(model, image, last_block):
    """EDSR's forward written out up to ``body.<last_block>``, without hooks."""
    features = (image - model.mean.type_as(image)) * model.img_range
    features = model.conv_first(features)
    for index in range(last_block + 1):
        features = model.body[index](features)
    return features


@pytest.fixture
def image():
    torch.manual_seed(1)
    return torch.rand(2, 3, 6, 7)


def test_captured_feature_equals_manual_forward(image):
    model = tiny_edsr()
    with FeatureTaps(model, ['body.1', 'body.2']) as taps, torch.no_grad():
        model(image)
        features = taps.features
        expected_1 = manual_body_output(model, image, 1)
        expected_2 = manual_body_output(model, image, 2)
    assert list(features) == ['body.1', 'body.2']
    assert torch.equal(features['body.1'], expected_1)
    assert torch.equal(features['body.2'], expected_2)
    assert not torch.equal(expected_1, expected_2)


def test_same_path_through_data_parallel(image):
    model = tiny_edsr()
    wrapped = nn.DataParallel(model)
    with FeatureTaps(wrapped, ['body.1']) as taps, torch.no_grad():
        wrapped(image)
        captured = taps.features['body.1']
        expected = manual_body_output(model, image, 1)
    assert torch.equal(captured, expected)


def test_same_path_through_distributed_data_parallel(image, tmp_path):
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip('torch.distributed with gloo is not available')
    if dist.is_initialized():
        pytest.skip('a process group is already initialised in this process')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        model = tiny_edsr()
        wrapped = nn.parallel.DistributedDataParallel(model)
        with FeatureTaps(wrapped, ['body.1']) as taps:
            wrapped(image)
            captured = taps.features['body.1']
        with torch.no_grad():
            expected = manual_body_output(model, image, 1)
        assert torch.equal(captured.detach(), expected)
        with pytest.raises(ValueError, match='without the "module." prefix'):
            FeatureTaps(wrapped, ['module.body.1'])
    finally:
        dist.destroy_process_group()


def test_wrong_path_names_the_nearest_modules():
    model = tiny_edsr()
    with pytest.raises(ValueError) as error:
        FeatureTaps(model, ['body.5'])
    message = str(error.value)
    assert '"body.5" is not a submodule of EDSR' in message
    assert 'body.2' in message and 'body.1' in message
    assert 'list_module_paths' in message
    with pytest.raises(ValueError, match='use "body.1"'):
        FeatureTaps(nn.DataParallel(model), ['module.body.1'])
    with pytest.raises(ValueError, match='Top-level modules: conv_first, body'):
        FeatureTaps(model, ['zzzzzzzz'])


def test_remove_stops_capturing_and_leaves_no_hooks(image):
    model = tiny_edsr()
    taps = FeatureTaps(model, ['body.1'])
    with torch.no_grad():
        model(image)
    assert 'body.1' in taps.features
    taps.remove()
    assert taps.features == {}
    with torch.no_grad():
        model(image)
    assert taps.features == {}
    assert all(len(module._forward_hooks) == 0 and len(module._forward_pre_hooks) == 0
               for module in model.modules())
    taps.remove()  # idempotent


def test_context_manager_removes_hooks(image):
    model = tiny_edsr()
    with FeatureTaps(model, ['body.0']) as taps:
        assert len(model.body[0]._forward_hooks) == 1
    assert len(model.body[0]._forward_hooks) == 0
    with torch.no_grad():
        model(image)
    assert taps.features == {}


class Branching(nn.Module):
    """Runs ``first`` or ``second`` depending on a flag, to see what a forward that skips a tap leaves behind."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 4, 1)
        self.second = nn.Conv2d(3, 4, 1)
        self.use_first = True

    def forward(self, image):
        return self.first(image) if self.use_first else self.second(image)


def test_only_the_last_forward_is_kept(image):
    model = tiny_edsr()
    other = torch.rand_like(image)
    with FeatureTaps(model, ['body.1']) as taps, torch.no_grad():
        model(image)
        model(other)
        expected = manual_body_output(model, other, 1)
        assert torch.equal(taps.features['body.1'], expected)

    branching = Branching()
    with FeatureTaps(branching, ['first', 'second']) as taps:
        branching(image)
        assert list(taps.features) == ['first']
        branching.use_first = False
        branching(image)
        # The first forward's capture of "first" is gone, not left stale beside the new "second".
        assert list(taps.features) == ['second']
        with pytest.raises(RuntimeError, match='nothing captured for first'):
            taps.feature_list()


def test_no_reference_survives_the_next_forward(image):
    model = tiny_edsr()
    with FeatureTaps(model, ['body.1']) as taps:
        model(image)
        old = weakref.ref(taps.features['body.1'])
        model(image)
        gc.collect()
        assert old() is None
        current = weakref.ref(taps.features['body.1'])
        taps.clear()
        gc.collect()
        assert current() is None


def test_student_keeps_graph_teacher_does_not(image):
    student, teacher = tiny_edsr(0), tiny_edsr(1)
    teacher.requires_grad_(False)
    with FeatureTaps(student, ['body.1']) as student_taps, \
            FeatureTaps(teacher, ['body.1'], detach=True) as teacher_taps:
        student(image)
        teacher(image)
        student_feature = student_taps.features['body.1']
        teacher_feature = teacher_taps.features['body.1']
    assert student_feature.requires_grad and student_feature.grad_fn is not None
    assert not teacher_feature.requires_grad and teacher_feature.grad_fn is None

    # detach works even on a teacher left trainable by mistake.
    trainable_teacher = tiny_edsr(2)
    with FeatureTaps(trainable_teacher, ['body.1'], detach=True) as taps:
        trainable_teacher(image)
        assert taps.features['body.1'].grad_fn is None
    # inference_mode tensors (no version counter) are captured too.
    with FeatureTaps(teacher, ['body.1']) as taps:
        with torch.inference_mode():
            teacher(image)
        assert taps.features['body.1'].is_inference()


def test_in_place_modification_after_the_hook_is_detected(image):
    # BasicSR's EDSR does "res = self.conv_after_body(...); res += x": the tapped tensor changes after the hook.
    model = tiny_edsr()
    with FeatureTaps(model, ['conv_after_body']) as taps, torch.no_grad():
        model(image)
        with pytest.raises(RuntimeError, match='modified in place'):
            taps.features
    with FeatureTaps(model, ['conv_after_body'], clone=True) as taps, torch.no_grad():
        model(image)
        expected = model.conv_after_body(manual_body_output(model, image, 2))
        assert torch.equal(taps.features['conv_after_body'], expected)


class TupleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, image):
        features = self.conv(image)
        return features, 2 * features, 'not a tensor'


class HoldsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleOutput()

    def forward(self, image):
        return self.block(image)[0]


def test_tuple_outputs_take_element_zero_or_the_given_index(image):
    model = HoldsTuple()
    with FeatureTaps(model, ['block', 'block:1']) as taps, torch.no_grad():
        model(image)
        first, second = taps.feature_list()
        assert torch.equal(first, model.block.conv(image))
        assert torch.equal(second, 2 * model.block.conv(image))
    with FeatureTaps(model, ['block:2']):
        with pytest.raises(TypeError, match='is a str, not a tensor'):
            model(image)
    with FeatureTaps(model, ['block:5']):
        with pytest.raises(IndexError, match='returns 3 elements'):
            model(image)
    with FeatureTaps(model, ['block.conv:0']):
        with pytest.raises(ValueError, match='returns a single tensor'):
            model(image)


def test_bad_arguments_are_named():
    model = tiny_edsr()
    with pytest.raises(TypeError, match='wrap a single path in a list'):
        FeatureTaps(model, 'body.1')
    with pytest.raises(ValueError, match='paths is empty'):
        FeatureTaps(model, [])
    with pytest.raises(ValueError, match='body.1 more than once'):
        FeatureTaps(model, ['body.1', 'body.1'])
    with pytest.raises(ValueError, match='integer index'):
        FeatureTaps(model, ['body.1:x'])
    wrapped = nn.DataParallel(model)
    wrapped.device_ids = [0, 1]  # what DataParallel over two GPUs holds; CPU-only machines cannot build one
    with pytest.raises(ValueError, match='DistributedDataParallel'):
        FeatureTaps(wrapped, ['body.1'])


def test_list_module_paths():
    model = tiny_edsr()
    assert list_module_paths(model, max_depth=1) == ['conv_first', 'body', 'conv_after_body', 'upsample',
                                                     'conv_last']
    depth_two = list_module_paths(nn.DataParallel(model), max_depth=2)
    assert depth_two[:5] == ['conv_first', 'body', 'body.0', 'body.1', 'body.2']
    assert 'body.0.conv1' not in depth_two and 'body.0.conv1' in list_module_paths(model)
    with pytest.raises(ValueError, match='max_depth'):
        list_module_paths(model, max_depth=0)
    model.train()
    table = describe_module_paths(model, torch.rand(1, 3, 5, 4), max_depth=2).splitlines()
    assert table[2].split() == ['body.0', 'ResidualBlockNoBN', '(1,', '8,', '5,', '4)']
    assert table[-1].split() == ['conv_last', 'Conv2d', '(1,', '3,', '10,', '8)']
    assert model.training  # restored after the probing forward in eval mode
