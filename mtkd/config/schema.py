"""Typed schema of mtkd option files (BasicSR's vocabulary), with every default in one place.

Every block refuses unknown keys (``extra='forbid'``); ``type`` + arguments blocks (networks, losses,
metrics, optimizers, schedulers) are checked against the signature of what they name, in
:mod:`mtkd.config.validate`. Model types and dataset types may register a schema of their own
(:func:`register_model_options`, :func:`register_dataset_options`), so a stage-1 option file can have
``teachers:`` while a plain SR file cannot.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SUPPORTED_OPTIMIZERS = ('Adam', 'AdamW', 'Adan')
SUPPORTED_SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')
#: Largest seed: NumPy takes seeds below 2**32, and each DDP rank adds its rank.
MAX_SEED = 2 ** 32 - 1 - 4096


class StrictBlock(BaseModel):
    """A block of options: unknown keys are refused, values are typed and immutable."""
    model_config = ConfigDict(extra='forbid', frozen=True)


class CallableBlock(BaseModel):
    """``type`` plus keyword arguments of what it names (checked against its signature later)."""
    model_config = ConfigDict(extra='allow', frozen=True)
    type: str

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments, without ``type``."""
        return dict(self.model_extra or {})


class NetworkOptions(CallableBlock):
    """``network_g``: a registered arch and its constructor arguments."""


class LossOptions(CallableBlock):
    """A loss term: a registered loss, ``loss_weight``, ``reduction`` and its own arguments."""


class FeatureLossOptions(CallableBlock):
    """A feature-distillation loss (AT, FAKD) and the layers it compares, addressed by module path."""
    student_layers: list[str] = Field(min_length=1, description="student module paths, e.g. ['body.3']")
    teacher_layers: list[str] = Field(min_length=1, description='teacher module paths, one per student layer')


class MetricOptions(CallableBlock):
    """A validation metric: a registered metric function and its arguments."""
    better: Literal['higher', 'lower'] = 'higher'


class OptimizerOptions(CallableBlock):
    """``optim_g``: ``type`` (Adam | AdamW | Adan) and the optimizer's arguments (``lr``, ``betas``, ...)."""
    lr: float = Field(gt=0)


class SchedulerOptions(CallableBlock):
    """``scheduler``: a BasicSR learning-rate scheduler and its arguments."""


class IOBackendOptions(StrictBlock):
    type: Literal['disk', 'lmdb'] = 'disk'


class DatasetOptions(StrictBlock):
    """Options every dataset type shares (BasicSR's data-loader vocabulary)."""
    name: str
    type: str
    phase: str | None = None  # filled from the block's key (train / val / test)
    scale: int | None = None  # filled from the top-level scale; refused when it differs
    io_backend: IOBackendOptions = IOBackendOptions()
    use_shuffle: bool = True
    num_worker_per_gpu: int = Field(default=2, ge=0)
    batch_size_per_gpu: int = Field(default=1, ge=1)
    dataset_enlarge_ratio: int = Field(default=1, ge=1)
    prefetch_mode: Literal['cpu', 'cuda'] | None = None
    pin_memory: bool | None = Field(default=None, description='page-locked batches for asynchronous copies to '
                                    'the GPU; null: true for the training set on CUDA (mtkd.training.runtime)')
    persistent_workers: bool | None = Field(default=None, description='keep the data workers between epochs; '
                                            'null: true for the training set when it has workers')
    num_prefetch_queue: int = Field(default=1, ge=1)


class PairedImageDatasetOptions(DatasetOptions):
    """BasicSR's ``PairedImageDataset``: GT and LQ folders; random crop and flips when training."""
    dataroot_gt: str
    dataroot_lq: str
    meta_info_file: str | None = None
    filename_tmpl: str = '{}'
    gt_size: int | None = Field(default=None, ge=1)
    use_hflip: bool = True
    use_rot: bool = True
    color: Literal['y'] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    optional: bool = Field(default=False, description='validation/test only: when its folders are missing, leave '
                           'this dataset out of the run with a note (benchmarks users build themselves: Urban100, '
                           'Manga109) instead of refusing the file')


class SingleImageDatasetOptions(DatasetOptions):
    """BasicSR's ``SingleImageDataset``: LQ images only (inference without ground truth)."""
    dataroot_lq: str
    meta_info_file: str | None = None
    color: Literal['y'] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


