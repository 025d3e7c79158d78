#!/usr/bin/env bash
# Checks deploy/ without a cluster (run by .ci/run; about 1 minute on a fresh machine):
#   1. renders deploy/kubernetes with `kubectl kustomize`;
#   2. validates the result against the Kubernetes schemas of 1.29 to 1.33
#      (kubernetes-validate --strict, from PyPI, in a venv under target/);
#   3. runs the policy test over it and the monitoring files
#      (tests/deploy/policy.py, with its self-test on broken copies);
#   4. promtool check rules / test rules on deploy/monitoring (Debian's prometheus).
# Installs what is missing: kubectl (pinned, from dl.k8s.io), the venv, promtool.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

KUBECTL_VERSION=v1.32.4
KUBERNETES_VALIDATE_VERSION=1.33.1
K8S_VERSIONS=(1.29.0 1.30.0 1.31.0 1.32.0 1.33.0)
TOOLS="$ROOT/target/deploy-tools"
VENV="$ROOT/target/deploy-venv"

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# kubectl with kustomize: the system's if it has one, else the pinned release,
# checked against the SHA-256 dl.k8s.io publishes beside it.
kubectl_bin() {
  if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    command -v kubectl
    return
  fi
  local bin="$TOOLS/kubectl-$KUBECTL_VERSION"
  if [ ! -x "$bin" ]; then
    log "installing kubectl $KUBECTL_VERSION"
    mkdir -p "$TOOLS"
    local url="https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/amd64/kubectl"
    curl -fsSL --retry 3 -o "$bin.part" "$url" || die "cannot download $url"
    local want
    want="$(curl -fsSL --retry 3 "$url.sha256")" || die "cannot download $url.sha256"
    echo "$want  $bin.part" | sha256sum -c --quiet - || die "kubectl's SHA-256 does not match $url.sha256"
    chmod 755 "$bin.part" && mv "$bin.part" "$bin"
  fi
  echo "$bin"
}

# kubernetes-validate (its schemas ship in the wheel: no network when it runs).
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION in $VENV"
  command -v python3 >/dev/null || die "python3 is missing"
  python3 -m venv "$VENV" 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
  "$VENV/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
if ! command -v promtool >/dev/null; then
  log "installing promtool (Debian's prometheus package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
KUBECTL="$(kubectl_bin)"

log "rendering deploy/kubernetes ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"
"$KUBECTL" kustomize deploy/kubernetes > "$WORK/rendered.yaml"

log "validating against the Kubernetes schemas of ${K8S_VERSIONS[*]}"
for version in "${K8S_VERSIONS[@]}"; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$WORK/rendered.yaml" \
    || die "the rendered manifests are not valid Kubernetes $version"
done
# The validator itself must refuse what is invalid: a misspelt field.
sed 's/terminationGracePeriodSeconds:/terminationGracePeriodSecs:/' "$WORK/rendered.yaml" > "$WORK/broken.yaml"
if "$VENV/bin/kubernetes-validate" --strict --quiet -k "${K8S_VERSIONS[-1]}" "$WORK/broken.yaml" >/dev/null 2>&1; then
  die "kubernetes-validate accepted a misspelt field: the schema check checks nothing"
fi

log "policy test (tests/deploy/policy.py)"
"$VENV/bin/pip" show -q pyyaml >/dev/null 2>&1 || "$VENV/bin/pip" install -q pyyaml
"$VENV/bin/python" tests/deploy/policy.py --self-test "$WORK/rendered.yaml"

log "promtool: alert rules and their unit tests"
(cd deploy/monitoring && promtool check rules kiln-alerts.yaml && promtool test rules kiln-alerts.test.yaml)

log "deploy check passed"
