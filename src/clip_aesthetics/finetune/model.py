"""Freezing parts of a fine-tuning tower (the model itself is :mod:`clip_aesthetics.encoders.towers`)."""

from __future__ import annotations

from torch import nn

from ..encoders.towers import FinetuneModel, image_tower

__all__ = ["FinetuneModel", "freeze", "image_tower", "tower_blocks"]


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """The tower's sequence of blocks (transformer blocks or ResNet stages), in order.

    Raises:
        ValueError: the tower has no block structure this knows (then only --freeze-backbone applies).
    """
    for path in ("transformer.resblocks", "blocks", "stages", "layers"):
        module = tower
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, nn.Sequential | nn.ModuleList) and len(module) > 0:
            return list(module)
    stages = [getattr(tower, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(stage, nn.Module) for stage in stages):
        return stages
    raise ValueError(
        f"cannot find the blocks of a {type(tower).__name__} tower to freeze; use --freeze-backbone"
    )


def freeze(model: FinetuneModel, *, backbone: bool = False, blocks: int = 0) -> int:
    """Stop gradients into the whole tower, or into its stem and first ``blocks`` blocks.

    The stem is every tower parameter that lies neither in a block nor after the last block (patch/conv
    embedding, class token, position embedding, pre-norm). Returns the number of frozen parameters.
    BatchNorm layers in frozen ResNet stages still update their running statistics in training mode
    unless the whole tower is frozen (the trainer then keeps the tower in eval mode).
    """
    if backbone:
        params = model.tower_parameters()
    elif blocks > 0:
        all_blocks = tower_blocks(model.tower)
        if blocks > len(all_blocks):
            raise ValueError(f"--freeze-blocks {blocks}: the tower has only {len(all_blocks)} blocks")
        params = _stem_parameters(model.tower, all_blocks) + [
            p for block in all_blocks[:blocks] for p in block.parameters()
        ]
    else:
        return 0
    for param in params:
        param.requires_grad_(False)
    return sum(p.numel() for p in params)


def _stem_parameters(tower: nn.Module, blocks: list[nn.Module]) -> list[nn.Parameter]:
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    last = {id(p) for p in blocks[-1].parameters()}
    after: set[int] = set()
    seen_last = False
    for child in tower.children():  # top-level children registered after the one holding the last block
        ids = {id(p) for p in child.parameters()}
        if seen_last:
            after |= ids
        seen_last = seen_last or bool(ids & last)
    return [p for p in tower.parameters() if id(p) not in in_blocks and id(p) not in after]
