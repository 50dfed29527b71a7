"""The three training stages on one GLIGENModel, with atomic checkpoints and bit-exact resume.

| stage | trains | frozen | loss |
|---|---|---|---|
| ``vae`` | the KL autoencoder | everything else | L1 + MSE reconstruction + KL (weight 1e-6) |
| ``base`` | text encoder + UNet without fusers (captions only) | VAE, fusers, grounding tokenizer | eps MSE |
| ``gligen`` | fusers (tanh gates start at 0) + grounding tokenizer | the whole base model | eps MSE |

``gligen`` is the paper's recipe: caption and grounding each dropped with probability 0.1 (null
caption "", null grounding = every mask 0) so classifier-free guidance works; AdamW, linear warm-up
then cosine decay, gradient clipping, optional EMA. The noise schedule is SD's (scaled_linear,
1000 steps), the one every sampler here uses.

A run folder holds::

    OUT/checkpoint.pt     step, trainable weights, optimizer, LR scheduler, EMA, RNG state (atomic,
                          every --save-every steps and at the end; --resume continues bit-exactly)
    OUT/loss.jsonl        one {"step", "loss", "lr"} per step
    OUT/loss.png          the loss curve
    OUT/grounding.jsonl   gligen stage: Run.grounding_signal() at each checkpoint (does the layout count?)
    OUT/model/            the whole model in the diffusers folder layout (gligen_ref.checkpoint)
    OUT/gligen.pth        gligen stage: the original single-file layout too
    OUT/run.json          the arguments, wall time, steps, final loss
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gligen_ref.model import GLIGENModel
from gligen_ref.train.data import DataFolder, read_folder
from gligen_rt.core.config import ModelConfig, preset
from gligen_rt.core.errors import DataError
from gligen_rt.core.modality import MAX_OBJECTS, Modality
from gligen_rt.core.schedulers import ALPHAS_CUMPROD, NUM_TRAIN_TIMESTEPS
from gligen_rt.core.tokenizer import ClipTokenizer

STAGES = ("vae", "base", "gligen")
CAPTION_CACHE_BYTES = 1 << 30  # gligen stage: caption contexts kept in memory up to this size
CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainArgs:
    stage: str
    data: Path
    out: Path
    model: str = "tiny"  # preset whose architecture is built (first stage) or expected (--init)
    init: Path | None = None  # diffusers folder of the previous stage (base, gligen)
    steps: int = 1000
    batch: int = 16
    lr: float = 1e-3
    warmup: int = 100
    clip: float = 1.0
    weight_decay: float = 0.01
    ema: float = 0.0  # 0: off
    save_every: int = 500
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False
    drop_caption: float = 0.1
    drop_grounding: float = 0.1
    gate_lr_scale: float = 1.0  # gligen stage: learning-rate factor of the fusers' tanh gates
    dense_after: int = 0  # gligen stage: the fusers' feed-forward gates stay 0 for this many steps
    high_noise: float = 0.0  # gligen stage: share of samples whose timestep is drawn from the upper half
    grounding_from: Path | None = None  # gligen stage: fusers + grounding tokenizer start from this model
    fuser_init: str = "fresh"  # gligen stage, new fusers: "fresh" or "block" (copies of attn1 / ff)
    crop: int = 64  # vae stage: random crops of this side (the VAE is convolutional)
    limit: int | None = None  # use the first N samples of the folder
    resume: bool = False
    progress: bool = True


# ---- the model and what each stage trains ------------------------------------------------------


def initial_model(args: TrainArgs) -> tuple[GLIGENModel, ClipTokenizer]:
    """A fresh model (stage vae without --init) or the previous stage's diffusers folder."""
    if args.init is not None:
        from gligen_ref.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.init)
        return loaded.model, loaded.tokenizer
    if args.stage == "gligen":
        raise DataError("the gligen stage trains on a frozen base: give --init BASE_RUN/model")
    config = preset(args.model, Modality.TEXT_BOX)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = GLIGENModel(config)
    return model.float(), ClipTokenizer.default()


def trainable_parameters(model: GLIGENModel, stage: str) -> dict[str, nn.Parameter]:
    """name -> parameter trained by ``stage`` (every other parameter is frozen)."""
    named = dict(model.named_parameters())
    if stage == "vae":
        keep = [k for k in named if k.startswith("vae.")]
    elif stage == "base":
        keep = [
            k
            for k in named
            if k.startswith(("text_encoder.", "conv_in.")) or (k.startswith("unet.") and ".fuser." not in k)
        ]
    elif stage == "gligen":
        keep = [k for k in named if ".fuser." in k or k.startswith("position_net.")]
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return {k: named[k] for k in keep}


