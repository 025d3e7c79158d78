#!/usr/bin/env bash
# Builds kiln's release artifacts into target/dist/ (issue 25):
#
#   scripts/release.sh [static] [tarball] [deb] [image]   # default: all four, in order
#
#   static   target/dist/kiln: one statically linked x86_64 binary (glibc with
#            +crt-static, libseccomp linked from libseccomp-dev's .a; its C helpers
#            kiln-exec and kiln-init are embedded by build.rs), stripped
#   tarball  target/dist/kiln-<version>-x86_64-linux.tar.gz (+ .sha256): the binary,
#            examples/kiln.toml, examples/sccache/*.toml, examples/kiln.service,
#            README.md, SECURITY.md
#   deb      target/dist/kiln_<version>-1_amd64.deb (cargo-deb; [package.metadata.deb]
#            in Cargo.toml): /usr/bin/kiln, the unit, /etc/kiln/kiln.toml, /var/lib/kiln
#   image    the OCI image kiln:<version> in the local docker daemon, FROM scratch:
#            kiln, bubblewrap with the libraries ldd lists, CA certificates,
#            packaging/container.toml as /etc/kiln/kiln.toml; no registry involved
#
# Needs: gcc, libc6-dev, libseccomp-dev (static libseccomp.a), file; docker for the
# image; cargo-deb (installed here, pinned, when missing). The build has its own
# target dir (target/release-static) so it never waits on another build's lock.
# scripts/release_test.sh runs what this makes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TRIPLE=x86_64-unknown-linux-gnu
PROFILE=dist
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/release-static}
DIST=$ROOT/target/dist
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
BIN=$CARGO_TARGET_DIR/$TRIPLE/$PROFILE/kiln
CARGO_DEB_VERSION=3.8.0
# The image step's name, and the binary it takes (default: the static one). CI sets
# KILN_BINARY=target/release/kiln IMAGE=kiln:ci to test the image recipe with the
# release build it has anyway; a dynamic binary gets its libraries beside it.
IMAGE=${IMAGE:-kiln:$VERSION}
KILN_BINARY=${KILN_BINARY:-}
STEPS=${*:-static tarball deb image}

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

mkdir -p "$DIST"

# Static with glibc rather than musl: Debian ships libseccomp.a for glibc only (a
# musl build would have to build libseccomp and ring's C with musl-gcc), and
# build.rs already links the C helpers with `cc -static` against glibc. The one
# catch of a static glibc, NSS, does not bite: kiln needs only hosts lookups,
# which glibc >= 2.34 resolves without loading NSS modules (/etc/hosts, DNS).
# --target makes RUSTFLAGS apply to kiln only, not to build scripts and proc
# macros (which cannot be static).
step_static() {
  log "static: cargo build --profile $PROFILE --target $TRIPLE (+crt-static, static libseccomp)"
  local seccomp_a
  seccomp_a=$(find /usr/lib /usr/lib64 -name libseccomp.a -print -quit 2>/dev/null || true)
  [ -n "$seccomp_a" ] || die "no libseccomp.a: apt-get install libseccomp-dev"
  local t0=$SECONDS
  LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$(dirname "$seccomp_a") \
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --locked --profile "$PROFILE" --target "$TRIPLE" --bin kiln
  echo "static build: $(( SECONDS - t0 )) s"
  # A static PIE (Rust's default for +crt-static on x86_64): no interpreter, no
  # shared library, and still loaded at a random address (ASLR), which a root
  # daemon that parses network input should keep. file(1) 5.44 says
  # "static-pie linked" for it, ldd says "statically linked".
  file -L "$BIN" | grep -Eq 'static-pie linked|statically linked' || die "not statically linked: $(file -L "$BIN")"
  ldd "$BIN" 2>&1 | grep -Eq 'statically linked|not a dynamic executable' || die "ldd lists libraries: $(ldd "$BIN")"
  "$BIN" --version | grep -qx "kiln $VERSION" || die "$BIN --version says: $("$BIN" --version)"
  install -m 0755 "$BIN" "$DIST/kiln"
  echo "$(file -L "$DIST/kiln" | cut -d, -f1-5)"
  echo "target/dist/kiln: $(stat -c %s "$DIST/kiln") bytes"
}

need_binary() {
  [ -x "$DIST/kiln" ] && [ -x "$BIN" ] || die "no static binary yet: run scripts/release.sh static first"
}

