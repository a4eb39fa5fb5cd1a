"""Run by test_trainer_multiprocess under torchrun (accelerate's multi-CPU mode, gloo):
`multiprocess_worker.py OUT BATCH [GRAD_ACCUM]`."""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from namd.config import TrainConfig
from namd.training.trainer import Trainer


class Data:
    def __init__(self, n: int):
        rng = np.random.default_rng(0)
        self.x = torch.tensor(rng.normal(size=(n, 4)), dtype=torch.float32)
        self.y = self.x.sum(1, keepdim=True) * 3 - 1

    def __len__(self):
        return len(self.x)

    def batch(self, indices):
        return {"x": self.x[indices], "y": self.y[indices]}


class Task:
    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 1)

    def trainable(self):
        return {"net": self.net}

    def frozen(self):
        return {}

    def loss(self, batch, generator, train):
        mse = (self.net(batch["x"]) - batch["y"]).pow(2).mean()
        return mse, {}


if __name__ == "__main__":
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    accum = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    trainer = Trainer(TrainConfig(lr=0.05, batch_size=batch, grad_accum=accum, max_steps=6,
                                  grad_clip=1.0, checkpoint_every=100, seed=3), out)
    task = Task()
    trainer.fit(task, Data(32))
    rank = trainer.acc.process_index
    # with several processes the task's modules train inside accelerate's DDP wrapper
    assert trainer.acc.num_processes == 1 or isinstance(trainer.prepared, DistributedDataParallel)
    save_file({k: v.contiguous() for k, v in task.net.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
