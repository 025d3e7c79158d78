#!/usr/bin/env bash
# Runs the artifacts scripts/release.sh made, with the real sccache 0.19 client:
#
#   scripts/release_test.sh [image] [pod] [deb]   # as root; default: all
#
#   image  `docker run kiln:<version> --version`, then the image serving with the
#          privileges README lists (IMAGE_RUN_FLAGS below, nothing more): the
#          client, on the host, compiles a C file through the container's own
#          scheduler and build server; the object is byte-identical to local gcc's
#   pod    the image run as deploy/kubernetes/deployment.yaml runs its container:
#          root, read-only root file system, every capability dropped and the six
#          it lists added back, its seccomp profile (Unconfined), its memory limit,
#          emptyDirs for /var/lib/kiln, /run/kiln and /tmp, its args (per-job
#          cgroups off); /readyz must say ready (bubblewrap's probe passed), and
#          the client compiles through it as above (the image's own scheduler:
#          the pod's ConfigMap would point at upstream's, which is not the point)
#   deb    a Debian 12 root file system (mmdebstrap; its tarball is cached as
#          target/release-test/bookworm.tar, so reruns skip it) booted with
#          `systemd-nspawn --boot`; apt installs the .deb inside (bubblewrap comes
#          from Debian's archive as its dependency), its postinst prints `kiln
#          check`'s verdict, `systemctl start kiln`, and the client on the host
#          compiles through the kiln in the container (which shares the host's
#          network, so it answers on 127.0.0.1:10600 and :10501)
#
# Both use kiln's default ports (10501, 10600, 10601) on 127.0.0.1: nothing else
# may listen there. Every wait is bounded; the container and the machine are
# removed on exit, whatever happened.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASES=${*:-image pod deb}
WORK=$(mktemp -d /tmp/kiln-release-test.XXXXXX)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
# IMAGE=kiln:ci: the image CI builds from its release build (scripts/release.sh).
IMAGE=${IMAGE:-kiln:$VERSION}
DIST=$ROOT/target/dist
CACHE=$ROOT/target/release-test
CONTAINER=kiln-release-test-$$
MACHINE=kiln-release-test-$$
NSPAWN_PID=""
# shellcheck source=scripts/common.sh
source "$ROOT/scripts/common.sh"

# What the image needs to run jobs, and no more (README, "Run the image"); each
# was found by taking it away (`kiln check` in the container says what fails):
#   --cap-add SYS_ADMIN   kiln mounts overlayfs in mount namespaces of its own;
#                         without it every job fails ("entering a private mount
#                         namespace failed: EPERM"; `kiln check` and the startup
#                         check say so: "needs CAP_SYS_ADMIN")
#   seccomp=unconfined    docker's default profile has no pivot_root(2), which
#                         bubblewrap needs ("bwrap: pivot_root: Operation not
#                         permitted"). The jobs still run under kiln's own seccomp
#                         filter (bwrap --seccomp), which is what stands between job
#                         code and the kernel.
#   (not systempaths=unconfined: docker hides /proc/kcore, /proc/keys... under
#                         overmounts, and the kernel refuses a fresh proc mount
#                         below them (mount_too_revealing); kiln uncovers /proc in
#                         each sandbox's private mount namespace, the container's
#                         own /proc keeps the covers)
#   -v /sys/fs/cgroup:/sys/fs/cgroup  docker mounts the cgroup file system read-only;
#                         kiln gives each job its own cgroup (pids, memory, CPU)
#                         below the container's (EROFS without it). Or set
#                         kiln.sandbox.require_cgroups = false and let the
#                         container's --memory/--pids-limit bound all jobs together.
# Not needed: --privileged, any device, NET_ADMIN or other capabilities, host
# networking or pid namespace. On hosts with AppArmor (Ubuntu), docker-default
# denies mount(2): add --security-opt apparmor=unconfined there (this kernel has
# no AppArmor, so it is not tested here).
IMAGE_RUN_FLAGS=(--cap-add SYS_ADMIN --security-opt seccomp=unconfined -v /sys/fs/cgroup:/sys/fs/cgroup)
# deploy/kubernetes/deployment.yaml's container, as docker flags (keep them together):
# securityContext, resources.limits.memory (its CPU limit is beyond this machine),
# the emptyDir volumes (exec allowed, as an emptyDir is) and the args.
POD_RUN_FLAGS=(--user 0:0 --read-only --cap-drop ALL
  --cap-add SYS_ADMIN --cap-add SYS_CHROOT --cap-add SETUID --cap-add SETGID --cap-add DAC_OVERRIDE --cap-add FOWNER --cap-add KILL
  --security-opt seccomp=unconfined --memory 16g
  --tmpfs /var/lib/kiln:exec --tmpfs /run/kiln:size=1m --tmpfs /tmp:exec,size=1g)
