"""Run by test_trainer_multiprocess under `accelerate launch --cpu --num_processes 2`."""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

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
    trainer = Trainer(TrainConfig(lr=0.05, batch_size=batch, max_steps=6, grad_clip=None,
                                  checkpoint_every=100, seed=3), out)
    task = Task()
    trainer.fit(task, Data(32))
    rank = trainer.acc.process_index
    save_file({k: v.contiguous() for k, v in task.net.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
