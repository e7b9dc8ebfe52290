"""Pretrain the toy SD1 base model on the toy world, on a CPU in about an hour.

    python -m lib_trainer.demo.pretrain --out lib_trainer/demo/models/toy-sd1.safetensors [--seed 0]
        [--minutes 60 | --vae-steps N --unet-steps N] [--work DIR] [--threads 2] [--export-now]

Three stages, each checkpointed into ``--work`` (default ``<out>.work/``) every few hundred steps, so a stopped run
started again with the same arguments continues where it was:

1. **VAE** (KL-f8): reconstruction (L1 + L2) with a small KL term, on random 32 px crops of toy-world pictures
   and, for the last fifth, on whole 64 px pictures. Then its latents are rescaled so that ``latents * 0.18215``
   (the factor every SD1 consumer hard-codes) have zero mean and unit std per channel.
2. **Latents** of the picture pool are encoded once with the frozen VAE.
3. **UNet and text encoder** from scratch: DDPM epsilon objective on SD1's scaled-linear schedule (1000 steps,
   0.00085-0.012) with min-SNR-5 weighting, the caption dropped 10 % of the time (classifier-free guidance),
   tags shuffled, an EMA of the weights kept and exported.

The file is written in SD1's single-file LDM layout (fp16) with a JSON of the run beside it (command, seed, steps,
time, machine and load, the numbers reached, and how often its drawings show what was prompted, by the judge). ``--minutes`` sets the step counts from a short timing at the start;
the counts are recorded, and ``--vae-steps/--unet-steps`` with them rebuild the same file. ``--export-now`` writes
the file from the state saved so far (the UNet's last save, every 200 steps) without training: the notes' and the
file's step counts say how far it was, and the same command without it goes on to the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lib_trainer.demo import toy_model, toy_world

POOL_SIZE = 24000  # distinct training pictures (stage 3 sees each about seven times)
HELD_OUT = 256  # pictures for the final numbers, never trained on
HELD_OUT_START = 10**6  # their scene indices
VAE_BATCH, VAE_CROP, VAE_LR, VAE_KL = 32, 32, 5e-4, 1e-5
UNET_BATCH, UNET_LR, UNET_WARMUP = 64, 5e-4, 200
EMA_DECAY = 0.999
CAPTION_DROPOUT = 0.1
BACKGROUND_DROPOUT = 0.1  # "red circle" alone must work too
MIN_SNR_GAMMA = 5.0
SAVE_EVERY = 200


def log(message: str) -> None:
    print(message, flush=True)


def derive_seed(*parts: Any) -> int:
    return random.Random(":".join(map(str, parts))).randrange(2**62)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---- the picture pool --------------------------------------------------------------------------------------------

def picture_pool(work: Path, seed: int) -> tuple[np.ndarray, list[toy_world.Scene]]:
    """POOL_SIZE rendered scenes (uint8, N x 64 x 64 x 3), cached in the work folder."""
    scenes = [toy_world.scene(seed, i) for i in range(POOL_SIZE)]
    cache = work / f"pool-{seed}.npy"
    if cache.is_file():
        return np.load(cache), scenes
    log(f"rendering {POOL_SIZE} toy-world pictures")
    pool = np.stack([np.asarray(toy_world.render(s)) for s in scenes])
    np.save(cache, pool)
    return pool, scenes


def to_pixels(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def held_out(seed: int) -> tuple[torch.Tensor, list[toy_world.Scene]]:
    scenes = [toy_world.scene(seed, HELD_OUT_START + i) for i in range(HELD_OUT)]
    return to_pixels(np.stack([np.asarray(toy_world.render(s)) for s in scenes])), scenes


# ---- a resumable stage -------------------------------------------------------------------------------------------

class Stage:
    """A training loop over ``total`` steps whose state (modules, optimizer, step) is saved every SAVE_EVERY
    steps and at the end; ``run`` resumes from the saved state when there is one."""

    def __init__(self, name: str, work: Path, modules: dict[str, torch.nn.Module], optimizer, total: int):
        self.name, self.path, self.modules, self.optimizer, self.total = name, work / f"{name}.pt", modules, optimizer, total
        self.step = 0
        self.extra: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []
        if self.path.is_file():
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            for key, module in modules.items():
                module.load_state_dict(state["modules"][key])
            optimizer.load_state_dict(state["optimizer"])
            self.step, self.extra = int(state["step"]), state["extra"]
            self.history = json.loads(state["history"])
            log(f"{name}: resuming at step {self.step} of {total}")

    @property
    def seconds(self) -> float:
        """Training time of this stage over every session (the sessions' own time, not the gaps between)."""
        return float(self.extra.get("seconds", 0.0))

    def save(self) -> None:
        atomic_torch_save({
            "modules": {k: m.state_dict() for k, m in self.modules.items()}, "optimizer": self.optimizer.state_dict(),
            "step": self.step, "extra": self.extra, "history": json.dumps(self.history),
        }, self.path)

    def run(self, step_fn: Callable[[int], float], lr_at: Callable[[int], float], every: int = 50) -> float:
        """Train to ``total`` steps; returns the stage's training seconds over all sessions."""
        started, first = time.perf_counter(), self.step
        before = self.seconds
        losses: list[float] = []
        while self.step < self.total:
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step) * group.get("lr_scale", 1.0)
            losses.append(step_fn(self.step))
            self.step += 1
            if self.step % every == 0 or self.step == self.total:
                rate = (self.step - first) / max(time.perf_counter() - started, 1e-9)
                mean = float(np.mean(losses))
                self.history.append({"step": self.step, "loss": round(mean, 5)})
                log(f"{self.name} step {self.step}/{self.total}  loss {mean:.4f}  {rate:.2f} it/s  "
                    f"ETA {(self.total - self.step) / max(rate, 1e-9) / 60:.1f} min")
                losses = []
            if self.step % SAVE_EVERY == 0 or self.step == self.total:
                self.extra["seconds"] = before + time.perf_counter() - started
                self.save()
        return self.seconds


