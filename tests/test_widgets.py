"""The notebooks' views (`tutorial/viz/views*.py`, on the runners of `tutorial/inspect.py`) and
figures (`tutorial/viz/`).

For each view: build it on the small shapes set with a small random DETR, change a control the
way a learner would (`control.value = ...`), and check that the figure changed to what the new
value should show, computed independently (the model run directly, `torch.cdist` for the L1 cost,
the data set's own image).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import tutorial  # noqa: E402
from tutorial.data.statistics import box_modes  # noqa: E402
from tutorial.ops.box_ops import boxes_to_pixels  # noqa: E402
from tutorial.training.curves import load_training_curves  # noqa: E402
from tutorial.viz.anchors import plot_positional_maps  # noqa: E402
from tutorial.viz.attention import attention_overlay  # noqa: E402
from tutorial.viz.boxes import draw_boxes, show_image  # noqa: E402
from tutorial.viz.common import denormalize, format_ap  # noqa: E402
from tutorial.viz.denoising import (plot_contrastive_denoising, plot_dn_attention_mask,  # noqa: E402
                                    plot_instability_and_ap)
from tutorial.viz.detr import plot_decoder_attention, plot_encoder_attention  # noqa: E402
from tutorial.viz.rt_detr import LEVEL_COLOURS, plot_encoder_stages, plot_nms_sweep, plot_speed_accuracy  # noqa: E402
from tutorial.data.dataset import DetectionDataset  # noqa: E402
from tutorial.matching.matcher import matching_cost  # noqa: E402
from tutorial.ops.deformable_attention import MSDeformAttn  # noqa: E402
from tutorial.models.conditional_detr import positional_attention  # noqa: E402
from tutorial.inspect import DeformableRunner, ModelRunner, QueryRunner  # noqa: E402
from tutorial.viz.views import ImageBrowser, MatchingView  # noqa: E402
from tutorial.viz.views_anchors import PositionalAttentionView  # noqa: E402
from tutorial.viz.views_deformable import SamplingPointsView  # noqa: E402
from tutorial.viz.views_denoising import DenoisingView  # noqa: E402
from tutorial.viz.views_detr import DecoderAttentionView, EncoderAttentionView  # noqa: E402


@pytest.fixture(scope="module")
def val_set(small_shapes):
    return DetectionDataset(small_shapes, "val", num_classes=6)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # 15 queries > the 12 objects an image can hold, so every target gets a prediction
    return tutorial.build_model("detr_tiny", num_queries=15,
                                transformer={"d_model": 32, "num_heads": 4, "dim_feedforward": 64,
                                             "num_encoder_layers": 2, "num_decoder_layers": 2}).eval()


@pytest.fixture(scope="module")
def runner(model, val_set):
    return ModelRunner(model, val_set)


@torch.no_grad()
def run_directly(model, dataset, index):
    image, target = dataset[index]
    out = model(image[None], torch.zeros(1, *image.shape[-2:], dtype=torch.bool), return_attention=True)
    return image, target, out


def images_with_objects(dataset, count=2):
    found = [i for i in range(len(dataset)) if len(dataset[i][1]["labels"]) > 0]
    assert len(found) >= count, "the small shapes set should have images with objects"
    return found[:count]


def drawn_image(ax):
    return np.asarray(ax.images[0].get_array())


def overlay_values(view):
    return np.ma.getdata(view.overlay.get_array())


def test_image_browser_shows_the_chosen_image_and_its_boxes(val_set):
    view = ImageBrowser(val_set, index=0)
    before = drawn_image(view.figure.axes[0]).copy()
    view.controls["index"].value = 5
    after = drawn_image(view.figure.axes[0])
    assert before.shape != after.shape or not np.allclose(before, after)
    image, target = val_set[5]
    np.testing.assert_allclose(after, denormalize(image), atol=1e-6)
    rects = [p for p in view.figure.axes[0].patches if isinstance(p, Rectangle)]
    expected = boxes_to_pixels(target["boxes"], target["size"])  # (n, 4) xyxy
    assert len(rects) == len(expected)
    for rect, (x0, y0, x1, y1) in zip(rects, expected.tolist()):
        assert rect.get_xy() == pytest.approx((x0, y0), abs=1e-3)
        assert (rect.get_width(), rect.get_height()) == pytest.approx((x1 - x0, y1 - y0), abs=1e-3)


def test_matching_view_draws_the_cost_of_the_chosen_image_and_term(model, val_set, runner):
    first, second = images_with_objects(val_set)
    view = MatchingView(model, val_set, index=first, runner=runner)
    before = drawn_image(view.figure.axes[0]).copy()
    view.controls["index"].value = second
    after = drawn_image(view.figure.axes[0])
    _, target, out = run_directly(model, val_set, second)
    w = model.cfg.matcher
    expected = matching_cost(out["pred_logits"][0], out["pred_boxes"][0], target["labels"], target["boxes"],
                             w.cost_class, w.cost_bbox, w.cost_giou)  # (Q, n)
    assert before.shape != after.shape or not np.allclose(before, after)
    np.testing.assert_allclose(after, expected.numpy(), rtol=1e-5, atol=1e-5)

    view.controls["term"].value = "L1"
    l1 = torch.cdist(out["pred_boxes"][0], target["boxes"], p=1)  # (Q, n), independent of matching_cost
    np.testing.assert_allclose(drawn_image(view.figure.axes[0]), l1.numpy(), rtol=1e-5, atol=1e-5)

    # the outlined cells are a one-to-one assignment covering every target
    pred_idx, tgt_idx = view.assignment
    assert sorted(tgt_idx.tolist()) == list(range(len(target["labels"])))
    assert len(set(pred_idx.tolist())) == len(pred_idx)
    outlined = [p for p in view.figure.axes[0].patches if isinstance(p, Rectangle)]
    assert len(outlined) == len(tgt_idx)


@pytest.mark.parametrize("head", ["mean", 1])
def test_encoder_view_draws_the_attention_row_of_the_chosen_point(model, val_set, runner, head):
    view = EncoderAttentionView(model, val_set, index=0, runner=runner)
    before = overlay_values(view).copy()
    image, _, out = run_directly(model, val_set, 0)
    hf, wf = out["feature_size"]
    y, x, layer = 1, 0, 0  # x differs from the default (the grid centre), so setting it redraws
    with view.hold():  # set several controls, then draw once
        view.controls["head"].value = head
        view.controls["layer"].value = layer
        view.controls["y"].value = y
    view.controls["x"].value = x
    attn = out["encoder_attention"][layer][0]  # (M, N, N)
    attn = attn.mean(0) if head == "mean" else attn[head]  # (N, N)
    expected = attn[y * wf + x].reshape(hf, wf)  # (H_f, W_f)
    after = overlay_values(view)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert after.sum() == pytest.approx(1.0, abs=1e-4)  # one softmax row


def test_encoder_view_fits_the_point_sliders_to_a_new_image(model, val_set, runner):
    view = EncoderAttentionView(model, val_set, index=0, runner=runner)
    sizes = {i: runner(i)["feature_size"] for i in range(len(val_set))}
    other = next(i for i, s in sizes.items() if s != sizes[0])
    view.controls["index"].value = other
    hf, wf = sizes[other]
    assert (view.controls["y"].max, view.controls["x"].max) == (hf - 1, wf - 1)
    assert overlay_values(view).shape == (hf, wf)


def test_decoder_view_draws_the_cross_attention_of_the_chosen_query(model, val_set, runner):
    view = DecoderAttentionView(model, val_set, index=0, threshold=0.0, runner=runner)  # every query listed
    _, _, out = run_directly(model, val_set, 0)
    scores = out["pred_logits"][0].softmax(-1)[:, :-1].max(-1).values  # (Q,)
    assert view.controls["query"].value == int(scores.argmax())  # best first
    before = overlay_values(view).copy()
    query = view.queries[-1]
    view.controls["query"].value = query
    view.controls["head"].value = 2
    hf, wf = out["feature_size"]
    expected = out["decoder_attention"][-1][0, 2, query].reshape(hf, wf)  # (H_f, W_f)
    after = overlay_values(view)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_decoder_view_lists_only_confident_queries_of_the_new_image(model, val_set, runner):
    view = DecoderAttentionView(model, val_set, index=0, threshold=0.0, runner=runner)
    view.threshold = float(runner(3)["scores"].median())
    view.controls["index"].value = 3
    scores = runner(3)["scores"]
    listed = [value for _, value in view.controls["query"].options]
    assert listed == sorted((q for q in range(len(scores)) if scores[q] >= view.threshold),
                            key=lambda q: -scores[q].item())
    view.threshold = 2.0  # nothing is that confident: the view falls back to the best few
    view.controls["index"].value = 4
    assert not view.confident and len(view.controls["query"].options) == view.fallback


def test_attention_overlay_leaves_padding_transparent():
    from matplotlib.figure import Figure

    image = torch.zeros(3, 64, 96)  # a padded canvas
    attention = torch.rand(4, 6)  # (H_f, W_f)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 4:] = True  # the two right columns are padding
    ax = Figure().add_subplot()
    im = attention_overlay(ax, image, attention, mask, size=(64, 64))
    drawn = im.get_array()
    assert np.ma.getmaskarray(drawn)[:, 4:].all() and not np.ma.getmaskarray(drawn)[:, :4].any()
    assert im.get_extent() == [0, 96, 64, 0]  # cells cover the padded canvas at the feature stride
    assert ax.get_xlim() == (0, 64)  # the view is cropped to the unpadded image


def test_box_modes_follow_the_slot_figure_colours():
    sizes = torch.tensor([[100, 200]] * 3)  # (h, w)
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.1],  # 20 x 10 px: small
                          [0.5, 0.5, 0.5, 0.2],  # 100 x 20 px: large horizontal
                          [0.5, 0.5, 0.2, 0.9]])  # 40 x 90 px: large vertical
    assert box_modes(boxes, sizes).tolist() == [0, 1, 2]


# --- figures a person can read: colourbars, the image control, labels that do not collide --------


def colourbars(fig):
    """The Axes matplotlib made for a figure's colourbars, in the order they were added."""
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_attention_figures_share_one_labelled_colour_scale_after_their_panels(runner):
    r = runner(0)
    hf, wf = r["feature_size"]
    attention = r["encoder_attention"][-1].mean(0)  # (N, N)
    points = [(0, 0), (hf - 1, wf - 1)]
    fig = plot_encoder_attention(r["image"], attention, points, (hf, wf), r["feature_mask"], r["size"])
    assert [ax.get_title() for ax in fig.axes[1:3]] == ["point (0, 0)", f"point ({hf - 1}, {wf - 1})"]
    (bar,) = colourbars(fig)
    assert fig.axes[3] is bar and f"softmax over {hf * wf} cells" in bar.get_ylabel()
    vmax = max(float(attention[y * wf + x].max()) for y, x in points)
    assert [ax.images[1].get_clim() for ax in fig.axes[1:3]] == [pytest.approx((0.0, vmax))] * 2

    queries = [0, 3, 5]
    fig = plot_decoder_attention(r["image"], r["decoder_attention"][-1].mean(0), queries, r["boxes"],
                                       r["labels"], r["scores"], (hf, wf), r["feature_mask"], r["size"], ncols=2)
    assert len(fig.axes) == 5 and colourbars(fig) == [fig.axes[4]]  # 2 x 2 panels, then the colourbar
    assert fig.axes[0].get_title().startswith("query 0:")


