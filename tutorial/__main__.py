"""Command line: `python -m tutorial {data,train,eval,ship} ...` (`--help` on each)."""
from __future__ import annotations

import argparse
import json
import sys

import torch


def cmd_data(args) -> None:
    import dataclasses

    from .shapes import DEFAULT_ROOTS, PRESETS, generate

    cfg = dataclasses.replace(PRESETS[args.preset], seed=args.seed, num_train=args.num_train, num_val=args.num_val)
    generate(args.out or DEFAULT_ROOTS[args.preset], cfg, workers=args.workers, force=args.force)


def cmd_train(args) -> None:
    from .train import TrainConfig, train

    overrides = json.loads(args.model_overrides) if args.model_overrides else {}
    cfg = TrainConfig(model=args.model, data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, lr_backbone=args.lr_backbone, weight_decay=args.weight_decay,
                      clip_max_norm=args.clip_max_norm, schedule=args.schedule, lr_drop=args.lr_drop,
                      warmup_iters=args.warmup_iters, seed=args.seed, workers=args.workers,
                      eval_every=args.eval_every, max_train_time=args.max_train_time, lr_drop_time=args.lr_drop_time,
                      train_images=args.train_images, val_images=args.val_images,
                      resize=tuple(args.resize) if args.resize else None, resume=args.resume,
                      instability_images=args.instability_images,
                      progress=not args.no_progress, model_overrides=overrides, amp=args.amp)
    if args.threads:
        torch.set_num_threads(args.threads)
    train(cfg)


def cmd_eval(args) -> None:
    from .checkpoint import load_model
    from .dataset import DetectionDataset
    from .evaluate import evaluate

    model = load_model(args.checkpoint, args.model)
    val = DetectionDataset(args.data, args.split, num_classes=model.cfg.num_classes,
                           resize=tuple(args.resize) if args.resize else None)
    metrics = evaluate(model, val, args.batch_size, args.workers, progress=not args.no_progress)
    print(json.dumps(metrics))


def cmd_pretrain(args) -> None:
    from .pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(backbone=args.backbone, out=args.out or f"data/pretrained/{args.backbone}_tiny.pt",
                         images=args.images, max_time=args.max_time, lr=args.lr, batch_size=args.batch_size,
                         threads=args.threads)
    pretrain(cfg, command="python -m tutorial pretrain " + " ".join(sys.argv[2:]))


def cmd_ship(args) -> None:
    from .ship import ship

    ship(args.run, args.name, args.data, command=args.command)


def cmd_exercises(args) -> None:
    from .exercises import write_stubs

    written = write_stubs(force=args.force)
    print("wrote " + ", ".join(str(p) for p in written) if written else "exercises/ is up to date (use --force)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tutorial", description=__doc__)
    sub = parser.add_subparsers(dest="command_name", required=True)

    p = sub.add_parser("data", help="generate the synthetic shapes set (reused when present)")
    p.add_argument("--preset", choices=["default", "hard"], default="default",
                   help="which set (tutorial/shapes.py PRESETS); 'hard' is the first, harder one")
    p.add_argument("--out", default=None, help="default: data/shapes, or data/shapes_hard for --preset hard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=5000)
    p.add_argument("--num-val", type=int, default=500)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--force", action="store_true", help="regenerate even if present")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model (see tutorial/train.py)")
    p.add_argument("--model", default="detr_tiny", help="a name from tutorial.list_models()")
    p.add_argument("--data", default="data/shapes", help="shapes folder or a local COCO 2017 folder")
    p.add_argument("--out", default="runs/detr_tiny")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-backbone", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip-max-norm", type=float, default=0.1)
    p.add_argument("--schedule", choices=["step", "cosine"], default="step")
    p.add_argument("--lr-drop", type=int, default=None)
    p.add_argument("--warmup-iters", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--max-train-time", type=float, default=None, help="seconds")
    p.add_argument("--lr-drop-time", type=float, default=None, help="seconds of training before the x0.1 drop")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--val-images", type=int, default=None)
    p.add_argument("--resize", type=int, nargs=2, default=None, metavar=("SHORT", "MAX"))
    p.add_argument("--instability-images", type=int, default=0,
                   help="track the instability score (DN-DETR) on this many val images")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--amp", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: bfloat16 autocast for the forward (losses stay float32)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--model-overrides", default=None, help='JSON, e.g. \'{"num_queries": 50}\'')
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="pretrain a tiny backbone on dense labelling (tutorial/pretrain.py)")
    p.add_argument("--backbone", choices=["resnet", "presnet"], default="resnet")
    p.add_argument("--out", default=None, help="default: data/pretrained/<backbone>_tiny.pt")
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--max-time", type=float, default=600.0, help="seconds of training")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="COCO metrics of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None, help="check the checkpoint against this preset")
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--resize", type=int, nargs=2, default=None, metavar=("SHORT", "MAX"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ship", help="copy a run's checkpoint to data/checkpoints with a manifest")
    p.add_argument("--run", required=True, help="the run folder (with checkpoint.pt and metrics.jsonl)")
    p.add_argument("--name", required=True, help="e.g. detr_tiny")
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--command", required=True, help="the exact train command that produced the run")
    p.set_defaults(func=cmd_ship)

    p = sub.add_parser("exercises", help="write the exercise stubs into exercises/")
    p.add_argument("--force", action="store_true", help="overwrite files you may have edited")
    p.set_defaults(func=cmd_exercises)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
