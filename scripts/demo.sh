#!/usr/bin/env bash
# castellan demo on embedded defaults, in a temporary directory: start
# castellan-signer (soft key store, seccomp on) and the castellan daemon,
# create a root and an intermediate CA by 2-of-3 custodian ceremonies, issue
# a server certificate from an `openssl req` CSR, `openssl verify` it, ask
# OCSP about it, revoke it, watch `openssl ocsp` and `openssl verify
# -crl_check` see the revocation, and verify the hash-chained event log with
# a signed checkpoint.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
: "${CARGO_TARGET_DIR:=$here/target}"
bin="$CARGO_TARGET_DIR/debug"
if ! command -v openssl >/dev/null || ! command -v curl >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl curl >/dev/null
fi
if [ -z "${CASTELLAN_NO_BUILD:-}" ]; then
  (cd "$here" && cargo build --quiet --workspace --bins)
fi

work=$(mktemp -d /tmp/castellan-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { "$bin/castellanctl" --socket "$work/admin.sock" "$@"; }
wait_for() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "$1 did not appear"; exit 1; }
json_field() { grep -o "\"$1\": *\"[^\"]*\"" | head -1 | cut -d'"' -f4; }

step "custodians alice, bob and carol make sealed Ed25519 approval keys"
for who in alice bob carol; do
  (umask 077; printf '%s-passphrase\n' "$who" > "$work/$who.pass")
  "$bin/castellanctl" custodian keygen --name "$who" --out "$work/$who.key" --passphrase-file "$work/$who.pass" >/dev/null
  echo "$who: $(cat "$work/$who.key.pub")"
done

step "castellan-signer: initialise (custodian set 2 of 3) and start under seccomp"
(umask 077; printf 'demo-store-passphrase\n' > "$work/store.pass")
cat > "$work/signer.toml" <<TOML
state_dir = "$work/signer"
socket = "$work/signer.sock"
daemon_uid = $(id -u)
[backend]
kind = "soft"
passphrase_file = "$work/store.pass"
TOML
"$bin/castellan-signer" init --config "$work/signer.toml" --threshold 2 \
  --custodian "alice=$work/alice.key.pub" --custodian "bob=$work/bob.key.pub" --custodian "carol=$work/carol.key.pub"
"$bin/castellan-signer" run --config "$work/signer.toml" 2> "$work/signer.log" & pids+=($!)
wait_for "$work/signer.sock"

# A free port for OCSP and CRLs (8080 by default, the next free one if taken).
port=8080
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done

step "castellan daemon: event log in $work/state, admin socket $work/admin.sock, OCSP/CRL on 127.0.0.1:$port"
cat > "$work/castellan.toml" <<TOML
state_dir = "$work/state"
[signer]
socket = "$work/signer.sock"
[admin]
socket = "$work/admin.sock"
[http]
listen = "127.0.0.1:$port"
publish_dir = "$work/publish"
TOML
"$bin/castellan" --config "$work/castellan.toml" 2> "$work/castellan.log" & pids+=($!)
wait_for "$work/admin.sock"
ctl status

step "root CA ceremony: alice approves; one approval is not enough"
root=$(ctl --json ceremony open --purpose root --ca-id root --subject "CN=castellan demo root,O=castellan demo" --days 3650 --path-len 1 | json_field id)
ctl ceremony approve "$root" --key "$work/alice.key" --passphrase-file "$work/alice.pass"
if ctl ceremony execute "$root"; then echo "ERROR: a CA was created with one approval"; exit 1; fi
step "bob approves too: 2 of 3, the signer creates the root"
ctl ceremony approve "$root" --key "$work/bob.key" --passphrase-file "$work/bob.pass"
ctl ceremony execute "$root" --out "$work/root.pem"
if ctl ceremony execute "$root" 2>/dev/null; then echo "ERROR: a ceremony ran twice"; exit 1; fi

step "intermediate CA ceremony (bob and carol)"
inter=$(ctl --json ceremony open --purpose intermediate --ca-id issuing --parent root --subject "CN=castellan demo issuing CA,O=castellan demo" --days 1825 --path-len 0 | json_field id)
ctl ceremony approve "$inter" --key "$work/bob.key" --passphrase-file "$work/bob.pass"
ctl ceremony approve "$inter" --key "$work/carol.key" --passphrase-file "$work/carol.pass"
ctl ceremony show "$inter"
ctl ceremony execute "$inter" --out "$work/issuing.pem"
ctl ca list

step "a server certificate from an openssl CSR"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/web.key" \
  -subj "/CN=web.demo.internal" -addext "subjectAltName=DNS:web.demo.internal,DNS:www.demo.internal" \
  -out "$work/web.csr" 2>/dev/null
serial=$(ctl --json issue --csr "$work/web.csr" --profile server --issuer issuing --ttl 30 --out "$work/web.pem" --chain-out "$work/chain.pem" | json_field serial)
echo "issued serial $serial"
openssl x509 -in "$work/web.pem" -noout -subject -issuer -ext subjectAltName,extendedKeyUsage,authorityInfoAccess

step "openssl verify: leaf -> issuing -> root"
openssl verify -CAfile "$work/root.pem" -untrusted "$work/chain.pem" -purpose sslserver "$work/web.pem"

cat "$work/issuing.pem" "$work/root.pem" > "$work/cas.pem"
ocsp() {
  openssl ocsp -issuer "$work/issuing.pem" -cert "$work/web.pem" \
    -url "http://127.0.0.1:$port/ocsp/issuing" -CAfile "$work/cas.pem" 2>&1
}
step "openssl ocsp asks castellan's responder (delegated responder certificate, rotated automatically)"
ocsp

step "revoke it (key compromise): acknowledged once OCSP already answers revoked"
ctl revoke "$serial" --reason keyCompromise
step "openssl ocsp, the very next request"
ocsp
step "the CRL (published within a second of the revocation) and openssl verify -crl_check"
for _ in $(seq 100); do
  ctl --json crl show --issuer issuing 2>/dev/null | grep -q '"entries": *[1-9]' && break
  sleep 0.1
done
ctl crl show --issuer issuing
curl -sS -o "$work/issuing.crl" "http://127.0.0.1:$port/crl/issuing.crl"
openssl crl -inform DER -in "$work/issuing.crl" -noout -text | grep -E -A1 "CRL Number|Next Update|Serial Number|Reason Code" | grep -v '^--' || true
openssl crl -inform DER -in "$work/issuing.crl" -out "$work/issuing-crl.pem"
if openssl verify -crl_check -CAfile "$work/cas.pem" -CRLfile "$work/issuing-crl.pem" "$work/web.pem"; then
  echo "ERROR: openssl accepted a revoked certificate"; exit 1
fi
echo "(refused: the certificate is revoked)"
ctl cert show "$serial"
echo "the publish directory for nginx or a CDN: $work/publish"
find "$work/publish" -maxdepth 2 | sort | head -8

step "audit: checkpoint signed by the signer's audit key, then re-walk the hash chain"
ctl audit checkpoint
ctl audit verify
ctl audit log --limit 40
echo
echo "demo files are in $work"
