#!/usr/bin/env bash
# Checks deploy/ the way CI can without a Kubernetes cluster:
#   - `kubectl kustomize` renders each shape: deploy/kubernetes (one
#     StatefulSet), deploy/kubernetes/cluster and deploy/kubernetes/node,
#     each with monitoring/;
#   - the shapes share no Service name and no pod label, and the
#     ServiceMonitor selects exactly one Service of each;
#   - monitoring.yaml's PrometheusRule holds exactly deploy/alerts.yml's
#     groups;
#   - the config file inside every Kubernetes manifest's ConfigMap passes
#     `ferry check-config`;
#   - the DaemonSet's init container (`ferry configure containerd`) runs
#     as written against that ConfigMap, into a scratch hosts directory.
# Usage: scripts/check-deploy.sh [path/to/ferry]   Needs: kubectl, python3-yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY=${1:-target/debug/ferry}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for shape in "" cluster node; do
    kubectl kustomize "deploy/kubernetes/$shape" > "$WORK/rendered-${shape:-single}.yaml"
    echo "check-deploy: kustomize renders deploy/kubernetes/$shape: $(grep -c '^kind:' "$WORK/rendered-${shape:-single}.yaml") objects"
done

python3 - "$WORK" <<'PY'
import glob, json, sys, yaml
work = sys.argv[1]
alerts = yaml.safe_load(open("deploy/alerts.yml"))["groups"]
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes/monitoring/monitoring.yaml")) if d]
rule = next(d for d in docs if d["kind"] == "PrometheusRule")
if rule["spec"]["groups"] != alerts:
    sys.exit("check-deploy: monitoring.yaml's PrometheusRule differs from deploy/alerts.yml")
print(f"check-deploy: PrometheusRule = deploy/alerts.yml ({sum(len(g['rules']) for g in alerts)} rules)")
monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")["spec"]["selector"]["matchLabels"]

services, pod_labels = {}, {}
for shape in ["single", "cluster", "node"]:
    objs = [d for d in yaml.safe_load_all(open(f"{work}/rendered-{shape}.yaml")) if d]
    svcs = [o for o in objs if o["kind"] == "Service"]
    scraped = [s["metadata"]["name"] for s in svcs
               if monitor.items() <= (s["metadata"].get("labels") or {}).items()]
    if len(scraped) != 1:
        sys.exit(f"check-deploy: the ServiceMonitor selects {scraped} in shape {shape}, not one Service")
    for s in svcs:
        services.setdefault(s["metadata"]["name"], set()).add(shape)
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            name = o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
            pod_labels.setdefault(name, set()).add(shape)
    print(f"check-deploy: {shape}: the ServiceMonitor scrapes Service {scraped[0]}")
shared = {k: v for k, v in {**services, **pod_labels}.items() if len(v) > 1}
if shared:
    sys.exit(f"check-deploy: shapes share Service names or pod labels: {shared}")

n = 0
for f in sorted(glob.glob("deploy/kubernetes/**/*.yaml", recursive=True)):
    for d in yaml.safe_load_all(open(f)):
        if d and d.get("kind") == "ConfigMap" and "config.json" in d.get("data", {}):
            n += 1
            open(f"{work}/config-{n}.json", "w").write(d["data"]["config.json"])
            open(f"{work}/config-{n}.from", "w").write(f)
        if d and d.get("kind") == "DaemonSet":
            for c in d["spec"]["template"]["spec"].get("initContainers", []):
                json.dump(c["args"], open(f"{work}/init-args.json", "w"))
                json.dump(c.get("env", []), open(f"{work}/init-env.json", "w"))
print(f"check-deploy: {n} configs in ConfigMaps")
PY
for c in "$WORK"/config-*.json; do
    FERRY_CLUSTER_SECRET=check-deploy-secret-0123456789 "$FERRY" check-config "$c" > /dev/null \
        || { echo "check-deploy: the config in $(cat "${c%.json}.from") is refused"; exit 1; }
done

# The init container's command line, with the node's paths moved into
# $WORK: the ConfigMap's config, a scratch certs.d, and a containerd
# config that reads it.
node_config=$(grep -l daemonset "$WORK"/config-*.from | head -n 1)
mapfile -t args < <(python3 -c '
import json, sys
for a in json.load(open(sys.argv[1])):
    print(a)' "$WORK/init-args.json")
printf 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "%s"\n' "$WORK/certs.d" > "$WORK/containerd.toml"
args=("${args[@]/--config=\/etc\/ferry\/config.json/--config=${node_config%.from}.json}")
args=("${args[@]/--hosts-dir=\/etc\/containerd\/certs.d/--hosts-dir=$WORK/certs.d}")
args=("${args[@]/--containerd-config=\/etc\/containerd\/config.toml/--containerd-config=$WORK/containerd.toml}")
# Its environment as the manifest gives it (the Secret's value made up).
init_env=$(python3 -c '
import json, sys
print(" ".join(e["name"] + "=check-deploy-secret-0123456789" for e in json.load(open(sys.argv[1]))))' "$WORK/init-env.json")
# shellcheck disable=SC2086
env -i PATH="$PATH" $init_env "$FERRY" "${args[@]}" > "$WORK/init.out" \
    || { echo "check-deploy: the DaemonSet's init container fails: $(cat "$WORK/init.out")"; exit 1; }
[ -f "$WORK/certs.d/docker.io/hosts.toml" ] || { echo "check-deploy: the init container wrote no docker.io/hosts.toml"; exit 1; }
echo "check-deploy: the DaemonSet's init container: $(grep -c '^created' "$WORK/init.out") hosts.toml written, containerd's config_path checked"
echo "check-deploy: ok"
