"""The one-way fine-tuning ``tsm convert-online --finetune-epochs`` runs before exporting: the
checkpoint's own recipe, with the one-way shift, from the checkpoint's weights, distilling
from the checkpoint as trained."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from tsmcli.errors import UsageError
from tsmcli.model.checkpoint import CheckpointInfo, load_model
from tsmcli.model.model_dir import check_out_dir
from tsmcli.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finetune:
    """How long and how to fine-tune (``convert_online``'s keywords)."""

    epochs: int
    lr_scale: float
    distill_weight: float
    distill_temperature: float


def check_finetune(
    finetune: Finetune, recipe: Recipe | None, checkpoint: Path, out_dir: Path, overwrite: bool
) -> None:
    """Fine-tuning needs the stored recipe, and reads its data: the model dir must not hold
    it (``--overwrite`` would replace files there)."""
    if finetune.epochs <= 0:
        return
    if recipe is None:
        raise UsageError(
            f"{checkpoint}: --finetune-epochs needs the training recipe, which only "
            "tsmcli checkpoints carry; fine-tune with tsm train --set "
            "model.shift=unidirectional --set model.init_from=CKPT instead"
        )
    data = recipe.data
    check_out_dir(out_dir, overwrite, [data.root, data.train_list, data.val_list])


def finetune_one_way(
    info: CheckpointInfo, recipe: Recipe, finetune: Finetune, run_dir: Path
) -> tuple[nn.Module, Path]:
    """Fine-tune one-way on the recipe's training data: the recipe the checkpoint was trained
    with, unidirectional shift, initialised from the checkpoint, ``epochs`` epochs at
    ``lr_scale`` times its learning rate (a converged model needs small steps), distilling
    from the checkpoint as trained when ``distill_weight`` > 0."""
    from tsmcli.engine.train import train

    checkpoint = str(info.path)
    derived = replace(
        recipe,
        name=f"{recipe.name}_online",
        model=replace(recipe.model, shift="unidirectional", init_from=checkpoint, pretrained=None),
        optim=replace(recipe.optim, lr=recipe.optim.lr * finetune.lr_scale, warmup_epochs=0.0),
        train=replace(
            recipe.train,
            epochs=finetune.epochs,
            steps=0,  # --finetune-epochs counts epochs, whatever the recipe's length was
            eval_every=finetune.epochs,
            distill_from=checkpoint if finetune.distill_weight > 0 else None,
            distill_weight=finetune.distill_weight,
            distill_temperature=finetune.distill_temperature,
        ),
    )
    log.info("fine-tuning one-way for %d epochs into %s", finetune.epochs, run_dir)
    result = train(derived, out_dir=run_dir, preloaded=[info])
    best = result.best_checkpoint or result.last_checkpoint
    return load_model(best), best
