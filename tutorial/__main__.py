"""Command line: `python -m tutorial {data,train,pretrain,eval,predict,convert,ship,exercises} ...` (`--help` on each).

Bad input (a missing or malformed file, an unknown model, a wrong checkpoint) prints one line,
`error: <what is wrong and the fix>`, and exits with status 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing

import torch

from .errors import InputError, json_object, one_line


def cmd_data(args) -> None:
    from .data.shapes import DEFAULT_ROOTS, PRESETS, generate

    cfg = dataclasses.replace(PRESETS[args.preset], seed=args.seed, num_train=args.num_train, num_val=args.num_val)
    generate(args.out or DEFAULT_ROOTS[args.preset], cfg, workers=args.workers, force=args.force)


def parse_json(text: str, option: str) -> dict:
    """A JSON option (`--model-overrides`) -> dict, or an `InputError` saying what is wrong with it."""
    return json_object(text, option, "a JSON object of config fields", "expected e.g. '{\"num_queries\": 50}'")


# --- options generated from a config dataclass -------------------------------------------------
# A command's options are its config's fields, so that each default is written once, in the
# dataclass: `batch_size: int = 16  # images per step` becomes `--batch-size BATCH_SIZE`, type int,
# default 16, help "images per step (default: 16)".

METAVARS = {"resize": ("SHORT", "MAX")}  # names for the parts of tuple-valued fields


def field_comments(cls) -> dict[str, str]:
    """{field name: its trailing `# comment`} for the fields of dataclass `cls`, read from its source."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    found = {}
    for node in ast.parse(source).body[0].body:  # the statements of the class
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, node.end_lineno + 1)  # a default may span lines
            text = " ".join(comments[i] for i in lines if i in comments)
            if text:
                found[node.target.id] = text
    return found


def without_none(kind):
    """`int | None` -> int; other annotations as they are."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


def field_default(f: dataclasses.Field):
    """The field's default value (None if it has none)."""
    return (f.default if f.default is not dataclasses.MISSING else
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)


def option_of(f: dataclasses.Field, kind, comment: str, default) -> tuple[str, dict]:
    """The flag and `add_argument` keywords for field `f` of annotation `kind`: bool -> a switch
    (`--no-<name>` when it defaults to True), Literal -> choices, tuple -> nargs, dict -> JSON."""
    flag = "--" + f.name.replace("_", "-")
    kw = dict(dest=f.name, default=default)
    kind, origin = without_none(kind), typing.get_origin(without_none(kind))
    if kind is bool:
        kw["action"] = "store_false" if default else "store_true"
        flag, comment = ("--no-" + flag[2:], f"switch off {f.name}: {comment}") if default else (flag, comment)
    elif origin is typing.Literal:
        kw.update(choices=list(typing.get_args(kind)), type=type(typing.get_args(kind)[0]))
    elif origin is tuple:
        kw.update(type=typing.get_args(kind)[0], nargs=len(typing.get_args(kind)))
        if f.name in METAVARS:
            kw["metavar"] = METAVARS[f.name]
    elif kind is dict or origin is dict:
        kw.update(default=None, metavar="JSON")  # parsed by `config_from_args`: an error there is one line
    elif kind in (int, float, str):
        kw["type"] = kind
    else:  # a field of a new kind: say which, rather than parse it wrongly
        raise TypeError(f"{f.name}: no command-line option for a field annotated {kind}; "
                        f"expected int, float, str, bool, a Literal, a tuple or dict (or `| None` of one)")
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        kw["required"] = True
    shown = "" if default is None or isinstance(default, (bool, dict)) else f" (default: {default})"
    kw["help"] = (comment + shown).strip().replace("%", "%%")  # argparse formats help with %
    return flag, kw


def add_config_options(parser: argparse.ArgumentParser, cls, **changes: dict) -> None:
    """One option per field of dataclass `cls` (see `option_of`), help from the field's comment;
    `changes[name]` updates that field's `add_argument` keywords ("help" replaces the comment)."""
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    for f in dataclasses.fields(cls):
        change = dict(changes.get(f.name, {}))
        flag, kw = option_of(f, hints[f.name], change.pop("help", comments.get(f.name, "")),
                             change.pop("default", field_default(f)))
        kw.update(change)
        parser.add_argument(flag, **kw)


