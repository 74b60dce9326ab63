#!/bin/sh
# gonso-lsns against util-linux lsns: for each kind, the namespaces listed
# and their process counts, `lsns -n -t KIND -o NS,TYPE,NPROCS` and
# `gonso-lsns -n -t KIND -o NS,TYPE,NPROCS`, must be the same lines.
#
# Processes come and go on the host while the two run (this shell's own
# commands, ctest, other work), so each attempt runs lsns, gonso-lsns, then
# lsns again, each alone and writing to a file (no pipeline whose other end
# would be counted), and is judged only when both lsns runs agree, that is
# when nothing changed meanwhile. A stable attempt whose gonso-lsns output
# differs fails the test at the third such; one that matches passes the kind.
# Namespaces of every kind made here, with known counts, must be among them.
# Usage: lsns_vs_util_linux.sh PATH-TO-gonso-lsns
set -eu
tool=$1
command -v lsns >/dev/null || { echo "lsns (util-linux) is not installed"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root: without it both tools see only the caller's own processes"; exit 1; }

work=$(mktemp -d /tmp/gonso-lsns-test-XXXXXX)
holder=
cleanup() {
  [ -n "$holder" ] && kill -9 "$holder" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# unshare itself is in the new user, net, uts, ipc, mnt and cgroup
# namespaces; its child sleep is in those and in the new pid and time ones.
unshare --user --map-root-user --net --uts --ipc --mount --cgroup --pid --time --fork --kill-child sleep 600 &
holder=$!
child=
for _ in $(seq 100); do
  child=$(cat "/proc/$holder/task/$holder/children" 2>/dev/null | tr -d ' ' || true)
  if [ -n "$child" ] && [ "$(cat "/proc/$child/comm" 2>/dev/null)" = sleep ]; then break; fi
  child=
  sleep 0.1
done
[ -n "$child" ] || { echo "the namespace holder did not start"; exit 1; }

inode() { readlink "/proc/$1/ns/$2" | sed 's/.*\[\([0-9]*\)\]/\1/'; }

for kind in cgroup ipc mnt net pid time user uts; do
  stable=0
  differed=0
  matched=
  tries=0
  while [ -z "$matched" ] && [ "$tries" -lt 20 ] && [ "$differed" -lt 3 ]; do
    tries=$((tries + 1))
    lsns -n -t "$kind" -o NS,TYPE,NPROCS >"$work/before"
    "$tool" -n -t "$kind" -o NS,TYPE,NPROCS >"$work/gonso"
    lsns -n -t "$kind" -o NS,TYPE,NPROCS >"$work/after"
    for f in before gonso after; do sort "$work/$f" >"$work/$f.sorted"; done
    cmp -s "$work/before.sorted" "$work/after.sorted" || continue
    stable=$((stable + 1))
    if cmp -s "$work/before.sorted" "$work/gonso.sorted"; then
      matched=1
    else
      differed=$((differed + 1))
      echo "$kind: a stable attempt differs:"
      diff "$work/before.sorted" "$work/gonso.sorted" || true
    fi
  done
  if [ -z "$matched" ]; then
    echo "MISMATCH for $kind: $stable stable attempts of $tries, $differed differing"
    exit 1
  fi
  # The holder's namespace of this kind, with the count the kernel implies.
  case $kind in
    pid | time) want="$(inode "$child" "$kind") $kind 1" ;;
    *) want="$(inode "$holder" "$kind") $kind 2" ;;
  esac
  if ! tr -s ' ' <"$work/gonso" | sed 's/^ //' | grep -qx "$want"; then
    echo "$kind: the holder's namespace ($want) is not listed:"
    cat "$work/gonso"
    exit 1
  fi
  echo "$kind: same $(wc -l <"$work/gonso") lines after $tries attempts ($stable stable)"
  cat "$work/gonso"
done
echo "SAME LISTING"
