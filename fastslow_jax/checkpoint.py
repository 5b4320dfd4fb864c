"""Orbax checkpoints of the train state (model, optimizer, step) and the data iterator position.

Saves are atomic (Orbax writes to a temporary directory and renames it), so a run killed at any
moment keeps its last finished checkpoint. ``restore`` places arrays straight onto the shardings of
the abstract target, so a checkpoint can be restored onto a different mesh.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._mngr = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
        args = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        self._mngr.save(step, args=ocp.args.Composite(**args))

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict | None]:
        """Restore onto ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with shardings)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = os.path.isdir(os.path.join(self.directory, str(step), "data"))
        if has_data:
            args["data"] = ocp.args.JsonRestore()
        try:
            restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not match this model (is it from another config or "
                f"model?): {e}") from e
        return restored["state"], (restored["data"] if has_data else None)

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

