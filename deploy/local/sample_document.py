"""Draw the demo document: a two-page invoice-like PDF with headings, prose and a table."""

from __future__ import annotations

import sys
from pathlib import Path

import pymupdf

PAGES = [
    (
        "Quarterly Shipping Report",
        [
            "Northwind Logistics moved 48,200 parcels in the third quarter.",
            "Average delivery time fell from 3.4 days to 2.9 days.",
            "Damaged goods claims dropped by twelve percent.",
            "The Rotterdam hub opened its second sorting line in August.",
        ],
        [("Region", "Parcels", "On time"), ("North", "18,400", "96%"),
         ("South", "15,100", "94%"), ("West", "14,700", "97%")],
    ),
    (
        "Outlook for the Fourth Quarter",
        [
            "Holiday volume is expected to reach 70,000 parcels.",
            "Two additional vans will serve the city centre routes.",
            "Customers can now track every parcel by text message.",
        ],
        [("Month", "Forecast"), ("October", "19,000"), ("November", "23,000"),
         ("December", "28,000")],
    ),
]


def draw(path: Path) -> Path:
    document = pymupdf.open()
    for title, lines, table in PAGES:
        page = document.new_page(width=595, height=842)
        page.insert_text((72, 90), title, fontsize=22, fontname="hebo")
        y = 140.0
        for line in lines:
            page.insert_text((72, y), line, fontsize=13, fontname="helv")
            y += 26
        y += 20
        for row in table:
            x = 72.0
            for cell in row:
                page.insert_text((x, y), cell, fontsize=13, fontname="helv")
                x += 150
            y += 24
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(path)
    document.close()
    return path


if __name__ == "__main__":
    print(draw(Path(sys.argv[1] if len(sys.argv) > 1 else ".run/demo/report.pdf")))
