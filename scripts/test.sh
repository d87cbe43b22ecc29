#!/usr/bin/env bash
# The whole castellan test suite. Installs the Debian packages the tests use
# (idempotent), then: rustfmt check, clippy (warnings are errors), every
# unit and integration test of the workspace (real SoftHSM2 token, real
# openssl, nginx and pkilint, real sockets), and the README demo as an
# end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(softhsm2 opensc openssl curl ca-certificates nginx python3 python3-venv gnutls-bin libnss3-tools default-jdk-headless)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# pkilint, the RFC 5280 / 6960 linter tests/conformance.rs runs over what
# castellan signs, in a virtual environment of its own under target/.
pkilint_version=0.13.3
if [ ! -x target/pkilint/bin/lint_pkix_cert ] || ! target/pkilint/bin/pip show pkilint 2>/dev/null | grep -qx "Version: $pkilint_version"; then
  echo "== installing pkilint $pkilint_version into target/pkilint"
  rm -rf target/pkilint
  python3 -m venv target/pkilint
  target/pkilint/bin/pip install --quiet --disable-pip-version-check --no-cache-dir "pkilint==$pkilint_version"
fi
export CASTELLAN_PKILINT="$PWD/target/pkilint/bin"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries used by the integration tests)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
for demo in demo demo-offline-root; do
  echo "== scripts/$demo.sh (end to end)"
  CASTELLAN_NO_BUILD=1 ./scripts/$demo.sh > "target/$demo.log" 2>&1 || { cat "target/$demo.log"; echo "$demo FAILED"; exit 1; }
  grep -q ': OK$' "target/$demo.log" || { cat "target/$demo.log"; echo "$demo: openssl verify did not say OK"; exit 1; }
done
for seen in 'web.pem: good' 'web.pem: revoked' 'lookup: certificate revoked'; do
  grep -q "$seen" target/demo.log || { cat target/demo.log; echo "demo: openssl did not say \"$seen\""; exit 1; }
done
echo "== all tests passed"
