#!/usr/bin/env bash
# A throw-away OpenLDAP directory for the directory sign-in tests and the benchmark.
#
#   tools/ldap_test_server.sh DIR LDAP_PORT LDAPS_PORT [NESTED]
#
# Generates in DIR a test CA and a server certificate for IP:127.0.0.1 (ca.pem, server.pem,
# server.key), a slapd.conf with an mdb database under DIR/db, and data.ldif, loads it with
# slapadd, then starts slapd (Debian `slapd`) on ldap://127.0.0.1:LDAP_PORT (StartTLS
# offered) and ldaps://127.0.0.1:LDAPS_PORT, and waits until it answers. slapd's pid is in
# DIR/slapd.pid; stop it with `kill "$(cat DIR/slapd.pid)"`. A second call on the same DIR
# only starts slapd again (same data, same certificates): the "directory came back" case.
#
# Directory (suffix dc=atrium,dc=test; every password is "<uid>-pw-123"):
#   cn=svc,ou=service           the service account (password svc-pw-123)
#   uid=alice  in devs, devs in engineering, engineering in staff (nested groups)
#   uid=bob    in admins
#   uid=carol  employeeType: disabled (the test directory's user_filter excludes it)
#   uid=dave   in no group
#   uid=bench  in g1, g1 in g2, ... g<NESTED-1> in g<NESTED> (NESTED, default 50)
# alice's entryUUID is fixed (0e3b6c52-...-a11ce), so a rename can be checked against it.
# Anonymous binds see nothing: only the service account reads the tree.
set -euo pipefail
dir=$1 port=$2 sport=$3 nested=${4:-50}
base="dc=atrium,dc=test"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ ! -f "$dir/slapd.conf" ]; then
  # ---- test CA and server certificate (EC keys: fast) -----------------------------------
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
      -subj "/CN=Atrium test CA" -keyout ca.key -out ca.pem \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
      2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile server.ext -out server.pem 2>/dev/null
    chmod 0644 server.key
  )

  # ---- slapd.conf -----------------------------------------------------------------------
  mkdir -p "$dir/db"
  cat > "$dir/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile $dir/slapd.pid
argsfile $dir/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile $dir/ca.pem
TLSCertificateFile $dir/server.pem
TLSCertificateKeyFile $dir/server.key
sizelimit 1000
database mdb
maxsize 67108864
suffix "$base"
rootdn "cn=admin,$base"
rootpw admin-pw-123
directory $dir/db
index objectClass eq
index uid eq
index member eq
index entryUUID eq
access to attrs=userPassword by anonymous auth by self auth by * none
access to * by users read by * none
EOF

  # ---- data -----------------------------------------------------------------------------
  pw() { slappasswd -h '{SSHA}' -s "$1"; }
  user() {  # uid [extra lines]
    printf 'dn: uid=%s,ou=people,%s\nobjectClass: inetOrgPerson\nuid: %s\ncn: %s\nsn: %s\nuserPassword: %s\n' \
      "$1" "$base" "$1" "$1" "$1" "$(pw "$1-pw-123")"
    [ $# -gt 1 ] && printf '%s\n' "$2"
    printf '\n'
  }
  group() {  # cn member-dn...
    local cn=$1; shift
    printf 'dn: cn=%s,ou=groups,%s\nobjectClass: groupOfNames\ncn: %s\n' "$cn" "$base" "$cn"
    for m in "$@"; do printf 'member: %s\n' "$m"; done
    printf '\n'
  }
  {
    printf 'dn: %s\nobjectClass: dcObject\nobjectClass: organization\no: atrium test\ndc: atrium\n\n' "$base"
    for ou in people groups service; do
      printf 'dn: ou=%s,%s\nobjectClass: organizationalUnit\nou: %s\n\n' "$ou" "$base" "$ou"
    done
    printf 'dn: cn=svc,ou=service,%s\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: svc\nuserPassword: %s\n\n' \
      "$base" "$(pw svc-pw-123)"
    user alice "entryUUID: 0e3b6c52-7d2f-4c1a-9b1e-00000a11ce00"
    user bob
    user carol "employeeType: disabled"
    user dave
    user bench
    group devs "uid=alice,ou=people,$base"
    group engineering "cn=devs,ou=groups,$base"
    group staff "cn=engineering,ou=groups,$base"
    group admins "uid=bob,ou=people,$base"
    group g1 "uid=bench,ou=people,$base"
    for ((i = 2; i <= nested; i++)); do group "g$i" "cn=g$((i - 1)),ou=groups,$base"; done
  } > "$dir/data.ldif"
  slapadd -q -f "$dir/slapd.conf" -l "$dir/data.ldif" 2>"$dir/slapadd.log"
fi

slapd -f "$dir/slapd.conf" -h "ldap://127.0.0.1:$port/ ldaps://127.0.0.1:$sport/" 2>"$dir/slapd.log"
for _ in $(seq 1 100); do
  if LDAPTLS_CACERT="$dir/ca.pem" ldapwhoami -x -H "ldaps://127.0.0.1:$sport" \
      -D "cn=svc,ou=service,$base" -w svc-pw-123 >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.05
done
echo "slapd did not answer on 127.0.0.1:$sport; see $dir/slapd.log" >&2
exit 1
