"""The benchmark's results: medians, ratios against nginx, the targets of
issue 8, the machine's description; printed as a markdown table and saved
as markdown and JSON under bench/results/ (see bench/README.md)."""
import json
import platform
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cmd(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


def machine(broker_binary):
    lscpu = _cmd(["lscpu"])
    model = re.search(r"Model name:\s*(.+)", lscpu)
    nginx_v = _cmd(["nginx", "-V"])
    ssl = re.search(r"built with (OpenSSL [^\s]+)", nginx_v)
    dirty = _cmd(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "cpus": int(_cmd(["nproc", "--all"]) or 0),
        "kernel": platform.release(),
        "broker": _cmd([str(broker_binary), "--version"]),
        "nginx": (nginx_v.splitlines() or [""])[0] + (f" ({ssl.group(1)})" if ssl else ""),
        "commit": _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        + ("+local changes" if dirty else ""),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_before": loadavg(),
    }


def _median(runs, wl, server, field):
    vals = [r[field] for r in runs if r["workload"] == wl and r["server"] == server]
    return statistics.median(vals) if vals else None


def _ratio(a, b):
    return a / b if a is not None and b else None


def _row(name, metric, unit, broker, nginx, target, met, ratio=None):
    return {"workload": name, "metric": metric, "unit": unit, "broker": broker, "nginx": nginx,
            "ratio": ratio if ratio is not None else _ratio(broker, nginx), "target": target,
            "met": met}


def _cmp(value, ok):
    return None if value is None else bool(ok(value))


def _load_rows(runs):
    rows = []
    m = lambda wl, srv, f: _median(runs, wl, srv, f)  # noqa: E731
    for wl, label in (("W1@1", "keep-alive, 1 connection"), ("W1@64", "keep-alive, 64")):
        b, n = m(wl, "broker", "rps"), m(wl, "nginx", "rps")
        target = "≥ 1.0× nginx" if wl == "W1@64" else ""
        met = _cmp(_ratio(b, n), lambda r: r >= 1.0) if wl == "W1@64" else None
        rows.append(_row(f"{wl} {label}", "requests/s", "/s", b, n, target, met))
        b, n = m(wl, "broker", "cpu_us_per_req"), m(wl, "nginx", "cpu_us_per_req")
        target = "≤ nginx" if wl == "W1@64" else ""
        met = _cmp(b, lambda v: n is not None and v <= n) if wl == "W1@64" else None
        rows.append(_row(f"{wl} {label}", "server CPU per request", "µs", b, n, target, met))
    for field, metric, target in (("p50_us", "latency p50", ""), ("p99_us", "latency p99",
                                                                  "≤ nginx")):
        b, n = m("W1@1", "broker", field), m("W1@1", "nginx", field)
        met = _cmp(b, lambda v: n is not None and v <= n) if target else None
        rows.append(_row("W2 latency, 1 connection", metric, "µs", b, n, target, met))
    for wl, label, want in (("W3", "full mTLS handshake per request", 0.95),
                            ("W4", "resumed session per request", 1.5)):
        b, n = m(wl, "broker", "rps"), m(wl, "nginx", "rps")
        rows.append(_row(f"{wl} {label}", "connections/s", "/s", b, n, f"≥ {want}× nginx",
                         _cmp(_ratio(b, n), lambda r, w=want: r >= w)))
        b, n = m(wl, "broker", "cpu_us_per_req"), m(wl, "nginx", "cpu_us_per_req")
        rows.append(_row(f"{wl} {label}", "server CPU per connection", "µs", b, n, "", None))
    return [r for r in rows if r["broker"] is not None or r["nginx"] is not None]


def _w5_rows(w5):
    if not w5:
        return []
    med = lambda target, f: statistics.median(  # noqa: E731
        r[f] for r in w5["runs"] if r["target"] == target)
    b, d, a = med("broker", "p50_us"), med("direct", "p50_us"), med("as-broker", "p50_us")
    b99, d99 = med("broker", "p99_us"), med("direct", "p99_us")
    added = (b - d) / 1000.0
    name = "W5 cache miss vs direct API GET"
    return [
        {"workload": name, "metric": "latency p50", "unit": "µs", "broker": b, "nginx": None,
         "direct": d, "ratio": None, "target": "≤ +1 ms", "met": added <= 1.0,
         "added_ms": added},
        {"workload": name, "metric": "latency p99", "unit": "µs", "broker": b99, "nginx": None,
         "direct": d99, "ratio": None, "target": "", "met": None,
         "added_ms": (b99 - d99) / 1000.0},
        {"workload": name, "metric": "latency p50 vs the broker's own GET sent directly",
         "unit": "µs", "broker": b, "nginx": None, "direct": a, "ratio": None, "target": "",
         "met": None, "added_ms": (b - a) / 1000.0},
    ]


def _w6_rows(w6):
    if not w6:
        return []
    b, n = w6["broker"], w6["nginx"]
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    mb = lambda kb: kb / 1024.0 if kb is not None else None  # noqa: E731
    idle_b, idle_n = med(b["idle_kb"]), med(n["idle_kb"])
    conns_b, conns_n = med(b["conns1000_kb"]), med(n["conns1000_kb"])
    cached, cached_idle = med(b["cached10k_kb"]), med(b.get("cached10k_idle_kb", []))
    rows = [
        _row("W6 footprint", "ready: start to first answer", "ms", med(b["ready_ms"]),
             med(n["ready_ms"]), "≤ 50 ms", _cmp(med(b["ready_ms"]), lambda v: v <= 50)),
        _row("W6 footprint", "RSS idle", "MB", mb(idle_b), mb(idle_n), "≤ 8 MB",
             _cmp(mb(idle_b), lambda v: v <= 8)),
        _row("W6 footprint", "RSS with 1,000 idle connections", "MB", mb(conns_b), mb(conns_n),
             "", None),
        _row("W6 footprint", "memory per connection", "KB",
             (conns_b - idle_b) / 1000.0 if conns_b and idle_b else None,
             (conns_n - idle_n) / 1000.0 if conns_n and idle_n else None, "", None),
    ]
    if cached is not None:
        rows += [
            _row("W6 footprint", "RSS with 10,000 cached 1 KiB secrets", "MB", mb(cached), None,
                 "≤ 25 MB", _cmp(mb(cached), lambda v: v <= 25)),
            _row("W6 footprint", "memory per cached 1 KiB secret", "KB",
                 (cached - cached_idle) / 10000.0 if cached_idle else None, None, "", None),
        ]
    return rows


def build(machine_info, runs, w6, w5, w5_note, args):
    return {
        "machine": machine_info,
        "settings": {"seconds_per_run": args.seconds, "reps": args.reps,
                     "server_cpu": 0, "loadgen_cpu": 1, "broker_workers": 1,
                     "nginx_worker_processes": 1},
        "rows": _load_rows(runs) + _w5_rows(w5) + _w6_rows(w6),
        "w5_note": w5_note if not w5 else None,
        "runs": runs,
        "w5": w5,
        "w6": w6,
    }


def _fmt(v, unit):
    if v is None:
        return "–"
    if unit in ("/s",):
        return f"{v:,.0f}"
    if unit in ("MB", "ms", "KB"):
        return f"{v:.1f}"
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def markdown(result):
    m = result["machine"]
    s = result["settings"]
    lines = [
        f"Run {m['date_utc']} on {m['cpu_model']}, {m['cpus']} CPUs, kernel {m['kernel']}; "
        f"load average {' '.join(m['load_before'])} before, "
        f"{' '.join(m.get('load_after', []))} after.  ",
        f"{m['broker']}, commit {m['commit']}; {m['nginx']}.  ",
        f"Medians of {s['reps']} interleaved runs of {s['seconds_per_run']:g} s (1 s warm-up); "
        f"each server on CPU {s['server_cpu']}, the load generator on CPU {s['loadgen_cpu']}. "
        f"Whole run: {m.get('bench_seconds', '?')} s.",
        "",
        "| workload | figure | broker | nginx (W5: direct GET) | broker/nginx | target | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        other = r.get("direct", r["nginx"])
        if "added_ms" in r:
            ratio = f"{r['added_ms']:+.2f} ms"
        else:
            ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        unit = r["unit"]
        lines.append(f"| {r['workload']} | {r['metric']} ({unit}) | {_fmt(r['broker'], unit)} | "
                     f"{_fmt(other, unit)} | {ratio} | {r['target']} | {met} |")
    if result.get("w5_note"):
        lines.append(f"\nW5: {result['w5_note']}.")
    errors = sum(r.get("errors", 0) for r in result["runs"])
    lines.append(f"\nErrors across all load runs: {errors}.")
    return "\n".join(lines) + "\n"


def save(result, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    md = out_dir / f"bench-{stamp}.md"
    js = out_dir / f"bench-{stamp}.json"
    md.write_text("# Benchmark: secrets-broker and nginx\n\n" + markdown(result))
    js.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    shutil.copyfile(md, out_dir / "latest.md")
    shutil.copyfile(js, out_dir / "latest.json")
    return md, js
