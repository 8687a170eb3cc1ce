"""Tests of the streaming mean IoU and its ``evaluate`` counterpart.

The reference below is written from the documented semantics of the hub metric ``mean_iou``
(per image: chained ``label_map`` on the reference, ``reduce_labels``, drop ``ignore_index``, then
``np.histogram(x, bins=K, range=(0, K - 1))`` of intersection / prediction / reference; totals;
IoU, accuracy, NaN-means) plus our extension (raw reference -100 is never counted).
"""

import copy
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from catseg_hf.evaluation import PAD_INDEX, StreamingMeanIoU, mean_iou_metric_path

KEYS = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")


# ----------------------------------------------------------------------------------------------
# Reference implementation (straightforward, per image, np.histogram as documented)
# ----------------------------------------------------------------------------------------------


def reference_mean_iou(preds, refs, num_labels, ignore_index, nan_to_num=None, label_map=None,
                       reduce_labels=False, pad_index=PAD_INDEX):
    k = num_labels
    totals = {name: np.zeros(k, dtype=np.float64) for name in ("inter", "pred", "label")}

    def hist(values):
        return np.histogram(values, bins=k, range=(0, k - 1))[0]

    for pred, ref in zip(preds, refs):
        pred = np.array(pred, dtype=np.int64).ravel()  # private copies
        ref = np.array(ref, dtype=np.int64).ravel()
        if pad_index is not None:
            keep = ref != pad_index
            pred, ref = pred[keep], ref[keep]
        if label_map is not None:
            for old, new in label_map.items():  # one entry after the other: chains
                ref[ref == old] = new
        if reduce_labels:
            ref[ref == 0] = 255
            ref = ref - 1
            ref[ref == 254] = 255
        keep = ref != ignore_index
        pred, ref = pred[keep], ref[keep]
        totals["inter"] += hist(pred[pred == ref])
        totals["pred"] += hist(pred)
        totals["label"] += hist(ref)
    union = totals["pred"] + totals["label"] - totals["inter"]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = totals["inter"] / union
        acc = totals["inter"] / totals["label"]
        overall = totals["inter"].sum() / totals["label"].sum()
    with warnings.catch_warnings():  # NaN-mean of an all-NaN vector warns; NaN is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        result = {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(acc),
            "overall_accuracy": overall,
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }
    if nan_to_num is not None:
        result = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in result.items()}
    return result


def pixel_loop_areas(preds, refs, num_labels, ignore_index):
    """Even more literal: visit every pixel (small inputs only)."""
    inter = np.zeros(num_labels, dtype=np.int64)
    pred_area = np.zeros(num_labels, dtype=np.int64)
    label_area = np.zeros(num_labels, dtype=np.int64)
    for pred, ref in zip(preds, refs):
        for p, r in zip(np.asarray(pred).ravel().tolist(), np.asarray(ref).ravel().tolist()):
            if r == PAD_INDEX or r == ignore_index:
                continue
            if 0 <= r < num_labels:
                label_area[r] += 1
            if 0 <= p < num_labels:
                pred_area[p] += 1
                if p == r:
                    inter[p] += 1
    return inter, pred_area, label_area


def assert_same_result(got, expected):
    assert list(got) == list(KEYS)
    for key in KEYS:
        np.testing.assert_allclose(np.asarray(got[key], dtype=np.float64), np.asarray(expected[key], dtype=np.float64),
                                   rtol=0, atol=1e-12, equal_nan=True, err_msg=key)
    assert isinstance(got["per_category_iou"], np.ndarray)
    assert isinstance(got["per_category_accuracy"], np.ndarray)
    assert got["per_category_iou"].shape == np.asarray(expected["per_category_iou"]).shape


