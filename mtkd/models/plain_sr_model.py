"""``PlainSRModel``: BasicSR's ``SRModel`` with what a KD framework needs from its base model.

Differences from BasicSR's ``SRModel`` (everything else is inherited):
- weights load through :func:`mtkd.weights.loading.load_weights`: every format (raw, ``params``/``params_ema``,
  ``module.``, safetensors, official EDSR/RCAN layouts), ``weights_only=True``, strict with a readable
  mismatch report;
- option blocks are never mutated (BasicSR pops ``type`` out of ``optim_g`` and ``scheduler``);
  ``AdamW`` is supported besides ``Adam``;
- checkpoints and training states are written atomically (temporary file, then rename);
- validation keeps per-image metric values, and in test mode writes ``results/<name>/metrics.json``
  (mean and per-image values for each dataset), so tables never parse logs. BasicSR's validation loop
  only keeps running sums, which is why :meth:`nondist_validation` is re-implemented here; subclasses add
  reference rows (teachers, ensembles, targets) through :meth:`reference_outputs`, scored once per dataset;
- one training step for every mtkd model: subclasses override :meth:`compute_losses` only; the update
  (AMP, accumulation, clipping, the non-finite guard) is :class:`mtkd.training.optimization.OptimizerStep`, with no host
  synchronisation (losses are logged from device values at ``print_freq``); every loss is computed in fp32 and
  the teacher side outside the student's autocast (:mod:`mtkd.training.precision`); the speed options ``channels_last``
  (before DDP wraps the network), ``compile`` (of the wrapper, so DDP keeps overlapping its all-reduce) and
  ``fast_matmul`` are applied at construction, and validation runs the plain, uncompiled network
  (docs/performance.md);
- training states carry the random-generator states, so ``--auto_resume`` continues exactly; Ctrl-C saves a
  resumable state; ``logger.keep_checkpoints`` keeps the newest N (:mod:`mtkd.training.resume`, docs/training.md);
- DDP also on CPU processes (gloo), ``no_sync`` inside accumulation windows, validation sharded over the ranks
  (:meth:`dist_validation`), and an optional edge loss (``train.edge_opt``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from basicsr.models import lr_scheduler

from mtkd.metrics.lpips_metric import available_metrics
from mtkd.training import distributed, precision, resume, runtime
from mtkd.training.optimization import OptimizerStep
from mtkd.transforms.padding import run_padded
from mtkd.transforms.self_ensemble import self_ensemble
from mtkd.utils.fileio import atomic_torch_save, atomic_write, atomic_write_json
from mtkd.weights.loading import load_weights, read_checkpoint

METRICS_FILE = 'metrics.json'


@MODEL_REGISTRY.register()
class PlainSRModel(SRModel):
    """Single-network SR training and testing (the student alone, or any model under test)."""

    def __init__(self, opt):
        precision.set_float32_precision(bool(opt.get('fast_matmul')))  # also set by the entry points
        super().__init__(opt)
        if opt.get('channels_last'):  # net_g was converted before DDP wrapped it (model_to_device)
            for network in self.frozen_networks() + ([self.net_g_ema] if hasattr(self, 'net_g_ema') else []):
                network.to(memory_format=torch.channels_last)
        if opt.get('compile'):
            # In place (nn.Module.compile): parameter names and checkpoints stay those of the plain network. The
            # outermost module is compiled, the DDP wrapper under DDP, so that dynamo's DDP optimizer splits the
            # graph at the gradient buckets and the all-reduce still overlaps the backward. Validation runs the
            # bare module uncompiled (run_for_test).
            self.net_g.compile(mode=opt.get('compile_mode', 'default'))

    def model_to_device(self, net):
        """BasicSR's placement and DDP wrapping, with ``channels_last`` applied before DDP is built (DDP's buckets
        take the parameters' strides), and DDP on CPU processes too (gloo), which BasicSR ties to a CUDA device."""
        net = net.to(self.device)
        if self.opt.get('channels_last'):
            net = net.to(memory_format=torch.channels_last)
        if self.opt['dist'] and self.device.type == 'cpu':
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(net, find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return super().model_to_device(net)

    def frozen_precision(self) -> contextlib.AbstractContextManager:
        """Where the teacher side runs inside a training step: fp32 (out of the student's autocast) unless
        ``amp_teachers`` (:func:`mtkd.training.precision.frozen_autocast`)."""
        return precision.frozen_autocast(self.device, bool(self.opt.get('use_amp')),
                                         bool(self.opt.get('amp_teachers')))

    def validation_network(self) -> torch.nn.Module:
        """The network validation and testing run: the EMA network if any, else ``net_g``, without its DDP wrapper
        (a wrapper's forward may broadcast buffers, a collective that ranks validating different images would
        not all join)."""
        return self.get_bare_model(getattr(self, 'net_g_ema', self.net_g))

    def frozen_networks(self) -> list[torch.nn.Module]:
        """Teachers and other frozen networks that run with the student (same memory format and precision)."""
        teachers = getattr(self, 'teachers', None)
        return [teachers.network(name) for name in teachers.names] if teachers is not None else []

    # ---- weights -------------------------------------------------------------------------------------
    def load_network(self, net, load_path, strict=True, param_key='auto'):
        """Load ``load_path`` into ``net`` with mtkd's loader (``key_format_g`` from ``path``)."""
        logger = get_root_logger()
        key_format = self.opt['path'].get('key_format_g', 'basicsr')
        if param_key == 'params_ema':
            checkpoint = read_checkpoint(load_path)
            if not (isinstance(checkpoint, dict) and 'params_ema' in checkpoint):
                logger.info(f'{load_path} has no params_ema: the EMA network starts from the same weights.')
                param_key = 'auto'
        load_weights(net, load_path, param_key=param_key, strict=strict, key_format=key_format, logger=logger)
        logger.info(f'Loaded {type(self.get_bare_model(net)).__name__} from {load_path} '
                    f'(param_key={param_key}, key_format={key_format}, strict={strict}).')

    def checkpoint_metadata(self) -> dict:
        """Plain (non-tensor) facts saved beside ``params`` in every checkpoint, e.g. a KA's teacher list."""
        return {}

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """Save ``params`` (and ``params_ema``) atomically as ``models/<label>_<iter>.pth``."""
        label = 'latest' if current_iter == -1 else current_iter
        path = os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError('save_network: one param_key per network is needed.')
        checkpoint = {}
        for network, key in zip(nets, keys):
            state = self.get_bare_model(network).state_dict()
            checkpoint[key] = OrderedDict((name.removeprefix('module.'), value.detach().cpu())
                                          for name, value in state.items())
        checkpoint.update(self.checkpoint_metadata())
        atomic_torch_save(checkpoint, path)

    @master_only
    def save_training_state(self, epoch, current_iter):
        """Save optimizer, scheduler, AMP-scaler and random-generator states atomically (``<iter>.state``)."""
        if current_iter == -1:
            return
        per_rank = getattr(self, '_rng_per_rank', None) or [resume.rng_states()]
        state = {'epoch': epoch, 'iter': current_iter, 'name': self.opt['name'],
                 'optimizers': [optimizer.state_dict() for optimizer in self.optimizers],
                 'schedulers': [scheduler.state_dict() for scheduler in self.schedulers],
                 'rng': per_rank[0], 'rng_per_rank': per_rank}
        if hasattr(self, 'optimizer_step'):
            state['optimizer_step'] = self.optimizer_step.state_dict()
        atomic_torch_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        """BasicSR's resume (optimizers, schedulers), then the data position and random generators (exact)."""
        super().resume_training(resume_state)
        if 'optimizer_step' in resume_state:
            self.optimizer_step.load_state_dict(resume_state['optimizer_step'])
        rank = self.opt.get('rank', 0)
        rng = resume.rank_rng_states(resume_state, rank)
        if rng is None and rank > 0:
            get_root_logger().warning(f'rank {rank} has no saved random-generator state (the saved job had fewer '
                                      'processes): it continues with its fresh seed')
        resume.expect_resume(resume_state['epoch'], resume_state['iter'], rng)
        if self.opt['logger'].get('loss_jsonl'):
            self._truncate_loss_lines(resume_state['iter'])

    @master_only
    def _truncate_loss_lines(self, iteration: int) -> None:
        """Drop the ``losses.jsonl`` lines after ``iteration``: the resumed run logs those iterations again."""
        path = os.path.join(self.opt['path']['experiments_root'], 'losses.jsonl')
        if not os.path.isfile(path):
            return
        with open(path, encoding='utf-8') as handle:
            lines = handle.readlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line)['iter'] <= iteration:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
        if len(kept) != len(lines):
            atomic_write(path, lambda handle: handle.write(''.join(kept).encode('utf-8')))

    def save(self, epoch, current_iter):
        # Every rank's generators, gathered before rank 0 writes the state (each rank resumes its own stream).
        self._rng_per_rank = resume.rng_states_of_every_rank() if current_iter != -1 else None
        super().save(epoch, current_iter)
        keep = self.opt['logger'].get('keep_checkpoints')
        if keep and current_iter != -1:
            self._prune_checkpoints(keep)

    @master_only
    def _prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest ``keep`` numbered checkpoints and states (``*_latest.pth`` stays)."""
        for folder, pattern in ((self.opt['path']['models'], r'^(.+)_(\d+)\.pth$'),
                                (self.opt['path']['training_states'], r'^()(\d+)\.state$')):
            groups: dict[str, list[tuple[int, str]]] = {}
            for name in os.listdir(folder):
                match = re.match(pattern, name)
                if match:
                    groups.setdefault(match.group(1), []).append((int(match.group(2)), name))
            for entries in groups.values():
                for _, name in sorted(entries)[:-keep]:
                    os.remove(os.path.join(folder, name))

    def _save_and_exit(self) -> None:
        """Ctrl-C: save a resumable state of the last finished iteration, then exit (status 130). Under DDP every
        rank comes here at the same iteration (:attr:`OptimizerStep.stop_requested`); rank 0 saves and the others
        wait for it, since torchrun ends the remaining workers as soon as one exits."""
        iteration = self._current_iter
        if iteration > 0:
            self.save(resume.current_epoch(iteration), iteration)
        distributed.barrier()
        get_root_logger().warning(f'Interrupted: saved a resumable state at iteration {iteration}; continue with '
                                  'the same command plus --auto_resume.')
        raise SystemExit(resume.EXIT_INTERRUPTED)

    def _on_local_interrupt(self) -> None:
        """This process got Ctrl-C. One process: save and exit now. Under DDP the ranks may notice it at different
        iterations: the flag travels with the step's all-reduce and every rank stops at the same iteration."""
        if not self.opt.get('dist'):
            self._save_and_exit()

    # ---- losses: BasicSR's pixel/perceptual terms plus an optional edge term -----------------------------
    def init_training_settings(self):
        train = self.opt['train']
        edge_options = train.get('edge_opt')
        self.cri_edge = build_loss(dict(edge_options)).to(self.device) if edge_options else None
        if self.cri_edge is not None and not (train.get('pixel_opt') or train.get('perceptual_opt')):
            # SRModel refuses to start without pixel or perceptual loss; an edge-only run is legitimate.
            raise ValueError('edge_opt alone is not supported: add pixel_opt (loss_weight 0 disables it)')
        super().init_training_settings()
        self.optimizer_step = OptimizerStep(
            self.optimizer_g, self.trainable_parameters(), self.device, use_amp=bool(self.opt.get('use_amp')),
            amp_dtype=self.opt.get('amp_dtype', 'fp16'), accumulate=int(train.get('accumulate', 1)),
            grad_clip_norm=train.get('grad_clip_norm'), max_nonfinite_losses=int(train.get('max_nonfinite_losses', 5)),
            distributed=bool(self.opt.get('dist')), logger=get_root_logger(),
            interrupted=lambda: resume.LOOP.interrupted)
        self._current_iter = 0
        resume.register_interrupt(self._on_local_interrupt)

    def image_losses(self, output: torch.Tensor, gt: torch.Tensor, loss_dict: OrderedDict) -> torch.Tensor:
        """Sum of the terms against the ground truth (pixel, perceptual, style, edge), recorded in ``loss_dict``."""
        total = output.new_zeros((), dtype=torch.float32)
        if self.cri_pix is not None:
            total = total + loss_dict.setdefault('l_pix', precision.fp32_loss(self.cri_pix, output, gt))
        if self.cri_perceptual is not None:
            l_percep, l_style = precision.fp32_loss(self.cri_perceptual, output, gt)
            for name, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    loss_dict[name] = value
                    total = total + value
        if self.cri_edge is not None:
            total = total + loss_dict.setdefault('l_edge', precision.fp32_loss(self.cri_edge, output, gt))
        return total

    # ---- one training iteration: subclasses override compute_losses (and after_backward) ------------------
    def feed_data(self, data):
        # Asynchronous host-to-device copies: the loader pins its batches on CUDA (pin_memory, mtkd.training.runtime).
        self.lq = data['lq'].to(self.device, non_blocking=True)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device, non_blocking=True)
        if self.opt.get('channels_last'):
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)
            if hasattr(self, 'gt'):
                self.gt = self.gt.contiguous(memory_format=torch.channels_last)

    def compute_losses(self, loss_dict: OrderedDict) -> torch.Tensor:
        """Forward pass and total loss of one iteration (under autocast when ``use_amp``); sets ``self.output``."""
        self.output = self.net_g(self.lq)
        return self.image_losses(self.output, self.gt, loss_dict)

    def after_backward(self) -> None:
        """Hook after the backward pass (e.g. release feature taps)."""

    def optimize_parameters(self, current_iter):
        self._current_iter = current_iter
        loss_dict = OrderedDict()
        with self.gradient_sync(current_iter):
            with self.optimizer_step.autocast():
                total = self.compute_losses(loss_dict)
            taken = self.optimizer_step(total, current_iter)
        self.after_backward()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if taken is not None and self.ema_decay > 0:
            self.update_ema(taken)
        if self.opt['logger'].get('loss_jsonl'):
            self._append_loss_line(current_iter, loss_dict)
        if self.optimizer_step.stop_requested:  # a Ctrl-C on some rank, agreed by all
            self._save_and_exit()

    def gradient_sync(self, current_iter: int) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` for the iterations inside an accumulation window (forward and backward): gradients
        are all-reduced once per optimizer step, not once per micro-batch."""
        accumulate = int(self.opt['train'].get('accumulate', 1))
        if accumulate > 1 and hasattr(self.net_g, 'no_sync') and not OptimizerStep.window_ends(current_iter,
                                                                                               accumulate):
            return self.net_g.no_sync()
        return contextlib.nullcontext()

    @torch.no_grad()
    def update_ema(self, taken: torch.Tensor) -> None:
        """BasicSR's EMA update of ``net_g_ema`` where the optimizer step was taken, and none where it was skipped
        (a non-finite loss, a GradScaler overflow): ``taken`` is a device flag, so no host sync."""
        weight = (1 - self.ema_decay) * taken.to(torch.float32)
        ema_parameters = dict(self.net_g_ema.named_parameters())
        for name, parameter in self.get_bare_model(self.net_g).named_parameters():
            ema_parameters[name].lerp_(parameter.detach(), weight.to(parameter.dtype))

    def reduce_loss_dict(self, loss_dict):
        """The step's losses as detached device scalars: no ``.item()`` per iteration (BasicSR's version syncs the
        host and all-reduces at every step). :meth:`get_current_log` turns them into numbers when logging."""
        return OrderedDict((name, value.detach().float().mean()) for name, value in loss_dict.items())

    def get_current_log(self):
        """The last step's losses as floats, averaged over the ranks under DDP (BasicSR's loop calls this on every
        rank at the same iterations)."""
        names = list(self.log_dict)
        if not names:
            return OrderedDict()
        values = torch.stack([torch.as_tensor(self.log_dict[name], dtype=torch.float32, device=self.device)
                              for name in names])
        if self.opt.get('dist'):
            values = values.to(distributed.collective_device())
            torch.distributed.all_reduce(values)
            values = values / self.opt['world_size']
        return OrderedDict(zip(names, values.tolist()))

    @master_only
    def _append_loss_line(self, current_iter: int, loss_dict: OrderedDict) -> None:
        values = {name: float(value.detach().float().mean()) for name, value in loss_dict.items()}
        path = os.path.join(self.opt['path']['experiments_root'], 'losses.jsonl')
        with open(path, 'a', encoding='utf-8') as handle:
            handle.write(json.dumps({'iter': current_iter, **values}) + '\n')

    # ---- optimisation (options are read, never popped) -------------------------------------------------
    def get_optimizer(self, optim_type, params, lr, **kwargs):
        if optim_type == 'Adan':  # SRDTKD names an Adan switch; mtkd's own implementation (mtkd.training.adan)
            from mtkd.training.adan import Adan

            return Adan(params, lr, **kwargs)
        if optim_type not in ('Adam', 'AdamW'):
            raise ValueError(f"optimizer '{optim_type}' is not supported; use Adam, AdamW or Adan.")
        if kwargs.get('fused') is None and not kwargs.get('foreach') and not kwargs.get('differentiable'):
            # The fused kernel skips a step with non-finite gradients on the device (mtkd.training.optimization: no host
            # sync per step). optim_g.fused: false restores torch's default implementation.
            kwargs['fused'] = True
        return getattr(torch.optim, optim_type)(params, lr, **kwargs)

    def trainable_parameters(self):
        """Parameters of the trained network(s) (subclasses add their own, teachers never)."""
        return [parameter for parameter in self.net_g.parameters() if parameter.requires_grad]

    def setup_optimizers(self):
        arguments = dict(self.opt['train']['optim_g'])
        optim_type = arguments.pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, self.trainable_parameters(), **arguments)
        self.optimizers.append(self.optimizer_g)

    def setup_schedulers(self):
        arguments = dict(self.opt['train']['scheduler'])
        scheduler_type = arguments.pop('type')
        scheduler_class = (lr_scheduler.CosineAnnealingRestartLR if scheduler_type == 'CosineAnnealingRestartLR'
                           else lr_scheduler.MultiStepRestartLR)
        for optimizer in self.optimizers:
            self.schedulers.append(scheduler_class(optimizer, **arguments))

    # ---- inference -----------------------------------------------------------------------------------
    def test(self):
        """Inference on ``self.lq`` (EMA network when there is one), padded to ``val.pad_multiple`` if set, the x8
        self-ensemble with ``val.self_ensemble``."""
        network = self.validation_network()
        val_options = self.opt.get('val') or {}

        def run(images: torch.Tensor) -> torch.Tensor:
            return run_padded(network, images, val_options.get('pad_multiple'), self.opt['scale'],
                              val_options.get('pad_mode', 'symmetric'))

        self.output = self.run_for_test(network, run)

    def run_for_test(self, network: torch.nn.Module, run) -> torch.Tensor:
        """``run(self.lq)`` with ``network`` in eval mode, uncompiled and without grad (its mode restored after), or
        its x8 self-ensemble (:func:`mtkd.transforms.self_ensemble.self_ensemble`) when ``val.self_ensemble`` is set.
        Uncompiled: every validation image has its own size, and a compiled network would recompile for each."""
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad(), runtime.eager(network):
                if (self.opt.get('val') or {}).get('self_ensemble'):
                    return self_ensemble(run, self.lq)
                return run(self.lq)
        finally:
            network.train(was_training)

    # ---- validation with per-image records ---------------------------------------------------------------
    def reference_outputs(self) -> dict[str, torch.Tensor]:
        """Reference images to score beside the model's output (teachers, their average, the distillation target),
        RGB [0, 1], ``(1, 3, H, W)``, for the image just tested. They do not change during training, so
        :meth:`extra_validation_outputs` asks for them at the first validation of each dataset only (every test run)."""
        return {}

    def extra_validation_outputs(self) -> dict[str, torch.Tensor]:
        """Other images to score beside the model's output: :meth:`reference_outputs`, once per dataset in training."""
        if self.opt['is_train'] and self._current_dataset in getattr(self, '_reference_rows_done', set()):
            return {}
        return self.reference_outputs()

    def _save_validation_image(self, image, image_name, dataset_name, current_iter, label=None):
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        tag = f'_{label}' if label else ''
        if self.opt['is_train']:
            path = os.path.join(self.opt['path']['visualization'], image_name, f'{image_name}_{current_iter}{tag}.png')
        else:
            path = os.path.join(self.opt['path']['visualization'], dataset_name, f'{image_name}_{suffix}{tag}.png')
        imwrite(image, path)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Validation under DDP: each rank scores every ``world``-th image (BasicSR: rank 0 alone, the others
        waiting in their next collective), then every rank gathers all per-image values, so the means, the best
        metrics and ``metrics.json`` (rank 0) cover every image exactly as in one process."""
        self._validate(dataloader, current_iter, tb_logger, save_img, *distributed.rank_and_world())

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self._validate(dataloader, current_iter, tb_logger, save_img, 0, 1)

    def _validate(self, dataloader, current_iter, tb_logger, save_img, rank: int, world: int) -> None:
        dataset_name = self._current_dataset = dataloader.dataset.opt['name']
        # Optional metrics whose weights are absent (LPIPS, optional: true) are left out with a warning.
        metric_options = available_metrics(self.opt['val'].get('metrics'), get_root_logger())
        records: dict[str, dict[str, dict[str, float]]] = {}  # output label -> image -> metric -> value
        if metric_options:
            if not hasattr(self, 'metric_results'):
                self.metric_results = {metric: 0 for metric in metric_options}
            self._initialize_best_metric_results(dataset_name)
        indices = list(range(rank, len(dataloader.dataset), world))
        if world > 1:  # this rank's share, read like BasicSR's validation loader (one image per batch)
            dataloader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataloader.dataset, indices),
                                                     batch_size=1, shuffle=False, num_workers=0)
        progress = tqdm(total=len(indices), unit='image', desc=f'Validate {dataset_name}',
                        disable=not self.opt['val'].get('pbar', False) or rank != 0)
        tb_images = int(self.opt['val'].get('tb_images', 3)) if tb_logger else 0
        scored: list[tuple[int, int, str, str, dict]] = []  # (image index, order, label, image name, values)
        for index, data in zip(indices, dataloader):
            image_name = os.path.splitext(os.path.basename(data.get('gt_path', data['lq_path'])[0]))[0]
            self.feed_data(data)
            self.test()
            outputs = {'result': self.output, **self.extra_validation_outputs()}
            if index < tb_images:
                tb_logger.add_image(f'val/{dataset_name}/{image_name}', self.output[0].detach().float().clamp(0, 1).cpu(),
                                    current_iter)
            gt_image = tensor2img([self.gt.detach().cpu()]) if hasattr(self, 'gt') else None
            for label, output in outputs.items():
                sr_image = tensor2img([output.detach().cpu()])
                if save_img and label == 'result':
                    self._save_validation_image(sr_image, image_name, dataset_name, current_iter)
                elif save_img and self.opt['val'].get('save_other_outputs'):  # teachers, their average, targets
                    self._save_validation_image(sr_image, image_name, dataset_name, current_iter, label)
                if metric_options and gt_image is not None:
                    values = {name: float(calculate_metric({'img': sr_image, 'img2': gt_image}, dict(option)))
                              for name, option in metric_options.items()}
                    scored.append((index, len(scored), label, image_name, values))
                elif metric_options:  # no-reference metrics (e.g. NIQE) on LQ-only data
                    values = {name: float(calculate_metric({'img': sr_image}, dict(option)))
                              for name, option in metric_options.items()}
                    scored.append((index, len(scored), label, image_name, values))
            if hasattr(self, 'gt'):
                del self.gt
            del self.lq, self.output
            progress.update(1)
        progress.close()
        if world > 1:  # every rank gets every image's values (bounded by dist_params.timeout)
            scored = sorted(entry for part in distributed.gather_objects(scored) for entry in part)
        for _, _, label, image_name, values in scored:
            records.setdefault(label, {})[image_name] = values
        self._reference_rows_done = getattr(self, '_reference_rows_done', set()) | {dataset_name}
        self.image_metric_results = records
        if not metric_options or 'result' not in records:
            return
        means = self.mean_metrics(records['result'])
        self.metric_results = dict(means)
        for metric, value in means.items():
            self._update_best_metric_result(dataset_name, metric, value, current_iter)
        self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        self._log_extra_outputs(dataset_name, records, current_iter, tb_logger)
        if not self.opt['is_train']:
            self.write_metrics_file(dataset_name, records)

    @staticmethod
    def mean_metrics(per_image: dict[str, dict[str, float]]) -> dict[str, float]:
        """Mean of each metric over the images (the field averages per-image values)."""
        names = next(iter(per_image.values())).keys()
        return {name: float(np.mean([values[name] for values in per_image.values()])) for name in names}

    def _log_extra_outputs(self, dataset_name, records, current_iter, tb_logger):
        extra = [label for label in records if label != 'result']
        if not extra:
            return
        lines = [f'Validation {dataset_name}, other outputs:']
        for label in extra:
            means = self.mean_metrics(records[label])
            lines.append(f'\t {label}: ' + '  '.join(f'{name}: {value:.4f}' for name, value in means.items()))
            if tb_logger:
                for name, value in means.items():
                    tb_logger.add_scalar(f'metrics/{dataset_name}/{label}/{name}', value, current_iter)
        get_root_logger().info('\n'.join(lines))

    @master_only
    def write_metrics_file(self, dataset_name, records):
        """Write ``results/<name>/metrics.json``: every dataset tested so far in this run (atomic write)."""
        entry = {'mean': self.mean_metrics(records['result']), 'images': records['result']}
        others = {label: {'mean': self.mean_metrics(values), 'images': values}
                  for label, values in records.items() if label != 'result'}
        if others:
            entry['other_outputs'] = others
        self.tested_datasets = {**getattr(self, 'tested_datasets', {}), dataset_name: entry}
        content = {'name': self.opt['name'], 'scale': self.opt['scale'], 'network': dict(self.opt['network_g']),
                   'self_ensemble': bool((self.opt.get('val') or {}).get('self_ensemble')),
                   'datasets': self.tested_datasets}
        path = os.path.join(self.opt['path']['results_root'], METRICS_FILE)
        atomic_write_json(content, path)
        get_root_logger().info(f'Metrics of {dataset_name} written to {path}')