class PathOptions(StrictBlock):
    """``path``: weights to start from, states to resume, and where the run writes (BasicSR's keys)."""
    experiments_root: str | None = Field(default=None, description='training: the experiment\'s own folder '
                                         '(models, training_states, logs); default experiments/<name>')
    results_root: str | None = Field(default=None, description='testing: the folder of this test run\'s log, '
                                     'images and metrics.json; default results/<name>')
    pretrain_network_g: str | None = None
    param_key_g: str | None = Field(default='auto', description="'auto', a key such as 'params_ema', or null")
    strict_load_g: bool = True
    key_format_g: str = Field(default='basicsr', description='key layout of pretrain_network_g (mtkd.weights.formats)')
    resume_state: str | None = None


class TeacherOptions(StrictBlock):
    """One frozen teacher: a registered arch, its weights, and how to run it (test-time padding)."""
    name: str = Field(min_length=1)
    network: NetworkOptions
    weights: str | None = Field(default=None, description='checkpoint path; required unless building with random '
                                'weights for a smoke test')
    param_key: str | None = 'auto'
    key_format: str = 'basicsr'
    strict_load: bool = True
    pad_multiple: int | None = Field(default=None, ge=1)
    pad_mode: Literal['symmetric', 'reflect', 'replicate'] = 'symmetric'
    self_ensemble: bool = Field(default=False, description='use the mean of the 8 rotated/mirrored runs of the '
                                'teacher (EDSR\'s "+", 8x the cost; cached outputs are computed once)')
    weights_sha256: str | None = Field(default=None, pattern=r'^[0-9a-f]{64}$', description='the weights file\'s '
                                       'sha256, checked before the teacher is loaded (e.g. committed demo teachers)')


class TrainOptions(StrictBlock):
    """``train``: optimisation of ``network_g``."""
    ema_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    optim_g: OptimizerOptions
    scheduler: SchedulerOptions
    total_iter: int = Field(ge=1)
    warmup_iter: int = -1
    pixel_opt: LossOptions | None = None
    perceptual_opt: LossOptions | None = None
    edge_opt: LossOptions | None = Field(default=None, description='edge loss between output and GT '
                                         '(EdgeLoss; EdgeSRN and the DTKD perceptual students)')
    grad_clip_norm: float | None = Field(default=None, gt=0, description='clip the global L2 norm of the '
                                         'gradients to this value before each optimizer step')
    accumulate: int = Field(default=1, ge=1, description='gradient accumulation: one optimizer step every '
                            '`accumulate` iterations (batches); the loss is divided by it')
    max_nonfinite_losses: int = Field(default=5, ge=1, description='a NaN/inf loss skips the update with a '
                                      'warning; this many in a row stop the run')


class ValOptions(StrictBlock):
    """``val``: validation during training and the metrics of ``mtkd/test.py``."""
    val_freq: int = Field(default=5000, ge=1)
    save_img: bool = False
    save_other_outputs: bool = Field(default=False, description='with save_img: also save the other scored images '
                                     '(each teacher, the teacher average, the distillation target) as '
                                     '<image>_<suffix>_<label>.png')
    suffix: str | None = None
    pbar: bool = False
    metrics: dict[str, MetricOptions] | None = None
    pad_multiple: int | None = Field(default=None, ge=1, description='pad test inputs to this multiple '
                                     '(window size of window-attention networks), crop the output back')
    pad_mode: Literal['symmetric', 'reflect', 'replicate'] = 'symmetric'
    self_ensemble: bool = Field(default=False, description='score the mean of the 8 rotated/mirrored runs of '
                                'the model (EDSR\'s "+" numbers, 8x the cost); teachers have their own switch')
    tb_images: int = Field(default=3, ge=0, description='validation outputs of the first N images sent to '
                           'TensorBoard at each validation (with use_tb_logger)')


class WandbOptions(StrictBlock):
    project: str | None = None
    resume_id: str | None = None


class LoggerOptions(StrictBlock):
    print_freq: int = Field(default=100, ge=1)
    save_checkpoint_freq: int = Field(default=5000, ge=1)
    keep_checkpoints: int | None = Field(default=None, ge=1, description='keep only the newest N checkpoints '
                                         'and training states (null: keep all)')
    loss_jsonl: bool = Field(default=False, description='also write every iteration\'s losses at full precision '
                             'to experiments/<name>/losses.jsonl')
    use_tb_logger: bool = True
    wandb: WandbOptions | None = None


