#!/usr/bin/env python3
"""Runs a command and records the CPU time (user + system) of its WHOLE process tree, so that
events per CPU second (the per-core throughput) can be set beside the wall-clock figure.

Usage: cputime.py --log FILE [--label TEXT] -- CMD ARGS...

Why a wrapper: the peers' harness times the whole process, but `/usr/bin/time` counts only
the descendants that their parents waited for. PyFlink's Python driver starts the JVM (where
all the work happens) and exits without waiting for it: the JVM is orphaned and its CPU time
reaches no one. This wrapper makes itself a *child subreaper* (Linux `prctl
PR_SET_CHILD_SUBREAPER`), so every orphaned descendant is re-parented to it; it waits for the
command and then for every remaining descendant, and reads its own `RUSAGE_CHILDREN`: the user
and system time of every process the command started, exact (the kernel's accounting, not
sampling). Sardonyx's `nexmark-bench` is one process; it is measured the same way.

The wrapper's stdout/stderr are the command's (the harness sees them as before) and its exit
status is the command's. One JSON line is appended to FILE:
  {"label", "cmd", "rc", "user_s", "sys_s", "cpu_s", "wall_s", "tree_wall_s", "stdout_json"}
wall_s: until the command exited; tree_wall_s: until the last descendant did (the harness's
wall ends there too, as it waits for this wrapper); stdout_json: the command's last stdout
line when it is a JSON object (nexmark-bench prints its own figures there), else null.
A descendant still running 60 s after the command exited is killed (SIGKILL) and waited for;
its CPU time then counts too, and "killed" in the line names how many.
"""
import argparse
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
LINGER_S = 60


def descendants_alive():
    """PIDs whose parent is this process (orphans re-parented to us included)."""
    me, out = os.getpid(), []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    st = f.read()
                if int(st[st.rfind(")") + 2:].split()[1]) == me:
                    out.append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        sys.exit("cputime.py: no command")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"cputime.py: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")

    t0 = time.perf_counter()
    # stdout is read line by line and passed on, keeping the last line; stderr is inherited.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    last = ""
    for line in p.stdout:  # ends when every holder of the pipe (descendants too) closed it
        sys.stdout.write(line)
        if line.strip():
            last = line
    sys.stdout.flush()
    rc = p.wait()
    wall = time.perf_counter() - t0

    # Every descendant left (orphans are ours now): wait for them, kill after LINGER_S.
    killed, deadline = 0, time.monotonic() + LINGER_S
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # none left
        if pid:
            continue
        if time.monotonic() > deadline:
            for pid in descendants_alive():
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            deadline = float("inf")
        time.sleep(0.02)
    tree_wall = time.perf_counter() - t0

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        js = json.loads(last)
        js = js if isinstance(js, dict) else None
    except ValueError:
        js = None
    rec = dict(label=a.label, cmd=cmd, rc=rc, user_s=round(ru.ru_utime, 3), sys_s=round(ru.ru_stime, 3),
               cpu_s=round(ru.ru_utime + ru.ru_stime, 3), wall_s=round(wall, 3),
               tree_wall_s=round(tree_wall, 3), killed=killed, stdout_json=js)
    with open(a.log, "a") as f:
        f.write(json.dumps(rec) + "\n")
    sys.exit(rc)


if __name__ == "__main__":
    main()
