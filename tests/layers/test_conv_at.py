"""conv2d_at (a conv evaluated at chosen positions only) and BlendMask's top layer evaluated with it on
FCOS's box tower (at any location, at the positives of the losses, at the detections), against the
dense conv."""
import pytest
import torch
from helpers import build_fcos, fcos_features, two_images_gt
from torch import nn

from blendmask.blendmask import attentions_at
from instseg.layers.conv_at import conv2d_at
from instseg.modeling.fcos import FCOS
from instseg.modeling.fcos.targets import assign_locations



@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_conv2d_at_equals_the_dense_conv_and_its_gradients(kernel):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 7, kernel, padding=kernel // 2).double()
    x = torch.randn(2, 6, 5, 9, dtype=torch.float64, requires_grad=True)
    # corners and borders (where the zero padding matters), interior points, a repeated position
    b = torch.tensor([0, 0, 1, 1, 1, 0, 1])
    ys = torch.tensor([0, 4, 0, 2, 4, 3, 2])
    xs = torch.tensor([0, 8, 8, 5, 0, 1, 5])
    sparse = conv2d_at(conv, x, b, ys, xs)
    dense = conv(x)[b, :, ys, xs]
    torch.testing.assert_close(sparse, dense)
    weights = torch.randn_like(dense)
    grads_sparse = torch.autograd.grad((sparse * weights).sum(), [x, conv.weight, conv.bias])
    grads_dense = torch.autograd.grad((dense * weights).sum(), [x, conv.weight, conv.bias])
    for g_sparse, g_dense in zip(grads_sparse, grads_dense):
        torch.testing.assert_close(g_sparse, g_dense)


@pytest.mark.parametrize(
    "conv", [nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3, padding=1, stride=2), nn.Conv2d(2, 2, 3, padding=2, dilation=2)]
)
def test_conv2d_at_rejects_convs_it_does_not_compute(conv):
    with pytest.raises(ValueError, match="stride-1 'same' convs"):
        conv2d_at(conv, torch.zeros(1, 2, 4, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))


def test_top_layer_at_any_fcos_location_equals_the_dense_top_layer():
    torch.manual_seed(0)
    fcos: FCOS = build_fcos(NUM_CLS_CONVS=1, NUM_BOX_CONVS=1)
    top_layer = nn.Conv2d(32, 5, 3, padding=1)
    features = fcos_features(fcos)  # levels of 16x16, 8x8, 4x4, 2x2, 1x1
    pred = fcos.predict(features, keep_box_tower=True)
    dense = torch.cat(
        [top_layer(f).permute(0, 2, 3, 1).reshape(2, -1, 5) for f in pred.box_tower], dim=1
    )  # (N, L, D) in FCOS's location order
    num_locations = dense.shape[1]
    image_inds = torch.tensor([0, 1, 1, 0, 1, 0])
    loc_inds = torch.tensor([0, num_locations - 1, 256 + 15, 256 + 63, 320 + 5, 336 + 2])
    assert pred.levels[loc_inds].tolist() == [0, 4, 1, 1, 2, 3]
    torch.testing.assert_close(attentions_at(top_layer, pred, image_inds, loc_inds), dense[image_inds, loc_inds])
    assert fcos.predict(features).box_tower is None  # kept on request only


def test_top_layer_at_fcos_positives_and_detections_equals_the_dense_top_layer():
    torch.manual_seed(0)
    fcos: FCOS = build_fcos(NUM_CLS_CONVS=1, NUM_BOX_CONVS=1, INFERENCE_TH_TRAIN=0.0)
    top_layer = nn.Conv2d(32, 5, 3, padding=1)
    pred = fcos.predict(fcos_features(fcos), keep_box_tower=True)
    dense = torch.cat([top_layer(f).permute(0, 2, 3, 1).reshape(2, -1, 5) for f in pred.box_tower], dim=1)
    gt = two_images_gt()
    _, positives = fcos.losses(pred, gt)
    assert len(positives.image_inds) > 0 and set(positives.image_inds.tolist()) == {0, 1}
    labels = torch.stack([
        assign_locations(pred.locations, pred.strides, pred.ranges, g.gt_boxes.tensor, g.gt_classes, 3, 1.5).labels
        for g in gt
    ])
    pos_image, pos_loc = torch.nonzero(labels != 3, as_tuple=True)
    torch.testing.assert_close(
        attentions_at(top_layer, pred, positives.image_inds, positives.loc_inds), dense[pos_image, pos_loc]
    )

    detections = fcos.detect(pred, [(128, 128)] * 2)
    for i, det in enumerate(detections):
        assert len(det) > 0
        # a detection's flat location index: same centre, same level
        same = (pred.locations[None] == det.locations[:, None]).all(dim=2) & (pred.levels[None] == det.fpn_levels[:, None])
        loc = same.int().argmax(dim=1)
        assert same.sum(dim=1).tolist() == [1] * len(det)
        assert det.location_inds.tolist() == loc.tolist()
        attentions = attentions_at(top_layer, pred, torch.full_like(loc, i), det.location_inds)
        torch.testing.assert_close(attentions, dense[i, loc])
