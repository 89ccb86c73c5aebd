"""What a report shows of itself on a microscope site (``featviz report ... --site``).

Each report module may define ``site_entry(results: dict) -> SiteEntry``: the name of its
page under the model, a one-line summary for the model page's list of reports, and columns
it adds to the model page's layer table (e.g. transfer: the probe accuracy of each layer).
The microscope shows whatever the entry says and knows nothing of any report's results.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# The report modules of featviz.reports (a new report adds its name here and a ``site_entry``).
REPORT_MODULES = ("logits", "causes", "transfer", "finetune")


@dataclass(frozen=True)
class SiteEntry:
    """name: the report's folder under ``<model>/_reports/`` (one per report kind, or per subject:
    ``causes-blocks.8-12``). summary: one line beside its link. columns: headers of the columns it
    adds to the layer table, the first linked to the report with ``column_help`` as its tooltip.
    cells: layer name -> one text per column (layers it did not measure stay empty)."""

    name: str
    summary: str = ""
    columns: tuple[str, ...] = ()
    column_help: str = ""
    cells: dict[str, list[str]] = field(default_factory=dict)

    def panel_info(self, title: str) -> dict:
        """What the site's manifest records of the report (plain data)."""
        return {"title": title, "summary": self.summary, "columns": list(self.columns),
                "column_help": self.column_help, "cells": {k: list(v) for k, v in self.cells.items()}}


def site_entry(results: dict) -> SiteEntry:
    """The entry of a finished report from its ``results.json`` data (a report without its own
    ``site_entry``, or one featviz does not know, gets a plain link)."""
    name = results["report"]
    if name in REPORT_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        describe = getattr(module, "site_entry", None)
        if describe is not None:
            return describe(results)
    return SiteEntry(name=str(name))