POD_ARGS=(serve --config=/etc/kiln/kiln.toml --log-format=json --set=kiln.sandbox.require_cgroups=false)
# More flags for a host that needs them: IMAGE_RUN_FLAGS_EXTRA="--security-opt apparmor=unconfined"
read -r -a IMAGE_RUN_EXTRA <<<"${IMAGE_RUN_FLAGS_EXTRA:-}"

release_cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && docker inspect "$CONTAINER" >/dev/null 2>&1; then
    docker logs --tail 40 "$CONTAINER" >&2 || true
  fi
  docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  if [ -n "$NSPAWN_PID" ]; then
    # SIGTERM: nspawn asks the container's systemd to power off, then exits.
    kill "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$NSPAWN_PID" 2>/dev/null || true
  fi
  # The container's root file system (~400 MB); the logs beside it stay on failure.
  rm -rf "$WORK/rootfs"
  (exit "$status")
  cleanup
}
trap release_cleanup EXIT

ports_free() {
  local port
  for port in 10501 10600 10601; do
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "127.0.0.1:$port is taken: stop what listens there first"
  done
}

# The C file and the reference object, compiled locally without sccache.
make_source() {
  mkdir -p "$WORK/src"
  cat >"$WORK/src/hello.c" <<'EOF'
#include <stdio.h>
#include <math.h>
static const double table[] = { 1.5, 2.25, 4.125 };
double hello_total(void) {
    double sum = 0;
    for (unsigned k = 0; k < sizeof table / sizeof table[0]; k++) sum += sqrt(table[k]);
    return sum;
}
int hello_print(char *buf, unsigned long len) { return snprintf(buf, len, "total=%.3f", hello_total()); }
EOF
  (cd "$WORK/src" && gcc -O2 -c hello.c -o hello.local.o)
}

# compile_through <name>: the client (fresh daemon, empty cache) compiles hello.c
# through the scheduler at 127.0.0.1:10600; the compile must be distributed and
# its object identical to the local one.
compile_through() {
  start_client "$ROOT/examples/sccache/client-local.toml"
  (cd "$WORK/src" && timeout 300 sccache gcc -O2 -c hello.c -o "hello.$1.o") || die "$1: the compile failed"
  local stats; stats=$(sccache --show-stats --stats-format=json)
  local dist errors
  dist=$(python3 -c 'import json,sys; print(sum(json.load(sys.stdin)["stats"]["dist_compiles"].values()))' <<<"$stats")
  errors=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["dist_errors"])' <<<"$stats")
  [ "$dist" -eq 1 ] && [ "$errors" -eq 0 ] || die "$1: $dist compiles distributed, $errors fell back to local: $stats"
  cmp -s "$WORK/src/hello.$1.o" "$WORK/src/hello.local.o" || die "$1: the object differs from local gcc's"
  sccache --stop-server >/dev/null 2>&1 || true
  echo "$1: the compile was distributed to kiln; the object is byte-identical to local gcc's"
}

