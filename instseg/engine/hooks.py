"""Training hooks of this project's Trainer."""
import os
import re

from detectron2.engine import hooks

from ..checkpoint import Checkpointer


class KeepingCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's periodic checkpoint hook that keeps only the last `max_to_keep` periodic
    checkpoints of its run (0: all) and, when the last iteration is also a periodic one, saves
    model_final.pth as a second name of that checkpoint (Checkpointer.save_as_link), not a copy.

    After --resume, the periodic checkpoints before the iteration training continues from count as
    this run's; a run started afresh in a folder of older checkpoints leaves those alone."""

    def __init__(self, checkpointer: Checkpointer, period: int, max_to_keep: int):
        super().__init__(checkpointer, period)
        self.keep = max_to_keep

    def _periodic_checkpoints(self):
        """(iteration, path) of the periodic checkpoint files in the checkpointer's folder."""
        pattern = re.compile(rf"{re.escape(self.file_prefix)}_(\d{{7}})\.pth")
        folder = self.checkpointer.save_dir
        found = [(pattern.fullmatch(f), f) for f in (os.listdir(folder) if os.path.isdir(folder) else [])]
        return sorted((int(m.group(1)), os.path.join(folder, f)) for m, f in found if m)

    def before_train(self):
        super().before_train()
        self.recent_checkpoints = [p for it, p in self._periodic_checkpoints() if it < self.trainer.start_iter]

    def step(self, iteration: int, **kwargs) -> None:
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        periodic = f"{self.file_prefix}_{iteration:07d}"
        is_periodic = (iteration + 1) % self.period == 0
        if is_periodic:
            self.checkpointer.save(periodic, **state)
            self.recent_checkpoints.append(os.path.join(self.checkpointer.save_dir, f"{periodic}.pth"))
            while self.keep > 0 and len(self.recent_checkpoints) > self.keep:
                oldest = self.recent_checkpoints.pop(0)
                if self.checkpointer.save_to_disk and os.path.exists(oldest):
                    os.remove(oldest)
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            if is_periodic:
                self.checkpointer.save_as_link(f"{periodic}.pth", f"{self.file_prefix}_final")
            else:
                self.checkpointer.save(f"{self.file_prefix}_final", **state)
