"""The training loop: checkpoints, resume, metrics, the schedule, and two-process DDP on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tutorial.training.checkpoint import load_model
from tutorial.training.train import TrainConfig, lr_factor, train

from .test_bad_input import tiny_train_config


def test_train_writes_checkpoint_and_metrics_and_resumes(small_shapes, tmp_path):
    out = tmp_path / "run"
    train(tiny_train_config(small_shapes, out, epochs=1))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0]
    for key in ("train_time", "lr", "loss", "loss_ce", "loss_giou", "AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert key in lines[0]
    model = load_model(out / "checkpoint.pt")
    assert model.preset == "detr_tiny" and not model.training

    train(tiny_train_config(small_shapes, out, epochs=3, resume=True))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2]
    assert lines[2]["train_time"] > lines[0]["train_time"]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 2


def test_resume_refuses_a_different_model(small_shapes, tmp_path):
    out = tmp_path / "run"
    train(tiny_train_config(small_shapes, out))
    cfg = tiny_train_config(small_shapes, out, epochs=2, resume=True)
    cfg.model_overrides = {**cfg.model_overrides, "num_queries": 9}
    with pytest.raises(ValueError, match=r"cannot resume.*num_queries: 15 \(checkpoint\) != 9"):
        train(cfg)


def test_max_train_time_stops_early(small_shapes, tmp_path):
    out = tmp_path / "run"
    train(tiny_train_config(small_shapes, out, epochs=50, max_train_time=0.01))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_learning_rate_schedule():
    cfg = TrainConfig(epochs=10, warmup_iters=5)
    assert lr_factor(cfg, 0, 100) == pytest.approx(0.2)
    assert lr_factor(cfg, 100, 100) == 1.0 and lr_factor(cfg, 6 * 100, 100) == 0.1  # drop at 2/3
    cos = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(cos, 0, 100) == pytest.approx(1.0) and lr_factor(cos, 1000, 100) == pytest.approx(0.01)


@pytest.mark.slow
def test_two_cpu_processes_stay_in_sync(small_shapes, tmp_path):
    """torchrun with 2 processes (gloo): after training, both replicas hold identical weights,
    and they moved away from the initial ones."""
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(worker), str(small_shapes), str(tmp_path)]
    subprocess.run(cmd, check=True, timeout=600, capture_output=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    torch.manual_seed(1)  # the workers' seed (1 + rank 0): rebuild the initial weights
    from tutorial import build_model
    from .test_bad_input import TINY

    init = build_model("detr_tiny", **TINY).state_dict()
    assert any(not torch.equal(init[k], r0[k]) for k in r0 if init[k].is_floating_point())
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # only rank 0 writes


def test_instability_score_is_tracked(small_shapes, tmp_path):
    """With --instability-images, every epoch after the first records IS (DN-DETR's Fig. 2)."""
    out = tmp_path / "run"
    train(tiny_train_config(small_shapes, out, epochs=2, instability_images=8))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert "IS" not in lines[0] and isinstance(lines[1]["IS"], int)
    # at most every prediction of every tracked image can change its match
    assert 0 <= lines[1]["IS"] <= 8 * 15


@pytest.mark.parametrize("name", ["detr_tiny", "deformable_detr_tiny", "rtdetr_tiny"])
def test_bf16_autocast_keeps_the_losses(small_shapes, name):
    """`--amp bf16`: the forward under bfloat16 autocast gives the same loss terms as float32
    within 3% (measured: under 0.5% on these batches), and `to_float` hands the criterion float32."""
    from tutorial import build_model
    from tutorial.data.dataset import DetectionDataset, collate
    from tutorial.training.amp import to_float

    torch.manual_seed(0)
    model = build_model(name).eval()  # eval: no dropout; BN uses its running statistics in both
    criterion = model.build_criterion()
    ds = DetectionDataset(small_shapes, "train", num_classes=6)
    images, mask, targets = collate([ds[i] for i in range(4)])
    kwargs = {"targets": targets} if getattr(model, "uses_targets", False) else {}
    with torch.no_grad():
        torch.manual_seed(1)
        ref = criterion(model(images, mask, **kwargs), targets)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images, mask, **kwargs)
        out = to_float(out)
        assert out["pred_logits"].dtype == torch.float32 and out["pred_boxes"].dtype == torch.float32
        got = criterion(out, targets)
    for key in ("loss_bbox", "loss_giou", "loss"):
        assert got[key].item() == pytest.approx(ref[key].item(), rel=0.03), key


def test_cli_options_are_the_config_fields():
    """`python -m tutorial train` has one option per TrainConfig field (its comment as help), whose
    defaults are the dataclass's; the typed options (JSON, nargs, switches, choices) reach the config."""
    from tutorial.__main__ import build_parser, config_from_args, field_comments

    parser = build_parser()
    assert config_from_args(TrainConfig, parser.parse_args(["train"])) == TrainConfig()
    cfg = config_from_args(TrainConfig, parser.parse_args(
        ["train", "--batch-size", "4", "--resize", "800", "1333", "--no-progress", "--resume", "--amp", "bf16",
         "--model-overrides", '{"num_queries": 5}', "--max-train-time", "1.5"]))
    assert cfg == TrainConfig(batch_size=4, resize=(800, 1333), progress=False, resume=True, amp="bf16",
                              model_overrides={"num_queries": 5}, max_train_time=1.5)
    assert field_comments(TrainConfig)["workers"] == "data-loading processes"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--schedule", "linear"])


def test_bf16_warning_only_without_a_bf16_unit(tmp_path):
    from tutorial.training.amp import bf16_warning, cpu_flags
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()
    warning = bf16_warning("cpu", {"avx2", "fma"})
    assert warning is not None and "--amp fp32" in warning and "\n" not in warning
    assert bf16_warning("cpu", {"avx2", "avx512f", "avx512_bf16"}) is None
    assert bf16_warning("cpu", {"amx_bf16"}) is None
    assert bf16_warning("cuda", {"avx2"}) is None
    assert bf16_warning("cpu", set()) is None  # flags unknown: no claim either way


def test_bf16_input_layout_is_channels_last_and_fp32_unchanged():
    """`amp.input_layout`: bf16 runs get NHWC images (oneDNN's fast bf16 convolutions), the same values;
    float32 runs get the very tensor they passed."""
    from tutorial.training.amp import input_layout

    images = torch.randn(2, 3, 8, 10)
    assert input_layout(images, "fp32") is images
    nhwc = input_layout(images, "bf16")
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, images)
