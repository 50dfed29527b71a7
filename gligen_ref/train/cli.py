"""`gligen-rt train scenes|vae|base|gligen` (torch is imported only when a stage runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train GLIGEN (fusers + grounding tokenizer on a frozen base) or the tiny base model",
        description="Stages: scenes (write a synthetic data folder), vae, base (text encoder + UNet on "
        "captions), gligen (the paper's recipe: base frozen, fusers + grounding tokenizer trained).",
    )
    stages = p.add_subparsers(dest="stage", required=True)

    s = stages.add_parser("scenes", help="write a deterministic synthetic data folder")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128)
    s.set_defaults(func=cmd_scenes)

    k = stages.add_parser(
        "package", help="fp16 diffusers folder + FP32 engines + model card of a trained run"
    )
    k.add_argument("--runs", type=Path, required=True, help="folder holding the vae/, base/ and gligen/ runs")
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--notes", default="", help="extra text for the model card")
    k.set_defaults(func=cmd_package)

    for stage, lr, batch in (("vae", 1e-3, 16), ("base", 1e-3, 32), ("gligen", 5e-4, 32)):
        t = stages.add_parser(stage, help=f"train the {stage} stage")
        t.add_argument(
            "--data", type=Path, required=True, help="data folder (see gligen_ref/train/scenes.py)"
        )
        t.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, loss curve, model/)")
        t.add_argument("--model", default="tiny", help="architecture preset of a new model (vae stage)")
        t.add_argument(
            "--init",
            type=Path,
            default=None,
            required=stage != "vae",
            help="the previous stage's diffusers folder (RUN/model)",
        )
        t.add_argument("--steps", type=int, default=1000)
        t.add_argument("--batch", type=int, default=batch)
        t.add_argument("--lr", type=float, default=lr)
        t.add_argument("--warmup", type=int, default=100)
        t.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
        t.add_argument("--ema", type=float, default=0.0, help="EMA decay (0: off)")
        t.add_argument("--save-every", type=int, default=500)
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        t.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
        t.add_argument("--limit", type=int, default=None, help="use the first N samples")
        t.add_argument("--resume", action="store_true", help="continue the run in --out bit-exactly")
        t.add_argument("--no-progress", action="store_true")
        if stage == "gligen":
            t.add_argument(
                "--gate-lr-scale",
                type=float,
                default=1.0,
                help="learning-rate factor of the fusers' tanh gates",
            )
            t.add_argument(
                "--drop-caption",
                type=float,
                default=0.1,
                help="share of samples trained with the null caption",
            )
            t.add_argument(
                "--drop-grounding",
                type=float,
                default=0.1,
                help="share of samples trained with null grounding (every object masked)",
            )
            t.add_argument(
                "--dense-after",
                type=int,
                default=0,
                help="keep the fusers' feed-forward gates at 0 for this many steps, so the loss can only "
                "fall through the grounded attention first",
            )
            t.add_argument(
                "--grounding-from",
                type=Path,
                default=None,
                help="start the fusers and grounding tokenizer from this GLIGEN model's (RUN/model, same "
                "architecture), e.g. one trained on an earlier version of the --init base",
            )
            t.add_argument(
                "--fuser-init",
                choices=["fresh", "block"],
                default="fresh",
                help="fresh: the fusers' attention and feed-forward start from PyTorch's init; block: each "
                "starts as a copy of its transformer block's own self-attention and feed-forward (the gates "
                "still start at 0, so the model's output is unchanged)",
            )
            t.add_argument(
                "--high-noise",
                type=float,
                default=0.0,
                help="share of each batch whose timestep is drawn from the upper half of the schedule "
                "(where the layout is decided and scheduled sampling runs the fusers)",
            )
        if stage == "vae":
            t.add_argument("--crop", type=int, default=64, help="random crop side")
        t.set_defaults(func=cmd_train)


def cmd_scenes(args: argparse.Namespace) -> int:
    from gligen_ref.train.scenes import write_folder
    from gligen_rt.core.errors import DataError

    if args.count < 1 or args.size < 32 or args.size % 8:
        raise DataError("--count must be >= 1 and --size a multiple of 8, at least 32")
    try:
        path = write_folder(args.out, args.count, args.seed, args.size)
    except FileExistsError as exc:
        raise DataError(str(exc)) from None
    print(path)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from gligen_ref.train.trainer import TrainArgs, train

    targs = TrainArgs(
        stage=args.stage,
        data=args.data,
        out=args.out,
        model=args.model,
        init=args.init,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        clip=args.clip,
        ema=args.ema,
        save_every=args.save_every,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
        limit=args.limit,
        resume=args.resume,
        progress=not args.no_progress,
        **({"crop": args.crop} if args.stage == "vae" else {}),
        **(
            {
                "gate_lr_scale": args.gate_lr_scale,
                "high_noise": args.high_noise,
                "dense_after": args.dense_after,
                "grounding_from": args.grounding_from,
                "fuser_init": args.fuser_init,
                "drop_caption": args.drop_caption,
                "drop_grounding": args.drop_grounding,
            }
            if args.stage == "gligen"
            else {}
        ),
    )
    print(train(targs))
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from gligen_ref.train.package import package

    print(package(args.runs, args.out, args.notes))
    return 0
