#!/usr/bin/env bash
# The offline-root path, on embedded defaults, in a temporary directory
# (no daemon: ceremonies travel as files, castellanctl talks to the signer):
# a signer with 3 custodians (2 must approve), a root and an intermediate CA
# made by 2-of-3 ceremonies, a server certificate issued from an `openssl req`
# CSR, and `openssl verify` checking the chain.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
: "${CARGO_TARGET_DIR:=$here/target}"
bin="$CARGO_TARGET_DIR/debug"
if [ -z "${CASTELLAN_NO_BUILD:-}" ]; then
  (cd "$here" && cargo build --quiet --bins)
fi
command -v openssl >/dev/null || { echo "demo needs openssl (apt-get install -y openssl)"; exit 1; }

work=$(mktemp -d /tmp/castellan-demo.XXXXXX)
signer_pid=
cleanup() { [ -n "$signer_pid" ] && kill "$signer_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { "$bin/castellanctl" "$@"; }

step "custodians: alice, bob and carol each make a sealed Ed25519 approval key"
for who in alice bob carol; do
  (umask 077; printf '%s-passphrase\n' "$who" > "$work/$who.pass")
  ctl custodian keygen --name "$who" --out "$work/$who.key" --passphrase-file "$work/$who.pass"
done

step "signer: initialise (soft sealed key store, custodian set 2 of 3) and start under seccomp"
(umask 077; printf 'demo-store-passphrase\n' > "$work/store.pass")
cat > "$work/signer.toml" <<TOML
state_dir = "$work/signer"
socket = "$work/signer.sock"
daemon_uid = $(id -u)
${CASTELLAN_DEMO_EXTRA:-}
[backend]
kind = "soft"
passphrase_file = "$work/store.pass"
TOML
"$bin/castellan-signer" init --config "$work/signer.toml" --threshold 2 \
  --custodian "alice=$work/alice.key.pub" --custodian "bob=$work/bob.key.pub" --custodian "carol=$work/carol.key.pub"
"$bin/castellan-signer" run --config "$work/signer.toml" 2> "$work/signer.log" &
signer_pid=$!
for _ in $(seq 100); do [ -S "$work/signer.sock" ] && break; sleep 0.05; done
sock=(--socket "$work/signer.sock")
ctl signer "${sock[@]}" status

step "root CA ceremony: one approval is not enough"
ctl signer "${sock[@]}" ceremony new --purpose root --ca-id root --subject "CN=castellan demo root,O=castellan demo" --days 3650 --path-len 1 --out "$work/root.ceremony"
ctl signer ceremony approve "$work/root.ceremony" --key "$work/alice.key" --passphrase-file "$work/alice.pass"
if ctl signer "${sock[@]}" ceremony execute "$work/root.ceremony" --out "$work/root.pem"; then
  echo "ERROR: the signer accepted a CA with one approval"; exit 1
fi
step "root CA ceremony: bob approves too, now 2 of 3"
ctl signer ceremony approve "$work/root.ceremony" --key "$work/bob.key" --passphrase-file "$work/bob.pass"
ctl signer "${sock[@]}" ceremony execute "$work/root.ceremony" --out "$work/root.pem"
step "replaying the executed ceremony is refused"
if ctl signer "${sock[@]}" ceremony execute "$work/root.ceremony"; then
  echo "ERROR: the signer executed a ceremony twice"; exit 1
fi

step "intermediate CA ceremony (bob + carol)"
ctl signer "${sock[@]}" ceremony new --purpose intermediate --ca-id issuing --parent root --subject "CN=castellan demo issuing CA,O=castellan demo" --days 1825 --path-len 0 --out "$work/issuing.ceremony"
ctl signer ceremony approve "$work/issuing.ceremony" --key "$work/bob.key" --passphrase-file "$work/bob.pass"
ctl signer ceremony approve "$work/issuing.ceremony" --key "$work/carol.key" --passphrase-file "$work/carol.pass"
ctl signer ceremony show "$work/issuing.ceremony"
ctl signer "${sock[@]}" ceremony execute "$work/issuing.ceremony" --out "$work/issuing.pem"

step "server certificate from an openssl CSR"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/web.key" \
  -subj "/CN=web.demo.internal" -addext "subjectAltName=DNS:web.demo.internal,DNS:www.demo.internal" \
  -out "$work/web.csr" 2>/dev/null
ctl signer "${sock[@]}" issue --issuer issuing --profile server --csr "$work/web.csr" --days 30 --out "$work/web.pem"
openssl x509 -in "$work/web.pem" -noout -subject -issuer -ext subjectAltName,basicConstraints,extendedKeyUsage

step "openssl verify: leaf -> issuing -> root"
openssl verify -CAfile "$work/root.pem" -untrusted "$work/issuing.pem" -purpose sslserver "$work/web.pem"

ctl signer "${sock[@]}" status

step "signing journal: stop the signer, verify the hash chain, export what was signed"
kill "$signer_pid"; wait "$signer_pid" 2>/dev/null || true; signer_pid=
"$bin/castellan-signer" journal verify --journal "$work/signer/journal"
"$bin/castellan-signer" journal export --journal "$work/signer/journal" --since 0 --until 99999999999999 | cut -c1-160
echo
echo "demo files are in $work"
