#!/usr/bin/env python3
"""Policy test over kiln's rendered Kubernetes manifests and its monitoring files.

    policy.py RENDERED.yaml          check the manifests (kubectl kustomize output)
    policy.py --self-test RENDERED.yaml
                                     also break copies on purpose: each must fail

What it holds the manifests to, each read from kiln's source rather than a list
kept here, so a route or a default that changes is caught:
- every probe's path is one kiln serves with GET (src/http/ops.rs routes), on a
  port kiln listens on with that scheme; liveness is /healthz, readiness /readyz;
- every container sets cpu and memory requests and limits;
- terminationGracePeriodSeconds >= kiln's drain_timeout_secs (src/config.rs
  default, or the ConfigMap's [kiln] value) + its HTTP shutdown timeout
  (src/server.rs SHUTDOWN_TIMEOUT_SECS);
- nothing privileged: no privileged: true, no host namespaces, no hostPath;
  capabilities drop ALL and add exactly the ones deploy/kubernetes/README.md
  documents in its "Privileges" table;
- a Service and a PodDisruptionBudget select the pods; the ConfigMap's
  server.toml is upstream's file (no [kiln] table); the image is kiln:<version>.
And for deploy/monitoring: every kiln_* metric the Grafana dashboard and the
Prometheus rules name is one kiln exports (src/observe/metrics.rs).
"""

import copy
import json
import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


def read(rel):
    return (ROOT / rel).read_text()


def served_get_paths():
    """GET routes of the operator endpoints, from the router's source."""
    paths = set(re.findall(r'\.route\(\s*"([^"]+)"\s*,\s*web::get\(\)', read("src/http/ops.rs")))
    if "/healthz" not in paths:
        raise SystemExit("policy: found no GET routes in src/http/ops.rs; has the router moved?")
    return paths


def drain_budget_secs(server_toml):
    """drain_timeout_secs (the ConfigMap's, else kiln's default) + the HTTP shutdown timeout."""
    default = re.search(r"drain_timeout_secs:\s*(\d+)", read("src/config.rs"))
    shutdown = re.search(r"const SHUTDOWN_TIMEOUT_SECS: u64 = (\d+);", read("src/server.rs"))
    if not default or not shutdown:
        raise SystemExit("policy: cannot find drain_timeout_secs' default or SHUTDOWN_TIMEOUT_SECS in the source")
    drain = tomllib.loads(server_toml).get("kiln", {}).get("drain_timeout_secs", int(default.group(1)))
    return drain + int(shutdown.group(1))


def documented_capabilities():
    """The capabilities in deploy/kubernetes/README.md's "Privileges" table (`| `CAP` | why |`)."""
    text = read("deploy/kubernetes/README.md")
    section = text.split("## Privileges", 1)[-1].split("\n## ", 1)[0]
    caps = set(re.findall(r"^\|\s*`(?:CAP_)?([A-Z_]+)`\s*\|", section, re.M))
    if not caps:
        raise SystemExit("policy: no capability table under '## Privileges' in deploy/kubernetes/README.md")
    return caps


def exported_metrics():
    """Every series name kiln's /metrics can carry, from src/observe/metrics.rs."""
    src = read("src/observe/metrics.rs")
    names = set()
    for kind, name in re.findall(r'\b(gauge|counter|labelled|labelled_counter)\(\s*&mut r,\s*"([a-z0-9_]+)"', src):
        names.add(f"kiln_{name}_total" if kind in ("counter", "labelled_counter") else f"kiln_{name}")
    for name in re.findall(r'register_with_unit\(\s*"([a-z0-9_]+)",[^;]*?Unit::Seconds', src, re.S):
        names.update(f"kiln_{name}_seconds_{part}" for part in ("bucket", "sum", "count"))
    if re.search(r'register\(\s*"build",', src):
        names.add("kiln_build_info")
    if len(names) < 30:
        raise SystemExit(f"policy: read only {len(names)} metric names from src/observe/metrics.rs; has it changed shape?")
    return names


