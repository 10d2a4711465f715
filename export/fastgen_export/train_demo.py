"""Train the embedded demo model: a tiny Stable Diffusion that draws colored shapes, on CPU.

    python -m fastgen_export.train_demo --out DIR [--minutes 30 --seed 0]

writes a diffusers ``StableDiffusionPipeline`` folder into ``DIR`` (the normal exporter handles it),
plus ``training_log.json`` (settings, per-step losses, wall times, versions, accuracy) and
``loss_curves.png``. The data are the synthetic images of :mod:`fastgen_export.demo_data`.

Training has two phases with a fixed step schedule, so a seed reproduces the run:

1. an ``AutoencoderKL`` with a downsampling factor of 4 (64x64 RGB -> 4x16x16) is trained on
   freshly drawn images; a pool of images is then encoded once and the latent scaling factor is
   set to one over the latents' standard deviation;
2. a ``UNet2DConditionModel`` and a 2-layer ``CLIPTextModel`` are trained together (epsilon
   prediction, linear betas, captions dropped 10% of the time for classifier-free guidance,
   AdamW, an EMA of the weights that is what gets saved).

``--minutes`` is a wall-clock guard, not the schedule: a phase that runs past its share of it stops
early and the log says so. ``--eval-only DIR`` re-scores a saved pipeline with
:func:`fastgen_export.demo_eval.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import demo_data, demo_eval


@dataclass
class TrainConfig:
    """Everything that decides the result of a run (the wall-clock guard aside)."""

    seed: int = 0
    resolution: int = 64
    max_length: int = 16
    # VAE phase
    vae_steps: int = 800
    vae_batch_size: int = 16
    vae_crop: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_anchor_weight: float = 1.0
    latent_pool_size: int = 4096
    # UNet + text encoder phase
    unet_steps: int = 6000
    unet_batch_size: int = 32
    unet_lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    # share of --minutes the VAE phase may use before it is cut short
    vae_time_share: float = 0.3


@dataclass
class EvalConfig:
    """How the saved pipeline is scored."""

    num_prompts: int = 50
    guidance_scale: float = 5.0
    num_inference_steps: int = 25
    seed: int = 1234


# ----------------------------------------------------------------------------------------------
# Model construction


def build_tokenizer(out_dir: str, max_length: int):
    from .tiny_tokenizer import make_clip_tokenizer

    return make_clip_tokenizer(out_dir, demo_data.grammar_words(), model_max_length=max_length)


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, projection_dim=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(resolution: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=resolution,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=4,
        mid_block_add_attention=False,
    )


def build_unet(latent_size: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )


def build_noise_scheduler():
    """The training schedule: linear betas reach (almost) zero signal at t=999, which 16x16
    latents need so that flat backgrounds are not given away by the start noise."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                         beta_end=0.02, prediction_type="epsilon", clip_sample=False)


def sampling_scheduler(noise_scheduler):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(noise_scheduler.config, timestep_spacing="trailing",
                                     set_alpha_to_one=False, steps_offset=1)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# Training


