"""Data modules for the data sets qlit ships and for the user's own tables and price files."""

from qlit.data.base import KFoldDataModule
from qlit.data.equity import EquityDataModule
from qlit.data.iris import IrisDataModule
from qlit.data.plink import PlinkDataModule
from qlit.data.snp import SNPDataModule
from qlit.data.tables import read_table
from qlit.data.tabular import TabularDataModule

__all__ = [
    "EquityDataModule",
    "IrisDataModule",
    "KFoldDataModule",
    "PlinkDataModule",
    "SNPDataModule",
    "TabularDataModule",
    "read_table",
]