def random_maps(rng, num_labels, shapes, ignore_index=255, extra_ids=(), p_ignore=0.1, p_pad=0.05,
                p_out=0.05, present=None):
    """Random prediction/reference maps with ignore pixels, -100 padding and out-of-range ids."""
    preds, refs = [], []
    high = num_labels if present is None else present
    out_of_range = np.array([-3, -1, num_labels, num_labels + 2, num_labels + 57, *extra_ids])
    for shape in shapes:
        ref = rng.integers(0, high, size=shape)
        pred = rng.integers(0, high, size=shape)
        # Make some predictions right so intersections are not all tiny.
        agree = rng.random(shape) < 0.4
        pred[agree] = ref[agree]
        u = rng.random(shape)
        ref[u < p_out] = rng.choice(out_of_range, size=int((u < p_out).sum()))
        ref[(u >= p_out) & (u < p_out + p_ignore)] = ignore_index
        pad = rng.random(shape) < p_pad
        ref[pad] = PAD_INDEX
        # Trainer pads predictions too, but keep valid predictions under half of the padding so
        # that counting padded pixels would show.
        pred[pad & (rng.random(shape) < 0.5)] = PAD_INDEX
        v = rng.random(shape)
        pred[v < p_out] = rng.choice(out_of_range, size=int((v < p_out).sum()))
        preds.append(pred)
        refs.append(ref)
    return preds, refs


# ----------------------------------------------------------------------------------------------
# Semantics
# ----------------------------------------------------------------------------------------------


