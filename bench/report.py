"""Benchmark results: ratios to the baselines of the same run, a text table, a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The main figure of each end-to-end measurement, and whether higher is better.
E2E_METRICS = {"connection_rate": ("conn_per_s", True), "throughput": ("mb_per_s", True),
               "memory": ("kib_per_conn", False)}


def add_ratios(result: dict[str, Any]) -> None:
    """Annotate every end-to-end figure with its ratio to ``direct`` and to ``haproxy``."""
    e2e = result.get("e2e") or {}
    for group, (metric, _) in E2E_METRICS.items():
        for point in (e2e.get(group) or {}).values():
            if not isinstance(point, dict):
                continue
            direct = _value(point.get("direct"), metric)
            haproxy = _value(point.get("haproxy"), metric)
            for subject, fig in point.items():
                value = _value(fig, metric)
                if value is None or not isinstance(fig, dict):
                    continue
                if direct and subject != "direct":
                    fig["ratio_to_direct"] = round(value / direct, 3)
                if haproxy and subject != "haproxy":
                    fig["ratio_to_haproxy"] = round(value / haproxy, 3)


def _value(fig: Any, metric: str) -> float | None:
    if isinstance(fig, dict) and isinstance(fig.get(metric), int | float):
        return float(fig[metric])
    return None


def table(result: dict[str, Any]) -> str:
    lines: list[str] = []
    micro = result.get("micro") or {}
    if micro:
        lines.append("")
        lines.append(f"{'micro':<40} {'ns/op':>9} {'ops/s':>12} {'× naive':>8} {'instr/op':>10}")
        for name, r in micro.items():
            ir = r.get("instructions_per_op")
            lines.append(f"{name:<40} {r['ns_per_op']:>9.0f} {r['ops_per_s']:>12,} {r['ratio_to_naive_parse']:>8.2f} "
                         f"{ir if ir is not None else '':>10}")
    e2e = result.get("e2e") or {}
    for group, (metric, _) in E2E_METRICS.items():
        points = e2e.get(group) or {}
        if not points:
            continue
        subjects = sorted({s for p in points.values() if isinstance(p, dict) for s in p},
                          key=lambda s: (s != "direct", s))
        lines.append("")
        lines.append(f"{group} ({metric}; × direct / × haproxy)")
        lines.append(f"{'point':<12}" + "".join(f"{s:>24}" for s in subjects))
        for point, figs in points.items():
            if not isinstance(figs, dict):
                continue
            cells = []
            for s in subjects:
                f = figs.get(s)
                v = _value(f, metric)
                if v is None:
                    cells.append(f"{'-':>24}")
                    continue
                assert isinstance(f, dict)
                rd, rh = f.get("ratio_to_direct"), f.get("ratio_to_haproxy")
                extra = "/".join(f"{r:.2f}" for r in (rd, rh) if r is not None)
                cells.append(f"{v:>12,.1f} {('(' + extra + ')') if extra else '':>11}")
            lines.append(f"{point:<12}" + "".join(cells))
    tls = (result.get("tls") or {}).get("handshakes") or {}
    if tls:
        lines.append("")
        lines.append("TLS termination: handshakes/s (server CPU µs per handshake; × HAProxy same key)")
        for point, figs in tls.items():
            cells = [f"{name}: {f['handshakes_per_s']:,.0f}/s ({f.get('server_cpu_us_per_handshake', '-')} µs"
                     + (f", {f['ratio_to_haproxy']:.2f}×h" if "ratio_to_haproxy" in f else "")
                     + (f", RSA {f['cpu_ratio_to_ecdsa']:.2f}× ECDSA CPU" if "cpu_ratio_to_ecdsa" in f else "") + ")"
                     for name, f in figs.items()]
            lines.append(f"{point:<6} " + "; ".join(cells))
    full = result.get("fullstack") or {}
    if full.get("ssh_session_setup"):
        ssh = full["ssh_session_setup"]
        lines.append("")
        lines.append(f"full stack: SSH session setup {ssh['new_proxy_connection_ms']} ms (new proxy connection), "
                     f"{ssh['kept_proxy_connection_ms']} ms (kept)")
    if full.get("postgres"):
        pg = full["postgres"]
        via, direct = pg["through_proxy_and_tunnel"], pg["direct"]
        lines.append(f"full stack: Postgres select 1 {via['round_trip_us']} µs through proxy + tunnel vs "
                     f"{direct['round_trip_us']} µs direct ({via.get('round_trip_ratio_to_direct')}×); connect "
                     f"{via['connect_ms']} ms vs {direct['connect_ms']} ms")
    subjects_info = e2e.get("subjects") or {}
    skipped = {k: v.get("skipped") for k, v in subjects_info.items() if isinstance(v, dict) and v.get("skipped")}
    for name, why in skipped.items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def chart(result: dict[str, Any], path: Path) -> Path | None:
    """Bar charts of every end-to-end figure as a ratio to direct (and the micro ratios)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    e2e = result.get("e2e") or {}
    panels: list[tuple[str, dict[str, float]]] = []
    for group in E2E_METRICS:
        for point, figs in (e2e.get(group) or {}).items():
            if not isinstance(figs, dict):
                continue
            key = "ratio_to_direct" if group != "memory" else "kib_per_conn"
            vals = {s: f[key] for s, f in figs.items() if isinstance(f, dict) and isinstance(f.get(key), int | float)}
            if vals:
                panels.append((f"{group} {point}" + (" (KiB/conn)" if group == "memory" else " (× direct)"), vals))
    for point, figs in ((result.get("tls") or {}).get("handshakes") or {}).items():
        panels.append((f"TLS handshakes {point} (server CPU µs/handshake, lower is better)",
                       {n: f["server_cpu_us_per_handshake"] for n, f in figs.items()
                        if isinstance(f.get("server_cpu_us_per_handshake"), int | float)}))
    micro = result.get("micro") or {}
    if micro:
        panels.append(("micro (× naive parse, lower is faster)",
                       {k.split(" (")[0]: v["ratio_to_naive_parse"] for k, v in micro.items()}))
    if not panels:
        return None
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, vals) in zip(axes.flat, panels):
        names = list(vals)
        colors = ["#4c72b0" if n.startswith("tpemu") else "#999999" for n in names]
        ax.barh(names, [vals[n] for n in names], color=colors)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if "× direct" in title:
            ax.axvline(1.0, color="black", linewidth=0.6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    env = result.get("environment", {})
    fig.suptitle(f"tpemu bench ({result.get('profile')}) {env.get('git_sha', '')} python {env.get('python', '')} "
                 f"uvloop {env.get('uvloop', '')} {env.get('cpu_count', '')} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