def test_positional_maps_keep_their_panel_indices_and_say_what_colour_means():
    torch.manual_seed(0)
    image = torch.randn(3, 40, 60)
    maps = {"a": torch.rand(4, 12).softmax(-1), "b": torch.rand(4, 12).softmax(-1)}  # (Q, h·w), h, w = 3, 4
    fig = plot_positional_maps(image, maps, [0, 2, 3], (3, 4))
    for r, name in enumerate(maps):
        for c, q in enumerate([0, 2, 3]):
            ax = fig.axes[r * 3 + c]  # the documented contract
            drawn = np.asarray(ax.images[1].get_array())
            np.testing.assert_allclose(drawn, maps[name][q].reshape(3, 4).numpy(), rtol=1e-6)
            assert ax.images[1].get_clim() == pytest.approx((0.0, float(maps[name][q].max())))
    assert colourbars(fig) == [fig.axes[6]] and "panel's max" in fig.axes[6].get_ylabel()


def test_encoder_stage_panels_each_get_a_colourbar_after_all_panels():
    torch.manual_seed(0)
    image = torch.randn(3, 64, 64)
    stages = {"projected": [torch.rand(8, 8, 8), torch.rand(8, 4, 4)], "after AIFI": [None, torch.rand(8, 4, 4)]}
    fig = plot_encoder_stages(image, stages)
    np.testing.assert_allclose(np.asarray(fig.axes[1 * 2 + 1].images[1].get_array()),
                               stages["after AIFI"][1].norm(dim=0).numpy(), rtol=1e-6)  # panel (r, l) = r·L + l
    assert fig.axes[4:] == colourbars(fig) and len(colourbars(fig)) == 3  # one per drawn panel, none for None
    assert all("‖x‖₂" in bar.get_ylabel() for bar in colourbars(fig))


