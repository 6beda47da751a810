"""Data modules for the data sets qlit ships."""

from qlit.data.base import KFoldDataModule
from qlit.data.iris import IrisDataModule
from qlit.data.snp import SNPDataModule

__all__ = ["IrisDataModule", "KFoldDataModule", "SNPDataModule"]
