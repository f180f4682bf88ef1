#!/usr/bin/env python3
"""Structural checks of deploy/: what no schema checker here can see.

- Grafana dashboard and alert rules: every PromQL expression names only
  metrics that src/http.rs exports (and at least one); every dashboard
  expression parses (promtool check rules on a generated rules file).
- Kubernetes manifests: kinds, the Deployment's replicas, image, args,
  probes on /healthz at the container port the config listens on, the
  config mount at the path `--config` names, every ${VAR} of the config
  provided by the container's env, Secret references matching the example
  Secret, resource requests, the Service's port, the kustomization's files.
- Compose: the services, files mounted exist, Prometheus scrapes pgbridge
  at the port its config listens on, every ${VAR} of the config given to
  the pgbridge service.

Exit status 1 with one line per problem.  Usage: scripts/check-deploy.py
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
problems = []


def problem(msg):
    problems.append(msg)


def path(*p):
    return os.path.join(ROOT, *p)


def load_yaml_docs(p):
    with open(p) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# --- metrics ------------------------------------------------------------------

def exported_metrics():
    """The metric names src/http.rs writes (string literals pgbridge_*)."""
    with open(path("src", "http.rs")) as f:
        src = f.read()
    names = set(re.findall(r'"(pgbridge_[a-z0-9_]+)"', src))
    if len(names) < 10:
        problem(f"src/http.rs: found only {sorted(names)}; has the metric code moved?")
    return names


PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and",
    "or", "unless", "bool", "offset", "inf", "nan", "atan2",
    # aggregation operators (may precede their `by (...)` clause)
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}


def metric_names(expr):
    """Metric names in a PromQL expression: identifiers that are neither
    functions, keywords, label names (inside {...} or by/on (...)), strings
    nor durations."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):  # a function
            continue
        if word.lower() in PROMQL_WORDS:
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "$"):
            continue  # 1e9, $__rate_interval
        names.add(word)
    return names


def check_exprs(where, exprs, exported):
    for label, expr in exprs:
        names = metric_names(expr)
        if not names:
            problem(f"{where}: {label}: names no metric: {expr!r}")
        for n in sorted(names - exported):
            problem(f"{where}: {label}: {n} is not a metric pgbridge exports (src/http.rs): {expr!r}")