def test_image_control_is_wide_and_its_buttons_and_box_move_the_image(model, val_set, runner):
    import ipywidgets

    from tutorial.viz import views

    view = ImageBrowser(val_set, index=0)
    slider = view.controls["index"]
    assert slider.layout.width == views.IMAGE_SLIDER_WIDTH and int(slider.layout.width.rstrip("px")) >= 400
    picker = view.image_picker()
    assert view.widget.children[0] is picker and picker is view.image_picker()  # built once, shown first
    _, previous, following, box = picker.children
    assert isinstance(box, ipywidgets.BoundedIntText) and box.max == len(val_set) - 1
    box.value = 7  # typed in the box: the view shows image 7
    assert slider.value == 7
    np.testing.assert_allclose(drawn_image(view.figure.axes[0]), denormalize(val_set[7][0]), atol=1e-6)
    following.click()
    assert slider.value == box.value == 8
    previous.click()
    previous.click()
    assert slider.value == box.value == 6
    slider.value = 0
    previous.click()  # stops at the ends
    assert slider.value == 0
    slider.value = slider.max
    following.click()
    assert slider.value == len(val_set) - 1
    for other in (MatchingView(model, val_set, runner=runner), EncoderAttentionView(model, val_set, runner=runner),
                  DecoderAttentionView(model, val_set, runner=runner)):
        assert other.controls["index"].layout.width == views.IMAGE_SLIDER_WIDTH
        assert other.widget.children[0].children[0] is other.controls["index"]


