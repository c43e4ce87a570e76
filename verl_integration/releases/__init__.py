"""What differs between the verl release lines NTL supports: one small module per line, and nothing else in the
library branches on verl's version.

==========  =======================================  =============================================================
line        releases (tested: bench/results/          how NTL reaches training there
            verl_matrix.md)
==========  =======================================  =============================================================
``v07``     0.7.0, 0.7.1                             legacy workers: ``legacy_actor`` (a ``DataParallelPPOActor``
                                                     subclass, installed by a worker subclass) and
                                                     ``ray_trainer.NTLRayPPOTrainer`` in ``main_ppo``
``v08``     0.8.0                                    the engine (``engine.NTLFSDPEngine``) and
                                                     ``ray_trainer.NTLRayPPOTrainer`` in ``main_ppo``
``v09``     0.9.0, 0.9.1                             the engine, the v1 trainer modes (``config.NTL_SCHEDULES``)   
                                                     and, with ``trainer.use_v1=false``, ``NTLRayPPOTrainer``
==========  =======================================  =============================================================

Each line module offers ``install()`` (what importing the plug-in registers in verl),
``check_trainer_settings(config)`` (the trainer path the config selects can carry NTL; ValueError naming the setting
otherwise) and, for the engine lines, ``packed_pad_size`` / ``gather_and_unpad`` (what verl's engine appends to a
packed micro-batch and how it takes it off again).
"""

from __future__ import annotations

import functools
import importlib

from packaging.version import Version

SUPPORTED_RANGE = "verl 0.7.0 to 0.9.x"
LINES = {(0, 7): "v07", (0, 8): "v08", (0, 9): "v09"}


def line_name(version: str) -> str:
    """The module name of the release line of verl ``version``; ValueError naming the supported range."""
    release = Version(version).release
    name = LINES.get(tuple(release[:2]))
    if name is None:
        raise ValueError(f"NTL supports {SUPPORTED_RANGE}; this is verl {version}")
    return name


@functools.cache
def verl_line():
    """The adapter module of the installed verl's release line."""
    import verl

    return importlib.import_module(f"{__name__}.{line_name(verl.__version__)}")
