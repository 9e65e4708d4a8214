"""The Terrafuse dock, one module per section; :class:`TerrafuseDock` composes them."""

from .dock import TerrafuseDock
from .results import describe_device, info_html, inspect_html, metrics_html, segment_html
from .task_section import run_folder

__all__ = ["TerrafuseDock", "describe_device", "info_html", "inspect_html", "metrics_html", "run_folder",
           "segment_html"]
