#!/usr/bin/env bash
# Runs a command in a network namespace of its own, with loopback up and a second, non-loopback
# address on it ($PICOLET_NETNS_IP, default 10.250.0.1/32) that virtual Picos publish as their
# InternalIP: current API servers refuse to proxy to a node whose address is loopback
# ("address not allowed"), and a namespace keeps that address off the machine's own network.
# The command sees PICOLET_NETNS_IP set to that address and PICOLET_IN_NETNS=1. Root gets a
# plain network namespace; other users (or root where that is not allowed) get one inside a
# user namespace where they are root.
set -euo pipefail
IP=${PICOLET_NETNS_IP:-10.250.0.1}
IP=${IP%/32}
if [[ ${PICOLET_IN_NETNS:-} != 1 ]]; then
  # Root without CAP_SYS_ADMIN (some containers) may still make a user namespace.
  for flags in "--net" "--user --map-root-user --net"; do
    [[ $flags == --net && $(id -u) != 0 ]] && continue
    # shellcheck disable=SC2086 # the flags are words
    if unshare $flags -- true 2>/dev/null; then
      exec env PICOLET_IN_NETNS=1 unshare $flags -- "$0" "$@"
    fi
  done
  echo "in-netns: cannot make a network namespace (unshare --net and unshare --user --net both" \
    "failed; the tests need one for a non-loopback node address)" >&2
  exit 1
fi
ip link set lo up
ip addr replace "$IP/32" dev lo
# Nothing outside is reachable from here: let cargo say so at once rather than retry.
exec env PICOLET_NETNS_IP="$IP" CARGO_NET_OFFLINE=true "$@"
