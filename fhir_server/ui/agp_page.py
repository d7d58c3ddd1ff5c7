"""The AGP report of a patient and period in three forms: an HTML page (metrics panel as a
table, charts as SVG), a one-page PDF and a PNG of that page."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.clinical import agp_draw
from fhir_server.clinical.agp import Agp, build_agp
from fhir_server.clinical.agp_text import TEXT, flags_text, panel_rows
from fhir_server.clinical.metrics import CgmMetrics
from fhir_server.ui.pages import render, svg_data

FORMATS = {"html": "text/html", "pdf": "application/pdf", "png": "image/png"}
PNG_DPI = 110


@dataclass(frozen=True)
class AgpReport:
    agp: Agp
    patient_name: str
    lang: str
    unit: str

    @classmethod
    def of(cls, metrics: CgmMetrics, patient_name: str, lang: str, unit: str) -> AgpReport:
        return cls(build_agp(metrics), patient_name, lang, unit)

    def html(self, links: dict[str, str]) -> str:
        a, lang, unit = self.agp, self.lang, self.unit
        t = TEXT[lang]
        return render(
            "agp.html",
            lang=lang,
            title=f"{t['title']} - {self.patient_name}",
            t=t,
            patient_name=self.patient_name,
            warning=flags_text(a.metrics, lang),
            rows=panel_rows(a.metrics, lang, unit),
            tir_svg=svg_data(agp_draw.render(agp_draw.tir_figure(a, lang, unit), "svg")),
            modal_svg=svg_data(agp_draw.render(agp_draw.modal_figure(a, lang, unit), "svg")),
            daily_svg=svg_data(agp_draw.render(agp_draw.daily_figure(a, lang, unit), "svg")),
            **links,
        )

    def page(self, fmt: str) -> bytes:
        """The one-page report as "pdf" or "png"."""
        figure = agp_draw.page_figure(self.agp, self.lang, self.unit, self.patient_name)
        return agp_draw.render(figure, fmt, dpi=PNG_DPI)

    def pdf_title(self) -> str:
        """`lang|title` for the DiagnosticReport's presentedForm."""
        return f"{self.lang}|{TEXT[self.lang]['title']}"

