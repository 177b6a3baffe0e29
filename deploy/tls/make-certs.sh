#!/bin/sh
# Make the TLS files of a deployment with openssl: a CA, the broker's server certificate
# and one client certificate per site (CN = site id).
#
#   deploy/tls/make-certs.sh BROKER_NAME SITE_ID [SITE_ID ...]
#
# BROKER_NAME is the host name (or IP address) the gateways connect to. Files go under
# $JCM_TLS_DIR (default deploy/tls/out):
#   ca/ca.key, ca/ca.crt         the CA: keep ca.key offline; run again to add a site
#   broker/                      ca.crt, server.crt, server.key: mounted into Mosquitto
#   sites/<site>/                ca.crt, client.crt, client.key: copy to the site's /etc/jcm/
#                                (mqtt.ca_file, cert_file, key_file of its site file)
# An existing CA is reused; server and client certificates are made anew.
set -eu

if [ $# -lt 2 ]; then
    echo "usage: $0 BROKER_NAME SITE_ID [SITE_ID ...]" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "$0: openssl is not installed" >&2; exit 1; }

broker=$1
shift
out=${JCM_TLS_DIR:-$(dirname "$0")/out}
days_ca=3650
days_leaf=825
umask 077
mkdir -p "$out/ca" "$out/broker" "$out/sites"

case $broker in
    *[!0-9.]*) san="DNS:$broker" ;;
    *) san="IP:$broker" ;;
esac
case $broker in
    *[!A-Za-z0-9.-]*) echo "$0: '$broker' is not a host name or IPv4 address" >&2; exit 1 ;;
esac

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign KEY CSR_SUBJECT CERT EXTENSIONS
sign() {
    ext=$(mktemp)
    printf '%s\n' "$4" >"$ext"
    openssl req -new -key "$1" -subj "$2" 2>/dev/null |
        openssl x509 -req -CA "$out/ca/ca.crt" -CAkey "$out/ca/ca.key" -CAcreateserial -CAserial "$out/ca/ca.srl" \
            -days "$days_leaf" -sha256 -extfile "$ext" -out "$3" 2>/dev/null
    rm -f "$ext"
}

if [ ! -s "$out/ca/ca.key" ]; then
    newkey "$out/ca/ca.key"
    openssl req -x509 -new -key "$out/ca/ca.key" -subj "/CN=jcm-telemetry CA" -days "$days_ca" -sha256 \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$out/ca/ca.crt" 2>/dev/null
    echo "made CA $out/ca/ca.crt (keep $out/ca/ca.key offline)"
fi

newkey "$out/broker/server.key"
sign "$out/broker/server.key" "/CN=$broker" "$out/broker/server.crt" \
    "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san"
cp "$out/ca/ca.crt" "$out/broker/ca.crt"
echo "made broker certificate $out/broker/server.crt for $broker"

for site in "$@"; do
    case $site in
        [a-z0-9]*) ;;
        *) echo "$0: '$site' is not a site id" >&2; exit 1 ;;
    esac
    case $site in
        *[!a-z0-9_-]*) echo "$0: '$site' is not a site id" >&2; exit 1 ;;
    esac
    dir="$out/sites/$site"
    mkdir -p "$dir"
    newkey "$dir/client.key"
    sign "$dir/client.key" "/CN=$site" "$dir/client.crt" \
        "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    cp "$out/ca/ca.crt" "$dir/ca.crt"
    echo "made client certificate $dir/client.crt for site $site"
done

# certificates are public; keys stay 0600 (in the eclipse-mosquitto image the broker runs
# as uid 1883: chown 1883 "$out/broker/server.key" there)
chmod 644 "$out/ca/ca.crt" "$out/broker/ca.crt" "$out/broker/server.crt"
for site in "$@"; do chmod 644 "$out/sites/$site/ca.crt" "$out/sites/$site/client.crt"; done
chmod 755 "$out" "$out/broker" "$out/sites"
