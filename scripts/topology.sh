#!/usr/bin/env bash
# The network test topology (docs/testing.md): a client, a primary host and a backup
# host, each in its own network namespace, joined by a bridge in a fourth "switch"
# namespace. The guest's tap sits on the primary's local bridge, so guest, client and
# both hosts share one L2 segment; the backup has a tap of the same name for promotion.
# Nothing is created in the root namespace and no namespace has a route out.
#
#   topology.sh up NAME              build it (cleaning an old NAME first), print addresses
#   topology.sh down NAME            remove it all; tolerates partial state, safe twice
#   topology.sh status NAME          key=value lines; exit 1 if NAME is not up
#   topology.sh exec NAME HOST cmd…  run cmd in HOST's namespace (client|primary|backup|sw)
#
# NAME: a lowercase letter then up to 10 lowercase letters or digits (the tap is
# NAME-tap, and interface names have at most 15 characters). Needs root and iproute2.
set -Eeuo pipefail

readonly SUBNET=10.77.0.0/24 PREFIX=24
readonly GUEST_IP=10.77.0.2 CLIENT_IP=10.77.0.10 PRIMARY_IP=10.77.0.11 BACKUP_IP=10.77.0.12

usage() {
  echo "usage: topology.sh up|down|status NAME | exec NAME client|primary|backup|sw CMD [ARG...]" >&2
  exit 2
}

ns_exists() { [ -e "/run/netns/$1" ]; }

# Quiet sysctls inside a namespace: no IPv6 at all (no DAD, router solicitations or MLD
# in captures); a kernel without IPv6 has nothing to quiet.
quiet_ns() {
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
    2>/dev/null || true
  ip -n "$1" link set lo up
}

# A bridge without STP forwards at once (no listening/learning delay). Its MAC is set:
# otherwise it follows the lowest port MAC and changes when a tap comes or goes.
add_bridge() {
  ip -n "$1" link add br0 address "$2" type bridge stp_state 0 forward_delay 0
}

# Links get their carrier a moment after they are set up; wait so that the first
# packet a test sends is not lost.
wait_carrier() {
  local i
  for i in $(seq 50); do
    ip -n "$1" -o link show dev "$2" | grep -q 'state UP' && return 0
    sleep 0.02
  done
  echo "topology: $2 in $1 has no carrier" >&2
  return 1
}

# A host namespace: uplink veth to the switch (its peer is created in the switch
# namespace as PORT), and on primary/backup a local bridge holding the uplink and the
# guest's tap, with the host's address on the bridge.
add_host() {
  local host=$1 port=$2 ip=$3 mac=$4 ns="$NAME-$1"
  ip netns add "$ns"
  quiet_ns "$ns"
  ip -n "$SW" link add "$port" type veth peer name eth0 netns "$ns"
  ip -n "$SW" link set "$port" master br0 up
  if [ "$host" = client ]; then
    ip -n "$ns" link set eth0 address "$mac" up
    ip -n "$ns" addr add "$ip/$PREFIX" dev eth0
    return
  fi
  ip -n "$ns" link set eth0 up
  add_bridge "$ns" "$mac"
  ip -n "$ns" link set eth0 master br0
  ip -n "$ns" tuntap add mode tap name "$TAP"
  ip -n "$ns" link set "$TAP" master br0 up
  ip -n "$ns" addr add "$ip/$PREFIX" dev br0
  ip -n "$ns" link set br0 up
}

do_down() {
  local ns pids
  for ns in "$NAME-client" "$NAME-primary" "$NAME-backup" "$SW"; do
    ns_exists "$ns" || continue
    # Processes left in the namespace (a killed test's VMM, capture, server) would keep
    # it, and its tap, alive after the name is gone.
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      kill -TERM $pids 2>/dev/null || true
      for _ in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] && break
        sleep 0.1
      done
      [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    fi
    ip -n "$ns" tuntap del mode tap name "$TAP" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  for ns in "$NAME-client" "$NAME-primary" "$NAME-backup" "$SW"; do
    if ns_exists "$ns"; then
      echo "topology: could not remove namespace $ns" >&2
      return 1
    fi
  done
}

do_status() {
  local ns
  for ns in "$NAME-client" "$NAME-primary" "$NAME-backup" "$SW"; do
    if ! ns_exists "$ns"; then
      echo "topology: $NAME is not up (no namespace $ns)" >&2
      return 1
    fi
  done
  cat <<EOF
name=$NAME
client_ns=$NAME-client
primary_ns=$NAME-primary
backup_ns=$NAME-backup
switch_ns=$SW
subnet=$SUBNET
guest_ip=$GUEST_IP
client_ip=$CLIENT_IP
primary_ip=$PRIMARY_IP
backup_ip=$BACKUP_IP
tap=$TAP
client_if=eth0
EOF
}

do_up() {
  do_down
  # Whatever fails half way, leave nothing behind.
  trap 'echo "topology: building $NAME failed; removing it" >&2; do_down || true' ERR
  ip netns add "$SW"
  quiet_ns "$SW"
  add_bridge "$SW" 02:77:00:00:00:fe
  ip -n "$SW" link set br0 up
  add_host client vc "$CLIENT_IP" 02:77:00:00:00:10
  add_host primary vp "$PRIMARY_IP" 02:77:00:00:00:11
  add_host backup vb "$BACKUP_IP" 02:77:00:00:00:12
  wait_carrier "$SW" br0
  wait_carrier "$NAME-client" eth0
  wait_carrier "$NAME-primary" br0
  wait_carrier "$NAME-backup" br0
  trap - ERR
  echo "topology $NAME is up ($SUBNET, no route out):"
  echo "  guest    $GUEST_IP  on tap $TAP in $NAME-primary (and $NAME-backup, for promotion)"
  echo "  client   $CLIENT_IP  $NAME-client"
  echo "  primary  $PRIMARY_IP  $NAME-primary"
  echo "  backup   $BACKUP_IP  $NAME-backup"
}

[ $# -ge 2 ] || usage
cmd=$1 NAME=$2
shift 2
[[ "$NAME" =~ ^[a-z][a-z0-9]{0,10}$ ]] || {
  echo "topology: bad NAME '$NAME': a lowercase letter then up to 10 lowercase letters or digits" >&2
  exit 2
}
readonly NAME SW="$NAME-sw" TAP="$NAME-tap"

case "$cmd" in
  up|down|exec)
    if [ "$(id -u)" -ne 0 ]; then echo "topology: needs root" >&2; exit 1; fi
    command -v ip >/dev/null || { echo "topology: needs ip (iproute2)" >&2; exit 1; } ;;
esac

case "$cmd" in
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  exec)
    [ $# -ge 2 ] || usage
    case "$1" in client|primary|backup|sw) ;; *) usage ;; esac
    host=$1
    shift
    exec ip netns exec "$NAME-$host" "$@" ;;
  *) usage ;;
esac