def lr_lambda(warmup: int, total: int, floor: float = 0.1):
    """Linear warm-up, then cosine decay to ``floor`` times the peak learning rate."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae, cfg: TrainConfig, deadline: float) -> dict:
    """Train the autoencoder on random ``vae_crop`` crops of fresh images.

    The VAE is fully convolutional (no mid-block attention), so crops teach it the same mapping
    as full images at a quarter of the cost. Reconstruction uses the posterior mean; the tiny KL
    term keeps the latents bounded, and an anchor loss pulls the first three latent channels
    towards the 4x average-pooled RGB image, which gives the encoder an easy target early on and
    the diffusion model a smooth, image-like latent space.
    """
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.vae_steps))
    generator = torch.Generator().manual_seed(cfg.seed)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    losses, recon_losses = [], []
    vae.train()
    for step in range(cfg.vae_steps):
        if time.monotonic() > deadline:
            break
        images, _, _ = demo_data.make_batch((cfg.seed, 1, step), cfg.vae_batch_size, cfg.resolution)
        top, left = torch.randint(0, cfg.resolution - cfg.vae_crop + 1, (2,), generator=generator).tolist()
        x = images_to_tensor(images)[:, :, top:top + cfg.vae_crop, left:left + cfg.vae_crop]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mode()).sample
        recon_loss = F.mse_loss(recon, x)
        anchor_loss = F.mse_loss(posterior.mean[:, :3], F.avg_pool2d(x, factor))
        loss = recon_loss + cfg.vae_anchor_weight * anchor_loss + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(round(loss.item(), 6))
        recon_losses.append(round(recon_loss.item(), 6))
        if step % 50 == 0:
            print(f"vae step {step:5d}  loss {loss.item():.5f}  recon {recon_loss.item():.5f}", flush=True)
    vae.eval()
    return {"loss": losses, "recon_mse": recon_losses, "steps_done": len(losses),
            "stopped_early": len(losses) < cfg.vae_steps}


@torch.no_grad()
def encode_pool(vae, cfg: TrainConfig, chunk: int = 256):
    """Encode a fixed pool of full images: latent means, captions, the reconstruction MSE on the
    first ``chunk`` of them and the scaling factor (one over the latents' standard deviation)."""
    images, captions, _ = demo_data.make_batch((cfg.seed, 2), cfg.latent_pool_size, cfg.resolution)
    latents = torch.cat([vae.encode(images_to_tensor(images[i:i + chunk])).latent_dist.mean
                         for i in range(0, len(images), chunk)])
    recon_mse = F.mse_loss(vae.decode(latents[:chunk]).sample, images_to_tensor(images[:chunk])).item()
    return latents, captions, recon_mse, float(1.0 / latents.std())


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def train_unet(unet, text_encoder, tokenizer, noise_scheduler, pool, scaling_factor: float,
               cfg: TrainConfig, deadline: float) -> dict:
    from diffusers.training_utils import EMAModel

    latents_pool, captions = pool
    caption_ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.unet_steps))
    ema = EMAModel(params, decay=cfg.ema_decay)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    n_train = noise_scheduler.config.num_train_timesteps
    losses = []
    unet.train()
    text_encoder.train()
    for step in range(cfg.unet_steps):
        if time.monotonic() > deadline:
            break
        idx = torch.randint(len(caption_ids), (cfg.unet_batch_size,), generator=generator)
        latents = latents_pool[idx] * scaling_factor
        ids = caption_ids[idx].clone()
        drop = torch.rand(len(ids), generator=generator) < cfg.caption_dropout
        ids[drop] = empty_ids
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(n_train, (len(latents),), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        cond = text_encoder(ids).last_hidden_state
        pred = unet(noisy, t, cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        ema.step(params)
        losses.append(round(loss.item(), 6))
        if step % 50 == 0:
            print(f"unet step {step:5d}  loss {loss.item():.5f}  lr {sched.get_last_lr()[0]:.2e}", flush=True)
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return {"loss": losses, "steps_done": len(losses), "stopped_early": len(losses) < cfg.unet_steps}


# ----------------------------------------------------------------------------------------------
# Evaluation and reporting


@torch.no_grad()
def evaluate_pipeline(pipe, ecfg: EvalConfig) -> tuple[dict, np.ndarray, list[str]]:
    """Generate one image for each of ``ecfg.num_prompts`` random grammar prompts and score them."""
    rng = np.random.default_rng(ecfg.seed)
    prompts = [demo_data.sample_spec(rng).caption for _ in range(ecfg.num_prompts)]
    images = pipe(prompts, num_inference_steps=ecfg.num_inference_steps,
                  guidance_scale=ecfg.guidance_scale, output_type="np",
                  generator=torch.Generator().manual_seed(ecfg.seed)).images
    scores = demo_eval.evaluate(images, prompts)
    scores.pop("predictions")
    return scores, images, prompts


def save_grid(images: np.ndarray, path: str, columns: int = 10) -> None:
    """Save an NHWC float batch as one PNG grid."""
    from PIL import Image

    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    grid = np.ones((rows * h, columns * w, 3))
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    Image.fromarray(np.rint(grid * 255).astype(np.uint8)).save(path)


def plot_losses(log: dict, path: str) -> None:
    """Plot the VAE and UNet loss curves (raw and smoothed) of a training log (phases that ran)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [(name, key) for name, key in [("VAE (MSE + anchor + KL)", "vae"), ("UNet (epsilon MSE)", "unet")]
              if log[key]["loss"]]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 3.8), squeeze=False)
    for ax, (name, key) in zip(axes[0], phases):
        loss = np.asarray(log[key]["loss"])
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(loss, alpha=0.3, lw=0.8, label="per step")
        ax.plot(np.arange(len(smooth)) + window - 1, smooth, lw=1.6, label=f"mean of {window}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{name}: {log[key]['wall_s']:.0f} s")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Entry point


def train(out_dir: str, cfg: TrainConfig, minutes: float, ecfg: EvalConfig, init: str | None = None) -> dict:
    """Run both phases, save the pipeline and the log into ``out_dir``; return the log.

    ``init`` continues from a saved demo pipeline instead of fresh weights (with
    ``cfg.vae_steps = 0`` its VAE is kept as it is and only the UNet and text encoder train on).
    """
    import diffusers
    import transformers
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(cfg.seed)
    start = time.monotonic()
    deadline = start + 60 * minutes
    if init:
        pipe = StableDiffusionPipeline.from_pretrained(init)
        tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = build_tokenizer(tmp, cfg.max_length)
        text_encoder = build_text_encoder(tokenizer)
        vae = build_vae(cfg.resolution)
        latent_size = cfg.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
        unet = build_unet(latent_size, text_encoder.config.hidden_size)
    noise_scheduler = build_noise_scheduler()

    vae_log = train_vae(vae, cfg, start + 60 * minutes * cfg.vae_time_share)
    vae_log["wall_s"] = time.monotonic() - start
    t_pool = time.monotonic()
    latents, captions, recon_mse, scaling_factor = encode_pool(vae, cfg)
    vae.register_to_config(scaling_factor=scaling_factor)
    vae_log["full_image_recon_mse"] = recon_mse
    pool_s = time.monotonic() - t_pool
    print(f"latent pool encoded in {pool_s:.0f} s, scaling factor {scaling_factor:.4f}, "
          f"full-image reconstruction MSE {recon_mse:.5f}", flush=True)

    t_unet = time.monotonic()
    unet_log = train_unet(unet, text_encoder, tokenizer, noise_scheduler, (latents, captions),
                          scaling_factor, cfg, deadline)
    unet_log["wall_s"] = time.monotonic() - t_unet
    train_s = time.monotonic() - start

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=sampling_scheduler(noise_scheduler), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out_dir)
    scores, images, _ = evaluate_pipeline(pipe, ecfg)
    save_grid(images, os.path.join(out_dir, "samples.png"))
    print(f"eval: {scores}", flush=True)

    log = {
        "settings": asdict(cfg), "minutes_budget": minutes, "init": init,
        "params": {"vae": num_params(vae), "unet": num_params(unet), "text_encoder": num_params(text_encoder)},
        "scaling_factor": scaling_factor,
        "vae": vae_log, "latent_pool_s": pool_s, "unet": unet_log, "train_wall_s": train_s,
        "eval": {**asdict(ecfg), **scores},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
    }
    with open(os.path.join(out_dir, "training_log.json"), "w") as f:
        json.dump(log, f)
    plot_losses(log, os.path.join(out_dir, "loss_curves.png"))
    return log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastgen_export.train_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output folder for the diffusers pipeline and the log")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock guard for the training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    parser.add_argument("--init", metavar="DIR", help="continue from a saved demo pipeline folder")
    parser.add_argument("--unet-lr", type=float, default=TrainConfig.unet_lr)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--eval-only", metavar="DIR", help="score a saved pipeline folder and exit")
    parser.add_argument("--eval-prompts", type=int, default=EvalConfig.num_prompts)
    parser.add_argument("--guidance-scale", type=float, default=EvalConfig.guidance_scale)
    parser.add_argument("--steps", type=int, default=EvalConfig.num_inference_steps, help="sampling steps")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ecfg = EvalConfig(num_prompts=args.eval_prompts, guidance_scale=args.guidance_scale,
                      num_inference_steps=args.steps)
    if args.eval_only:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.eval_only)
        pipe.set_progress_bar_config(disable=True)
        scores, images, _ = evaluate_pipeline(pipe, ecfg)
        save_grid(images, os.path.join(args.eval_only, f"samples_g{ecfg.guidance_scale:g}_s{ecfg.num_inference_steps}.png"))
        print(json.dumps({**asdict(ecfg), **scores}))
        return
    if not args.out:
        parser.error("--out is required (or --eval-only DIR)")
    cfg = TrainConfig(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                      unet_lr=args.unet_lr)
    log = train(args.out, cfg, args.minutes, ecfg, init=args.init)
    print(f"done in {log['train_wall_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
