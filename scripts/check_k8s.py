"""Offline check of deploy/k8s: every manifest against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields are errors), the kustomization's resources
exist and are each validated, and the operational facts issue 5 asks for hold (two beat
replicas, probes on /readyz and /healthz, a grace period above --shutdown-grace, the Redis
URL from a Secret, schedules mounted read-only from a ConfigMap).

Usage: python scripts/check_k8s.py [deploy/k8s]; exit 0 when everything holds, 1 otherwise
with one line per problem.
"""

import pathlib
import re
import sys

import kubernetes_validate
import yaml

problems = []


def fail(msg):
    problems.append(msg)


def seconds(text):
    m = re.fullmatch(r"(\d+)s", text)
    return int(m.group(1)) if m else None


def check_deployment(path, doc, component):
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c.get("env", [])}
    url = env.get("BEATD_REDIS_URL", {})
    if "secretKeyRef" not in url.get("valueFrom", {}):
        fail(f"{path}: BEATD_REDIS_URL must come from a Secret (secretKeyRef)")
    grace = seconds(env.get("BEATD_SHUTDOWN_GRACE", {}).get("value", "30s"))
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if grace is None or tgps <= grace:
        fail(f"{path}: terminationGracePeriodSeconds {tgps} must exceed --shutdown-grace {grace}s")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        fail(f"{path}: readinessProbe must GET /readyz")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        fail(f"{path}: livenessProbe must GET /healthz")
    if "requests" not in c.get("resources", {}):
        fail(f"{path}: container has no resource requests")
    if c.get("args", [None])[0] != component:
        fail(f"{path}: container args must start with {component!r}")
    if component == "beat":
        if spec.get("replicas") != 2:
            fail(f"{path}: the beat runs 2 replicas (leader election)")
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        cm = [n for n, v in vols.items() if "configMap" in v]
        if not cm or not mounts.get(cm[0], {}).get("readOnly"):
            fail(f"{path}: schedules must be a ConfigMap volume mounted readOnly")
        elif "subPath" in mounts[cm[0]]:
            # kubelet never updates subPath mounts: edits would not reach beatd's reload.
            fail(f"{path}: the schedules ConfigMap must be mounted whole, not with subPath")


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/k8s")
    kust = yaml.safe_load((root / "kustomization.yaml").read_text())
    listed = kust.get("resources", [])
    on_disk = sorted(p.name for p in root.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in listed:
        if not (root / name).is_file():
            fail(f"{root}/kustomization.yaml: resource {name} does not exist")
    for name in on_disk:
        if name not in listed:
            fail(f"{root}/kustomization.yaml: {name} is not listed in resources")
    kinds = {}
    for name in on_disk:
        path = root / name
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{path}: {doc.get('kind')}/{doc['metadata'].get('name')}: {e.message} at {list(e.path)}")
            except Exception as e:  # an unknown kind or version is a problem too
                fail(f"{path}: {type(e).__name__}: {e}")
            kinds.setdefault(doc["kind"], []).append((path, doc))
    for kind in ["Deployment", "ConfigMap", "PodDisruptionBudget", "Service", "Secret"]:
        if kind not in kinds:
            fail(f"{root}: no {kind}")
    for path, doc in kinds.get("Deployment", []):
        component = doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        check_deployment(path, doc, component)
    if {d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") for _, d in kinds.get("Deployment", [])} != {"beat", "worker"}:
        fail(f"{root}: expected a beat and a worker Deployment")
    for p in problems:
        print(p)
    if not problems:
        print(f"ok: {len(on_disk)} manifests in {root} valid against Kubernetes {kubernetes_validate.latest_version()}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
