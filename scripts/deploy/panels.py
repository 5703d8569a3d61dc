#!/usr/bin/env python3
"""Runs a Grafana dashboard's Prometheus queries against a real Prometheus.

  panels.py check  --dashboard D.json --prometheus URL [--var NAME=VALUE]...
      Every query of every panel (read from the JSON, so a new panel is checked with no change
      here) must return at least one series at the present time; exits 1 naming those that
      return nothing or fail.
  panels.py render --dashboard D.json --prometheus URL --out PNG --start UNIX --end UNIX
      Draws each panel's queries over [start, end] in the dashboard's own grid layout, with
      matplotlib: a picture of the dashboard's data where Grafana itself cannot be run.

Dashboard variables are replaced as Grafana would: $__rate_interval by --var
__rate_interval=... (default 1m), others by --var NAME=VALUE (default: the variable's allValue,
else .+).
"""
import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def panels_of(dashboard):
    """Every non-row panel, rows' nested panels included, in dashboard order."""
    out = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def variables(dashboard, overrides):
    values = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "datasource":
            values[v["name"]] = v.get("allValue") or ".+"
    values.update(overrides)
    return values


def substitute(expr, values):
    def one(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise SystemExit(f"expression uses ${name}, which has no value: {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def api(base, path, params):
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    return body["data"]["result"], None


def check(args, dashboard, values):
    failures, rows = [], []
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], values)
            result, error = api(args.prometheus, "/api/v1/query", {"query": expr})
            series = len(result or [])
            rows.append((panel["title"], target.get("refId", "?"), series, error or ""))
            if error or series == 0:
                failures.append(f"{panel['title']} [{target.get('refId')}]: "
                                f"{error or 'no data'}\n    {expr}")
    width = max(len(r[0]) for r in rows)
    for title, ref, series, error in rows:
        print(f"  {title:<{width}}  {ref}  {series:>3} series  {error}")
    if failures:
        print(f"{len(failures)} of {len(rows)} panel queries returned no data:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    print(f"all {len(rows)} queries of {len(panels_of(dashboard))} panels returned data")
    return 0


def legend(fmt, metric):
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt or "")
    return text.strip() or ",".join(f"{k}={v}" for k, v in metric.items()) or "value"


def render(args, dashboard, values):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from datetime import datetime, timezone

    items = dashboard.get("panels", [])
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in items)
    fig = plt.figure(figsize=(24, height * 0.62), dpi=args.dpi)
    grid = fig.add_gridspec(height, 24, hspace=0.0, wspace=0.0,
                            top=0.97, bottom=0.01, left=0.02, right=0.99)
    fig.suptitle(f"{dashboard['title']}: the dashboard's queries against a real Prometheus "
                 f"(rendered by scripts/deploy/panels.py, not by Grafana)", fontsize=15, y=0.995)
    step = max(1, int((args.end - args.start) / 300))
    for p in items:
        g = p["gridPos"]
        if p.get("type") == "row":
            ax = fig.add_subplot(grid[g["y"]:g["y"] + 1, :])
            ax.axis("off")
            ax.text(0.0, 0.2, p["title"], fontsize=14, fontweight="bold", transform=ax.transAxes)
            continue
        # Leave a margin inside each cell of the grid for titles and tick labels.
        ax = fig.add_subplot(grid[g["y"] + 1:g["y"] + g["h"] - 1, g["x"] + 1:g["x"] + g["w"] - 1])
        ax.set_title(p["title"], fontsize=11, loc="left")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        last = None
        for target in p.get("targets", []):
            expr = substitute(target["expr"], values)
            result, error = api(args.prometheus, "/api/v1/query_range",
                                {"query": expr, "start": args.start, "end": args.end, "step": step})
            if error:
                ax.text(0.5, 0.5, error, ha="center", transform=ax.transAxes, fontsize=8)
                continue
            for s in result:
                xs = [datetime.fromtimestamp(float(t), tz=timezone.utc) for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=legend(target.get("legendFormat"), s["metric"]))
                if ys:
                    last = ys[-1]
        if p["type"] == "stat" and last is not None:
            shown = f"{last:.1%}" if unit == "percentunit" else f"{last:g}"
            ax.text(0.98, 0.9, shown, ha="right", va="top", fontsize=20, fontweight="bold",
                    transform=ax.transAxes)
        elif ax.lines:
            ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.6)
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=max(3, g["w"] // 2)))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.tick_params(labelsize=7)
        if unit:
            ax.set_ylabel(unit, fontsize=8)
        ax.grid(alpha=0.3)
    fig.savefig(args.out, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check", "render"])
    parser.add_argument("--dashboard", required=True)
    parser.add_argument("--prometheus", required=True, help="e.g. http://127.0.0.1:9091")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out")
    parser.add_argument("--start", type=float)
    parser.add_argument("--end", type=float)
    parser.add_argument("--dpi", type=int, default=60)
    args = parser.parse_args()
    dashboard = load(args.dashboard)
    values = variables(dashboard, dict(v.split("=", 1) for v in args.var))
    if args.command == "check":
        return check(args, dashboard, values)
    if not (args.out and args.start and args.end):
        parser.error("render needs --out, --start and --end")
    return render(args, dashboard, values)


if __name__ == "__main__":
    sys.exit(main())
