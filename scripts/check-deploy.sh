#!/usr/bin/env bash
# Checks deploy/ the way CI can without a Kubernetes cluster:
#   - `kubectl kustomize deploy/kubernetes` renders (the YAML parses and
#     composes);
#   - monitoring.yaml's PrometheusRule holds exactly deploy/alerts.yml's
#     groups;
#   - the config file inside every Kubernetes manifest's ConfigMap passes
#     `ferry check-config`.
# Usage: scripts/check-deploy.sh [path/to/ferry]   Needs: kubectl, python3-yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${1:-target/debug/ferry}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

kubectl kustomize deploy/kubernetes > "$WORK/rendered.yaml"
echo "check-deploy: kustomize renders $(grep -c '^kind:' "$WORK/rendered.yaml") objects"

python3 - "$WORK" <<'PY'
import sys, yaml
work = sys.argv[1]
alerts = yaml.safe_load(open("deploy/alerts.yml"))["groups"]
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes/monitoring.yaml")) if d]
rule = next(d for d in docs if d["kind"] == "PrometheusRule")
if rule["spec"]["groups"] != alerts:
    sys.exit("check-deploy: monitoring.yaml's PrometheusRule differs from deploy/alerts.yml")
print(f"check-deploy: PrometheusRule = deploy/alerts.yml ({sum(len(g['rules']) for g in alerts)} rules)")
import glob
n = 0
for f in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if d and d.get("kind") == "ConfigMap" and "config.json" in d.get("data", {}):
            n += 1
            open(f"{work}/config-{n}.json", "w").write(d["data"]["config.json"])
            open(f"{work}/config-{n}.from", "w").write(f)
print(f"check-deploy: {n} configs in ConfigMaps")
PY
for c in "$WORK"/config-*.json; do
    FERRY_CLUSTER_SECRET=check-deploy-secret-0123456789 "$FERRY" check-config "$c" > /dev/null \
        || { echo "check-deploy: the config in $(cat "${c%.json}.from") is refused"; exit 1; }
done
echo "check-deploy: ok"