# A deterministic tarball: sorted names, one mtime (the last commit's), root owner.
step_tarball() {
  need_binary
  local name=kiln-$VERSION-x86_64-linux
  local stage=$DIST/stage/$name
  log "tarball: $name.tar.gz"
  rm -rf "$DIST/stage"
  mkdir -p "$stage/examples/sccache"
  install -m 0755 "$DIST/kiln" "$stage/kiln"
  install -m 0644 examples/kiln.toml examples/kiln.service "$stage/examples/"
  install -m 0644 examples/sccache/*.toml "$stage/examples/sccache/"
  install -m 0644 README.md SECURITY.md "$stage/"
  local epoch
  epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
  tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -C "$DIST/stage" -cf - "$name" \
    | gzip -9n >"$DIST/$name.tar.gz"
  (cd "$DIST" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256" && sha256sum -c --quiet "$name.tar.gz.sha256")
  rm -rf "$DIST/stage"
  echo "target/dist/$name.tar.gz: $(stat -c %s "$DIST/$name.tar.gz") bytes, sha256 $(cut -d' ' -f1 "$DIST/$name.tar.gz.sha256")"
}

install_cargo_deb() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    return
  fi
  log "installing cargo-deb $CARGO_DEB_VERSION (~3 minutes the first time)"
  cargo install --locked "cargo-deb@$CARGO_DEB_VERSION"
}

# cargo-deb packages the binary step_static built (--no-build: same target dir,
# --target and --profile, so it finds it); the unit is examples/kiln.service with
# the binary's packaged path.
step_deb() {
  need_binary
  install_cargo_deb
  log "deb: cargo deb --no-build --target $TRIPLE --profile $PROFILE"
  rm -rf "$DIST/deb-unit"
  mkdir -p "$DIST/deb-unit"
  sed -e 's#^ExecStart=/usr/local/bin/kiln #ExecStart=/usr/bin/kiln #' \
    -e '/^# systemd unit for kiln. Install:/,/^# Check the host first/c\# systemd unit for kiln, installed by its .deb (scripts/release.sh).\n# Check the host with `kiln check --config /etc/kiln/kiln.toml`.' \
    examples/kiln.service >"$DIST/deb-unit/kiln.service"
  grep -q '^ExecStart=/usr/bin/kiln serve' "$DIST/deb-unit/kiln.service" || die "examples/kiln.service has no ExecStart=/usr/local/bin/kiln to rewrite"
  rm -f "$DIST"/kiln_*.deb
  cargo deb --no-build --target "$TRIPLE" --profile "$PROFILE" --output "$DIST/"
  local deb; deb=$(ls "$DIST"/kiln_*.deb)
  dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
  dpkg-deb --contents "$deb" | awk '{print $1, $6}'
  echo "$(basename "$deb"): $(stat -c %s "$deb") bytes"
}

# FROM scratch: exactly what kiln and bubblewrap need at run time.
#   /usr/bin/kiln                    the static binary
#   /bin/true                        what kiln's startup probe runs in a sandbox
#   /usr/bin/bwrap + its libraries   Debian's bubblewrap (dynamically linked: libc,
#                                    libselinux, libpcre2-8, libcap, the loader),
#                                    each at the path ldd names
#   /etc/ssl/certs/ca-certificates.crt  roots for an https object store (rustls reads it)
#   /etc/kiln/kiln.toml              packaging/container.toml
#   /tmp, /var/lib/kiln              the data dir, a volume
# Nothing else: no shell, no /etc/passwd (kiln reads it only to warn of accounts
# inside its job uid range, and takes a missing one as none).
step_image() {
  local kiln=${KILN_BINARY:-$DIST/kiln}
  [ -n "$KILN_BINARY" ] || need_binary
  [ -x "$kiln" ] || die "no kiln binary at $kiln"
  command -v docker >/dev/null && docker version >/dev/null 2>&1 || die "docker does not answer: start dockerd"
  local bwrap; bwrap=$(command -v bwrap) || die "no bwrap: apt-get install bubblewrap"
  [ -f /etc/ssl/certs/ca-certificates.crt ] || die "no CA bundle: apt-get install ca-certificates"
  local ctx=$DIST/image
  log "image: $IMAGE (FROM scratch)"
  rm -rf "$ctx"
  local root=$ctx/rootfs
  mkdir -p "$root/usr/bin" "$root/etc/kiln" "$root/etc/ssl/certs" "$root/var/lib/kiln" "$root/tmp"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/var/lib/kiln"
  install -m 0755 "$kiln" "$root/usr/bin/kiln"
  install -m 0755 "$bwrap" "$root/usr/bin/bwrap"
  # kiln's startup probe (a sandbox as the job uid) runs /bin/true in it.
  mkdir -p "$root/bin"
  install -m 0755 /bin/true "$root/bin/true"
  # `ldd` lines: "libx.so.1 => /lib/.../libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)".
  local lib
  # (The static kiln lists none; a dynamic one, KILN_BINARY, its own.)
  for lib in $( (ldd "$bwrap"; ldd /bin/true; ldd "$kiln" || true) | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  install -m 0644 packaging/container.toml "$root/etc/kiln/kiln.toml"
  # The bubblewrap inside must run there (its libraries complete), and be >= 0.8.
  "$bwrap" --version >/dev/null
  cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
# Overlayfs cannot take the container's own overlay root as its upper layer.
VOLUME /var/lib/kiln
# build server (HTTPS), kiln's own scheduler, operator endpoints
EXPOSE 10501 10600 10601
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="kiln" org.opencontainers.image.version="$VERSION" \\
      org.opencontainers.image.description="build pool server for sccache-dist clients"
ENTRYPOINT ["/usr/bin/kiln"]
CMD ["serve", "--config", "/etc/kiln/kiln.toml"]
EOF
  # The classic builder: FROM scratch needs no registry (nor BuildKit's frontend image).
  DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx" >"$DIST/image-build.log" 2>&1 \
    || { cat "$DIST/image-build.log"; die "docker build failed"; }
  docker run --rm "$IMAGE" --version | grep -qx "kiln $VERSION" || die "docker run $IMAGE --version does not print kiln $VERSION"
  echo "$IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE") bytes ($(du -sh "$root" | cut -f1) on disk)"
  echo "contents:"; (cd "$root" && find . -type f | sort | sed 's#^\.#  #')
}

for step in $STEPS; do
  case $step in
    static|tarball|deb|image) "step_$step" ;;
    *) die "unknown step $step (static, tarball, deb, image)" ;;
  esac
done
log "release: done ($STEPS) in target/dist/"
ls -l "$DIST"