case_image() {
  log "image: $IMAGE"
  docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: run scripts/release.sh image first"
  local out; out=$(docker run --rm "$IMAGE" --version)
  [ "$out" = "kiln $VERSION" ] || die "docker run $IMAGE --version printed \"$out\""
  echo "docker run $IMAGE --version: $out"
  ports_free
  local t0=$SECONDS
  docker run -d --name "$CONTAINER" "${IMAGE_RUN_FLAGS[@]}" "${IMAGE_RUN_EXTRA[@]}" \
    -p 127.0.0.1:10501:10501 -p 127.0.0.1:10600:10600 -p 127.0.0.1:10601:10601 "$IMAGE" >/dev/null
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:10601/healthz >/dev/null 2>&1 && break
    [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || die "the container exited: $(docker logs --tail 20 "$CONTAINER" 2>&1)"
    sleep 0.2
  done
  curl -sf http://127.0.0.1:10601/healthz >/dev/null || die "the container's kiln did not answer /healthz within 20 s"
  echo "the image serves ($(( SECONDS - t0 )) s to /healthz) with: ${IMAGE_RUN_FLAGS[*]} ${IMAGE_RUN_EXTRA[*]}"
  compile_and_stop image
}

# compile_and_stop <name>: a compile through the running container, then SIGTERM
# (docker stop): kiln must drain and exit 0.
compile_and_stop() {
  compile_through "$1"
  docker stop -t 30 "$CONTAINER" >/dev/null
  local code; code=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
  [ "$code" -eq 0 ] || die "$1: kiln in the container exited $code on SIGTERM, not 0"
  docker rm -f "$CONTAINER" >/dev/null
}

case_pod() {
  log "pod: $IMAGE as deploy/kubernetes runs it"
  docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: run scripts/release.sh image first"
  grep -q 'add: \["SYS_ADMIN", "SYS_CHROOT", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER", "KILL"\]' "$ROOT/deploy/kubernetes/deployment.yaml" \
    || die "deployment.yaml's capabilities changed: update POD_RUN_FLAGS"
  grep -q 'type: Unconfined' "$ROOT/deploy/kubernetes/deployment.yaml" || die "deployment.yaml's seccomp changed: update POD_RUN_FLAGS"
  ports_free
  docker run -d --name "$CONTAINER" "${POD_RUN_FLAGS[@]}" "${IMAGE_RUN_EXTRA[@]}" \
    -p 127.0.0.1:10501:10501 -p 127.0.0.1:10600:10600 -p 127.0.0.1:10601:10601 "$IMAGE" "${POD_ARGS[@]}" >/dev/null
  local ready=""
  for _ in $(seq 1 100); do
    ready=$(curl -s http://127.0.0.1:10601/readyz 2>/dev/null || true)
    [ "$ready" = ready ] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || die "the pod's container exited: $(docker logs --tail 20 "$CONTAINER" 2>&1)"
    sleep 0.2
  done
  [ "$ready" = ready ] || die "the pod's /readyz did not say ready within 20 s: $ready"
  echo "the pod's container is ready with: ${POD_RUN_FLAGS[*]}"
  # SYS_CHROOT lets sandboxes start from kiln's small mount template (setns).
  docker logs "$CONTAINER" 2>&1 | grep -q "sandboxes start from a mount namespace of the mounts they need" \
    || die "the pod's sandboxes copy the whole mount table: $(docker logs "$CONTAINER" 2>&1 | grep -i 'mount table' | tail -n 1)"
  compile_and_stop pod
}

# A Debian 12 with systemd, cached: built once (~2 minutes, Debian's archive).
debian_rootfs() {
  local tar=$CACHE/bookworm.tar
  if [ ! -s "$tar" ]; then
    log "mmdebstrap: a Debian 12 root file system with systemd (cached as $tar)"
    command -v mmdebstrap >/dev/null || apt-get install -y -qq mmdebstrap >/dev/null
    mkdir -p "$CACHE"
    timeout 900 mmdebstrap --format=tar --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates \
      bookworm "$tar.partial" \
      "deb http://deb.debian.org/debian bookworm main" \
      "deb http://deb.debian.org/debian bookworm-updates main" \
      "deb http://deb.debian.org/debian-security bookworm-security main"
    mv "$tar.partial" "$tar"
  fi
  mkdir -p "$WORK/rootfs"
  tar -C "$WORK/rootfs" -xf "$tar"
}

# The container's systemd (pid 1 inside), a child or grandchild of systemd-nspawn.
LEADER=""
find_leader() {
  local p c
  for p in $(pgrep -P "$NSPAWN_PID" || true); do
    for c in "$p" $(pgrep -P "$p" || true); do
      [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && { LEADER=$c; return 0; }
    done
  done
  return 1
}

# in_machine <cmd...>: runs a command in the booted container (its mount, pid, uts
# and ipc namespaces, its root), its exit status kept. nsenter rather than
# `systemd-run --machine`: that needs systemd-machined on the host, and a host
# whose pid 1 is not systemd (this one's) has none.
in_machine() {
  timeout 300 nsenter --target "$LEADER" --mount --pid --uts --ipc --root --wd=/ -- "$@"
}

case_deb() {
  log "deb: install the .deb with apt in a Debian 12 booted by systemd-nspawn"
  command -v systemd-nspawn >/dev/null || apt-get install -y -qq systemd-container >/dev/null
  local deb; deb=$(ls "$DIST"/kiln_"$VERSION"-*_amd64.deb 2>/dev/null | head -n 1)
  [ -n "$deb" ] || die "no .deb in target/dist: run scripts/release.sh deb first"
  ports_free
  local t0=$SECONDS
  debian_rootfs
  cp "$deb" "$WORK/rootfs/root/kiln.deb"
  echo "$MACHINE" >"$WORK/rootfs/etc/hostname"
  # The host's network (no --private-network): apt reaches Debian's archive, the
  # client reaches kiln on 127.0.0.1. --register=no --keep-unit: nspawn registers
  # with systemd-machined and makes itself a scope through the host's systemd by
  # default, and fails ("Failed to open system bus") where the host has neither.
  # nspawn's defaults otherwise: /proc/sys is read-only in the container, so the
  # postinst's `kiln check` (run by dpkg, outside the unit) reports user namespaces
  # as failing there, while kiln.service, whose ReadWritePaths=/proc/sys/user makes
  # that one path writable, runs jobs.
  systemd-nspawn --boot --register=no --keep-unit --machine "$MACHINE" --directory "$WORK/rootfs" \
    --resolv-conf=copy-host --timezone=off --console=passive \
    >"$WORK/nspawn.log" 2>&1 &
  NSPAWN_PID=$!
  local state=""
  for _ in $(seq 1 120); do
    kill -0 "$NSPAWN_PID" 2>/dev/null || die "systemd-nspawn exited: $(tail -n 20 "$WORK/nspawn.log")"
    if [ -n "$LEADER" ] || find_leader; then
      state=$(in_machine /bin/systemctl is-system-running 2>/dev/null || true)
      case $state in running|degraded) break ;; esac
    fi
    sleep 0.5
  done
  case $state in running|degraded) ;; *) die "the container did not boot within 60 s (state: ${state:-none})" ;; esac
  echo "booted in $(( SECONDS - t0 )) s (system state: $state)"
  [ "$state" = running ] || in_machine /bin/systemctl --failed --no-pager || true
  in_machine /usr/bin/apt-get update -qq
  in_machine /usr/bin/env DEBIAN_FRONTEND=noninteractive /usr/bin/apt-get install -y -q /root/kiln.deb \
    | tee "$WORK/apt-install.log"
  grep -q "kiln: checking this host" "$WORK/apt-install.log" || die "the postinst did not print kiln check's verdict"
  in_machine /bin/systemctl is-enabled kiln >/dev/null || die "the .deb did not enable kiln.service"
  if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
    # A cgroup v1 host: systemd-nspawn mounts the v1 controllers read-only in the
    # container (only its name=systemd hierarchy is the container's), so no
    # cgroup can be delegated to kiln.service there; on a cgroup v2 host the
    # container owns its subtree and Delegate=yes hands kiln its part.
    echo "cgroup v1 host: kiln.sandbox.require_cgroups = false in the container (no per-job cgroups in nspawn on v1)"
    in_machine /bin/sed -i 's/^require_cgroups = true/require_cgroups = false/' /etc/kiln/kiln.toml
    in_machine /bin/grep -q '^require_cgroups = false' /etc/kiln/kiln.toml || die "could not set require_cgroups"
  fi
  in_machine /bin/systemctl start kiln
  for _ in $(seq 1 100); do
    curl -sf http://127.0.0.1:10601/healthz >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -sf http://127.0.0.1:10601/healthz >/dev/null \
    || die "kiln.service does not answer /healthz: $(in_machine /bin/journalctl -u kiln --no-pager -n 30 || true)"
  in_machine /bin/systemctl is-active kiln >/dev/null || die "kiln.service is not active"
  compile_through deb
  in_machine /bin/systemctl stop kiln
  echo "deb: installed, started and served a compile in $(( SECONDS - t0 )) s"
}

[ "$(id -u)" -eq 0 ] || die "run as root (docker, systemd-nspawn)"
install_sccache
make_source
for c in $CASES; do
  case $c in
    image|pod|deb) "case_$c" ;;
    *) die "unknown case $c (image, deb)" ;;
  esac
done
log "release_test: all cases passed ($CASES)"