def test_hub_documentation_example():
    # The example printed in the hub metric's documentation (numbers only).
    predicted = [np.array([[1, 2], [3, 4], [5, 255]]), np.array([[2, 7], [9, 2], [3, 6]]),
                 np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])]
    actual = [np.array([[0, 3], [5, 4], [6, 255]]), np.array([[1, 7], [9, 2], [3, 6]]),
              np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])]
    result = StreamingMeanIoU(num_labels=10, ignore_index=255).update(predicted, actual).compute()
    assert result["mean_iou"] == pytest.approx(0.47750000000000004, abs=1e-15)
    assert result["mean_accuracy"] == pytest.approx(0.5916666666666666, abs=1e-15)
    assert result["overall_accuracy"] == pytest.approx(0.5263157894736842, abs=1e-15)
    np.testing.assert_allclose(result["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(result["per_category_accuracy"],
                               [0, 0, 0.75, 2 / 3, 1, 0, 0.5, 1, 1, 1], atol=1e-12)


@pytest.mark.parametrize("num_labels", [2, 3, 7, 20, 150, 847])
@pytest.mark.parametrize(
    "options",
    [
        dict(ignore_index=255),
        dict(ignore_index=255, reduce_labels=True),
        dict(ignore_index=0),
        dict(ignore_index=255, label_map={1: 2, 2: 0, 5: 255, 255: 1}),
        dict(ignore_index=255, label_map={0: 1, 1: 0}, reduce_labels=True),
        dict(ignore_index=65535, label_map={3: 65535}),
    ],
    ids=["plain", "reduce", "ignore0", "chained_map", "map_and_reduce", "ignore65535"],
)
def test_matches_reference_on_random_maps(num_labels, options):
    rng = np.random.default_rng(num_labels * 7 + len(str(options)))
    shapes = [(13, 17), (1, 1), (32, 9), (5, 40), (0, 4)]
    preds, refs = random_maps(rng, num_labels, shapes, ignore_index=options["ignore_index"],
                              present=max(2, num_labels - num_labels // 3))  # leave classes absent
    metric = StreamingMeanIoU(num_labels=num_labels, **options)
    for pred, ref in zip(preds, refs):
        metric.update(pred, ref)
    expected = reference_mean_iou(preds, refs, num_labels, **options)
    assert_same_result(metric.compute(), expected)
    for nan_to_num in (0, -1.5):
        assert_same_result(metric.compute(nan_to_num=nan_to_num),
                           reference_mean_iou(preds, refs, num_labels, nan_to_num=nan_to_num, **options))


def test_pixel_loop_agrees_with_areas():
    rng = np.random.default_rng(3)
    preds, refs = random_maps(rng, 6, [(7, 5), (3, 11)], p_out=0.2)
    metric = StreamingMeanIoU(num_labels=6, ignore_index=255).update(preds, refs)
    inter, pred_area, label_area = pixel_loop_areas(preds, refs, 6, 255)
    areas = metric.areas()
    np.testing.assert_array_equal(areas["area_intersect"], inter)
    np.testing.assert_array_equal(areas["area_pred_label"], pred_area)
    np.testing.assert_array_equal(areas["area_label"], label_area)
    np.testing.assert_array_equal(areas["area_union"], pred_area + label_area - inter)


def test_out_of_range_ids_count_on_the_valid_side_only():
    # label 1 predicted 9 (out of range): counts in area_label[1] only.
    # label 9 (out of range, not ignored) predicted 0: counts in area_pred_label[0] only.
    # label -5 predicted -5: counts nowhere.
    metric = StreamingMeanIoU(num_labels=3, ignore_index=255)
    metric.update(np.array([9, 0, -5, 1]), np.array([1, 9, -5, 1]))
    areas = metric.areas()
    np.testing.assert_array_equal(areas["area_label"], [0, 2, 0])
    np.testing.assert_array_equal(areas["area_pred_label"], [1, 1, 0])
    np.testing.assert_array_equal(areas["area_intersect"], [0, 1, 0])
    np.testing.assert_array_equal(metric.confusion_matrix, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert metric.extended_confusion_matrix.shape == (4, 4)


def test_label_map_entries_chain_in_order():
    ref = np.array([[0, 1, 2, 3]])
    pred = np.array([[3, 3, 3, 3]])
    # 1 -> 2, then 2 -> 3: both the original 1 and 2 end as 3.
    result = StreamingMeanIoU(num_labels=4, label_map={1: 2, 2: 3}).update(pred, ref).compute()
    assert result["per_category_accuracy"][3] == 1.0 and np.isnan(result["per_category_accuracy"][1])
    assert StreamingMeanIoU(num_labels=4).update(pred, ref).areas()["area_label"].tolist() == [1, 1, 1, 1]
    areas = StreamingMeanIoU(num_labels=4, label_map={1: 2, 2: 3}).update(pred, ref).areas()
    assert areas["area_label"].tolist() == [1, 0, 0, 3]
    # A "swap" written as a chain collapses: 0 -> 1 then 1 -> 0 sends everything to 0.
    areas = StreamingMeanIoU(num_labels=2, label_map={0: 1, 1: 0}).update(np.array([[0, 0]]), np.array([[0, 1]])).areas()
    assert areas["area_label"].tolist() == [2, 0]
    # Order matters: 2 -> 3 first, then 1 -> 2 leaves 1 at 2.
    areas = StreamingMeanIoU(num_labels=4, label_map={2: 3, 1: 2}).update(pred, ref).areas()
    assert areas["area_label"].tolist() == [1, 0, 1, 2]


def test_reduce_labels_mapping():
    # 0 -> 255 (ignored), 255 -> 255 (ignored), v -> v - 1.
    ref = np.array([0, 1, 2, 255, 3])
    pred = np.array([0, 0, 1, 0, 2])
    metric = StreamingMeanIoU(num_labels=3, ignore_index=255, reduce_labels=True).update(pred, ref)
    assert metric.num_counted_pixels == 3
    assert metric.compute()["overall_accuracy"] == 1.0


def test_padding_minus_100_is_never_counted():
    rng = np.random.default_rng(11)
    pred = rng.integers(0, 5, size=(20, 20))
    ref = rng.integers(0, 5, size=(20, 20))
    padded_ref = ref.copy()
    padded_ref[:, 15:] = PAD_INDEX  # Trainer-style padding, predictions left as garbage
    cropped = StreamingMeanIoU(num_labels=5).update(pred[:, :15], ref[:, :15])
    for options in (dict(), dict(reduce_labels=True), dict(label_map={-100: 3})):
        padded = StreamingMeanIoU(num_labels=5, **options).update(pred, padded_ref)
        expected = StreamingMeanIoU(num_labels=5, **options).update(pred[:, :15], ref[:, :15])
        np.testing.assert_array_equal(padded.extended_confusion_matrix, expected.extended_confusion_matrix)
    assert cropped.num_counted_pixels == 300
    # Without the extension the padded pixels would count (label -100 is out of range, its
    # prediction counts in area_pred_label), exactly like the hub metric.
    hub_like = StreamingMeanIoU(num_labels=5, pad_index=None).update(pred, padded_ref)
    assert_same_result(hub_like.compute(), reference_mean_iou([pred], [padded_ref], 5, 255, pad_index=None))


def test_absent_classes_nan_and_nan_to_num():
    metric = StreamingMeanIoU(num_labels=4).update(np.array([[0, 1]]), np.array([[0, 1]]))
    result = metric.compute()
    assert np.isnan(result["per_category_iou"][2:]).all() and result["mean_iou"] == 1.0
    result = metric.compute(nan_to_num=0)
    np.testing.assert_array_equal(result["per_category_iou"], [1, 1, 0, 0])
    empty = StreamingMeanIoU(num_labels=3).compute()
    assert np.isnan(empty["mean_iou"]) and np.isnan(empty["overall_accuracy"])
    assert StreamingMeanIoU(num_labels=3).compute(nan_to_num=-1)["mean_iou"] == -1


# ----------------------------------------------------------------------------------------------
# Inputs: layouts, back ends, no mutation, errors
# ----------------------------------------------------------------------------------------------


def test_layouts_give_identical_counts():
    rng = np.random.default_rng(5)
    batch_pred, batch_ref = random_maps(rng, 9, [(4, 6, 5)])
    batch_pred, batch_ref = batch_pred[0], batch_ref[0]
    per_map = StreamingMeanIoU(num_labels=9)
    for i in range(4):
        per_map.update(batch_pred[i], batch_ref[i])
    variants = {
        "batch": (batch_pred, batch_ref),
        "list": (list(batch_pred), list(batch_ref)),
        "tuple_of_tensors": (tuple(torch.from_numpy(m) for m in batch_pred), tuple(torch.from_numpy(m) for m in batch_ref)),
        "tensor_batch": (torch.from_numpy(batch_pred), torch.from_numpy(batch_ref)),
        "mixed": (torch.from_numpy(batch_pred), [m.tolist() for m in batch_ref]),
        "nested_lists": (batch_pred.tolist(), batch_ref.tolist()),
        "uint16_int32": (batch_pred.clip(0).astype(np.int32), batch_ref.clip(0).astype(np.uint16)),
    }
    for name, (preds, refs) in variants.items():
        metric = StreamingMeanIoU(num_labels=9).update(preds, refs)
        expected = per_map
        if name == "uint16_int32":
            expected = StreamingMeanIoU(num_labels=9).update(batch_pred.clip(0), batch_ref.clip(0))
        np.testing.assert_array_equal(metric.extended_confusion_matrix_numpy(),
                                      expected.extended_confusion_matrix_numpy(), err_msg=name)


def test_mixed_size_list_matches_reference(kernels):
    rng = np.random.default_rng(8)
    preds, refs = random_maps(rng, 33, [(5, 5), (17, 3), (2, 40), (1, 7)])
    metric = StreamingMeanIoU(num_labels=33, label_map={4: 5, 5: 6}, reduce_labels=True)
    # Torch first, so the matrix is a tensor and the later NumPy maps are converted to it.
    metric.update([torch.from_numpy(p) for p in preds[:2]], [torch.from_numpy(r) for r in refs[:2]]).update(preds[2:], refs[2:])
    assert torch.is_tensor(metric.confusion_matrix)
    assert_same_result(metric.compute(), reference_mean_iou(preds, refs, 33, 255, label_map={4: 5, 5: 6}, reduce_labels=True))


@pytest.fixture(params=["numpy_kernels", "torch_kernels"])
def kernels(request, monkeypatch):
    """CPU tensors are normally counted with NumPy; also run the torch kernels (the code path
    CUDA tensors take) on CPU so that path is checked on machines without a GPU."""
    from catseg_hf.evaluation.mean_iou import mean_iou_core

    monkeypatch.setattr(mean_iou_core, "_FORCE_TORCH_KERNELS", request.param == "torch_kernels")
    return request.param


def test_torch_matches_numpy_and_keeps_device(kernels):
    rng = np.random.default_rng(21)
    preds, refs = random_maps(rng, 40, [(3, 30, 20)])
    options = dict(num_labels=40, label_map={7: 8, 8: 39}, reduce_labels=True)
    np_metric = StreamingMeanIoU(**options).update(preds[0], refs[0])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        t_metric = StreamingMeanIoU(**options).update(torch.as_tensor(preds[0], device=device),
                                                      torch.as_tensor(refs[0], device=device))
        assert torch.is_tensor(t_metric.confusion_matrix)
        assert t_metric.confusion_matrix.device.type == device
        assert t_metric.confusion_matrix.dtype == torch.int64
        # A later NumPy update is moved to the matrix's device.
        t_metric.update(preds[0][0], refs[0][0])
        np_metric_2 = StreamingMeanIoU(**options).update(preds[0], refs[0]).update(preds[0][0], refs[0][0])
        np.testing.assert_array_equal(t_metric.extended_confusion_matrix_numpy(), np_metric_2.extended_confusion_matrix)
        assert_same_result(t_metric.compute(), np_metric_2.compute())
    assert isinstance(np_metric.confusion_matrix, np.ndarray)
    assert np_metric.confusion_matrix.shape == (40, 40) and np_metric.confusion_matrix.dtype == np.int64


def test_caller_arrays_are_not_modified(kernels):
    rng = np.random.default_rng(2)
    preds, refs = random_maps(rng, 12, [(9, 9), (4, 4)])
    refs[0][0, :4] = [0, 1, 2, 255]
    label_map = {0: 3, 3: 4, 255: 0}
    before = (copy.deepcopy(preds), copy.deepcopy(refs), dict(label_map))
    metric = StreamingMeanIoU(num_labels=12, label_map=label_map, reduce_labels=True)
    metric.update(preds, refs)
    t_pred, t_ref = torch.from_numpy(preds[0].copy()), torch.from_numpy(refs[0].copy())
    t_before = (t_pred.clone(), t_ref.clone())
    metric.update(t_pred, t_ref)
    metric.update(preds[0].astype(np.int64), refs[0].astype(np.int64))  # int64: no dtype-conversion copy
    for a, b in zip(preds + refs, before[0] + before[1]):
        np.testing.assert_array_equal(a, b)
    assert torch.equal(t_pred, t_before[0]) and torch.equal(t_ref, t_before[1])
    assert label_map == before[2]
    label_map[0] = 7  # later changes to the caller's dict do not leak in
    assert metric.label_map == {0: 3, 3: 4, 255: 0}


def test_float_maps_must_be_integral(kernels):
    metric = StreamingMeanIoU(num_labels=3)
    metric.update(np.array([[0.0, 1.0]]), np.array([[0.0, 2.0]]))
    assert metric.num_counted_pixels == 2
    with pytest.raises(ValueError, match="integer"):
        metric.update(np.array([[0.5, 1.0]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, float("nan")]]))
    tensor_metric = StreamingMeanIoU(num_labels=3).update(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 2.0]]))
    assert tensor_metric.num_counted_pixels == 2
    with pytest.raises(ValueError, match="integer"):
        tensor_metric.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.25]]))
    with pytest.raises(TypeError, match="integer"):
        StreamingMeanIoU(num_labels=3).update(np.array(["a"]), np.array(["b"]))


