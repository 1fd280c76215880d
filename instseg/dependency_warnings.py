"""Warnings that detectron2 v0.6 and fvcore raise from their own code under torch 2.x: every
process would print them, and the user can do nothing about them. Each is filtered by its message
(and the module it comes from, where Python knows it), never all warnings; this project's own code
avoids them instead (meshgrid with `indexing`, writable arrays for torch.from_numpy).

Imports only the standard library before filtering, so that it can run before detectron2 is
imported (instseg/__init__.py).
"""
import warnings


def quiet_dependency_warnings() -> None:
    """Filter the warnings of detectron2's and fvcore's own code, each by its message; call before
    detectron2 is imported (instseg/__init__.py does)."""
    with warnings.catch_warnings():
        # fvcore's focal losses and detectron2's box encodings are scripted when imported: only
        # these imports are quieted, so the user's own torch.jit.script calls still warn.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        import detectron2.modeling.box_regression  # noqa: F401
        import fvcore.nn.focal_loss  # noqa: F401
    # detectron2's anchor generator calls torch.meshgrid without `indexing` (ours pass it); torch
    # warns once per process, from torch.functional
    warnings.filterwarnings(
        "ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning, module=r"torch\.functional"
    )
    # detectron2's annotations_to_instances makes tensors of the masks its own transforms return
    # read-only (np.asarray of a PIL image); they are never written to
    warnings.filterwarnings(
        "ignore",
        message=r"The given NumPy array is not writable",
        category=UserWarning,
        module=r"detectron2\.data\.detection_utils",
    )