def config_from_args(cls, args: argparse.Namespace, **given):
    """`cls(...)` from the options of `add_config_options` (lists -> tuples, JSON -> dict); `given`
    sets fields that the command computes."""
    hints, values = typing.get_type_hints(cls), dict(given)
    for f in dataclasses.fields(cls):
        if f.name in given:
            continue
        value, kind = getattr(args, f.name), without_none(hints[f.name])
        if kind is dict or typing.get_origin(kind) is dict:
            value = parse_json(value, "--" + f.name.replace("_", "-")) if value else f.default_factory()
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def cmd_train(args) -> None:
    from .training.train import TrainConfig, train

    cfg = config_from_args(TrainConfig, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    train(cfg)


def cmd_eval(args) -> None:
    from .training.checkpoint import checkpoint_config, load_checkpoint, model_from_checkpoint
    from .data.dataset import DetectionDataset
    from .training.amp import bf16_warning
    from .training.evaluate import evaluate

    ckpt = load_checkpoint(args.checkpoint)  # the checkpoint and the data are checked before building the model
    _, cfg = checkpoint_config(ckpt, args.checkpoint, args.model)
    val = DetectionDataset(args.data, args.split, num_classes=cfg.num_classes,
                           resize=tuple(args.resize) if args.resize else None)
    model = model_from_checkpoint(ckpt, args.checkpoint, args.model)
    if args.amp == "bf16" and (warning := bf16_warning("cpu")):
        print(warning, file=sys.stderr)
    metrics = evaluate(model, val, args.batch_size, args.workers, progress=not args.no_progress, amp=args.amp)
    print(json.dumps(metrics))


def cmd_predict(args) -> None:
    from .training.amp import bf16_warning
    from .training.predict import PredictConfig, predict

    cfg = config_from_args(PredictConfig, args)
    if cfg.amp == "bf16" and (warning := bf16_warning("cpu")):
        print(warning, file=sys.stderr)
    results = predict(cfg)
    print(f"{len(results)} detections with score >= {cfg.threshold}")


def cmd_convert(args) -> None:
    from .convert import convert

    summary = convert(args.model, args.src, args.out, source=args.source)
    print(f"{args.out}: {summary['preset']} from {summary['source']} weights, {summary['source_keys']} keys -> "
          f"{summary['model_keys']}, {summary['parameters']:,} parameters, {summary['num_classes']} classes")


def cmd_pretrain(args) -> None:
    from .training.pretrain import PretrainConfig, pretrain

    cfg = config_from_args(PretrainConfig, args, out=args.out or f"data/pretrained/{args.backbone}_tiny.pt")
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

    from .training.predict import PredictConfig
    from .training.pretrain import PretrainConfig
    from .training.train import TrainConfig

    p = add_command(sub, "train", help="train a model (see tutorial/training/train.py)")
    add_config_options(p, TrainConfig)  # one option per field of TrainConfig
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.set_defaults(func=cmd_train)

    p = add_command(sub, "pretrain", help="pretrain a tiny backbone on dense labelling (tutorial/training/pretrain.py)")
    add_config_options(p, PretrainConfig, backbone=dict(choices=["resnet", "presnet"]),
                       out=dict(default=None, help="default: data/pretrained/<backbone>_tiny.pt"))
    p.set_defaults(func=cmd_pretrain)

    p = add_command(sub, "eval", help="COCO metrics of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None, help="check the checkpoint against this preset")
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--split", default="val")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--resize", type=int, nargs=2, default=None, metavar=("SHORT", "MAX"))
    p.add_argument("--amp", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: inference under bfloat16 autocast (pays on CPUs with AMX-BF16 or AVX512-BF16)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = add_command(sub, "predict", help="draw a checkpoint's detections on your own image(s)")
    add_config_options(  # help for the fields that PredictConfig's docstring describes
        p, PredictConfig, image=dict(help="an image file, or a folder of *.jpg, *.jpeg, *.png"),
        threshold=dict(help="keep detections with score >= this"),
        out=dict(help="the PNG to write (default pred.png); for a folder, the folder for <stem>.png (default pred/)"),
        json=dict(help="COCO results JSON (default: --out with .json, or <out>/predictions.json for a folder)"))
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
