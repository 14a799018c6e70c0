"""Trainers for the plugin's models, named `<Model>Trainer`; models without one use RecBole's."""

from __future__ import annotations

from itertools import islice

from recbole.trainer import Trainer

from recbole_navigen.llm.backbone import parameter_groups
from recbole_navigen.rl.log import write_rl_log


class StepLimited:
    """A RecBole data loader cut to its first `steps` batches per pass (attributes pass through)."""

    def __init__(self, loader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __iter__(self):
        return islice(iter(self.loader), self.steps)

    def __len__(self) -> int:
        return min(self.steps, len(self.loader))

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


class NaviGenTrainer(Trainer):
    """RecBole's Trainer with `train_steps_per_epoch` (a cap on batches per epoch, for quick CPU runs),
    the epoch's task mix in the log, and only trainable weights in the optimizer, where the row-masked
    embedding and head get no weight decay (a zero gradient keeps old rows fixed; decay would not).
    In the RL stage the model's loss is GRPO's; each epoch rewrites the step log (CSV) and its curves (PNG)
    in the stage's checkpoint folder."""

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", parameter_groups(self.model, self.weight_decay))
        return super()._build_optimizer(**kwargs)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        steps = self.config["train_steps_per_epoch"]
        self.model.task_counts.clear()
        loss = super()._train_epoch(StepLimited(train_data, steps) if steps else train_data, epoch_idx,
                                    loss_func, show_progress)
        objective = self.model.rl_objective
        if objective is None:
            self.logger.info(f"epoch {epoch_idx} task mix: {dict(sorted(self.model.task_counts.items()))}")
        elif objective.records:
            csv_path, plot = write_rl_log(objective.records, self.checkpoint_dir)
            last = objective.records[-1]
            self.logger.info(f"epoch {epoch_idx} GRPO step {last['step']}: reward {last['reward_mean']:.4f} "
                             f"(std {last['reward_std']:.4f}), kl {last['kl']:.5f}, valid format "
                             f"{last['valid_format_rate']:.2f}; log {csv_path}, curves {plot}")
        return loss