# ---- stage 1: the VAE --------------------------------------------------------------------------------------------

def vae_batch(pool: np.ndarray, seed: int, step: int, full: bool) -> torch.Tensor:
    rng = np.random.default_rng(derive_seed(seed, "vae", step))
    if full:
        picks = pool[rng.integers(0, len(pool), VAE_BATCH // 2)]
    else:
        picks = pool[rng.integers(0, len(pool), VAE_BATCH)]
        offsets = rng.integers(0, toy_world.SIZE - VAE_CROP + 1, (VAE_BATCH, 2))
        picks = np.stack([p[y:y + VAE_CROP, x:x + VAE_CROP] for p, (y, x) in zip(picks, offsets)])
    flips = rng.random(len(picks)) < 0.5
    picks = np.where(flips[:, None, None, None], picks[:, :, ::-1], picks)
    return to_pixels(np.ascontiguousarray(picks))


def train_vae(vae, pool: np.ndarray, work: Path, seed: int, steps: int, export_now: bool = False) -> dict[str, Any]:
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    stage = Stage("vae", work, {"vae": vae}, optimizer, steps)
    if export_now and stage.step < steps:
        raise SystemExit(f"--export-now: the VAE stage is at step {stage.step} of {steps}; the UNet has not started")
    full_from = int(steps * 0.8)

    def step_fn(step: int) -> float:
        x = vae_batch(pool, seed, step, full=step >= full_from)
        torch.manual_seed(derive_seed(seed, "vae-noise", step))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + VAE_KL * posterior.kl().mean() / x[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    seconds = stage.run(step_fn, lambda s: cosine_lr(s, steps, VAE_LR, 100))
    vae.eval()
    return {"steps": stage.step, "seconds": round(seconds, 1), "history": stage.history}


@torch.no_grad()
def latent_stats(vae, pool: np.ndarray, count: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    means = torch.cat([vae.encode(to_pixels(pool[i:i + 128])).latent_dist.mean for i in range(0, min(count, len(pool)), 128)])
    return means.mean(dim=(0, 2, 3)), means.std(dim=(0, 2, 3))


@torch.no_grad()
def psnr(vae, pixels: torch.Tensor) -> float:
    recon = torch.cat([vae.decode(vae.encode(pixels[i:i + 64]).latent_dist.mean).sample
                       for i in range(0, len(pixels), 64)]).clamp(-1, 1)
    mse = ((recon - pixels) / 2).pow(2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


# ---- stage 2: latents --------------------------------------------------------------------------------------------

@torch.no_grad()
def encode_pool(vae, pool: np.ndarray, work: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds of every pool picture and of its mirror image, times the SD1 scale factor."""
    cache = work / f"latents-{seed}.pt"
    if cache.is_file():
        state = torch.load(cache, weights_only=True)
        return state["mean"], state["std"]
    log(f"encoding {len(pool)} pictures and their mirror images")
    means, stds = [], []
    for flip in (False, True):
        for i in range(0, len(pool), 256):
            chunk = pool[i:i + 256]
            dist = vae.encode(to_pixels(np.ascontiguousarray(chunk[:, :, ::-1] if flip else chunk))).latent_dist
            means.append(dist.mean * toy_model.TOY_CONFIG["scale_factor"])
            stds.append(dist.std * toy_model.TOY_CONFIG["scale_factor"])
    mean, std = torch.cat(means).reshape(2, len(pool), 4, 8, 8), torch.cat(stds).reshape(2, len(pool), 4, 8, 8)
    atomic_torch_save({"mean": mean, "std": std}, cache)
    return mean, std


# ---- stage 3: UNet and text encoder ------------------------------------------------------------------------------

def training_caption(item: toy_world.Scene, rng: random.Random) -> str:
    if rng.random() < CAPTION_DROPOUT:
        return ""
    tags = [f"{t.colour} {t.shape}" for t in item.things]
    if rng.random() >= BACKGROUND_DROPOUT:
        tags.append(f"{item.background} background")
    if rng.random() < 0.5:
        rng.shuffle(tags)
    return ", ".join(tags)


def scheduler():
    from diffusers import DDPMScheduler

    from lib_trainer.trainer.models import base_configs

    return DDPMScheduler.from_config(dict(base_configs("sd1")["scheduler"], prediction_type="epsilon"))


def conditioning(model, captions: list[str]) -> torch.Tensor:
    from lib_trainer.trainer.text import encode_sd, tokenize

    return encode_sd(model.text_encoders[0], tokenize(model.tokenizers[0], captions, None), None)


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    def state(self) -> dict[str, torch.Tensor]:
        return {str(i): t for i, t in enumerate(self.shadow)}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for i, t in enumerate(self.shadow):
            t.copy_(state[str(i)])

    def swap(self) -> None:
        """Exchange live and EMA weights (call twice to undo)."""
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                tmp = p.detach().clone()
                p.copy_(s)
                s.copy_(tmp)


def trainable(model) -> tuple[list, list]:
    """(decayed, not decayed) parameters of the UNet and text encoder; the text encoder's final LayerNorm bias is
    frozen at its non-zero init (the WebUI's emphasis normalisation divides by the output's mean), and embeddings are
    never decayed (tokens the world never uses keep their random init, as in a real CLIP)."""
    te = model.text_encoders[0]
    te.text_model.final_layer_norm.bias.requires_grad_(False)
    decayed, plain = [], []
    for module in (model.unet, te):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (plain if p.ndim < 2 or "embedding" in name else decayed).append(p)
    return decayed, plain


def train_unet(model, latents: tuple[torch.Tensor, torch.Tensor], scenes: list[toy_world.Scene], work: Path,
               seed: int, steps: int, export_now: bool = False) -> dict[str, Any]:
    noise_scheduler = scheduler()
    alphas = noise_scheduler.alphas_cumprod
    unet, te = model.unet, model.text_encoders[0]
    unet.train()
    te.train()
    decayed, plain = trainable(model)
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.01}, {"params": plain, "weight_decay": 0.0}],
                                  lr=UNET_LR, betas=(0.9, 0.99))
    ema = EMA(decayed + plain, EMA_DECAY)
    stage = Stage("unet", work, {"unet": unet, "text_encoder": te}, optimizer, steps)
    if export_now:
        if stage.step == 0:
            raise SystemExit("--export-now: the UNet stage has no saved state yet")
        stage.total = stage.step  # no training: the weights (and EMA) as last saved
    if "ema" in stage.extra:
        ema.load(stage.extra["ema"])
    means, stds = latents

    def step_fn(step: int) -> float:
        rng = random.Random(derive_seed(seed, "unet", step))
        gen = torch.Generator().manual_seed(derive_seed(seed, "unet-noise", step))
        picks = [rng.randrange(len(scenes)) for _ in range(UNET_BATCH)]
        flips = torch.tensor([rng.random() < 0.5 for _ in picks], dtype=torch.long)
        index = torch.tensor(picks)
        x0 = means[flips, index] + stds[flips, index] * torch.randn(means.shape[2:], generator=gen)
        captions = [training_caption(scenes[i], rng) for i in picks]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (UNET_BATCH,), generator=gen)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        pred = unet(noisy, t, conditioning(model, captions)).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decayed + plain, 1.0)
        optimizer.step()
        ema.update(step)
        if (step + 1) % SAVE_EVERY == 0 or step + 1 == steps:
            stage.extra["ema"] = ema.state()
        return loss.item()

    seconds = stage.run(step_fn, lambda s: cosine_lr(s, steps, UNET_LR, UNET_WARMUP))
    unet.eval()
    te.eval()
    ema.swap()  # the exported weights are the EMA's
    return {"steps": stage.step, "seconds": round(seconds, 1), "history": stage.history}


@torch.no_grad()
def denoising_loss(model, vae, pixels: torch.Tensor, scenes: list[toy_world.Scene], seed: int) -> float:
    """Plain epsilon MSE on held-out pictures at timesteps 100..900, fixed noise: comparable between runs."""
    noise_scheduler = scheduler()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(pixels), 64):
        x0 = vae.encode(pixels[i:i + 64]).latent_dist.mean * toy_model.TOY_CONFIG["scale_factor"]
        hidden = conditioning(model, [s.caption() for s in scenes[i:i + 64]])
        for t_value in (100, 300, 500, 700, 900):
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.full((len(x0),), t_value)
            pred = model.unet(noise_scheduler.add_noise(x0, noise, t), t, hidden).sample
            total += F.mse_loss(pred, noise).item() * len(x0) / 5
    return total / len(pixels)


# ---- the run -----------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def load_average() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def record_session(path: Path) -> list[dict[str, Any]]:
    """Every start of this run (a resumed run has several): when, and the machine's load then."""
    sessions = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_1_5_15": load_average()})
    path.write_text(json.dumps(sessions), encoding="utf-8")
    return sessions


def plan_steps(minutes: float, model, pool: np.ndarray, seed: int) -> tuple[int, int]:
    """Step counts that fit ``minutes``: a few timed steps of each stage (on copies, nothing is trained)."""
    import copy

    vae = copy.deepcopy(model.vae).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-6)
    x = vae_batch(pool, seed, 0, full=False)

    def vae_step() -> None:
        d = vae.encode(x).latent_dist
        loss = vae.decode(d.sample()).sample.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    shadow = copy.deepcopy(model)
    params = [p for m in (shadow.unet, shadow.text_encoders[0]) for p in m.parameters()]
    opt2 = torch.optim.AdamW(params, lr=1e-6)
    lat = torch.randn(UNET_BATCH, 4, 8, 8)
    hidden_caps = ["red circle, blue square, white background"] * UNET_BATCH

    def unet_step() -> None:
        t = torch.randint(0, 1000, (UNET_BATCH,))
        loss = shadow.unet(lat, t, conditioning(shadow, hidden_caps)).sample.mean()
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    def timed(fn: Callable[[], None]) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(3):
            fn()
        return (time.perf_counter() - start) / 3

    vae_s, unet_s = timed(vae_step), timed(unet_step)
    budget = max(1.0, minutes - 4.0) * 60  # rendering, encoding and the final numbers take about 4 minutes
    # the last fifth of the VAE's steps are whole pictures at half the batch (about twice as slow as crops)
    vae_steps = int(budget * 0.22 / (vae_s * 1.2))
    unet_steps = int(budget * 0.78 / unet_s)
    log(f"timing: VAE step {vae_s:.2f} s, UNet step {unet_s:.2f} s -> {vae_steps} VAE and {unet_steps} UNet steps")
    return max(100, vae_steps), max(100, unet_steps)


def judged_drawings(checkpoint: Path, work: Path) -> Optional[dict[str, Any]]:
    """What the written file draws through the standalone host (Euler a, 20 steps, CFG 7), read by the judge."""
    from lib_trainer.demo import judge, lora_quality

    if not judge.JUDGE_FILE.is_file():
        return None
    drawer = lora_quality.Drawer(checkpoint, work / "host")
    return lora_quality.prompt_following(drawer, judge.Judge.load())


def use_trainer_deps() -> None:
    """The trainer's private packages (diffusers, …) on the path, as the trainer subprocess has them."""
    from lib_trainer import deps

    folder = str(deps.default_deps_dir())
    if os.path.isdir(folder) and folder not in sys.path:
        sys.path.insert(0, folder)


def main(argv: Optional[list[str]] = None) -> int:
    use_trainer_deps()
    parser = argparse.ArgumentParser(prog="python -m lib_trainer.demo.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=toy_model.MODEL_FILE, help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="time budget that sets the step counts when they are not given (default 60)")
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="state folder for resuming (default: <out>.work)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--export-now", action="store_true",
                        help="write the file from the state saved so far without training further (while the run "
                             "goes on elsewhere, or when it cannot be finished); the notes say how far it was")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.time()
    loads = [load_average()]
    work = args.work or args.out.with_name(args.out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    plan_file = work / "plan.json"
    sessions = [] if args.export_now else record_session(work / "sessions.json")

    torch.manual_seed(args.seed)
    initial = toy_model.write_random(work / "initial.safetensors", seed=args.seed)
    model = toy_model.load_parts(initial)
    pool, scenes = picture_pool(work, args.seed)
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
    else:
        vae_steps, unet_steps = args.vae_steps, args.unet_steps
        if vae_steps is None or unet_steps is None:
            planned = plan_steps(args.minutes, model, pool, args.seed)
            vae_steps, unet_steps = vae_steps or planned[0], unet_steps or planned[1]
        plan = {"vae_steps": vae_steps, "unet_steps": unet_steps, "seed": args.seed}
        plan_file.write_text(json.dumps(plan), encoding="utf-8")
    if plan["seed"] != args.seed or any(given is not None and given != plan[key] for key, given in
                                        (("vae_steps", args.vae_steps), ("unet_steps", args.unet_steps))):
        parser.error(f"{work} holds a run with {plan}; give the same values to resume it, or another --work")

    vae_report = train_vae(model.vae, pool, work, args.seed, plan["vae_steps"], args.export_now)
    loads.append(load_average())
    test_pixels, test_scenes = held_out(args.seed)
    vae_psnr = psnr(model.vae, test_pixels)
    mean, std = latent_stats(model.vae, pool)
    toy_model.rescale_latents(model.vae, mean, std, toy_model.TOY_CONFIG["scale_factor"])
    after = latent_stats(model.vae, pool)
    scale = toy_model.TOY_CONFIG["scale_factor"]
    log(f"VAE: held-out PSNR {vae_psnr:.2f} dB; scaled latent std per channel "
        f"{[round(float(s) * scale, 3) for s in after[1]]}")
    model.vae.requires_grad_(False)

    latents = encode_pool(model.vae, pool, work, args.seed)
    del pool
    unet_report = train_unet(model, latents, scenes, work, args.seed, plan["unet_steps"], args.export_now)
    loads.append(load_average())
    eval_loss = denoising_loss(model, model.vae, test_pixels, test_scenes, args.seed)

    elapsed = time.time() - started
    numbers = {
        "vae_psnr_db": round(vae_psnr, 2), "latent_std_scaled": [round(float(s) * scale, 3) for s in after[1]],
        "held_out_denoising_mse": round(eval_loss, 4),
        "final_train_loss": unet_report["history"][-1]["loss"] if unet_report["history"] else None,
    }
    notes = {
        "command": "python -m lib_trainer.demo.pretrain --out {out} --seed {seed} --vae-steps {v} --unet-steps {u}"
                   .format(out=args.out, seed=args.seed, v=plan["vae_steps"], u=plan["unet_steps"]),
        "seed": args.seed, "vae_steps": plan["vae_steps"], "unet_steps": plan["unet_steps"],
        "unet_steps_trained": unet_report["steps"],
        "wall_minutes_this_session": round(elapsed / 60, 1),
        "stage_minutes": {"vae": round(vae_report["seconds"] / 60, 1), "unet": round(unet_report["seconds"] / 60, 1)},
        "sessions": sessions,
        "machine": machine(), "load_average_1_5_15": loads, "numbers": numbers,
        "loss_history": {"vae": vae_report["history"], "unet": unet_report["history"]},
        "config": toy_model.TOY_CONFIG,
    }
    metadata = {"train_tools_toy": "sd1", "train_tools_toy_seed": str(args.seed),
                "modelspec.resolution": f"{toy_model.TOY_SIZE}x{toy_model.TOY_SIZE}",
                "train_tools_toy_steps": json.dumps({"vae": vae_report["steps"], "unet": unet_report["steps"]})}
    toy_model.save_checkpoint(toy_model.parts_of(model), args.out, metadata)
    numbers["judged_drawings"] = judged_drawings(args.out, work)
    args.out.with_suffix(".json").write_text(json.dumps(notes, indent=1) + "\n", encoding="utf-8")
    summary = {k: notes[k] for k in ("seed", "vae_steps", "unet_steps", "unet_steps_trained",
                                     "wall_minutes_this_session", "stage_minutes")}
    summary.update(numbers, out=str(args.out), size_mb=round(args.out.stat().st_size / 2**20, 1))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