def test_shape_errors_name_the_shapes():
    metric = StreamingMeanIoU(num_labels=3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        metric.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match=r"pair 1.*\(4, 4\).*\(4, 5\)"):
        metric.update([np.zeros((2, 2), int), np.zeros((4, 4), int)], [np.zeros((2, 2), int), np.zeros((4, 5), int)])
    with pytest.raises(ValueError, match="2 prediction maps but 3 reference maps"):
        metric.update([np.zeros((2, 2), int)] * 2, [np.zeros((2, 2), int)] * 3)
    with pytest.raises(ValueError, match="num_labels"):
        StreamingMeanIoU(num_labels=0)
    assert metric.num_counted_pixels == 0  # failed updates leave no trace
    with pytest.raises(ValueError):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    assert metric.device is None  # ... not even the choice of device


# ----------------------------------------------------------------------------------------------
# State: flat memory, merge, reset, distributed
# ----------------------------------------------------------------------------------------------


def _state_footprint(metric):
    footprint = {}
    for name, value in vars(metric).items():
        if isinstance(value, np.ndarray):
            footprint[name] = ("ndarray", value.shape, value.dtype, value.nbytes)
        elif torch.is_tensor(value):
            footprint[name] = ("tensor", tuple(value.shape), value.dtype, value.nelement())
        elif isinstance(value, (tuple, list, dict)):
            footprint[name] = (type(value).__name__, len(value))
        else:
            footprint[name] = (type(value).__name__,)
    return footprint


