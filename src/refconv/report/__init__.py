"""Reports: one document model rendered to Markdown and to a self-contained HTML page.

Both renderings come from the same blocks, so a number can never differ between ``report.md`` and
``report.html``; the numbers themselves come from the run's ``results.json``.
"""

from .document import Bullets, Code, Document, Image, Markdown, Section, Table, Text
from .plots import plot_curves

__all__ = ["Document", "Section", "Table", "Text", "Bullets", "Markdown", "Image", "Code", "plot_curves"]
