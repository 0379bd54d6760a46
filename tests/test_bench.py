"""Smoke tests of the benchmarks' core functions on tiny inputs (no full val run, no measurement
subprocess): bench/common.py (round-robin timing, `run_child` on a two-line script), bench/latency.py
(timing, the NMS table, the decoder-depth table) and bench/encoder_cost.py (FLOPs by part against
closed-form counts, the analytic grid_sample term)."""
from __future__ import annotations

import subprocess

import pytest
import torch
from torchvision.ops import nms

import tutorial
from bench.common import ROOT, ChildFailed, run_child, time_runs
from bench.encoder_cost import DeformableEncoderPath, count_flops
from bench.latency import depth_rows, dense_outputs, latency_functions, nms_rows, nms_settings, setting_name
from tutorial.data.dataset import DetectionDataset
from tutorial.models.deformable_transformer import DeformableTransformerConfig
from tutorial.training.evaluate import evaluate
from tutorial.models.hybrid_encoder import HybridEncoder, HybridEncoderConfig

torch.set_num_threads(1)


def test_time_runs_runs_round_robin_and_excludes_warmup():
    calls = []
    stats = time_runs({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=2, repeats=5)
    assert calls == ["a", "b"] * 7  # interleaved: run i of every setting, then run i + 1
    for s in stats.values():
        assert s["runs"] == 5 and s["p25_ms"] <= s["median_ms"] <= s["p75_ms"]
        assert abs(s["iqr_ms"] - (s["p75_ms"] - s["p25_ms"])) <= 2e-3  # each rounded to 1 µs


def test_run_child_returns_the_last_json_line_and_names_a_failure(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import json, os, sys\nprint('progress...')\n"
                      "print(json.dumps({'args': sys.argv[1:], 'cwd': os.getcwd()}))\n"
                      "sys.exit(int(sys.argv[1]))\n")
    assert run_child(script, [0, "x"], what="a test") == {"args": ["0", "x"], "cwd": str(ROOT)}
    with pytest.raises(ChildFailed, match=r"the subprocess for a test failed \(exit 3\)") as failed:
        run_child(script, [3], what="a test")
    assert failed.value.returncode == 3
    script.write_text("import time\ntime.sleep(10)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run_child(script, [], what="a test", timeout=0.5)


def test_nms_settings_hold_both_sweeps_once():
    settings = nms_settings((0.5, 0.7), (0.001, 0.05))
    assert settings == [(0.5, 0.001), (0.7, 0.001), (0.7, 0.05)]  # (0.7, 0.001) is in both sweeps


def small_dense():
    torch.manual_seed(0)
    return tutorial.build_model("dense_tiny", neck={"hidden_dim": 32}, head_convs=1).eval()


def test_nms_rows_match_evaluate_and_count_what_enters_nms(small_shapes):
    model = small_dense()
    val = DetectionDataset(small_shapes, "val", num_classes=6)
    subset = torch.utils.data.Subset(val, range(6))
    cached = dense_outputs(model, subset, batch_size=4)
    settings = [(0.5, 0.001), (0.7, 0.05)]
    rows = nms_rows(model, cached, val.coco, settings, nms_repeats=2)
    assert [(r["iou_threshold"], r["score_threshold"]) for r in rows] == settings
    for row, (iou, score) in zip(rows, settings):  # the cached outputs give what a fresh evaluation gives
        expected = evaluate(model, subset, batch_size=4, progress=False,
                            postprocess_kwargs={"iou_threshold": iou, "score_threshold": score})
        assert row["AP"] == expected["AP"] and row["AP50"] == expected["AP50"]
        assert row["nms_ms"] > 0
    # the candidates: every (location, class) pair above the threshold, at most pre_nms_top_k, per image
    counts = []
    for outputs, _, _ in cached:
        scores = outputs["pred_logits"].sigmoid() * outputs["valid"][..., None]  # (B, N, K)
        counts += (scores > 0.05).flatten(1).sum(1).clamp(max=model.cfg.pre_nms_top_k).tolist()
    assert rows[1]["candidates_per_image"] == round(sum(counts) / len(counts), 1)


def test_latency_functions_run_every_setting(small_shapes):
    model = small_dense()
    image = torch.randn(1, 3, 64, 64)
    mask, sizes = torch.zeros(1, 64, 64, dtype=torch.bool), torch.tensor([[64, 64]])
    fns = latency_functions("dense", model, image, mask, sizes, [(0.5, 0.01)])
    assert list(fns) == ["forward only", setting_name(0.5, 0.01)]
    with torch.no_grad():
        det = fns[setting_name(0.5, 0.01)]()[0]
        cand = model.candidates(model(image, mask), sizes, 0.01)[0]
    keep = torch.cat([idx[nms(cand["boxes"][idx], cand["scores"][idx], 0.5)]  # per-class NMS, torchvision's
                      for idx in (torch.nonzero(cand["labels"] == c).flatten() for c in cand["labels"].unique())])
    expected = cand["scores"][keep].sort(descending=True).values[:model.cfg.num_detections]
    torch.testing.assert_close(det["scores"], expected)

    torch.manual_seed(0)
    rtdetr = tutorial.build_model("rtdetr_tiny", num_queries=10).eval()
    fns = latency_functions("rtdetr", rtdetr, image, mask, sizes)
    assert list(fns) == ["1 layers", "2 layers", "3 layers"]
    with torch.no_grad():
        torch.testing.assert_close(fns["2 layers"]()[0]["scores"],
                                   rtdetr.postprocess(rtdetr(image, mask, num_decoder_layers=2), sizes)[0]["scores"])


def test_depth_rows_evaluate_each_depth_and_restore_the_config(small_shapes):
    torch.manual_seed(0)
    model = tutorial.build_model("rtdetr_tiny", num_queries=10).eval()
    val = DetectionDataset(small_shapes, "val", num_classes=6)
    subset = torch.utils.data.Subset(val, range(4))
    rows = depth_rows(model, subset, batch_size=4)
    assert [r["decoder_layers"] for r in rows] == [1, 2, 3]
    assert model.cfg.num_decoder_layers_eval is None
    model.cfg.num_decoder_layers_eval = 2  # the same as running 2 layers directly
    assert evaluate(model, subset, batch_size=4, progress=False)["AP"] == rows[1]["AP"]


def test_hybrid_encoder_flops_by_part_match_closed_forms():
    c, ffn, n5 = 16, 32, 3 * 3
    cfg = HybridEncoderConfig(hidden_dim=c, num_heads=2, dim_feedforward=ffn, expansion=0.5, depth_mult=1 / 3)
    channels, sizes = [8, 12, 24], [12, 6, 3]
    encoder = HybridEncoder(cfg, channels).eval()
    feats = [torch.randn(1, ch, s, s) for ch, s in zip(channels, sizes)]
    flops = count_flops(encoder, feats)
    assert flops["input_proj"] == sum(2 * ch * c * s * s for ch, s in zip(channels, sizes))  # 1x1 convs
    # AIFI on S5: q, k, v, out projections, q·kᵀ and A·v, the FFN; 2 FLOPs per multiply-add
    assert flops["aifi"] == 2 * (4 * n5 * c * c + 2 * n5 * n5 * c + 2 * n5 * c * ffn)
    assert flops["ccfm"] > 0 and flops["total"] == flops["input_proj"] + flops["aifi"] + flops["ccfm"]


def test_deformable_encoder_flops_add_the_analytic_sampling_term():
    tc = DeformableTransformerConfig(d_model=32, num_heads=4, num_encoder_layers=2, dim_feedforward=64, dropout=0.0,
                                     num_levels=4, enc_points=3)
    channels, sizes = [8, 12, 24], [16, 8, 4]
    path = DeformableEncoderPath(tc, channels).eval()
    feats = [torch.randn(1, ch, s, s) for ch, s in zip(channels, sizes)]
    flops = count_flops(path, feats)
    n = 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2  # 3 levels + the extra stride-2 level (4x4 -> 2x2)
    assert flops["sampling_flops_analytic"] == 2 * 10 * n * 32 * 4 * 3  # layers · 10·N·C·L·P
    assert flops["total"] == flops["counted"] + flops["sampling_flops_analytic"]
    # per layer: value_proj and output_proj (C -> C), sampling_offsets (C -> M·L·P·2),
    # attention_weights (C -> M·L·P)
    per_layer = 2 * n * 32 * (32 + 32 + 4 * 4 * 3 * 2 + 4 * 4 * 3)
    assert flops["attention"] == 2 * per_layer
    assert flops["ffn"] == 2 * 2 * (2 * n * 32 * 64)
    with torch.no_grad():
        assert path(feats).shape == (1, n, 32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path; on a GPU the script runs for minutes")
def test_gpu_check_exits_cleanly_without_a_gpu():
    """bench/gpu_check.sh, the one prepared GPU script, does nothing and exits 0 on a CPU-only machine."""
    import sys
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), sys.executable], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no CUDA device visible" in out.stdout


@pytest.mark.slow
def test_vs_transformers_quick_writes_every_work_item(tmp_path):
    """bench/vs_transformers.py --quick (tiny shapes, one repeat, in one process): every work item
    in the JSON, the parameter counts checked equal, outputs equal at equal weights, ratios > 0."""
    import json
    import sys

    pytest.importorskip("transformers")
    from bench.vs_transformers import MODELS, TRAIN_MODELS, TOLERANCE

    out = tmp_path / "vs.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_transformers.py"), "--quick", "--skip-cpu-op",
                          "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").exists()
    assert set(report["inference"]) == set(MODELS) and set(report["training"]) == set(TRAIN_MODELS)
    assert "attention" in report and "detr" in report["flops"] and report["peak"]["measured_mm_GFLOPs"]["fp32"] > 0
    for item in ("inference", "training"):
        for name, r in report[item].items():
            assert r["parameters"]["equal"] and r["parameters"]["ours"] == r["parameters"]["transformers"], (item, name)
            assert set(r["ratios"]) >= {"fp32", "bf16"}, (item, name, r["errors"])
    for r in report["inference"].values():
        assert max(r["max_abs_difference"].values()) < TOLERANCE
    assert max(max(d.values()) for d in report["attention"]["max_abs_difference"].values()) < 1e-3
    ratios = [v for r in [*report["inference"].values(), *report["training"].values()] for v in r["ratios"].values()]
    ratios += [v for p in ("forward", "forward+backward") for v in report["attention"][p]["ratios"].values()]
    assert ratios and all(isinstance(v, float) and v > 0 for v in ratios)
    flops = report["flops"]["detr"]
    assert all(flops["flops"][p] > 0 for p in flops["parts"])
    assert all(flops[d]["GFLOPs_per_s"][p] > 0 for d in ("fp32", "bf16") for p in flops["parts"])


