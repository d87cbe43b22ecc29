#!/bin/bash
# Times `castellanctl crl publish --issuer issuing` on a 1M-entry store kept
# by the revocation_scale benchmark:
#
#   BENCH_KEEP=1 BENCH_CERTS=1000000 cargo bench -p castellan --bench revocation_scale
#   benches/crl-publish-times.sh /tmp/castellan-revscale-XXXX/n1000000 [runs]
#
# Starts the kept signer and a daemon with `http.enabled = false` and the
# publish directory, waits WAIT seconds (default 8: the start-up read of the
# CRL entries), publishes RUNS times GAP seconds apart (default 2: each
# publish's background writes settle), and prints each publish's time, the
# CPU the daemon and the signer used for it, and the daemon's own phase log.
# Release binaries from TARGET (default target/release).
set -euo pipefail
D=${1:?usage: $0 KEPT_STORE_DIR [runs]}
RUNS=${2:-5}
T=${TARGET:-target/release}
WAIT=${WAIT:-8}
GAP=${GAP:-2}
for b in castellan castellan-signer castellanctl; do
  [ -x "$T/$b" ] || { echo "$T/$b missing: cargo build --release --workspace --bins" >&2; exit 1; }
done
[ -f "$D/signer.toml" ] || { echo "$D holds no kept store (signer.toml missing)" >&2; exit 1; }
rm -f "$D/signer.sock" "$D/admin.sock"
cat > "$D/quiet.toml" <<EOT
state_dir = "$D/state"
[signer]
socket = "$D/signer.sock"
[admin]
socket = "$D/admin.sock"
[admin.roles]
admin = ["$(id -u)"]
[http]
enabled = false
publish_dir = "$D/publish"
[crl]
coalesce_ms = 60000
EOT
"$T/castellan-signer" run --config "$D/signer.toml" </dev/null >/dev/null 2>"$D/signer-times.log" &
SPID=$!
trap 'kill $SPID ${DPID:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$D/signer.sock" ] && break; sleep 0.1; done
CASTELLAN_LOG=info "$T/castellan" --config "$D/quiet.toml" </dev/null >/dev/null 2>"$D/daemon-times.log" &
DPID=$!
for _ in $(seq 600); do [ -S "$D/admin.sock" ] && break; sleep 0.1; done
sleep "$WAIT"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
for i in $(seq "$RUNS"); do
  sc=$(cpu $SPID); dc=$(cpu $DPID)
  s=$(date +%s%N)
  "$T/castellanctl" --socket "$D/admin.sock" crl publish --issuer issuing >/dev/null
  e=$(date +%s%N)
  echo "publish $i: $(( (e - s) / 1000000 )) ms; CPU daemon $(( ($(cpu $DPID) - dc) * 1000 / tick )) ms, signer $(( ($(cpu $SPID) - sc) * 1000 / tick )) ms"
  sleep "$GAP"
done
grep "CRL published" "$D/daemon-times.log" | grep issuing | sed 's/.*CRL published//' | tail -"$RUNS"