@pytest.mark.parametrize("as_torch", [False, True])
def test_memory_is_flat(as_torch):
    rng = np.random.default_rng(4)
    preds, refs = random_maps(rng, 150, [(24, 32)] * 50)
    if as_torch:
        preds, refs = [torch.from_numpy(p) for p in preds], [torch.from_numpy(r) for r in refs]
    metric = StreamingMeanIoU(num_labels=150, label_map={1: 2})
    metric.update(preds[0], refs[0])
    after_one = _state_footprint(metric)
    for pred, ref in zip(preds[1:], refs[1:]):
        metric.update(pred, ref)
    assert _state_footprint(metric) == after_one
    assert metric.extended_confusion_matrix.shape == (151, 151)
    assert metric.num_counted_pixels > 40 * 24 * 32 * 0.5


def test_merge_reset_and_repr():
    rng = np.random.default_rng(9)
    preds, refs = random_maps(rng, 10, [(6, 6)] * 4)
    whole = StreamingMeanIoU(num_labels=10).update(preds, refs)
    first = StreamingMeanIoU(num_labels=10).update(preds[:2], refs[:2])
    second = StreamingMeanIoU(num_labels=10).update([torch.from_numpy(p) for p in preds[2:]], [torch.from_numpy(r) for r in refs[2:]])
    first.merge(second)
    np.testing.assert_array_equal(first.extended_confusion_matrix, whole.extended_confusion_matrix)
    assert StreamingMeanIoU(num_labels=10).merge(whole).num_counted_pixels == whole.num_counted_pixels
    with pytest.raises(ValueError, match="11-class"):
        whole.merge(StreamingMeanIoU(num_labels=11))
    assert "num_labels=10" in repr(whole)
    whole.reset()
    assert whole.num_counted_pixels == 0 and np.isnan(whole.compute()["mean_iou"])