def add_noise(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The forward process of SD's schedule: sqrt(a_t) z0 + sqrt(1 - a_t) noise, per sample's t."""
    ac = torch.from_numpy(np.array(ALPHAS_CUMPROD)).float()[t].view(-1, 1, 1, 1)
    return ac.sqrt() * z0 + (1 - ac).sqrt() * noise


# ---- data as tensors ----------------------------------------------------------------------------


def images_tensor(folder: DataFolder) -> torch.Tensor:
    """(N, 3, H, W) float32 in [-1, 1]."""
    arr = np.stack([s.image for s in folder.samples]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def encode_latents(
    model: GLIGENModel, images: torch.Tensor, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior mean and std of every image, scaled (what the UNet sees)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        m, s = model.vae_encode(images[i : i + batch])
        means.append(m)
        stds.append(s)
    return torch.cat(means), torch.cat(stds)


def cached_latents(
    model: GLIGENModel, images: torch.Tensor, folder: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_latents, cached in the data folder under a digest of the VAE's weights and the images."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.vae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    h.update(images.numpy().tobytes())
    path = folder / f".latents-{h.hexdigest()[:16]}.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached["mean"], cached["std"]
    mean, std = encode_latents(model, images)
    try:
        atomic_torch_save({"mean": mean, "std": std}, path)
    except OSError:
        pass  # a read-only data folder: no cache
    return mean, std


def box_tensors(
    folder: DataFolder, phrase_index: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """boxes (N,30,4), masks (N,30), phrase ids (N,30) (index into ``phrase_index``; 0 where masked)."""
    n = len(folder.samples)
    boxes = torch.zeros(n, MAX_OBJECTS, 4)
    masks = torch.zeros(n, MAX_OBJECTS)
    ids = torch.zeros(n, MAX_OBJECTS, dtype=torch.long)
    for i, s in enumerate(folder.samples):
        for j, (p, b) in enumerate(zip(s.phrases, s.boxes, strict=True)):
            boxes[i, j] = torch.tensor(b)
            masks[i, j] = 1.0
            ids[i, j] = phrase_index[p]
    return boxes, masks, ids


# ---- checkpoint files ---------------------------------------------------------------------------


def atomic_torch_save(obj: object, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def plot_losses(losses: list[float], path: Path, title: str) -> None:
    """Loss per step and its running mean, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, label="loss")
    if len(losses) >= 2:
        k = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ---- the run ------------------------------------------------------------------------------------


