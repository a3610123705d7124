"""What a training run prints: our lines, not notices from the libraries a user cannot act on."""

from __future__ import annotations

import logging
import warnings

#: Lightning's info notices (accelerator inventory, the litlogger tip, "`Trainer.fit` stopped",
#: "Restoring states from ..."): the run's own lines say what matters
LIGHTNING_NOTICE_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    # "Initializing distributed: GLOBAL_RANK: ...", twice per rank under DDP
    "lightning.fabric.utilities.distributed",
)

#: warnings about library internals or settings this project chose on purpose
NOT_ACTIONABLE = (
    # torch deprecates a class Lightning still uses internally
    r".*isinstance\(treespec, LeafSpec\)",
    # train metrics are summed on device and logged once per epoch, not every log_every_n_steps
    r".*is smaller than the logging interval",
    # eval metrics are torchmetrics, already synced across ranks before they are logged
    r".*sync_dist=True\)` when logging on epoch level",
    # a resumed run writes a new run dir; our checkpoint callbacks carry their own state
    r".*The dirpath has changed from",
    # batches are index slices of one in-memory tensor: worker processes would only add copies
    r".*does not have many workers",
)


def quiet_libraries(verbose: bool = False) -> None:
    """Hide library notices and warnings that are not the user's to act on (all kept if verbose).

    Under DDP the other ranks (Lightning starts each by running the same command again) keep
    only warnings and errors of ours too: rank 0 already says how the data was read.
    """
    if verbose:
        return
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        logging.getLogger("meaning_transform").setLevel(logging.WARNING)
    for name in LIGHTNING_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in NOT_ACTIONABLE:
        warnings.filterwarnings("ignore", message=pattern)
