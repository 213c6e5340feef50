"""Deprecated location of the disk tier: it lives in :mod:`kvtier.tiers.disk` (the tier and its protocol)
with :mod:`kvtier.tiers.disk_io` (its LMDB I/O) and
:mod:`kvtier.tiers.disk_folder` (the folder). Kept so that older imports work."""

from __future__ import annotations

from kvtier.tiers.disk import DiskTier, RestoreReport
from kvtier.tiers.disk_folder import FORMAT

DiskFolder = DiskTier

__all__ = ["DiskFolder", "DiskTier", "FORMAT", "RestoreReport"]
