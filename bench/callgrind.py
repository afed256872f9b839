"""Instructions per request of the broker, counted by callgrind: steady
where CPU time is not (other work on the machine), so small before/after
differences show. Kernel work (syscalls) is not counted: compare syscall
counts with strace -c for that.

    python3 bench/callgrind.py [--broker B] [--mode keepalive|handshake|resume]
                               [--requests N] [--conns C] [--keep]

Starts the broker under valgrind with collection off, warms it up, turns
collection on for N requests, and prints instructions (Ir) per request and
the functions that cost most, inclusive of what they call
(callgrind_annotate --inclusive=yes).
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build", default="build")
    ap.add_argument("--broker")
    ap.add_argument("--mode", default="keepalive")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    build = (bench.REPO / args.build).resolve()
    binary = Path(args.broker).resolve() if args.broker else build / "secrets-broker"
    lg_path = build / "bench" / "loadgen"

    work = Path(tempfile.mkdtemp(prefix="sb-callgrind."))
    out = work / "callgrind.out"
    broker = None
    try:
        pki, secrets_dir = bench.dev_pki(binary, work)
        lg = bench.Loadgen(lg_path, pki)
        wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   f"--callgrind-out-file={out}"]
        broker = bench.Broker(binary, work, pki, secrets_dir, wrapper=wrapper).start()
        path = f"/v1/secrets/{bench.SECRET}"
        lg.run(broker.port, "--mode", args.mode, "--conns", args.conns, "--requests", 200,
               "--path", path)
        subprocess.run(["callgrind_control", "-i", "on", str(broker.proc.pid)], check=True,
                       capture_output=True)
        r = lg.run(broker.port, "--mode", args.mode, "--conns", args.conns, "--requests",
                   args.requests, "--path", path, timeout=1800)
        subprocess.run(["callgrind_control", "-i", "off", str(broker.proc.pid)], check=True,
                       capture_output=True)
        broker.stop()
        time.sleep(0.5)
        dumps = sorted(work.glob("callgrind.out*"))
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", *map(str, dumps)],
                             capture_output=True, text=True).stdout
        total = int(re.search(r"([0-9,]+) +\(100.0%\) +PROGRAM TOTALS", ann).group(1)
                    .replace(",", ""))
        print(f"{binary.name} {args.mode} x{r['requests']} (errors {r['errors']}): "
              f"{total / max(1, r['requests']):,.0f} instructions per request")
        lines = [ln for ln in ann.splitlines() if re.match(r"^\s*[0-9,]+ \(", ln)]
        print("\n".join(lines[:args.top]))
    finally:
        if broker:
            broker.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
