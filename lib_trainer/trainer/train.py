"""The training loop: one readable pass from config to LoRA files.

Maths as Stable Diffusion was trained: DDPM schedule (scaled-linear betas 0.00085-0.012, 1000 steps), epsilon or
v-prediction targets, optional noise offset and min-SNR weighting. A "step" is one optimizer update
(gradient_accumulation_steps batches), as in sd-scripts.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from lib_trainer.common.files import atomic_save
from lib_trainer.common.i18n import tr
from lib_trainer.common.tracebacks import traceback_tail

from . import buckets as bucketing
from . import data as data_mod
from .distributed import average_gradients, loss_and_stop, step_groups
from .errors import TrainingError
from .events import EventWriter
from .folders import describe_empty, scan_dataset
from .metadata import build_metadata, finalize_metadata
from .models import LoadedModel, ModelLoadError, load_model, set_attention
from .network import (
    NetworkError, create_network, describe_network, load_network_weights, network_args_used, network_state_for_file,
    unet_name_map,
)
from .optim import create_optimizer, create_scheduler, describe_optimizer, relative_step, schedule_plan
from .holdout import choose_holdout, fixed_noise_score
from .schema import ConfigError, TrainConfig, validate
from .state import load_training_state, save_training_state
from .stop_signal import StopSignal
from .text import encode_sd, encode_sdxl, tokenize

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def training_precision(requested: str, cuda: bool) -> str:
    """The mixed precision accelerate gets: what was asked for on CUDA, fp32 ("no") elsewhere (CPU autocast is slow
    on most CPUs, and a CPU run is a demo or a test)."""
    return requested if cuda else "no"


def atomic_save_safetensors(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata))


class Trainer:
    def __init__(self, cfg: TrainConfig, events: EventWriter, stop: Optional[StopSignal] = None):
        self.cfg = cfg
        self.events = events
        self.stop = stop or StopSignal()
        self.checkpoints: list[str] = []

    # ---- set-up -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator

        cfg = self.cfg
        cuda = torch.cuda.is_available()
        mixed = training_precision(cfg.mixed_precision, cuda)
        if cfg.mixed_precision != mixed:
            self.warn(tr("mixed_precision={precision} needs a CUDA GPU; training in fp32 on the CPU",
                         precision=cfg.mixed_precision))
        for key in ("full_fp16", "full_bf16"):
            if getattr(cfg, key):
                self.warn(tr("{key} is not done here: the network trains in fp32 (mixed precision applies to the "
                             "model), which takes a little more memory; the file's metadata says ss_full_fp16 = False",
                             key=key))
        if cfg.bucket_no_upscale and not cfg.enable_bucket:
            self.warn(tr("bucket_no_upscale needs enable_bucket = true; without buckets every picture is scaled to "
                         "the resolution"))
        self.mixed_precision = mixed  # what the metadata records
        self.accelerator = Accelerator(mixed_precision=mixed)  # accumulation is done in train()
        self.device = self.accelerator.device
        self.events.enabled = self.accelerator.is_main_process
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed, torch.float32)
        self.seed = cfg.seed if cfg.seed is not None else random.randint(0, 2**31 - 1)
        torch.manual_seed(self.seed)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # data
        self.scan = scan_dataset(cfg.train_data_dir, cfg.reg_data_dir, caption_extension=cfg.caption_extension)
        for path, reason in self.scan.skipped:
            self.warn(tr("skipped {path}: {reason}", path=path, reason=reason), path=str(path))
        for message in self.scan.warnings:
            self.warn(message)
        if not self.scan.train_entries:
            raise TrainingError(tr("the dataset is empty: {why}", why=describe_empty(self.scan)))
        self.eval_entries, self.eval_set = choose_holdout(self.scan.train_entries, cfg.eval_holdout_images, self.seed)
        if self.eval_set == "held_out":
            held = {e.path for e in self.eval_entries}
            self.scan.entries = [e for e in self.scan.entries if e.path not in held]
            for entry in self.eval_entries:
                self.warn(tr("{name} is held out of training to score the checkpoints (eval_holdout_images = 0 "
                             "trains on every picture)", name=entry.path.name), path=str(entry.path))
        self.plan = data_mod.BatchPlan(cfg, self.scan, self.seed)

        # model
        self.model: LoadedModel = load_model(cfg.pretrained_model_name_or_path, True if cfg.v_parameterization else None)
        set_attention(self.model, cfg.attention)
        self.v_prediction = cfg.v_parameterization or self.model.v_prediction
        if self.model.arch == "sdxl" and cfg.clip_skip not in (None, 1, 2):
            self.warn(tr("clip_skip is ignored for SDXL (it always uses the penultimate layers)"))
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(
            dict(self.model.scheduler_config, prediction_type="v_prediction" if self.v_prediction else "epsilon")
        )
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(self.device)

        m = self.model
        self.train_unet = not cfg.network_train_text_encoder_only
        self.train_te = not cfg.network_train_unet_only and (cfg.text_encoder_lr is None or cfg.text_encoder_lr > 0)
        for module in [m.unet, m.vae, *m.text_encoders]:
            module.requires_grad_(False)
        vae_dtype = torch.float32 if (cfg.no_half_vae or m.arch == "sdxl") else self.weight_dtype
        m.vae.to(self.device, dtype=vae_dtype).eval()
        m.unet.to(self.device, dtype=self.weight_dtype)
        for te in m.text_encoders:
            te.to(self.device, dtype=self.weight_dtype)
        if cfg.gradient_checkpointing:
            m.unet.enable_gradient_checkpointing()
            if self.train_te:
                for te in m.text_encoders:
                    te.gradient_checkpointing_enable()
                    # transformers < 4.35 checkpoints reentrantly: the LoRA layers inside a checkpointed block get
                    # no gradient unless the block's input requires grad (the embeddings are frozen)
                    te.enable_input_require_grads()
        channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        if channels_last:
            m.unet.to(memory_format=torch.channels_last)

        # the network's random init must not depend on how much randomness loading the model used (neither
        # loader initialises layers it then overwrites, but nothing here should rely on that)
        torch.manual_seed(data_mod.derive_seed(self.seed, "network"))
        self.network = create_network(cfg, m.text_encoders, m.unet, self.train_unet, self.train_te)
        if cfg.use_dora and cfg.dora_on_output:
            self.warn(tr("wd_on_output=True keeps DoRA's magnitude per output row: A1111 1.10 and Forge apply such a "
                         "file wrongly (they normalise per input column); leave wd_on_output out for files they "
                         "apply as trained"))
        self.name_map = unet_name_map(m.unet, m.arch)
        self.network_info = describe_network(self.network)
        if cfg.network_weights:
            from .models import read_state_dict

            fit = load_network_weights(self.network, read_state_dict(Path(cfg.network_weights)), self.name_map,
                                       partial=cfg.network_weights_partial)
            self.network_info["network_weights"] = {"path": cfg.network_weights, **fit}
            if fit["partial"]:
                self.warn(tr("network_weights: {matched} of the file's {file_keys} keys loaded; {unused} of them are "
                             "not in this network and {fresh} of the network's keys start afresh",
                             matched=fit["matched"], file_keys=fit["file_keys"], unused=fit["file_keys_unused"],
                             fresh=fit["network_keys_not_in_file"]))
        self.network.to(self.device)
        m.unet.train(cfg.gradient_checkpointing)  # diffusers only checkpoints in train mode
        for te in m.text_encoders:
            te.train(cfg.gradient_checkpointing and self.train_te)

        params, _ = self.network.prepare_optimizer_params(cfg.text_encoder_lr, cfg.unet_lr, cfg.learning_rate)
        if not params:
            raise ConfigError(tr("no learning rate is above 0: set learning_rate, unet_lr or text_encoder_lr"))

        # schedule
        self.batches_per_epoch = len(self.plan.batches(0))
        self.steps_per_epoch = len(self.step_groups(0))
        if self.steps_per_epoch == 0:
            raise TrainingError(tr("there are fewer batches than GPUs: add pictures or lower train_batch_size"))
        if cfg.max_train_epochs:
            self.epochs = cfg.max_train_epochs
            self.total_steps = self.epochs * self.steps_per_epoch
        else:
            self.total_steps = cfg.max_train_steps
            self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        self.optimizer = create_optimizer(cfg, params, self.device, self.warn)
        self.optimizer_desc = describe_optimizer(self.optimizer, cfg)
        scheduler, warmup, notes = schedule_plan(cfg, self.optimizer, self.total_steps)
        for note in notes:
            self.warn(note)
        self.lr_scheduler = create_scheduler(cfg, self.optimizer, self.total_steps, scheduler, warmup)
        # not wrapped in DistributedDataParallel: see distributed.average_gradients
        self.optimizer = self.accelerator.prepare(self.optimizer)

        self.cache_text = not self.train_te and data_mod.captions_are_static(cfg)
        self.text_cache: dict[str, tuple] = {}
        self.latent_cache = (
            data_mod.LatentCache(m.new_model_hash[:16], cfg.cache_latents_to_disk)
            if cfg.cache_latents or cfg.cache_latents_to_disk else None
        )
        self.writer = None
        if cfg.logging_dir and self.accelerator.is_main_process:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(cfg.logging_dir)
        self.started_at = time.time()
        self.base_metadata = build_metadata(
            cfg, arch=m.arch, v_prediction=self.v_prediction, model_name=m.name, model_hash=m.model_hash,
            new_model_hash=m.new_model_hash, session_id=random.Random(self.seed).randint(0, 2**31),
            started_at=self.started_at, num_train_images=self.scan.num_train_items,
            num_reg_images=self.scan.num_reg_items, batches_per_epoch=self.batches_per_epoch, epochs=self.epochs,
            max_train_steps=self.total_steps, dataset_dirs=self.scan.dataset_dirs(),
            reg_dataset_dirs=self.scan.dataset_dirs(reg=True), tag_frequency=self.scan.tag_frequency(),
            bucket_info=self.plan.bucket_info() if cfg.enable_bucket else None,
            optimizer_desc=self.optimizer_desc, mixed_precision=self.mixed_precision, lr_scheduler=scheduler,
            lr_warmup_steps=warmup,
            learning_rates_used=not relative_step(self.optimizer), bucket_no_upscale=self.plan.no_upscale,
            network_args=network_args_used(cfg), train_unet=self.train_unet, train_text_encoder=self.train_te,
        )
        self.global_step = 0
        self.start_epoch = 0
        if cfg.resume:
            self.load_state(Path(cfg.resume))

    def warn(self, message: str, **fields) -> None:
        self.events.emit("warning", message=message, **fields)

    # ---- per-batch inputs -------------------------------------------------------------------------------
    def latents_for(self, batch: data_mod.Batch, flips: list[bool]) -> tuple[torch.Tensor, list]:
        """The batch's latents (from the cache, or encoded and cached) and SDXL's size conditioning.

        The VAE's sample of a picture uses noise of its own, seeded by the picture and its bucket and flip: a
        cached latent is exactly the one a fresh encoding gives, and the training noise does not depend on what
        was cached (same seed, same config, same weights; the processes of a multi-GPU run share the disk cache).
        """
        m = self.model
        latents: list[Optional[torch.Tensor]] = []
        todo = []
        for i, (sample, flip) in enumerate(zip(batch.samples, flips)):
            cached = self.latent_cache.get(sample.entry, batch.bucket, flip, sample.resized) if self.latent_cache else None
            latents.append(cached)
            if cached is None:
                todo.append(i)
        # cached latents need no picture decode; SDXL's size conditioning is plain geometry
        time_ids = [bucketing.sdxl_time_ids(s.entry.size, batch.bucket, s.resized) for s in batch.samples]
        pixel_list = {i: data_mod.pixels(batch.samples[i].entry, batch.bucket, flips[i], batch.samples[i].resized)[0]
                      for i in todo}
        if todo:
            stacked = torch.stack([pixel_list[i] for i in todo]).to(self.device, dtype=m.vae.dtype)
            with torch.no_grad():
                dist = m.vae.encode(stacked).latent_dist
                noise = torch.stack([
                    torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(data_mod.derive_seed(
                        self.seed, "latent", *self.picture_id(batch.samples[i].entry), *batch.bucket, flips[i])))
                    for i in todo
                ]).to(self.device, dist.mean.dtype)
                encoded = (dist.mean + dist.std * noise) * m.vae.config.scaling_factor
            for j, i in enumerate(todo):
                latents[i] = encoded[j]
                if self.latent_cache is not None:
                    self.latent_cache.put(batch.samples[i].entry, batch.bucket, flips[i], encoded[j],
                                          batch.samples[i].resized)
        return torch.stack([lat.to(self.device, torch.float32) for lat in latents]), time_ids

    @staticmethod
    def picture_id(entry) -> tuple[str, str]:
        """A picture's name within the dataset (the same on every machine and in every process)."""
        return entry.path.parent.name, entry.path.name

    def conditioning(self, captions: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        m = self.model
        if self.cache_text and all(c in self.text_cache for c in captions):
            hidden = torch.stack([self.text_cache[c][0] for c in captions])
            pooled = torch.stack([self.text_cache[c][1] for c in captions]) if m.arch == "sdxl" else None
            return hidden, pooled
        grad = torch.enable_grad() if self.train_te else torch.no_grad()
        # autocast: the encoders' weights are in the mixed-precision dtype, the network's layers in fp32
        with grad, self.accelerator.autocast():
            if m.arch == "sdxl":
                ids1 = tokenize(m.tokenizers[0], captions, self.cfg.max_token_length)
                ids2 = tokenize(m.tokenizers[1], captions, self.cfg.max_token_length)
                hidden, pooled = encode_sdxl(m.text_encoders, ids1, ids2)
            else:
                ids = tokenize(m.tokenizers[0], captions, self.cfg.max_token_length)
                hidden, pooled = encode_sd(m.text_encoders[0], ids, self.cfg.clip_skip), None
        if self.cache_text:
            for i, c in enumerate(captions):
                self.text_cache[c] = (hidden[i].detach(), pooled[i].detach() if pooled is not None else None)
        return hidden, pooled

    # ---- one step ---------------------------------------------------------------------------------------
    def loss_for(self, batch: data_mod.Batch, epoch: int, index: int) -> torch.Tensor:
        cfg = self.cfg
        rng = random.Random(data_mod.derive_seed(self.seed, "batch", epoch, index))
        gen = torch.Generator().manual_seed(data_mod.derive_seed(self.seed, "noise", epoch, index))
        flips = [cfg.flip_aug and rng.random() < 0.5 for _ in batch.samples]
        captions = [data_mod.caption_for(cfg, s.entry, rng) for s in batch.samples]
        latents, time_ids = self.latents_for(batch, flips)
        hidden, pooled = self.conditioning(captions)

        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=gen)
        timesteps = torch.randint(cfg.min_timestep, cfg.max_timestep, (b,), generator=gen)
        noise, timesteps = noise.to(self.device), timesteps.to(self.device)
        pred, target = self.predict(latents, noise, timesteps, hidden, pooled, time_ids)
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma:
            snr = self.alphas_cumprod[timesteps] / (1 - self.alphas_cumprod[timesteps])
            clipped = torch.clamp(snr, max=cfg.min_snr_gamma)
            loss = loss * (clipped / (snr + 1) if self.v_prediction else clipped / snr)
        if any(s.entry.is_reg for s in batch.samples):
            weights = torch.tensor([cfg.prior_loss_weight if s.entry.is_reg else 1.0 for s in batch.samples], device=self.device)
            loss = loss * weights
        return loss.mean()

    def predict(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
                pooled: Optional[torch.Tensor], time_ids: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's prediction for the noised latents and what it should have predicted (ε, or v)."""
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        unet_kwargs = {}
        if self.model.arch == "sdxl":
            ids = torch.tensor(time_ids, dtype=torch.float32, device=self.device)
            unet_kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(self.device), "time_ids": ids}
        with self.accelerator.autocast():
            pred = self.model.unet(
                noisy.to(self.weight_dtype), timesteps, hidden.to(self.device, self.weight_dtype), **unet_kwargs
            ).sample
        target = self.noise_scheduler.get_velocity(latents, noise, timesteps) if self.v_prediction else noise
        return pred, target

    # ---- the held-out score -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def inference_mode(self):
        """The network, UNet and text encoders in eval mode for a score or a sample, restored after: gradient
        checkpointing (on only in train mode) has nothing to save without gradients, and only warns."""
        modules = [self.unwrapped_network(), self.model.unet, *self.model.text_encoders]
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        try:
            yield
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)

    def fixed_noise_score(self) -> float:
        m = self.model

        def encode(entry):
            px, ids = data_mod.pixels(entry, self.plan.bucket_for(entry), False, self.plan.resized_for(entry))
            latent = m.vae.encode(px[None].to(self.device, m.vae.dtype)).latent_dist.mean.float()
            return latent * m.vae.config.scaling_factor, ids

        def denoise(latents, noise, t, captions, time_ids):
            hidden, pooled = self.conditioning(captions)
            return self.predict(latents, noise, t, hidden, pooled, time_ids)

        with self.inference_mode():
            return fixed_noise_score(self.eval_entries, encode, denoise, self.seed, self.device)

    # ---- saving -----------------------------------------------------------------------------------------
    def unwrapped_network(self):
        return self.accelerator.unwrap_model(self.network)

    def save_checkpoint(self, path: Path, epoch: int, final: bool) -> None:
        if not self.accelerator.is_main_process:
            return
        tensors = network_state_for_file(
            self.unwrapped_network(), self.name_map, SAVE_DTYPES[self.cfg.effective_save_precision]
        )
        metadata = finalize_metadata(self.base_metadata, tensors, epoch=epoch, step=self.global_step, finished=final)
        atomic_save_safetensors(tensors, path, metadata)
        self.checkpoints.append(str(path))
        self.events.emit("checkpoint", epoch=epoch, step=self.global_step, path=str(path),
                         eval_loss=round(self.fixed_noise_score(), 6), eval_set=self.eval_set)

    def save_state(self, folder: Path, epoch: int, step_in_epoch: int) -> None:
        """Everything needed to continue exactly (see state.py)."""
        if not self.accelerator.is_main_process:
            return
        save_training_state(folder, self.unwrapped_network(), self.optimizer, self.lr_scheduler,
                            getattr(self.accelerator, "scaler", None), {
                                "global_step": self.global_step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                                "seed": self.seed, "steps_per_epoch": self.steps_per_epoch,
                                "total_steps": self.total_steps})

    def load_state(self, folder: Path) -> None:
        state = load_training_state(folder, self.unwrapped_network(), self.optimizer, self.lr_scheduler,
                                    getattr(self.accelerator, "scaler", None), self.steps_per_epoch)
        self.seed = state["seed"]
        self.plan.seed = self.seed
        self.global_step = state["global_step"]
        self.start_epoch = state["epoch"]
        self.resume_step_in_epoch = state["step_in_epoch"]

    def checkpoint_path(self, suffix: str) -> Path:
        return Path(self.cfg.output_dir) / f"{self.cfg.output_name}{suffix}.safetensors"

    def state_path(self, suffix: str) -> Path:
        return Path(self.cfg.output_dir) / f"{self.cfg.output_name}{suffix}-state"

    def step_groups(self, epoch: int) -> list[list[tuple[int, data_mod.Batch]]]:
        return step_groups(self.plan.batches(epoch), self.accelerator.num_processes,
                           self.accelerator.process_index, self.cfg.gradient_accumulation_steps)

    def maybe_sample(self, epoch: int, step_based: bool) -> None:
        cfg = self.cfg
        if not cfg.sample_prompts or not self.accelerator.is_main_process:
            return
        due = (
            step_based and cfg.sample_every_n_steps and self.global_step % cfg.sample_every_n_steps == 0
        ) or (
            not step_based and cfg.sample_every_n_epochs and epoch % cfg.sample_every_n_epochs == 0
        )
        if not due:
            return
        from .sampling import draw_samples, read_prompt_file

        prompts = read_prompt_file(cfg.sample_prompts, cfg.resolution_wh)
        stem = f"{cfg.output_name}_" + (f"step{self.global_step:08d}" if step_based else f"e{epoch:06d}")
        with self.inference_mode():
            paths = draw_samples(
                self.model, prompts, sampler=cfg.sample_sampler, out_dir=cfg.effective_sample_dir, stem=stem,
                clip_skip=cfg.clip_skip, default_seed=self.seed, device=self.device, autocast=self.accelerator.autocast,
            )
        for index, path in enumerate(paths):
            self.events.emit("sample", step=self.global_step, epoch=epoch, index=index, path=str(path))

    # ---- the loop ---------------------------------------------------------------------------------------
    def train(self) -> bool:
        """Returns True when stopped early by a signal."""
        cfg = self.cfg
        m = self.model
        self.events.emit(
            "start", total_steps=self.total_steps, epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
            images=self.scan.num_train_items, reg_images=self.scan.num_reg_items, device=str(self.device),
            dtype=str(self.weight_dtype).replace("torch.", ""), arch=m.arch, v_prediction=self.v_prediction,
            resumed_from_step=self.global_step, seed=self.seed, batch_size=cfg.train_batch_size,
            eval_loss=round(self.fixed_noise_score(), 6) if self.accelerator.is_main_process else None,
            eval_set=self.eval_set, eval_images=len(self.eval_entries), **self.network_info,
        )
        loss_sum = torch.zeros((), device=self.device)
        loss_count = 0
        t_last, step_last = time.perf_counter(), self.global_step
        agreed_stop = False
        resume_step = getattr(self, "resume_step_in_epoch", 0)
        params = [p for p in self.network.parameters() if p.requires_grad]

        for epoch in range(self.start_epoch, self.epochs):
            self.unwrapped_network().train()
            for step_in_epoch, group in enumerate(self.step_groups(epoch)):
                if step_in_epoch < resume_step:
                    continue
                if self.global_step >= self.total_steps:
                    break
                for index, batch in group:
                    loss = self.loss_for(batch, epoch, index) / len(group)
                    self.accelerator.backward(loss)
                    loss_sum += loss.detach()
                loss_count += 1
                average_gradients(params, self.accelerator.num_processes)
                if cfg.max_grad_norm:
                    self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                if self.global_step % cfg.log_every_n_steps == 0 or self.global_step == self.total_steps:
                    # the only host sync of the loop (with several GPUs also where they agree to stop)
                    mean_loss, agreed_stop = loss_and_stop(loss_sum / max(1, loss_count), self.stop.requested,
                                                           self.accelerator.num_processes)
                    if not math.isfinite(mean_loss):
                        raise TrainingError(tr(
                            "the loss became {loss} at step {step}: lower the learning rate, or use bf16 / "
                            "no_half_vae if training in fp16", loss=mean_loss, step=self.global_step))
                    now = time.perf_counter()
                    it_s = (self.global_step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, self.global_step
                    lrs = [float(lr) for lr in self.lr_scheduler.get_last_lr()]  # Adafactor's own are tensors
                    self.events.emit(
                        "step", step=self.global_step, epoch=epoch + 1, loss=round(mean_loss, 6), lr=lrs[-1],
                        it_per_s=round(it_s, 4), eta_s=round((self.total_steps - self.global_step) / max(it_s, 1e-9), 1),
                    )
                    if self.writer is not None:
                        self.writer.add_scalar("loss/current", mean_loss, self.global_step)
                        for i, lr in enumerate(lrs):
                            self.writer.add_scalar(f"lr/group{i}", lr, self.global_step)
                    loss_sum.zero_()
                    loss_count = 0
                step_suffix = f"-step{self.global_step:08d}"
                # several processes must leave at the same step (or the others wait for them forever)
                stop_now = self.stop.requested if self.accelerator.num_processes < 2 else agreed_stop
                if stop_now or (
                    cfg.save_every_n_steps and self.global_step % cfg.save_every_n_steps == 0
                    and self.global_step < self.total_steps
                ):
                    self.accelerator.wait_for_everyone()
                    self.save_checkpoint(self.checkpoint_path(step_suffix), epoch + 1, final=False)
                    if cfg.save_state or stop_now:  # a stopped run can always be resumed
                        self.save_state(self.state_path(step_suffix), epoch, step_in_epoch + 1)
                if stop_now:
                    return True
                self.maybe_sample(epoch + 1, step_based=True)
            resume_step = 0
            done_epoch = epoch + 1
            self.accelerator.wait_for_everyone()
            if cfg.save_every_n_epochs and done_epoch % cfg.save_every_n_epochs == 0 and done_epoch < self.epochs:
                self.save_checkpoint(self.checkpoint_path(f"-{done_epoch:06d}"), done_epoch, final=False)
                if cfg.save_state:
                    self.save_state(self.state_path(f"-{done_epoch:06d}"), done_epoch, 0)
            self.maybe_sample(done_epoch, step_based=False)
            if self.global_step >= self.total_steps:
                break

        self.save_checkpoint(self.checkpoint_path(""), self.epochs, final=True)
        if cfg.save_state:
            self.save_state(self.state_path(""), self.epochs, 0)
        return False

    def close(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.close()


OOM_ADVICE = (  # translated where it is sent
    "CUDA ran out of memory. Lower train_batch_size or resolution, turn on gradient_checkpointing and "
    "cache_latents, use mixed_precision fp16/bf16 or a smaller network_dim, and close other programs using the "
    "GPU. Checkpoints already written are kept."
)


def run(cfg: TrainConfig, events: EventWriter, stop: Optional[StopSignal] = None) -> int:
    """Train; every outcome ends with a done or an error event. Returns the process exit code."""
    trainer = Trainer(cfg, events, stop)
    try:
        validate(cfg)
        trainer.setup()
        interrupted = trainer.train()
        events.emit("done", checkpoints=trainer.checkpoints, interrupted=interrupted, steps=trainer.global_step)
        return 0
    except (ConfigError, TrainingError, ModelLoadError, NetworkError) as exc:
        events.emit("error", message=str(exc), traceback_tail="", checkpoints=trainer.checkpoints)
        return 2 if isinstance(exc, ConfigError) else 1
    except torch.cuda.OutOfMemoryError:
        events.emit("error", message=tr(OOM_ADVICE), traceback_tail=traceback_tail(), checkpoints=trainer.checkpoints)
        return 3
    except KeyboardInterrupt:
        events.emit("error", message=tr("stopped at once by a second stop request; no checkpoint was written for the "
                                        "current epoch"), traceback_tail="", checkpoints=trainer.checkpoints)
        return 130
    except Exception as exc:  # the trainer's own failure text is what the person needs to see
        events.emit("error", message=f"{exc.__class__.__name__}: {exc}", traceback_tail=traceback_tail(),
                    checkpoints=trainer.checkpoints)
        return 1
    finally:
        trainer.close()