def container_ports(container):
    return {p.get("name"): p["containerPort"] for p in container.get("ports", [])}


def check_manifests(docs):
    failures = []
    fail = failures.append
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    workloads = by_kind.get("Deployment", []) + by_kind.get("DaemonSet", [])
    if len(workloads) != 1:
        fail(f"expected one Deployment or DaemonSet, found {len(workloads)}")
        return failures
    workload = workloads[0]
    pod = workload["spec"]["template"]["spec"]
    pod_labels = workload["spec"]["template"]["metadata"].get("labels", {})
    served = served_get_paths()
    caps_documented = documented_capabilities()
    version = re.search(r'^version = "([^"]+)"', read("Cargo.toml"), re.M).group(1)

    configmaps = by_kind.get("ConfigMap", [])
    server_toml = next((cm["data"]["server.toml"] for cm in configmaps if "server.toml" in cm.get("data", {})), None)
    if server_toml is None:
        fail("no ConfigMap carries server.toml")
        server_toml = ""
    elif "kiln" in tomllib.loads(server_toml):
        fail("the ConfigMap's server.toml has a [kiln] table: it must stay upstream's file (use kiln serve --set)")

    grace = pod.get("terminationGracePeriodSeconds", 30)
    budget = drain_budget_secs(server_toml)
    if grace < budget:
        fail(f"terminationGracePeriodSeconds {grace} < drain_timeout_secs + shutdown timeout = {budget}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            fail(f"pod sets {key}")
    for volume in pod.get("volumes", []):
        if "hostPath" in volume:
            fail(f"volume {volume['name']} is a hostPath")
    if (pod.get("securityContext") or {}).get("privileged"):
        fail("pod securityContext is privileged")

    for c in pod.get("containers", []) + pod.get("initContainers", []):
        name = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            fail(f"{name}: privileged: true")
        caps = sc.get("capabilities") or {}
        if [d.upper().removeprefix("CAP_") for d in caps.get("drop", [])] != ["ALL"]:
            fail(f"{name}: capabilities.drop must be exactly [ALL], is {caps.get('drop')}")
        added = {a.upper().removeprefix("CAP_") for a in caps.get("add", [])}
        if added != caps_documented:
            fail(f"{name}: capabilities.add {sorted(added)} != documented {sorted(caps_documented)}")
        # RuntimeDefault has no pivot_root(2), which bubblewrap needs: Unconfined,
        # documented, or a Localhost profile the operator made.
        if (sc.get("seccompProfile") or {}).get("type") not in ("Unconfined", "Localhost"):
            fail(f"{name}: seccompProfile must be Unconfined (documented) or a Localhost profile")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (res.get(kind) or {}):
                    fail(f"{name}: resources.{kind}.{resource} not set")
        if name != "kiln":
            continue
        image = c.get("image", "")
        if image != f"kiln:{version}":
            fail(f"{name}: image {image!r} is not kiln:{version} (Cargo.toml's version)")
        ports = container_ports(c)
        args = " ".join(c.get("args", []))
        ops_port = re.search(r"kiln\.metrics_listen=[^ ]*:(\d+)", args)
        build_port = 10501
        m = re.search(r"public_addr=[^ ]*:(\d+)", args)
        if m:
            build_port = int(m.group(1))
        for probe_kind, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            probe = c.get(probe_kind)
            if not probe or "httpGet" not in probe:
                fail(f"{name}: no {probe_kind} with httpGet")
                continue
            get = probe["httpGet"]
            path, port = get.get("path"), get.get("port")
            port = ports.get(port, port)
            if path not in served:
                fail(f"{name}: {probe_kind} path {path!r} is not served by kiln (GET routes: {sorted(served)})")
            if path != want:
                fail(f"{name}: {probe_kind} should probe {want}, probes {path!r}")
            scheme = get.get("scheme", "HTTP")
            plain = ops_port and port == int(ops_port.group(1)) and scheme == "HTTP"
            tls = port == build_port and scheme == "HTTPS"
            if not (plain or tls):
                fail(f"{name}: {probe_kind} {scheme} port {port} is neither kiln.metrics_listen (HTTP) nor public_addr (HTTPS)")

    selects = lambda sel: sel and all(pod_labels.get(k) == v for k, v in sel.items())
    if not any(selects(s["spec"].get("selector")) for s in by_kind.get("Service", [])):
        fail("no Service selects the kiln pods")
    if not any(selects(p["spec"].get("selector", {}).get("matchLabels")) for p in by_kind.get("PodDisruptionBudget", [])):
        fail("no PodDisruptionBudget selects the kiln pods")
    return failures


def promql_metrics(expr):
    return set(re.findall(r"\bkiln_[a-z0-9_]+", expr))


def check_monitoring():
    failures = []
    exported = exported_metrics()
    dashboard = json.loads(read("deploy/monitoring/kiln-dashboard.json"))
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(("dashboard", node["expr"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    rules = yaml.safe_load(read("deploy/monitoring/kiln-alerts.yaml"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            exprs.append((f"alert {rule.get('alert', rule.get('record'))}", rule["expr"]))
    if len(exprs) < 5:
        failures.append(f"only {len(exprs)} expressions found in the dashboard and rules")
    for where, expr in exprs:
        for name in sorted(promql_metrics(expr) - exported):
            failures.append(f"{where}: {name} is not a metric kiln exports")
    return failures, exprs


def self_test(docs):
    """Broken copies, each of which the policy must refuse."""

    def kiln_container(ds):
        workload = next(d for d in ds if d["kind"] in ("Deployment", "DaemonSet"))
        return workload["spec"]["template"]["spec"], workload["spec"]["template"]["spec"]["containers"][0]

    def privileged(ds):
        kiln_container(ds)[1]["securityContext"]["privileged"] = True

    def wrong_probe(ds):
        kiln_container(ds)[1]["readinessProbe"]["httpGet"]["path"] = "/ready"

    def short_grace(ds):
        kiln_container(ds)[0]["terminationGracePeriodSeconds"] = 30

    def no_limits(ds):
        del kiln_container(ds)[1]["resources"]["limits"]

    def extra_cap(ds):
        kiln_container(ds)[1]["securityContext"]["capabilities"]["add"].append("NET_ADMIN")

    def host_path(ds):
        kiln_container(ds)[0]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})

    def no_pdb(ds):
        ds[:] = [d for d in ds if d["kind"] != "PodDisruptionBudget"]

    broken = 0
    for breakage in (privileged, wrong_probe, short_grace, no_limits, extra_cap, host_path, no_pdb):
        copy_ = copy.deepcopy(docs)
        breakage(copy_)
        if not check_manifests(copy_):
            print(f"self-test: the policy accepted a broken copy ({breakage.__name__})", file=sys.stderr)
            broken += 1
    if promql_metrics('rate(kiln_no_such_metric_total[5m])') - exported_metrics() != {"kiln_no_such_metric_total"}:
        print("self-test: an unknown metric name was not caught", file=sys.stderr)
        broken += 1
    return broken


def main(argv):
    run_self_test = "--self-test" in argv
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        raise SystemExit(__doc__)
    docs = [d for d in yaml.safe_load_all(pathlib.Path(paths[0]).read_text()) if d]
    failures = check_manifests(docs)
    monitoring_failures, exprs = check_monitoring()
    failures += monitoring_failures
    for f in failures:
        print(f"policy: {f}", file=sys.stderr)
    if run_self_test and self_test(docs):
        return 1
    if failures:
        return 1
    print(f"policy: {len(docs)} manifests and {len(exprs)} monitoring expressions pass"
          + (" (self-test: 8 broken copies refused)" if run_self_test else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