def test_views_label_their_attention_colours(model, val_set, runner):
    view = EncoderAttentionView(model, val_set, index=0, runner=runner)
    hf, wf = runner(0)["feature_size"]
    assert colourbars(view.figure) == [view.figure.axes[2]]
    assert f"softmax over {hf * wf} cells" in view.figure.axes[2].get_ylabel()
    assert view.overlay.get_clim()[0] == 0.0
    view = DecoderAttentionView(model, val_set, index=0, threshold=0.0, runner=runner)
    assert len(colourbars(view.figure)) == 1
    assert len(view.figure.axes[0].texts) == 1  # only the chosen query is captioned: no pile of labels


def test_ap_is_printed_in_percent_from_the_fractions_the_files_keep():
    metrics = {"AP": 0.2938, "AP50": 0.5222, "APs": 0.0509, "APl": 0.6803, "AR": None}
    assert format_ap(metrics) == "AP 29.4%, AP50 52.2%, AP_S 5.1%, AP_L 68.0%"
    assert format_ap(metrics, ("AP50", "AP")) == "AP50 52.2%, AP 29.4%"
    assert format_ap(None) == format_ap({}) == "AP ?"


def test_box_captions_at_the_top_of_the_view_go_inside_the_box():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    show_image(ax, torch.zeros(3, 100, 100))
    draw_boxes(ax, [[10, 1, 50, 40], [10, 50, 50, 90]], labels=[1, 2])
    assert [t.get_verticalalignment() for t in ax.texts] == ["top", "bottom"]


def drawn_extents(fig, texts):
    """Where the texts (annotations included, without their leader lines) land once the figure is drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in texts]


def latency_row(ms, ap, **extra):
    return {"latency": {"median_ms": ms, "p25_ms": ms - 0.5, "p75_ms": ms + 0.5}, "AP": ap, **extra}


def test_speed_accuracy_labels_of_close_points_do_not_overlap():
    from matplotlib.figure import Figure

    report = {"rtdetr_depth": [latency_row(37 + 4.5 * k, 0.009 + 0.0006 * k, decoder_layers=k + 1) for k in range(3)],
              "nms": {"by_confidence": [latency_row(48.6 + 0.3 * k, 0.0397, score_threshold=t)
                                        for k, t in enumerate((0.001, 0.01, 0.05, 0.1))]
                      + [latency_row(47.2, 0.0393, score_threshold=0.25)]},
              "dino": latency_row(72.5, 0.0)}
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    plot_speed_accuracy(ax, report)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["Dec1", "Dec2", "Dec3", "0.001", "0.01", "0.05", "0.1", "0.25"])
    boxes = drawn_extents(fig, ax.texts)
    clashes = [(a.get_text(), b.get_text()) for i, (a, ba) in enumerate(zip(ax.texts, boxes))
               for b, bb in zip(ax.texts[i + 1:], boxes[i + 1:]) if ba.overlaps(bb)]
    assert not clashes
    assert ax.get_ylabel() == "AP (%)"


def test_nms_sweep_writes_ap_in_percent_clear_of_the_time_line():
    from matplotlib.figure import Figure

    rows = [{"iou_threshold": t, "AP": ap, "nms_ms": ms}
            for t, ap, ms in ((0.5, 0.044, 0.05), (0.7, 0.040, 1.6), (0.9, 0.019, 3.1))]
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    plot_nms_sweep(ax, rows, "iou_threshold")
    assert [t.get_text() for t in ax.texts] == ["4.4", "4.0", "1.9"] and ax.get_ylabel() == "AP (%)"
    twin = fig.axes[1]
    assert min(twin.get_yticks()) >= 0  # no negative times on the axis
    boxes = drawn_extents(fig, ax.texts)
    line = twin.lines[0]
    marks = twin.transData.transform(line.get_xydata())  # (3, 2) display
    assert not any(b.x0 - 4 <= x <= b.x1 + 4 and b.y0 - 4 <= y <= b.y1 + 4 for b in boxes for x, y in marks)


# --- Deformable DETR's sampling points ---------------------------------------------------------


@pytest.fixture(scope="module")
def deformable_model():
    torch.manual_seed(0)
    model = tutorial.build_model("deformable_detr_tiny", num_queries=10,
                                 transformer={"d_model": 32, "num_heads": 4, "dim_feedforward": 64,
                                              "num_encoder_layers": 2, "num_decoder_layers": 2})
    for module in model.modules():  # away from the initialisation, so offsets and weights depend on the query
        if isinstance(module, MSDeformAttn):
            torch.nn.init.normal_(module.sampling_offsets.weight, std=0.05)
            torch.nn.init.normal_(module.attention_weights.weight, std=0.5)
    return model.eval()


@torch.no_grad()
def run_deformable(model, dataset, index):
    image, _ = dataset[index]
    out = model(image[None], torch.zeros(1, *image.shape[-2:], dtype=torch.bool), return_intermediates=True)
    return image, out


def drawn_points(view, level):
    """The (x, y) pixel positions and sizes of the sampling points drawn on `level`'s panel."""
    scatter = view.figure.axes[level].collections[0]
    return np.asarray(scatter.get_offsets()), np.asarray(scatter.get_sizes())