def test_reduce_across_processes_without_distributed_is_a_no_op():
    metric = StreamingMeanIoU(num_labels=3).update(np.array([0, 1, 2]), np.array([0, 1, 1]))
    before = metric.extended_confusion_matrix.copy()
    assert metric.reduce_across_processes() is metric
    np.testing.assert_array_equal(metric.extended_confusion_matrix, before)


@pytest.mark.parametrize("as_torch", [False, True])
def test_reduce_across_processes_sums_matrices(monkeypatch, as_torch):
    # Simulate a 2-process group whose other member holds the same counts: accelerate's sum then
    # doubles them. (Spawning real processes costs ~30 s here because each child imports the
    # whole package; the collective itself is accelerate's and torch's business.)
    import accelerate
    import accelerate.utils

    calls = []

    class TwoProcesses:
        num_processes = 2
        backend = "gloo"
        device = torch.device("cpu")

    def fake_reduce(tensor, reduction="mean"):
        calls.append((tensor.dtype, tensor.device.type, reduction))
        return tensor * 2

    monkeypatch.setattr(accelerate, "PartialState", TwoProcesses)
    monkeypatch.setattr(accelerate.utils, "reduce", fake_reduce)
    pred, ref = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 2])
    if as_torch:
        pred, ref = torch.from_numpy(pred), torch.from_numpy(ref)
    metric = StreamingMeanIoU(num_labels=4).update(pred, ref)
    single = metric.extended_confusion_matrix_numpy().copy()
    assert metric.reduce_across_processes() is metric
    np.testing.assert_array_equal(metric.extended_confusion_matrix_numpy(), 2 * single)
    assert calls == [(torch.int64, "cpu", "sum")]
    assert torch.is_tensor(metric.confusion_matrix) == as_torch
    # A process that saw no data still joins the collective with zeros.
    idle = StreamingMeanIoU(num_labels=4).reduce_across_processes()
    assert idle.num_counted_pixels == 0 and len(calls) == 2


