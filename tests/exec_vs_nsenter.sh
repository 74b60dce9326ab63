#!/bin/sh
# gonso-exec against util-linux nsenter on one target: a container made with
# unshare (mount, uts, ipc, net, pid; chrooted into a box with /usr bound in,
# its own /proc, in /usr/share, hostname "ctr"). What a program sees inside
# must be the same through both:
#   gonso-exec --target PID --all --root --wd --user U --group G --cgroup -- cmd
#   nsenter    -t PID       -a    -r     -w   -S U     -G G            cmd
# Usage: exec_vs_nsenter.sh PATH-TO-gonso-exec
set -eu
exec_tool=$1
command -v nsenter >/dev/null || { echo "nsenter (util-linux) is not installed"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root: it makes a container with unshare"; exit 1; }

box=$(mktemp -d /tmp/gonso-exec-test-XXXXXX)
target=
cleanup() {
  [ -n "$target" ] && kill -9 "$target" 2>/dev/null || true
  wait 2>/dev/null || true
  rmdir "$box" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# The container's pid 1 (the unshare child) sets up and then sleeps in the box.
unshare --mount --uts --ipc --net --pid --fork --propagation private sh -c '
  set -e
  box=$1
  mount -t tmpfs box "$box"
  mkdir "$box/usr" "$box/proc" "$box/etc"
  for l in bin lib lib64 sbin; do ln -s "usr/$l" "$box/$l"; done
  mount --rbind /usr "$box/usr"
  mount -t proc proc "$box/proc"
  cp /etc/passwd /etc/group "$box/etc/"
  hostname ctr
  exec chroot "$box" /bin/sh -c "cd /usr/share && exec sleep 600"
' sh "$box" &
unshare_pid=$!

# The sleeping process is the unshare's child.
for _ in $(seq 100); do
  # unshare's child, once it runs sleep (read from /proc: no procps needed).
  child=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null | tr -d ' ' || true)
  if [ -n "$child" ] && [ "$(cat "/proc/$child/comm" 2>/dev/null)" = sleep ]; then
    target=$child
    break
  fi
  sleep 0.1
done
[ -n "$target" ] || { echo "the target did not start"; exit 1; }

probe='hostname; pwd; id -u; id -g; ls /; for k in cgroup ipc mnt net pid time user uts; do readlink /proc/self/ns/$k; done; grep ^0:: /proc/self/cgroup; echo $$'
ours=$("$exec_tool" --target "$target" --all --root --wd --user 1000 --group 1000 --cgroup -- sh -c "$probe")
theirs=$(nsenter -t "$target" -a -r -w -S 1000 -G 1000 sh -c "$probe")
echo "gonso-exec:"; echo "$ours"
echo "nsenter:"; echo "$theirs"
# All but the last line (the shell's pid, which differs) must agree.
if [ "$(echo "$ours" | sed '$d')" != "$(echo "$theirs" | sed '$d')" ]; then
  echo "MISMATCH between gonso-exec and nsenter"
  exit 1
fi
# And they are the container's view, not ours.
echo "$ours" | head -3 | tr '\n' ' ' | grep -q '^ctr /usr/share 1000 ' || { echo "not the container's view"; exit 1; }
[ "$(echo "$ours" | tail -1)" != "$$" ] || exit 1
echo "SAME VIEW"
