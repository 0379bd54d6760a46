"""Command line: `python -m tutorial {data,train,pretrain,eval,predict,convert,ship,exercises} ...` (`--help` on each).

Bad input (a missing or malformed file, an unknown model, a wrong checkpoint) prints one line,
`error: <what is wrong and the fix>`, and exits with status 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .errors import InputError, one_line


def cmd_data(args) -> None:
    import dataclasses

    from .data.shapes import DEFAULT_ROOTS, PRESETS, generate

    cfg = dataclasses.replace(PRESETS[args.preset], seed=args.seed, num_train=args.num_train, num_val=args.num_val)
    generate(args.out or DEFAULT_ROOTS[args.preset], cfg, workers=args.workers, force=args.force)


def parse_overrides(text: str | None) -> dict:
    """`--model-overrides` JSON -> dict, or an `InputError` saying what is wrong with it."""
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--model-overrides: not valid JSON ({e.msg} at column {e.colno}); "
                         f"expected e.g. '{{\"num_queries\": 50}}'") from e
    if not isinstance(overrides, dict):
        raise InputError(f"--model-overrides: expected a JSON object of config fields, got {text!r}")
    return overrides


def cmd_train(args) -> None:
    from .training.train import TrainConfig, train

    overrides = parse_overrides(args.model_overrides)
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
    from .training.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
    from .data.dataset import DetectionDataset
    from .training.evaluate import evaluate

    ckpt = load_checkpoint(args.checkpoint)  # the checkpoint and the data are checked before building the model
    _, cfg = checkpoint_config(ckpt, args.checkpoint, args.model)
    val = DetectionDataset(args.data, args.split, num_classes=cfg.num_classes,
                           resize=tuple(args.resize) if args.resize else None)
    model = model_from_checkpoint(ckpt, args.checkpoint, args.model)
    metrics = evaluate(model, val, args.batch_size, args.workers, progress=not args.no_progress)
    print(json.dumps(metrics))


def cmd_predict(args) -> None:
    from .training.predict import PredictConfig, predict

    cfg = PredictConfig(checkpoint=args.checkpoint, image=args.image, out=args.out, threshold=args.threshold,
                        json=args.json, model=args.model, resize=tuple(args.resize) if args.resize else None)
    results = predict(cfg)
    print(f"{len(results)} detections with score >= {cfg.threshold}")


def cmd_convert(args) -> None:
    from .convert import convert

    summary = convert(args.model, args.src, args.out, source=args.source)
    print(f"{args.out}: {summary['preset']} from {summary['source']} weights, {summary['source_keys']} keys -> "
          f"{summary['model_keys']}, {summary['parameters']:,} parameters, {summary['num_classes']} classes")


def cmd_pretrain(args) -> None:
    from .training.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(backbone=args.backbone, out=args.out or f"data/pretrained/{args.backbone}_tiny.pt",
                         images=args.images, max_time=args.max_time, lr=args.lr, batch_size=args.batch_size,
                         threads=args.threads)
    pretrain(cfg, command="python -m tutorial " + " ".join(a for a in sys.argv[1:] if a != "--debug"))


def cmd_ship(args) -> None:
    from .training.ship import ship

    ship(args.run, args.name, args.data, command=args.command)


def cmd_exercises(args) -> None:
    from .exercises import write_stubs

    written = write_stubs(force=args.force)
    print("wrote " + ", ".join(str(p) for p in written) if written else "exercises/ is up to date (use --force)")


def run(args) -> None:
    """Run the chosen command; bad input becomes one line on stderr and exit status 2."""
    try:
        args.func(args)
    except InputError as e:
        if args.debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)


DEBUG_HELP = "show the full traceback of an error instead of its one-line message"


def add_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command parser that also takes `--debug` after the sub-command's name. Its default is
    SUPPRESS, so that `python -m tutorial --debug eval ...` is not reset to False by the sub-parser."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per task; `--debug` before or after it."""
    parser = argparse.ArgumentParser(prog="python -m tutorial", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command_name", required=True)

    p = add_command(sub, "data", help="generate the synthetic shapes set (reused when present)")
    p.add_argument("--preset", choices=["default", "hard"], default="default",
                   help="which set (tutorial/data/shapes.py PRESETS); 'hard' is the first, harder one")
    p.add_argument("--out", default=None, help="default: data/shapes, or data/shapes_hard for --preset hard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=5000)
    p.add_argument("--num-val", type=int, default=500)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--force", action="store_true", help="regenerate even if present")
    p.set_defaults(func=cmd_data)

    p = add_command(sub, "train", help="train a model (see tutorial/training/train.py)")
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

    p = add_command(sub, "pretrain", help="pretrain a tiny backbone on dense labelling (tutorial/training/pretrain.py)")
    p.add_argument("--backbone", choices=["resnet", "presnet"], default="resnet")
    p.add_argument("--out", default=None, help="default: data/pretrained/<backbone>_tiny.pt")
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--max-time", type=float, default=600.0, help="seconds of training")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_pretrain)

    p = add_command(sub, "eval", help="COCO metrics of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None, help="check the checkpoint against this preset")
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--resize", type=int, nargs=2, default=None, metavar=("SHORT", "MAX"))
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = add_command(sub, "predict", help="draw a checkpoint's detections on your own image(s)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True, help="an image file, or a folder of *.jpg, *.jpeg, *.png")
    p.add_argument("--threshold", type=float, default=0.5, help="keep detections with score >= this")
    p.add_argument("--out", default=None, help="the PNG to write (default pred.png); for a folder, the folder "
                   "for <stem>.png (default pred/)")
    p.add_argument("--json", default=None, help="COCO results JSON (default: --out with .json, or "
                   "<out>/predictions.json for a folder)")
    p.add_argument("--model", default=None, help="check the checkpoint against this preset")
    p.add_argument("--resize", type=int, nargs=2, default=None, metavar=("SHORT", "MAX"))
    p.set_defaults(func=cmd_predict)

    p = add_command(sub, "convert", help="an official or Hugging Face checkpoint -> a checkpoint of this package")
    p.add_argument("--from", dest="source", choices=["official", "transformers"], default=None,
                   help="the codebase that wrote SRC (default: guessed from its key names)")
    p.add_argument("--model", required=True, help="the preset to load it into, e.g. detr_r50")
    p.add_argument("src", help="the .pth / .bin / .safetensors file, or a Hugging Face model folder")
    p.add_argument("out", help="the checkpoint to write (for eval, predict, load_pretrained)")
    p.set_defaults(func=cmd_convert)

    p = add_command(sub, "ship", help="copy a run's checkpoint to data/checkpoints with a manifest")
    p.add_argument("--run", required=True, help="the run folder (with checkpoint.pt and metrics.jsonl)")
    p.add_argument("--name", required=True, help="e.g. detr_tiny")
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--command", required=True, help="the exact train command that produced the run")
    p.set_defaults(func=cmd_ship)

    p = add_command(sub, "exercises", help="write the exercise stubs into exercises/")
    p.add_argument("--force", action="store_true", help="overwrite files you may have edited")
    p.set_defaults(func=cmd_exercises)

    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