def test_detectron2_style_ignores_classes_absent_from_references():
    # Class 2 is predicted but never labelled: the hub metric counts its IoU (0), detectron2 skips it.
    metric = StreamingMeanIoU(num_labels=3).update(np.array([0, 0, 1, 2]), np.array([0, 0, 1, 1]))
    hub = metric.compute()
    d2 = metric.compute_detectron2()
    assert hub["mean_iou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert d2["mIoU"] == pytest.approx(100 * (1 + 0.5) / 2)
    assert d2["pACC"] == pytest.approx(75.0)
    assert np.isnan(d2["per_category_iou"][2])


# ----------------------------------------------------------------------------------------------
# evaluate.load(mean_iou_metric_path())
# ----------------------------------------------------------------------------------------------


def test_metric_path_is_absolute_and_exists():
    path = mean_iou_metric_path()
    assert os.path.isabs(path) and os.path.isfile(path) and path.endswith("mean_iou.py")


def test_evaluate_load_gives_the_same_numbers(tmp_path, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.chdir(tmp_path)  # nothing resolved relative to the working directory
    rng = np.random.default_rng(17)
    preds, refs = random_maps(rng, 25, [(8, 9), (3, 14), (10, 10), (1, 5)], ignore_index=255)
    cases = [
        dict(num_labels=25, ignore_index=255),
        dict(num_labels=25, ignore_index=255, reduce_labels=True, label_map={2: 3, 3: 4}, nan_to_num=0),
    ]
    metric = evaluate.load(mean_iou_metric_path())
    assert isinstance(metric, evaluate.Metric)
    for kwargs in cases:
        metric.add_batch(predictions=preds[:2], references=refs[:2])
        metric.add_batch(predictions=preds[2:], references=refs[2:])
        via_evaluate = metric.compute(**kwargs)
        nan_to_num = kwargs.pop("nan_to_num", None)
        streaming = StreamingMeanIoU(**kwargs).update(preds, refs).compute(nan_to_num=nan_to_num)
        assert_same_result(via_evaluate, streaming)
        assert_same_result(via_evaluate, reference_mean_iou(preds, refs, nan_to_num=nan_to_num, **kwargs))
    # One-shot compute with the same arguments as the hub metric.
    one_shot = metric.compute(predictions=preds, references=refs, num_labels=25, ignore_index=255)
    assert_same_result(one_shot, reference_mean_iou(preds, refs, 25, 255))
