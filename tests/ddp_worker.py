"""Run by tests/test_train.py under torchrun: train briefly, then save this rank's weights."""
import os
import sys

import torch

from tutorial.training.train import TrainConfig, train

TINY = {"transformer": {"num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 32, "dim_feedforward": 64},
        "num_queries": 15, "backbone": {"depths": [1, 1], "return_layers": ["layer2"]}}

if __name__ == "__main__":
    data, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model = train(TrainConfig(model="detr_tiny", data=data, out=out, epochs=2, batch_size=4, workers=0,
                              train_images=16, val_images=4, progress=False, model_overrides=TINY, seed=1))
    torch.save(model.state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