def promtool_parses(where, exprs):
    """Every expression parses as PromQL: promtool check rules on recording
    rules made of them (Grafana's variables replaced by values)."""
    rules = {"groups": [{"name": "check", "rules": []}]}
    for i, (_, expr) in enumerate(exprs):
        e = expr.replace("$__rate_interval", "5m").replace("$pipeline", ".*")
        rules["groups"][0]["rules"].append({"record": f"check:expr{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
        tmp = f.name
    try:
        r = subprocess.run(["promtool", "check", "rules", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            problem(f"{where}: promtool cannot parse an expression: {r.stdout}{r.stderr}")
    finally:
        os.unlink(tmp)


def check_monitoring(exported):
    with open(path("deploy", "monitoring", "pgbridge-dashboard.json")) as f:
        dash = json.load(f)
    exprs = []
    ids = set()
    for p in dash.get("panels", []):
        if p.get("id") in ids:
            problem(f"dashboard: panel id {p.get('id')} used twice")
        ids.add(p.get("id"))
        if not p.get("targets"):
            problem(f"dashboard: panel {p.get('title')!r} has no query")
        for t in p.get("targets", []):
            exprs.append((f"panel {p.get('title')!r}", t.get("expr", "")))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
            if not m:
                problem(f"dashboard: variable {v.get('name')}: unexpected query {q!r}")
            else:
                exprs.append((f"variable {v.get('name')}", m.group(1)))
    if len(exprs) < 8:
        problem(f"dashboard: only {len(exprs)} expressions")
    check_exprs("deploy/monitoring/pgbridge-dashboard.json", exprs, exported)
    promtool_parses("deploy/monitoring/pgbridge-dashboard.json", exprs)

    rules = []
    for g in load_yaml_docs(path("deploy", "monitoring", "pgbridge-alerts.yml"))[0]["groups"]:
        for r in g["rules"]:
            rules.append((r.get("alert") or r.get("record"), r["expr"]))
    check_exprs("deploy/monitoring/pgbridge-alerts.yml", rules, exported)
    # Every alert has a unit test.
    tests = load_yaml_docs(path("deploy", "monitoring", "pgbridge-alerts.test.yml"))[0]
    tested = {
        t["alertname"]
        for case in tests["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    for name, _ in rules:
        if name not in tested:
            problem(f"deploy/monitoring/pgbridge-alerts.test.yml: no test where {name} fires")


# --- the config files inside the manifests -------------------------------------

def config_facts(where, toml_text):
    """(listen port, ${VAR}s) of a pgbridge config."""
    variables = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", toml_text))
    m = re.search(r'^\s*listen\s*=\s*"([^"]*):(\d+)"', toml_text, re.M)
    if not m:
        problem(f"{where}: no [http] listen: the probes and Prometheus need it")
        return None, variables
    if m.group(1) not in ("0.0.0.0", "[::]"):
        problem(f"{where}: http.listen {m.group(1)} is not reachable from outside the container")
    return int(m.group(2)), variables


def check_toml(where, toml_text):
    """The config is TOML (pgbridge's own parser checks deploy/examples and
    deploy/compose/pgbridge.toml in src/config.rs's tests)."""
    import tomllib  # Python 3.11+

    try:
        tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        problem(f"{where}: not valid TOML: {e}")


# --- Kubernetes ------------------------------------------------------------------

def check_kubernetes():
    d = path("deploy", "kubernetes")
    objs = {}
    kust = load_yaml_docs(os.path.join(d, "kustomization.yaml"))[0]
    files = kust.get("resources", [])
    for f in files:
        if not os.path.exists(os.path.join(d, f)):
            problem(f"kustomization.yaml: {f} does not exist")
    for f in sorted(os.listdir(d)):
        if not f.endswith(".yaml") or f == "kustomization.yaml":
            continue
        for o in load_yaml_docs(os.path.join(d, f)):
            for k in ("apiVersion", "kind", "metadata"):
                if k not in o:
                    problem(f"kubernetes/{f}: an object without {k}")
            objs[(o.get("kind"), o["metadata"]["name"])] = (f, o)
            if f not in files and o.get("kind") != "Secret":
                problem(f"kubernetes/{f}: {o.get('kind')} not listed in kustomization.yaml")
    kinds = {k for k, _ in objs}
    for k in ("Deployment", "ConfigMap", "Service", "Secret"):
        if k not in kinds:
            problem(f"kubernetes: no {k}")
    deps = [o for (k, _), (_, o) in objs.items() if k == "Deployment"]
    if not deps:
        return
    dep = deps[0]
    spec = dep["spec"]
    if spec.get("replicas") != 2:
        problem("Deployment: replicas should be 2 (one active, one standby)")
    pod_labels = spec["template"]["metadata"].get("labels", {})
    sel = spec["selector"]["matchLabels"]
    if any(pod_labels.get(k) != v for k, v in sel.items()):
        problem("Deployment: the selector does not match the pod's labels")
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    if not re.match(r"^[\w./-]*pgbridge(:[\w.-]+)?$", c.get("image", "")):
        problem(f"Deployment: image {c.get('image')!r} is not pgbridge")
    args = c.get("args", [])
    if args[:1] != ["run"] or "--config" not in args:
        problem(f"Deployment: args {args} do not run a config")
        return
    config_path = args[args.index("--config") + 1]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    # The config mount: the directory of --config from the ConfigMap.
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    toml_text = None
    for name, mp in mounts.items():
        v = volumes.get(name)
        if v is None:
            problem(f"Deployment: volumeMount {name} has no volume")
            continue
        if "configMap" in v and config_path.startswith(mp.rstrip("/") + "/"):
            key = config_path[len(mp.rstrip("/")) + 1:]
            cm = objs.get(("ConfigMap", v["configMap"]["name"]))
            if cm is None:
                problem(f"Deployment: ConfigMap {v['configMap']['name']} is not defined")
            elif key not in cm[1].get("data", {}):
                problem(f"ConfigMap {v['configMap']['name']} has no key {key} (--config {config_path})")
            else:
                toml_text = cm[1]["data"][key]
    if toml_text is None:
        problem(f"Deployment: nothing mounts a ConfigMap at --config {config_path}")
        return
    port, variables = config_facts("ConfigMap pgbridge.toml", toml_text)
    check_toml("ConfigMap pgbridge.toml", toml_text)
    if port is not None and port not in ports.values():
        problem(f"Deployment: no containerPort {port} (the config's http.listen)")
    env = {e["name"]: e for e in c.get("env", [])}
    for var in sorted(variables):
        if var not in env:
            problem(f"Deployment: the config uses ${{{var}}} but the container has no env {var}")
    secrets = {name: o for (k, name), (_, o) in objs.items() if k == "Secret"}
    for name, e in env.items():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            if "PASSWORD" in name:
                problem(f"Deployment: {name} is not from a Secret")
            continue
        s = secrets.get(ref["name"])
        if s is None:
            problem(f"Deployment: env {name} refers to Secret {ref['name']}, not defined")
        elif ref["key"] not in {**s.get("stringData", {}), **s.get("data", {})}:
            problem(f"Deployment: env {name} refers to key {ref['key']} not in Secret {ref['name']}")
    for probe in ("livenessProbe", "readinessProbe"):
        p = c.get(probe)
        if p is None:
            problem(f"Deployment: no {probe}")
            continue
        g = p.get("httpGet", {})
        pp = ports.get(g.get("port"), g.get("port"))
        if g.get("path") != "/healthz" or pp != port:
            problem(f"Deployment: {probe} is not GET /healthz on port {port}: {g}")
    req = c.get("resources", {}).get("requests", {})
    if "memory" not in req or "cpu" not in req:
        problem("Deployment: resource requests for memory and cpu are missing")
    sc = pod.get("securityContext", {})
    if not sc.get("runAsNonRoot"):
        problem("Deployment: runAsNonRoot is not set")
    services = [o for (k, _), (_, o) in objs.items() if k == "Service"]
    for s in services:
        if any(s["spec"].get("selector", {}).get(k) != v for k, v in pod_labels.items()
               if k in s["spec"].get("selector", {})) or not s["spec"].get("selector"):
            problem(f"Service {s['metadata']['name']}: its selector does not select the pods")
        for p in s["spec"].get("ports", []):
            tp = ports.get(p.get("targetPort"), p.get("targetPort"))
            if tp != port:
                problem(f"Service {s['metadata']['name']}: targetPort {p.get('targetPort')} is not the http port {port}")
    ann = spec["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/port") not in (None, str(port)):
        problem(f"Deployment: prometheus.io/port {ann.get('prometheus.io/port')} is not {port}")


# --- Compose ------------------------------------------------------------------------

def check_compose():
    d = path("deploy", "compose")
    compose = load_yaml_docs(os.path.join(d, "compose.yaml"))[0]
    svcs = compose.get("services", {})
    for s in ("source", "target", "pgbridge", "prometheus"):
        if s not in svcs:
            problem(f"compose.yaml: no {s} service")
    for name, s in svcs.items():
        for v in s.get("volumes", []):
            host = v.split(":")[0]
            if host.startswith(".") and not os.path.exists(os.path.join(d, host)):
                problem(f"compose.yaml: {name} mounts {host}, which does not exist")
    pb = svcs.get("pgbridge", {})
    b = pb.get("build", {})
    if not os.path.exists(os.path.join(d, b.get("context", "."), b.get("dockerfile", "Dockerfile"))):
        problem(f"compose.yaml: pgbridge's build {b} does not name deploy/Containerfile")
    cfg = [v for v in pb.get("volumes", []) if v.split(":")[1] == "/etc/pgbridge/pgbridge.toml"]
    if not cfg:
        problem("compose.yaml: pgbridge does not mount a config at /etc/pgbridge/pgbridge.toml")
        return
    with open(os.path.join(d, cfg[0].split(":")[0])) as f:
        toml_text = f.read()
    port, variables = config_facts("compose/pgbridge.toml", toml_text)
    check_toml("compose/pgbridge.toml", toml_text)
    env = pb.get("environment", {})
    for var in sorted(variables):
        if var not in env:
            problem(f"compose.yaml: the config uses ${{{var}}} but pgbridge's environment lacks it")
    for host in re.findall(r"@([a-z0-9_-]+):\d+/", toml_text):
        if host not in svcs:
            problem(f"compose/pgbridge.toml: connects to {host}, not a service")
    with open(os.path.join(d, "prometheus.yml")) as f:
        prom = yaml.safe_load(f)
    targets = [t for sc in prom.get("scrape_configs", []) for c in sc.get("static_configs", [])
               for t in c.get("targets", [])]
    if f"pgbridge:{port}" not in targets:
        problem(f"compose/prometheus.yml: does not scrape pgbridge:{port} ({targets})")
    with open(path("deploy", "examples", "analytics.toml")) as f:
        example = f.read()
    for key in ("slot", "publications", "tables"):
        want = re.search(rf"^{key}\s*=.*$", example, re.M)
        got = re.search(rf"^{key}\s*=.*$", toml_text, re.M)
        if want and (not got or got.group(0).split("#")[0].strip() != want.group(0).split("#")[0].strip()):
            problem(f"compose/pgbridge.toml: {key} differs from deploy/examples/analytics.toml")


def main():
    exported = exported_metrics()
    check_monitoring(exported)
    check_kubernetes()
    check_compose()
    for p in problems:
        print(f"check-deploy: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check-deploy: ok ({len(exported)} metrics exported)")


if __name__ == "__main__":
    main()
