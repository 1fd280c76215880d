"""instseg.export.exporter.trace: a trace is kept only when it stays dynamic in the image size (the
tracer records sizes as tensors; a size turned into a Python int is a constant of the trace)."""
import pytest
import torch
from detectron2.layers import ShapeSpec
from torch import nn

from instseg.export import UnsupportedExportError, example_image
from instseg.export.common import at_most
from instseg.export.exporter import trace


class Backbone(nn.Module):
    def output_shape(self):
        return {"p2": ShapeSpec(channels=3, stride=4)}


class WidthModule(nn.Module):
    """An export module's shape: `model.backbone`, `output_names`; returns the min(width, 40)
    largest values of the image's first row, and the width as a tensor."""

    output_names = ("columns", "width")

    def __init__(self, baked: bool):
        super().__init__()
        self.model = nn.Module()
        self.model.backbone = Backbone()
        self.baked = baked

    def forward(self, image):
        width = int(image.shape[-1]) if self.baked else image.shape[-1]
        k = at_most(image.shape[-1], 40)
        return image[0, 0].topk(k).values, image.new_ones(()) * width


def test_dynamic_trace_follows_the_image_size():
    traced = trace(WidthModule(baked=False), example_image(16, 24))
    for height, width in ((16, 24), (20, 36), (16, 64)):
        image = example_image(height, width, seed=2)
        columns, got_width = traced(image)
        assert got_width.item() == width
        torch.testing.assert_close(columns, image[0, 0].topk(min(width, 40)).values, rtol=0, atol=0)


def test_trace_with_a_constant_size_is_refused():
    with pytest.raises(UnsupportedExportError, match=r"TorchScript trace of Module is not dynamic: its width"):
        trace(WidthModule(baked=True), example_image(16, 24))
