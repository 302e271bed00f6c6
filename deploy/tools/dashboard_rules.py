#!/usr/bin/env python3
"""Writes every PromQL expression of a Grafana dashboard as a Prometheus
recording rule, so `promtool check rules` parses them all.

Grafana's template variables are replaced first: $__rate_interval and
$__range by durations, $instance-like variables (used in =~ matchers) by
".*", $max_batch by a number. Variable queries written as
label_values(SELECTOR, label) contribute their SELECTOR.

usage: dashboard_rules.py DASHBOARD.json > rules.yaml
"""
import json
import re
import sys

DURATIONS = {"__rate_interval": "5m", "__interval": "1m", "__range": "6h"}
NUMBERS = {"max_batch": "10000"}


def substitute(expr):
    def repl(m):
        name = m.group(1) or m.group(2)
        if name in DURATIONS:
            return DURATIONS[name]
        if name in NUMBERS:
            return NUMBERS[name]
        return ".*"

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def expressions(dashboard):
    """(where, expr) for every target of every panel, rows included."""

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    yield f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(dashboard.get("panels", []))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        query = v.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query or "")
        if m:
            yield f"variable {v['name']}", m.group(1)
        elif query:
            yield f"variable {v['name']}", query


def main():
    with open(sys.argv[1]) as f:
        dashboard = json.load(f)
    out = ["groups:", "  - name: dashboard-expressions", "    rules:"]
    count = 0
    for where, expr in expressions(dashboard):
        count += 1
        out.append(f"      # {where}")
        out.append(f"      - record: dashboard:expr_{count}")
        out.append(f"        expr: {json.dumps(substitute(expr))}")
    if count == 0:
        sys.exit("no expressions found in the dashboard")
    print("\n".join(out))
    print(f"{count} dashboard expressions", file=sys.stderr)


if __name__ == "__main__":
    main()