def test_sampling_view_draws_the_chosen_decoder_querys_points_on_every_level(deformable_model, val_set):
    view = SamplingPointsView(deformable_model, val_set, index=2, kind="decoder", layer=-1)
    image, out = run_deformable(deformable_model, val_set, 2)
    h, w = image.shape[-2:]
    scores = out["pred_logits"][0].sigmoid().max(-1).values  # (Q,)
    assert view.controls["query"].value == int(scores.argmax())  # best first
    before = drawn_points(view, 0)[0].copy()
    query = int(scores.argmin())
    view.controls["query"].value = query
    locations, weights = (t[0, query] for t in out["decoder_sampling"][-1])  # (M, L, P, 2), (M, L, P)
    assert not np.allclose(before, drawn_points(view, 0)[0])
    for level in range(len(out["spatial_shapes"])):
        xy, sizes = drawn_points(view, level)
        expected = locations[:, level].reshape(-1, 2) * torch.tensor([w, h])  # (M·P, 2) pixels
        np.testing.assert_allclose(xy, expected.numpy(), rtol=1e-5, atol=1e-4)
        ratio = sizes / weights[:, level].reshape(-1).numpy()  # size ∝ weight
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)

    view.controls["head"].value = 1  # one head: its P points per level, coloured by weight
    xy, _ = drawn_points(view, 3)
    np.testing.assert_allclose(xy, (locations[1, 3] * torch.tensor([w, h])).numpy(), rtol=1e-5, atol=1e-4)
    colours = np.asarray(view.figure.axes[3].collections[0].get_array())
    np.testing.assert_allclose(colours, weights[1, 3].numpy(), rtol=1e-5)
    bars = colourbars(view.figure)
    assert view.figure.axes[4:] == bars and len(bars) == 1 and "head 1" in bars[0].get_ylabel()
    assert view.widget.children[0] is view.image_picker()


def test_sampling_view_draws_the_chosen_encoder_pixel_and_fits_the_sliders(deformable_model, val_set):
    runner = DeformableRunner(deformable_model, val_set)
    view = SamplingPointsView(deformable_model, val_set, index=0, kind="decoder", runner=runner)
    assert view.controls["y"].disabled and not view.controls["query"].disabled
    view.controls["kind"].value = "encoder"
    assert not view.controls["y"].disabled and view.controls["query"].disabled
    view.controls["level"].value = 1
    image, out = run_deformable(deformable_model, val_set, 0)
    shapes = out["spatial_shapes"]
    assert (view.controls["y"].max, view.controls["x"].max) == (shapes[1][0] - 1, shapes[1][1] - 1)
    before = drawn_points(view, 2)[0].copy()
    with view.hold():
        view.controls["layer"].value = 0
        view.controls["y"].value = 1
    view.controls["x"].value = 2
    token = shapes[0][0] * shapes[0][1] + 1 * shapes[1][1] + 2  # after level 0's tokens, row 1, column 2
    locations, _ = (t[0, token] for t in out["encoder_sampling"][0])  # (M, L, P, 2)
    h, w = image.shape[-2:]
    xy, _ = drawn_points(view, 2)
    assert not np.allclose(before, xy)
    np.testing.assert_allclose(xy, (locations[:, 2].reshape(-1, 2) * torch.tensor([w, h])).numpy(),
                               rtol=1e-5, atol=1e-4)
    # the reference point is that pixel's centre, normalised by its level's size
    centre = torch.tensor([(2 + 0.5) / shapes[1][1], (1 + 0.5) / shapes[1][0]])
    torch.testing.assert_close(view.reference[1], centre)


# --- anchor queries: positional attention maps (notebook 04) -----------------------------------


SMALL_TRANSFORMER = {"d_model": 32, "num_heads": 4, "dim_feedforward": 64, "num_encoder_layers": 1,
                     "num_decoder_layers": 2}


@pytest.fixture(scope="module")
def anchor_models(model):
    torch.manual_seed(0)
    return {"detr": model,
            "conditional": tutorial.build_model("conditional_detr_tiny", num_queries=8,
                                                transformer=SMALL_TRANSFORMER).eval(),
            "dab": tutorial.build_model("dab_detr_tiny", num_queries=6, transformer=SMALL_TRANSFORMER).eval()}


