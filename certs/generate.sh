#!/usr/bin/env bash
# Regenerates the development CA and the localhost server certificate.
# Development and tests only: the private keys are committed on purpose.
# Usage: certs/generate.sh   (needs openssl)
set -euo pipefail
cd "$(dirname "$0")"
days=3650
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.pem -days "$days" -subj "/CN=directline-proxy development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
# server: the development certificate; server-alt: a second one for the
# hot-reload test (same names, different key), so a test can tell them apart.
for name in server server-alt; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$name.key" -out "$name.csr" -subj "/CN=localhost"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" -days "$days" \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n')
done
rm -f ./*.csr ca.srl
echo "wrote ca.pem ca.key server.pem server.key server-alt.pem server-alt.key (valid $days days)"