class DistOptions(StrictBlock):
    backend: Literal['nccl', 'gloo'] = 'nccl'
    port: int | None = None
    timeout: int = Field(default=1800, ge=1, description='seconds any collective may wait (process-group '
                         'timeout; NCCL\'s own default is 600): covers each rank\'s share of a teacher-cache build '
                         'and of a validation')


class SROptions(StrictBlock):
    """A whole option file for a single-network SR model (train or test)."""
    name: str = Field(description='the run\'s name: its folder under experiments/ or results/ (one folder name, '
                      'no path)')
    model_type: str
    scale: int = Field(ge=1, le=8)
    num_gpu: int | Literal['auto'] = Field(default='auto', description="'auto': every visible GPU under a "
                                           'launcher, one without; 0: CPU')
    manual_seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description='seed of every random generator '
                                    '(plus the rank under DDP); null: a random one, logged')
    datasets: dict[str, dict[str, Any]]  # each validated by its type's schema (DATASET_OPTION_SCHEMAS)
    network_g: NetworkOptions
    path: PathOptions = PathOptions()
    train: TrainOptions | None = None
    val: ValOptions | None = None
    logger: LoggerOptions = LoggerOptions()
    dist_params: DistOptions | None = None
    find_unused_parameters: bool = False
    # Speed options shared by every model (names as in traiNNer-redux / neosr); docs/performance.md.
    use_amp: bool = Field(default=False, description='automatic mixed precision for the training step: the '
                          'trained network under autocast; losses in fp32; teachers/aggregator in fp32 unless '
                          'amp_teachers (mtkd.training.precision)')
    amp_dtype: Literal['bf16', 'fp16'] = Field(default='fp16', description='fp16 (default; adds a GradScaler) '
                                               'rounds [0, 1] images 8x finer than bf16 (docs/performance.md)')
    amp_teachers: bool = Field(default=False, description='with use_amp: run the teachers and the aggregator in '
                               'amp_dtype too (faster; targets carry its rounding); default fp32')
    channels_last: bool = Field(default=False, description='NHWC memory format for networks and batches')
    compile: bool = Field(default=False, description='torch.compile the trained network (in place)')
    compile_mode: Literal['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'] = 'default'
    fast_matmul: bool = Field(default=False, description='TF32 matmul and cuDNN convolutions on Ampere+ GPUs; '
                              'false: IEEE fp32 for both (PyTorch\'s default runs convolutions in TF32)')

    @field_validator('name')
    @classmethod
    def _single_folder_name(cls, name: str) -> str:
        if not name or name in ('.', '..') or '/' in name or '\\' in name or name != name.strip():
            raise ValueError(f'the name {name!r} must be one folder name (it becomes experiments/<name> or '
                             'results/<name>): no /, \\, leading or trailing spaces, "." or ".."; to write elsewhere, set '
                             'path.experiments_root (training) or path.results_root (testing) to that folder')
        return name

    def extra_problems(self, is_train: bool) -> list:
        """Model-specific combinations to refuse (a list of ``OptionProblem``); none for a plain SR model."""
        return []


#: Option schema of each model type; unregistered types (e.g. BasicSR's SRModel) use SROptions.
MODEL_OPTION_SCHEMAS: dict[str, type[SROptions]] = {}
#: Option schema of each dataset type.
DATASET_OPTION_SCHEMAS: dict[str, type[DatasetOptions]] = {
    'PairedImageDataset': PairedImageDatasetOptions,
    'SingleImageDataset': SingleImageDatasetOptions,
}


def register_model_options(model_type: str):
    """Class decorator: the option schema of ``model_type``."""
    def register(schema: type[SROptions]) -> type[SROptions]:
        MODEL_OPTION_SCHEMAS[model_type] = schema
        return schema
    return register


def register_dataset_options(dataset_type: str):
    """Class decorator: the option schema of ``dataset_type``."""
    def register(schema: type[DatasetOptions]) -> type[DatasetOptions]:
        DATASET_OPTION_SCHEMAS[dataset_type] = schema
        return schema
    return register
