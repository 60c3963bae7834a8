"""Resumable state of a sequence-recipe run: `BUNDLE/checkpoints/state/`, written atomically by the
main process every `checkpoint_every` steps and read by every process on `--resume`.

`trainable.pt` holds the trained tensors (new rows, then the trunk or its LoRA matrices, in the
model's order), the optimizer state, the tail average and the torch RNG state, all tensors and plain
containers (loaded with `weights_only=True`); `state.json` holds the step, the elapsed seconds (a
`max_minutes` run resumes its clock), the number of windows taken from the data order, the Python RNG
that picks chat steps and conversations, and the running counters. The data order is a pure function
of (seed, windows taken), so a resumed run sees the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatrec.bundle import atomic_path
from chatrec.errors import BundleError

STATE = "state"


@dataclass
class Progress:
    """The loop's counters, saved with the weights."""

    step: int = 0
    elapsed_s: float = 0.0
    windows_taken: int = 0
    targets_seen: int = 0
    tokens_seen: int = 0
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    ema: float = float("nan")
    snapshots: dict[str, dict[str, float]] = field(default_factory=dict)


def save_state(root: Path, progress: Progress, params: Sequence[Any], optimizer: Any, average: Any,
               rng: random.Random) -> Path:
    """Write `root/state/` atomically (a killed write leaves the previous state in place)."""
    import torch

    target = root / STATE
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        torch.save({"params": [p.detach().cpu() for p in params], "optimizer": optimizer.state_dict(),
                    "average": [m.detach().cpu() for m in average.mean], "average_count": average.count,
                    "torch_rng": torch.get_rng_state()}, tmp / "trainable.pt")
        version, internal, gauss = rng.getstate()
        (tmp / "state.json").write_text(json.dumps({**asdict(progress), "rng": [version, list(internal), gauss]}) + "\n")
    return target


def has_state(root: Path) -> bool:
    return (root / STATE / "state.json").exists()


def load_state(root: Path, params: Sequence[Any], optimizer: Any, average: Any, rng: random.Random) -> Progress:
    """Restore what `save_state` wrote into live tensors, optimizer, average and RNG; returns the counters."""
    import torch

    folder = root / STATE
    if not has_state(root):
        raise BundleError(f"{folder} holds no saved state to resume; run without --resume to start over")
    saved = torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True)
    shapes = [tuple(p.shape) for p in params]
    if [tuple(t.shape) for t in saved["params"]] != shapes:
        raise BundleError(f"{folder}: the saved tensors do not fit this model (another --keep-layers, --lora or "
                          "LoRA rank?); resume with the first run's settings or run without --resume")
    with torch.no_grad():
        for p, value in zip(params, saved["params"], strict=True):
            p.copy_(value.to(p.device))
    optimizer.load_state_dict(saved["optimizer"])
    average.mean = [m.to(p.device) for m, p in zip(saved["average"], params, strict=False)]
    average.count = int(saved["average_count"])
    torch.set_rng_state(saved["torch_rng"])
    meta = json.loads((folder / "state.json").read_text())
    version, internal, gauss = meta.pop("rng")
    rng.setstate((version, tuple(internal), gauss))
    return Progress(**meta)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (a resumed run writes them again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


class TailAverage:
    """The running mean of some parameters over the steps it is updated on (tail weight averaging:
    the mean of the late iterates of one run generalises better than the last one, Izmailov et al.
    2018, SWA; Kaddour 2022, LAWA). Hand-written: torch's AveragedModel copies the whole model
    (the frozen 49k-row embedding included), this keeps only the trained tensors."""

    def __init__(self, params: Sequence[Any]):
        self.params = list(params)
        self.mean: list[Any] = []
        self.count = 0

    def update(self) -> None:
        import torch

        with torch.no_grad():
            if not self.count:
                self.mean = [p.detach().clone() for p in self.params]
            else:
                for m, p in zip(self.mean, self.params, strict=True):
                    m.lerp_(p.detach(), 1.0 / (self.count + 1))
        self.count += 1

    def copy_to_params(self) -> None:
        import torch

        with torch.no_grad():
            for m, p in zip(self.mean, self.params, strict=True):
                p.copy_(m)
