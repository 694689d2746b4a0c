"""Fine-tuning a backbone's image tower with a 10-bin score head and an EMD loss (the paper's third step).

One GPU or CPU::

    clip-aesthetics finetune /data/AVA_dataset --model ViT-B-32 --output runs/clip-vit-b32

The ImageNet comparison of the paper is the same command with a timm backbone::

    clip-aesthetics finetune /data/AVA_dataset --model timm:vit_base_patch32_224.augreg_in21k \\
        --output runs/in21k-vit-b32

Several GPUs on one machine (DistributedDataParallel, nccl; gloo on CPU)::

    torchrun --standalone --nproc-per-node 8 -m clip_aesthetics finetune /data/AVA_dataset --output runs/x

Several machines (run on each node, ``--node-rank`` 0..N-1; the dataset and, for ``--resume``, the run
folder must be at the same path on every node; only global rank 0 writes files)::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE_RANK \\
        --rdzv-backend c10d --rdzv-endpoint $MASTER_HOST:29500 --rdzv-id aesthetics-1 \\
        -m clip_aesthetics finetune /data/AVA_dataset --output /shared/runs/x

``--batch-size`` is the global batch per optimiser step (128 by default, the paper's), split over the
processes and ``--accumulate`` steps, so the recipe does not change with the number of GPUs.
"""

from .config import TrainConfig
from .loss import distribution_mean, emd, emd_loss, mean_mse_loss
from .model import FinetuneModel, freeze, image_tower, tower_blocks
from .run import finetune, resume_config
from .train import FinetuneResult

__all__ = [
    "FinetuneModel",
    "FinetuneResult",
    "TrainConfig",
    "distribution_mean",
    "emd",
    "emd_loss",
    "finetune",
    "freeze",
    "image_tower",
    "mean_mse_loss",
    "resume_config",
    "tower_blocks",
]
