#!/usr/bin/env python3
"""Writes dashboards/anthropic-keys-exporter.gallery.json, the dashboard as grafana.com's gallery imports it,
from the one dashboard file dashboards/anthropic-keys-exporter.json.

The gallery's import asks for a data source through `__inputs` instead of a data source variable, and
lists what the dashboard needs in `__requires` (Grafana, the Prometheus data source, every panel type).
So the `datasource` variable is removed, every `${datasource}` becomes `${DS_PROMETHEUS}`, and `id` is null.

Usage: dashboards/generate-gallery-dashboard.py           regenerate the file
       dashboards/generate-gallery-dashboard.py --check   exit 1 if the file is not up to date

Needs nothing but Python 3.
"""

import copy
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "dashboards", "anthropic-keys-exporter.json")
OUTPUT = os.path.join(ROOT, "dashboards", "anthropic-keys-exporter.gallery.json")
INPUT = "DS_PROMETHEUS"
# schemaVersion 39 dashboards need Grafana 10.4 or later.
GRAFANA_VERSION = "10.4.0"
# Display names of the panel plugins, as Grafana writes them into `__requires`. A panel type missing here
# stops the script: add it rather than publish an incomplete list.
PANEL_NAMES = {
    "bargauge": "Bar gauge",
    "gauge": "Gauge",
    "piechart": "Pie chart",
    "stat": "Stat",
    "state-timeline": "State timeline",
    "table": "Table",
    "text": "Text",
    "timeseries": "Time series",
}


def panels(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def render(dashboard):
    dashboard = copy.deepcopy(dashboard)
    variables = dashboard["templating"]["list"]
    sources = [v for v in variables if v.get("type") == "datasource"]
    if [v.get("name") for v in sources] != ["datasource"] or sources[0].get("query") != "prometheus":
        raise SystemExit("generate-gallery-dashboard.py: expected exactly one Prometheus data source variable "
                         "named datasource")
    dashboard["templating"]["list"] = [v for v in variables if v.get("type") != "datasource"]
    text = json.dumps(dashboard, ensure_ascii=False)
    text = text.replace("${datasource}", "${" + INPUT + "}")
    if "$datasource" in text or "[[datasource]]" in text:
        raise SystemExit("generate-gallery-dashboard.py: use ${datasource} for the data source, no other form")
    dashboard = json.loads(text)
    dashboard["id"] = None

    types = sorted({p["type"] for p in panels(dashboard) if p.get("type") != "row"})
    unknown = [t for t in types if t not in PANEL_NAMES]
    if unknown:
        raise SystemExit(f"generate-gallery-dashboard.py: add the display name of panel type(s) {unknown}")
    gallery = {
        "__inputs": [{
            "name": INPUT,
            "label": "Prometheus",
            "description": "The Prometheus that scrapes anthropic-keys-exporter",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }],
        "__elements": {},
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ] + [{"type": "panel", "id": t, "name": PANEL_NAMES[t], "version": ""} for t in types],
    }
    gallery.update(dashboard)
    return json.dumps(gallery, indent=2, ensure_ascii=False) + "\n"


def main(args):
    if args not in ([], ["--check"]):
        print("usage: dashboards/generate-gallery-dashboard.py [--check]", file=sys.stderr)
        return 2
    with open(SOURCE, encoding="utf-8") as f:
        rendered = render(json.load(f))
    if args == ["--check"]:
        try:
            with open(OUTPUT, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != rendered:
            print(f"generate-gallery-dashboard.py: {os.path.relpath(OUTPUT, ROOT)} is out of date; run "
                  "dashboards/generate-gallery-dashboard.py", file=sys.stderr)
            return 1
        return 0
    with open(OUTPUT, "w", encoding="utf-8") as f:
        f.write(rendered)
    print(f"wrote {os.path.relpath(OUTPUT, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