class Run:
    """One stage's training run (see the module docstring)."""

    def __init__(self, args: TrainArgs) -> None:
        if args.stage not in STAGES:
            raise DataError(f"unknown stage {args.stage!r}: choose one of {', '.join(STAGES)}")
        if args.steps < 1 or args.batch < 1:
            raise DataError("--steps and --batch must be at least 1")
        for flag, share in (
            ("--high-noise", args.high_noise),
            ("--drop-caption", args.drop_caption),
            ("--drop-grounding", args.drop_grounding),
        ):
            if not 0.0 <= share <= 1.0:
                raise DataError(f"{flag} {share}: give a share between 0 and 1")
        out = Path(args.out)
        if (out / CHECKPOINT).exists() and not args.resume:
            raise DataError(
                f"{out} already holds a run: pass --resume to continue it, or choose another --out"
            )
        if args.resume and not (out / CHECKPOINT).is_file():
            raise DataError(f"{out}: no {CHECKPOINT} to resume from: drop --resume to start a new run")
        self.args = args
        self.out = out
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DataError("--device cuda: no CUDA device is visible to torch; use --device cpu")
        self.model, self.tokenizer = initial_model(args)
        if args.grounding_from is not None:
            if args.stage != "gligen":
                raise DataError("--grounding-from belongs to the gligen stage")
            copy_grounding(args.grounding_from, self.model)
        # A base (every fuser gate at 0) gets a fresh grounding tokenizer; an --init that already
        # grounds (a gate opened by an earlier gligen run) is trained further as it is, since its
        # fusers were learned against that tokenizer.
        self.continues_grounding = args.stage == "gligen" and grounding_is_trained(self.model)
        # A base run under a model that grounds changes the UNet its fusers were learned on: its
        # result is a base again (fusers and grounding tokenizer fresh, every gate at 0).
        self.reset_grounding = args.stage == "base" and grounding_is_trained(self.model)
        if self.reset_grounding:
            reset_grounding(self.model, args.seed)
        if args.fuser_init not in ("fresh", "block"):
            raise DataError(f"--fuser-init {args.fuser_init!r}: choose fresh or block")
        if args.stage == "gligen" and not self.continues_grounding:
            init_grounding_tokenizer(self.model, args.seed)
            if args.fuser_init == "block":
                init_fusers_from_blocks(self.model)
        self.config: ModelConfig = self.model.config
        # Validate every input before anything is written.
        self.folder = read_folder(args.data, size=self.config.default_size, limit=args.limit)
        out.mkdir(parents=True, exist_ok=True)
        self.model.to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.params = trainable_parameters(self.model, args.stage)
        for p in self.params.values():
            p.requires_grad_(True)
        gates = [p for k, p in self.params.items() if k.endswith((".alpha_attn", ".alpha_dense"))]
        self._dense_gates = [p for k, p in self.params.items() if k.endswith(".alpha_dense")]
        rest = [p for k, p in self.params.items() if not k.endswith((".alpha_attn", ".alpha_dense"))]
        groups = [{"params": rest}]
        if gates:  # the fusers' tanh gates (a faster rate opens them within a short CPU run)
            groups.append({"params": gates, "lr": args.lr * args.gate_lr_scale, "weight_decay": 0.0})
        # fused: one kernel per step over all parameters, not a loop over them
        self.optimizer = torch.optim.AdamW(
            groups, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999), fused=True
        )
        warm, total = max(1, args.warmup), args.steps

        def lr_factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.ema = {k: p.detach().clone() for k, p in self.params.items()} if args.ema > 0 else None
        self.gen = torch.Generator().manual_seed(args.seed)
        self.step = 0
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.signals: list[dict[str, float]] = []  # gligen stage: grounding_signal() at each checkpoint
        self.wall = 0.0
        self._prepare_data()
        if args.resume:
            self._load()

    # -- data --------------------------------------------------------------------------------

    def _prepare_data(self) -> None:
        model, folder = self.model, self.folder
        self.images = images_tensor(folder)
        if self.args.stage == "vae":
            return
        self.model.eval()
        self.lat_mean, self.lat_std = cached_latents(model, self.images, folder.path)
        self.captions = [s.prompt for s in folder.samples]
        self.phrases = folder.phrases
        self.phrase_index = {p: i for i, p in enumerate(self.phrases)}
        self.boxes, self.masks, self.phrase_ids = box_tensors(folder, self.phrase_index)
        self.caption_ctx = self.null_ctx = self.phrase_emb = None
        if self.args.stage == "gligen":
            self._encode_frozen_text()

    @torch.no_grad()
    def _encode_frozen_text(self, batch: int = 64) -> None:
        """gligen stage: the text encoder is frozen, so every caption's context, the null caption's and
        every phrase's pooled embedding are computed once here rather than at every step (about 30 of
        450 ms in a tiny batch-32 step). Captions whose contexts would pass CAPTION_CACHE_BYTES stay per step."""
        m = self.model
        m.eval()
        self.null_ctx = m.encode_text(self._tokens([""]))[0]
        self.phrase_emb = m.encode_text(self._tokens(self.phrases))[1]
        width = self.null_ctx.shape[1] * self.null_ctx.shape[2] * 4
        if len(self.captions) * width <= CAPTION_CACHE_BYTES:
            self.caption_ctx = torch.cat(
                [
                    m.encode_text(self._tokens(self.captions[i : i + batch]))[0]
                    for i in range(0, len(self.captions), batch)
                ]
            )

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.tokenizer.encode(texts).astype(np.int64)).to(self.device)

    def _contexts(self, idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Text contexts of the samples ``idx``, the null caption's where ``keep`` is False: from the
        gligen stage's cache when it holds them, else encoded now (the base stage trains the encoder)."""
        if self.caption_ctx is not None:
            rows = self.caption_ctx[idx.to(self.device)]
            return torch.where(keep.to(self.device)[:, None, None], rows, self.null_ctx)
        captions = [self.captions[i] if k else "" for i, k in zip(idx.tolist(), keep.tolist(), strict=True)]
        return self.model.encode_text(self._tokens(captions))[0]

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen)

    # -- one step ----------------------------------------------------------------------------

    def _loss(self) -> torch.Tensor:
        a, m = self.args, self.model
        n = len(self.images)
        idx = torch.randint(0, n, (a.batch,), generator=self.gen)
        if a.stage == "vae":
            s = a.crop
            size = self.images.shape[-1]
            off = torch.randint(0, size - s + 1, (2,), generator=self.gen).tolist() if s < size else [0, 0]
            x = self.images[idx][:, :, off[0] : off[0] + s, off[1] : off[1] + s].to(self.device)
            post = m.vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=self.gen).to(self.device)
            rec = m.vae.decode(z).sample
            kl = 0.5 * (post.mean**2 + post.var - 1.0 - post.logvar).mean()
            return F.l1_loss(rec.float(), x) + F.mse_loss(rec.float(), x) + 1e-6 * kl
        z0 = self.lat_mean[idx] + self.lat_std[idx] * torch.randn(
            self.lat_mean[idx].shape, generator=self.gen
        )
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (a.batch,), generator=self.gen)
        if a.stage == "gligen" and a.high_noise > 0:
            # The layout is decided at high noise, and scheduled sampling runs the fusers there only.
            upper = torch.randint(
                NUM_TRAIN_TIMESTEPS // 2, NUM_TRAIN_TIMESTEPS, (a.batch,), generator=self.gen
            )
            t = torch.where(self._rand(a.batch) < a.high_noise, upper, t)
        noise = torch.randn(z0.shape, generator=self.gen)
        zt = add_noise(z0, noise, t).to(self.device)
        keep_caption = self._rand(a.batch) >= a.drop_caption
        ts = t.float().to(self.device)
        if a.stage == "base":
            ctx = self._contexts(idx, keep_caption)
            eps = m.unet_plain(zt, ts, ctx)
            return F.mse_loss(eps.float(), noise.to(self.device))
        keep_grounding = (self._rand(a.batch) >= a.drop_grounding).float()
        with torch.no_grad():
            ctx = self._contexts(idx, keep_caption)
        masks = (self.masks[idx] * keep_grounding[:, None]).to(self.device)
        tokens = m.position_net(
            boxes=self.boxes[idx].to(self.device),
            masks=masks,
            phrase_embeddings=self.phrase_emb[self.phrase_ids[idx].to(self.device)],
        )
        gate = torch.ones(1, device=self.device)
        eps = m.unet_grounded(zt, ts, ctx, tokens, gate)
        return F.mse_loss(eps.float(), noise.to(self.device))

    def train_step(self) -> float:
        a = self.args
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=a.bf16):
            loss = self._loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.step < a.dense_after:
            for p in self._dense_gates:
                p.grad = None  # AdamW skips a parameter without a gradient: the gate stays 0
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), a.clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            with torch.no_grad():
                for k, p in self.params.items():
                    self.ema[k].lerp_(p.detach(), 1.0 - a.ema)
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DataError(f"loss became {value} at step {self.step}: lower --lr or use fp32 (drop --bf16)")
        self.losses.append(value)
        self.lrs.append(self.scheduler.get_last_lr()[0])
        return value

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "stage": self.args.stage,
            "step": self.step,
            "params": {k: p.detach().cpu().clone() for k, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema,
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "losses": self.losses,
            "lrs": self.lrs,
            "signals": self.signals,
            "wall": self.wall,
        }

    def _load(self) -> None:
        state = torch.load(self.out / CHECKPOINT, map_location="cpu", weights_only=False)
        if state["stage"] != self.args.stage:
            raise DataError(f"{self.out / CHECKPOINT} is a {state['stage']} run, not {self.args.stage}")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema = state["ema"]
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self.losses = list(state["losses"])
        self.lrs = list(state["lrs"])
        self.signals = list(state.get("signals", []))
        self.wall = float(state["wall"])

    @torch.no_grad()
    def grounding_signal(self, n: int = 64) -> dict[str, float]:
        """gligen stage: the denoising loss at high noise (t in the upper half) on a fixed batch with
        the true boxes, with grounding off and with the boxes rotated between objects. Minutes before
        any sample shows it: ``phrase_gain`` (off - true) > 0 says the fusers use what the phrases
        are, ``layout_gain`` (shuffled - true) > 0 that they use where the boxes are."""
        m, dev = self.model, self.device
        was_training = m.training
        m.eval()
        gen = torch.Generator().manual_seed(12345)  # its own stream: training's RNG state is untouched
        idx = torch.arange(min(n, len(self.lat_mean)))
        t = torch.randint(NUM_TRAIN_TIMESTEPS // 2, NUM_TRAIN_TIMESTEPS, (len(idx),), generator=gen)
        noise = torch.randn(self.lat_mean[idx].shape, generator=gen)
        zt = add_noise(self.lat_mean[idx], noise, t).to(dev)
        ctx = self._contexts(idx, torch.ones(len(idx), dtype=torch.bool))
        phrase_emb = self.phrase_emb
        boxes, masks = self.boxes[idx], self.masks[idx]
        rotated = boxes.clone()
        for row, k in enumerate(masks.sum(1).long().tolist()):
            rotated[row, :k] = torch.roll(boxes[row, :k], 1, 0)
        losses = {}
        for name, b, mk in (("true", boxes, masks), ("off", boxes, 0 * masks), ("shuffled", rotated, masks)):
            tokens = m.position_net(
                boxes=b.to(dev), masks=mk.to(dev), phrase_embeddings=phrase_emb[self.phrase_ids[idx].to(dev)]
            )
            eps = m.unet_grounded(zt, t.float().to(dev), ctx, tokens, torch.ones(1, device=dev))
            losses[name] = float(F.mse_loss(eps.float(), noise.to(dev)))
        m.train(was_training)
        return {
            "step": self.step,
            "loss_high_noise": losses["true"],
            "phrase_gain": losses["off"] - losses["true"],
            "layout_gain": losses["shuffled"] - losses["true"],
        }

    def save_checkpoint(self) -> None:
        if self.args.stage == "gligen" and (not self.signals or self.signals[-1]["step"] != self.step):
            self.signals.append(self.grounding_signal())
            atomic_write_text(
                self.out / "grounding.jsonl", "".join(json.dumps(r) + "\n" for r in self.signals)
            )
            if self.args.progress:
                from tqdm import tqdm

                r = self.signals[-1]
                tqdm.write(
                    f"step {r['step']}: phrase gain {r['phrase_gain']:+.5f}, layout gain {r['layout_gain']:+.5f} "
                    "(loss at high noise without grounding / with shuffled boxes minus with the true boxes)",
                    file=sys.stderr,
                )
        atomic_torch_save(self._state(), self.out / CHECKPOINT)
        lines = "".join(
            json.dumps({"step": i + 1, "loss": loss, "lr": lr}) + "\n"
            for i, (loss, lr) in enumerate(zip(self.losses, self.lrs, strict=True))
        )
        atomic_write_text(self.out / "loss.jsonl", lines)
        plot_losses(self.losses, self.out / "loss.png", f"{self.config.key}: {self.args.stage} stage")

    def final_model(self) -> GLIGENModel:
        """The model with the trained weights (EMA weights when EMA is on), eval mode."""
        if self.ema is not None:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self.ema[k])
        if self.args.stage == "vae":
            normalise_latents(self.model, self.images)
        return self.model.eval()

    # -- the loop ----------------------------------------------------------------------------

    def batches(self) -> Iterator[int]:
        while self.step < self.args.steps:
            yield self.step

    def run(self) -> Path:
        from tqdm import tqdm

        a = self.args
        bar = tqdm(
            total=a.steps,
            initial=self.step,
            desc=f"train {a.stage}",
            unit="it",
            disable=not a.progress,
            file=sys.stderr,
            mininterval=2.0,
        )
        t0 = time.perf_counter() - self.wall
        for _ in self.batches():
            loss = self.train_step()
            self.wall = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}", refresh=False)
            if self.step % a.save_every == 0 or self.step == a.steps:
                self.save_checkpoint()
        bar.close()
        model = self.final_model()
        from gligen_ref.checkpoint import save_diffusers, save_original

        save_diffusers(model, self.out / "model", tokenizer=self.tokenizer)
        if a.stage == "gligen":
            save_original(model, self.out / "gligen.pth")
        tail = self.losses[-min(100, len(self.losses)) :]
        record = {
            "stage": a.stage,
            "model": self.config.key,
            "steps": self.step,
            "batch": a.batch,
            "wall_s": round(self.wall, 1),
            "final_loss_mean_last_100": float(np.mean(tail)),
            "grounding_signal": self.signals[-1] if self.signals else None,
            "samples": len(self.folder.samples),
            "data_info": self.folder.info,
            "trainable_parameters": int(sum(p.numel() for p in self.params.values())),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(a).items()},
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        atomic_write_text(self.out / "run.json", json.dumps(record, indent=2) + "\n")
        return self.out / "model"