def test_positional_view_draws_the_chosen_querys_map_for_the_chosen_model(anchor_models, val_set):
    view = PositionalAttentionView(anchor_models, val_set, name="dab", index=1, query=0, layer=0)
    image, _ = val_set[1]
    mask = torch.zeros(1, *image.shape[-2:], dtype=torch.bool)
    with torch.no_grad():
        out = anchor_models["dab"](image[None], mask, return_intermediates=True)
    hf, wf = out["feature_size"]
    before = overlay_values(view).copy()
    view.controls["query"].value = 4
    maps = positional_attention(out["spatial_queries"][0], out["spatial_keys"][0], 4)[0]  # (M, Q, N)
    after = overlay_values(view)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, maps.mean(0)[4].reshape(hf, wf).numpy(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(view.attention_map, out["decoder_attention"][0][0].mean(0)[4].reshape(hf, wf))
    # the white reference is query 4's anchor box of layer 1: dashed, at the learned anchor
    dashed = [p for p in view.figure.axes[0].patches if isinstance(p, Rectangle)]
    (expected_box,) = boxes_to_pixels(out["reference_points"][0][0, 4][None], image.shape[-2:]).tolist()
    assert dashed[0].get_xy() == pytest.approx(tuple(expected_box[:2]), abs=1e-3)

    view.controls["layer"].value = 1  # layer 2: its anchors were refined by layer 1
    maps = positional_attention(out["spatial_queries"][1], out["spatial_keys"][1], 4)[0]  # (M, Q, N)
    np.testing.assert_allclose(overlay_values(view), maps.mean(0)[4].reshape(hf, wf).numpy(), rtol=1e-5, atol=1e-7)

    view.controls["model"].value = "detr"  # DETR: the learned query against the positions, per head
    view.controls["head"].value = 2
    with torch.no_grad():
        detr_out = anchor_models["detr"](image[None], mask, return_attention=True)
        expected = anchor_models["detr"].positional_attention(detr_out["feature_mask"], 1)[0, 2, 4]  # (N,)
    np.testing.assert_allclose(overlay_values(view), expected.reshape(hf, wf).numpy(), rtol=1e-5, atol=1e-7)
    assert view.controls["query"].max == anchor_models["detr"].cfg.num_queries - 1


def test_positional_view_fits_queries_to_the_model_and_draws_finer_grids(anchor_models, val_set):
    runners = {n: QueryRunner(m, val_set, grid=(12, 10)) for n, m in anchor_models.items()}
    view = PositionalAttentionView(anchor_models, val_set, name="conditional", query=7, runners=runners)
    assert overlay_values(view).shape == (12, 10)
    view.controls["model"].value = "dab"  # 6 queries: the slider shrinks and the query is clipped
    assert view.controls["query"].max == 5 and view.controls["query"].value == 5
    r = runners["dab"](0)
    image, _ = val_set[0]
    with torch.no_grad():
        out = anchor_models["dab"](image[None], torch.zeros(1, *image.shape[-2:], dtype=torch.bool),
                                   return_intermediates=True)
        keys = anchor_models["dab"].spatial_keys(torch.zeros(1, 12, 10, dtype=torch.bool), 0)  # (1, 120, C)
    expected = positional_attention(out["spatial_queries"][0], keys, 4)[0].mean(0)[5].reshape(12, 10)
    np.testing.assert_allclose(overlay_values(view), expected.numpy(), rtol=1e-5, atol=1e-7)
    assert r["grid_size"] == (12, 10) and r["references"][0].shape == (6, 4)
    assert view.widget.children[0] is view.image_picker()
    assert len(colourbars(view.figure)) == 2  # the positional map's and the cross-attention's


# --- query denoising (notebook 05) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dn_model():
    torch.manual_seed(0)
    return tutorial.build_model("dn_detr_tiny", num_queries=6, transformer=SMALL_TRANSFORMER).eval()


def test_denoising_view_draws_the_chosen_groups_noised_queries(dn_model, val_set):
    first, second = images_with_objects(val_set)
    bn = [m for m in dn_model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    running_mean = bn.running_mean.clone()
    view = DenoisingView(dn_model, val_set, index=first, group="all", layer=-1)
    before = view.anchors.clone()
    with view.hold():
        view.controls["group"].value = 2
    view.controls["index"].value = second
    assert not dn_model.training and torch.equal(bn.running_mean, running_mean)  # looking changed nothing

    image, target = val_set[second]  # the model itself, in training mode, with the runner's seed
    dn_model.train()
    bn.eval()
    torch.manual_seed(int(target["image_id"]))
    with torch.no_grad():
        out = dn_model(image[None], torch.zeros(1, *image.shape[-2:], dtype=torch.bool), targets=[target],
                       return_intermediates=True)
    dn_model.eval()
    p, m = out["dn_groups"]
    n = len(target["labels"])
    slots = list(range(2 * m, 2 * m + n))  # group 2's slots holding an object
    assert view.queries == slots
    assert before.shape != view.anchors.shape or not torch.equal(before, view.anchors)
    torch.testing.assert_close(view.anchors, out["dn_anchors"][0, slots])
    torch.testing.assert_close(view.targets, target["boxes"].float())  # each object once, in order
    torch.testing.assert_close(view.predictions, out["dn_outputs"]["pred_boxes"][-1, 0, slots])
    h, w = image.shape[-2:]
    arrows = view.figure.axes[0].texts
    assert len(arrows) == n
    for arrow, anchor, obj in zip(arrows, view.anchors.tolist(), target["boxes"].tolist()):
        assert arrow.xyann == pytest.approx((anchor[0] * w, anchor[1] * h), abs=1e-3)
        assert arrow.xy == pytest.approx((obj[0] * w, obj[1] * h), abs=1e-3)

    view.controls["layer"].value = 0
    torch.testing.assert_close(view.predictions, out["dn_outputs"]["pred_boxes"][0, 0, slots])


def test_dn_attention_mask_figure_and_curves(tmp_path):
    from matplotlib.figure import Figure

    from tutorial.models.dn_detr import dn_attention_mask

    ax = Figure().add_subplot()
    mask = dn_attention_mask(3, 2, 4)  # (10, 10)
    im = plot_dn_attention_mask(ax, mask, 3, 2)
    np.testing.assert_array_equal(np.asarray(im.get_array()), mask.numpy().astype(float))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["group 0", "group 1", "group 2", "matching (4)"]

    # committed results: the convergence report when it has the run, else the checkpoint's manifest
    report, manifests = tmp_path / "convergence.json", tmp_path / "checkpoints"
    manifests.mkdir()
    (manifests / "a.json").write_text('{"ap_curve": [{"epoch": 0, "AP": 0.1}, {"epoch": 1, "AP": 0.2}]}')
    (manifests / "b.json").write_text('{"ap_curve": [{"epoch": 0, "AP": 0.3}]}')
    report.write_text('{"curves": {"b": [{"epoch": 0, "AP": 0.1}, {"epoch": 1, "AP": 0.4, "IS": 7}]}}')
    curves, sources = load_training_curves(["a", "b", "c"], report, manifests)
    assert set(curves) == {"a", "b"} and sources == {"a": str(manifests / "a.json"), "b": str(report)}
    fig = plot_instability_and_ap(curves)
    ax_is, ax_ap = fig.axes[:2]
    ap_drawn = [tuple(line.get_xydata()[:, 1]) for line in ax_ap.lines]
    assert ap_drawn == [pytest.approx((10, 20)), pytest.approx((10, 40))]  # the fractions, drawn in %
    assert ax_ap.get_ylabel() == "val AP (%)"
    assert len(ax_is.lines) == 1 and tuple(ax_is.lines[0].get_xydata()[0]) == (2, 7)  # IS^i at epoch i = 2
    assert "a" in ax_is.texts[0].get_text()  # a run without IS is named, not drawn


# --- RT-DETR (notebook 06): query selection and decoder depth, NMS, contrastive denoising ---------

from matplotlib.colors import to_rgba  # noqa: E402
from torchvision.ops import nms  # noqa: E402

from tutorial.inspect import denoising_queries  # noqa: E402
from tutorial.viz.views_rt_detr import NMSView, QuerySelectionView  # noqa: E402


@pytest.fixture(scope="module")
def rtdetr_model():
    torch.manual_seed(0)
    return tutorial.build_model("rtdetr_tiny", num_queries=12).eval()


def rectangles(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_query_selection_view_draws_the_predictions_of_the_chosen_depth(rtdetr_model, val_set):
    view = QuerySelectionView(rtdetr_model, val_set, index=3, tokens=5, threshold=0.0)  # every query shown
    before = view.shown_boxes.clone()
    view.controls["layers"].value = 1
    image, target = val_set[3]
    with torch.no_grad():  # the model itself, cut after one decoder layer
        out = rtdetr_model(image[None], torch.zeros(1, *image.shape[-2:], dtype=torch.bool), num_decoder_layers=1)
    scores = out["pred_logits"][0].sigmoid().max(-1).values  # (Q,)
    order = scores.argsort(descending=True)
    expected = boxes_to_pixels(out["pred_boxes"][0][order], target["size"])  # (Q, 4) xyxy
    assert view.shown == order.tolist()
    torch.testing.assert_close(view.shown_scores, scores[order])
    torch.testing.assert_close(view.shown_boxes, expected)
    assert not torch.allclose(before, view.shown_boxes)  # a different depth, different boxes
    drawn = torch.tensor([[r.get_x(), r.get_y(), r.get_x() + r.get_width(), r.get_y() + r.get_height()]
                          for r in rectangles(view.figure.axes[1])])
    torch.testing.assert_close(drawn, expected, atol=1e-3, rtol=0)


def test_query_selection_view_outlines_the_chosen_number_of_selected_tokens(rtdetr_model, val_set):
    view = QuerySelectionView(rtdetr_model, val_set, index=2, tokens=5)
    view.controls["tokens"].value = 3
    image, _ = val_set[2]
    with torch.no_grad():
        out = rtdetr_model(image[None], torch.zeros(1, *image.shape[-2:], dtype=torch.bool), return_intermediates=True)
    h, w = image.shape[-2:]
    cells = rectangles(view.figure.axes[0])[:3]  # the 3 cells, then the 3 boxes
    assert len(rectangles(view.figure.axes[0])) == 6
    for rect, index in zip(cells, out["selected_indices"][0, :3].tolist()):
        for lvl, (h_l, w_l) in enumerate(out["spatial_shapes"]):  # find the token's level by counting
            if index < h_l * w_l:
                break
            index -= h_l * w_l
        y, x = divmod(index, w_l)
        assert rect.get_xy() == pytest.approx((x * w / w_l, y * h / h_l), abs=1e-3)
        assert rect.get_edgecolor() == to_rgba(LEVEL_COLOURS[lvl])


def per_class_nms(boxes, scores, labels, iou_threshold):
    """torchvision's `nms` class by class, the survivors sorted by score."""
    keep = torch.cat([idx[nms(boxes[idx], scores[idx], iou_threshold)]
                      for idx in (torch.nonzero(labels == c).flatten() for c in labels.unique())] or
                     [torch.zeros(0, dtype=torch.int64)])
    return keep[scores[keep].argsort(descending=True)]


def test_nms_view_keeps_what_nms_keeps_at_the_chosen_thresholds(val_set):
    torch.manual_seed(0)
    dense = tutorial.build_model("dense_tiny", neck={"hidden_dim": 32}, head_convs=1).eval()
    dense.cfg.num_detections = 10_000  # no cap after NMS: every survivor is compared
    torch.nn.init.constant_(dense.box_pred.bias, 2.0)  # boxes of ~4 strides: neighbours overlap, NMS has work
    view = NMSView(dense, val_set, index=1, repeats=1)
    image, target = val_set[1]
    with torch.no_grad():
        out = dense(image[None], torch.zeros(1, *image.shape[-2:], dtype=torch.bool))
    kept = []
    for iou, score in ((0.5, 0.001), (0.9, 0.001), (0.9, 0.01)):
        view.controls["iou"].value = iou
        view.controls["score"].value = score
        flat = out["pred_logits"][0].sigmoid().flatten()  # (N·K,) every (location, class) pair
        idx = torch.nonzero(flat > score).flatten()
        idx = idx[flat[idx].argsort(descending=True)][:dense.cfg.pre_nms_top_k]
        assert len(view.candidates["scores"]) == len(idx)
        h, w = target["size"].tolist()
        k = out["pred_logits"].shape[-1]  # pair index = location · K + class
        boxes = boxes_to_pixels(out["pred_boxes"][0][idx // k], (h, w))  # (n, 4) xyxy
        keep = per_class_nms(boxes, flat[idx], idx % k, iou)[:dense.cfg.num_detections]
        torch.testing.assert_close(view.kept["scores"], flat[idx][keep])  # the same scores, best first
        got = torch.cat([view.kept["scores"][:, None], view.kept["boxes"]], 1).numpy()  # (n, 5)
        want = torch.cat([flat[idx][keep][:, None], boxes[keep]], 1).numpy()
        rows = lambda a: a[np.lexsort(np.round(a, 3).T[::-1])]  # noqa: E731 (equal scores: any order)
        np.testing.assert_allclose(rows(got), rows(want), atol=1e-3)
        assert f"{len(keep)} kept by NMS at IoU {iou:.2f}" in view.figure.axes[1].get_title()
        assert view.nms_ms > 0
        kept.append(len(keep))
    assert kept[0] < kept[1]  # a higher IoU threshold suppresses less


def test_denoising_queries_are_the_models_and_change_nothing(val_set):
    torch.manual_seed(0)
    dino = tutorial.build_model("dino_tiny", num_queries=10).eval()
    bn = [m for m in dino.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    running_mean = bn.running_mean.clone()
    index = images_with_objects(val_set, 1)[0]
    image, target = val_set[index]
    rng = torch.get_rng_state()
    dn = denoising_queries(dino, image, target, seed=3)
    assert not dino.training and torch.equal(bn.running_mean, running_mean) and torch.equal(torch.get_rng_state(), rng)

    dino.train()  # the model itself, in training mode (batch norm as at inference), with the same seed
    bn_layers = [m for m in dino.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bn_layers:
        m.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        out = dino(image[None], torch.zeros(1, *image.shape[-2:], dtype=torch.bool), targets=[target],
                   return_intermediates=True)
    dino.eval()
    torch.testing.assert_close(dn["anchors"], out["dn_anchors"][0])
    p, m = out["dn_groups"]
    n = len(target["labels"])
    assert dn["groups"] == (p, m) and m == 2 * n  # each group: n positives, then n negatives
    assert dn["negative"].view(p, 2, n)[:, 1].all() and not dn["negative"].view(p, 2, n)[:, 0].any()
    positives = ~dn["negative"]  # every corner of a positive moves by less than λ · side / 2
    corners = lambda b: torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)  # noqa: E731
    half = torch.cat([dn["target_boxes"][positives, 2:]] * 2, -1) / 2
    moved = (corners(dn["anchors"][positives]) - corners(dn["target_boxes"][positives])).abs()
    assert (moved <= dino.cfg.dn_box_noise_scale * half + 1e-6).all()

    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    plot_contrastive_denoising(ax, image, dn, group=1)
    arrows = ax.texts  # one per slot of group 1, from the noised anchor to its object
    assert len(arrows) == m
    h, w = image.shape[-2:]
    for k, arrow in enumerate(arrows):
        anchor, obj = dn["anchors"][m + k], dn["target_boxes"][m + k]
        assert arrow.xyann == pytest.approx((anchor[0].item() * w, anchor[1].item() * h), abs=1e-3)
        assert arrow.xy == pytest.approx((obj[0].item() * w, obj[1].item() * h), abs=1e-3)
        colour = "tab:red" if dn["negative"][m + k] else "tab:green"
        assert to_rgba(arrow.arrow_patch.get_edgecolor()) == to_rgba(colour)
