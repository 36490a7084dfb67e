"""One training step of every method, data parallel or not, for tests/test_distributed.py.

Run under torchrun (2 processes) or alone: writes, from rank 0, the gradients each method
left in the model's flat buffers after one step on the same global batch."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.core.distributed import init_from_env  # noqa: E402
from engine.core.gradients.stats import EpochStats  # noqa: E402
from engine.runs.runner import build_requests, make_benchmark  # noqa: E402
from engine.core.trainer import Trainer  # noqa: E402

OVERRIDES = ["data.train_size=64", "data.val_size=16", "data.test_size=16", "train.batch_size=8",
             "train.optimizer=sgd", "train.momentum=0"]


def main(out: str, methods: list[str]) -> None:
    torch.set_num_threads(1)
    world, device = init_from_env("cpu")
    results = {}
    requests = build_requests("digits_tasks", methods, [0], "quick", OVERRIDES, device, None)
    benchmark = make_benchmark(requests[0].config, torch.device(device))
    for request in requests:
        trainer = Trainer(request.config, benchmark, request.composition, torch.device(device),
                          None, progress=False, world=world)
        batch = next(iter(benchmark.batches("train", 8, torch.Generator().manual_seed(0))))
        trainer.model.train()
        trainer.train_step(batch, 0, EpochStats())
        engine = trainer.engine
        results[request.method_name] = {
            "shared": engine.shared_grads.buffer.clone() if engine.shared_grads.buffer is not None else None,
            "specific": engine.specific_grads.buffer.clone(),
        }
    if world is None or world.is_main:
        torch.save(results, out)
    if world is not None:
        # Leave together: a process that exits while the group lives aborts in gloo.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