def test_efficient_bench_counts_the_sampling_and_the_kept_tokens():
    """bench/efficient_detrs.py: grid_sample counts 8 FLOPs per sampled value (closed form on one
    deformable attention), and Sparse DETR's encoder costs less the fewer tokens it keeps, down to
    the same model's full encoder at ρ = 1."""
    from bench.efficient_detrs import counted_gflops, encoder_cost
    from tutorial.ops.deformable_attention import MSDeformAttn

    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3).eval().requires_grad_(False)
    shapes, q = [(6, 6), (3, 3)], 7
    value, query = torch.randn(1, 45, 16), torch.randn(1, q, 16)
    total, _ = counted_gflops(lambda: attn(query, torch.rand(1, q, 2, 2), value, shapes))
    linear = 2 * (45 * 16 * 16 + q * 16 * (2 * 2 * 3 * 2) + q * 16 * (2 * 2 * 3) + q * 16 * 16)  # projections
    sampling = 8 * (2 * 8) * q * 3 * 2  # 8 per value: (B·M·d) channels x Q queries x P points x L levels
    assert round(total * 1e9) == linear + sampling
    model = tutorial.build_model("sparse_detr_tiny", backbone={"weights": None}).eval()
    images, mask = torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    costs = []
    for rho in (0.1, 0.5, 1.0):
        model.cfg.rho = rho
        costs.append(encoder_cost(model, images, mask)[0]["encoder_gflops"])
    assert costs[0] < costs[1] < costs[2]