@torch.no_grad()
def grounding_is_trained(model: GLIGENModel) -> bool:
    """Whether any fuser's gate is open, i.e. the model already grounds (GLIGEN's gates start at 0)."""
    return any(float(f.alpha_attn) != 0 or float(f.alpha_dense) != 0 for f in model.fusers())


@torch.no_grad()
def copy_grounding(source: Path, model: GLIGENModel) -> None:
    """Fusers and grounding tokenizer of the GLIGEN model in ``source`` (a diffusers folder of the same
    architecture whose gates are open) copied into ``model``; the base stays ``model``'s own."""
    from gligen_ref.checkpoint import load_checkpoint

    donor = load_checkpoint(source).model
    if donor.config.key != model.config.key:
        raise DataError(
            f"--grounding-from {source}: a {donor.config.key} model, the base is {model.config.key}"
        )
    if not grounding_is_trained(donor):
        raise DataError(f"--grounding-from {source}: its fuser gates are all 0 (a base, not a GLIGEN model)")
    own = model.state_dict()
    for k, v in donor.state_dict().items():
        if ".fuser." in k or k.startswith("position_net."):
            own[k].copy_(v.float())


@torch.no_grad()
def reset_grounding(model: GLIGENModel, seed: int) -> None:
    """Fusers and grounding tokenizer back to a freshly built model's (seeded), gates at 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = GLIGENModel(model.config).float().state_dict()
    own = model.state_dict()
    for k, v in fresh.items():
        if ".fuser." in k or k.startswith("position_net."):
            own[k].copy_(v)


@torch.no_grad()
def init_grounding_tokenizer(model: GLIGENModel, seed: int) -> None:
    """Variance-preserving init of the grounding tokenizer's MLP (He-normal before each SiLU, 1/fan_in at
    the output) and zero null features: PyTorch's default init shrinks the tokens to ~0.05 and their
    box dependence to ~1e-3, so the fusers see almost no layout and barely learn it."""
    gen = torch.Generator().manual_seed(seed)
    linears = [m for m in model.position_net.modules() if isinstance(m, nn.Linear)]
    for i, lin in enumerate(linears):
        gain = 1.0 if i == len(linears) - 1 else 2.0
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * (gain / lin.in_features) ** 0.5)
        lin.bias.zero_()
    for name, p in model.position_net.named_parameters():
        if name.startswith("null_"):
            p.zero_()


@torch.no_grad()
def init_fusers_from_blocks(model: GLIGENModel) -> None:
    """Each fuser's attention, feed-forward and norms start as copies of its own transformer block's
    self-attention (attn1, norm1) and feed-forward (ff, norm3); the gates stay 0, so the output is
    unchanged. The visual tokens' queries and keys then begin as the frozen UNet's, which already
    tell places apart, and the grounding tokens only have to learn keys that match them."""
    from gligen_ref.model import transformer_blocks

    for block in transformer_blocks(model.unet):
        fuser = block.fuser
        for dst, src in (
            (fuser.attn, block.attn1),
            (fuser.ff, block.ff),
            (fuser.norm1, block.norm1),
            (fuser.norm2, block.norm3),
        ):
            theirs = src.state_dict()
            for k, v in dst.state_dict().items():
                if k not in theirs or theirs[k].shape != v.shape:
                    raise DataError(f"--fuser-init block: the fuser's {k} has no counterpart in its block")
                v.copy_(theirs[k])


@torch.no_grad()
def normalise_latents(model: GLIGENModel, images: torch.Tensor, target: float = 1.0) -> float:
    """Rescale the VAE's latent space so scaled latents (times the config's scaling factor) have std
    ``target``: quant_conv's mean rows times k, its log-variance bias + 2 ln k, post_quant_conv's
    weights divided by k. Exact: the decoder sees the same input. Returns k."""
    model.eval()
    mean, _ = encode_latents(model, images[: min(len(images), 512)])
    k = target / float(mean.std())
    vae = model.vae
    c = model.config.vae.latent_channels
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    qc.weight[:c] *= k
    qc.bias[:c] *= k
    qc.bias[c:] += 2 * math.log(k)
    pqc.weight /= k
    return k


def train(args: TrainArgs) -> Path:
    return Run(args).run()
