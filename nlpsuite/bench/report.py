"""bench.json, the markdown report (docs/benchmark.md), the PNG chart and the console summary."""
from __future__ import annotations

import math
from pathlib import Path

from nlpsuite.bench.results import BenchResult

CHART = "benchmark.png"
MARKDOWN = "benchmark.md"
JSON = "bench.json"

INTRO = """\
One `nlpsuite bench` run: on the same real texts (Financial PhraseBank sentences, alone or joined, in token-length
bands), side by side:

1. **PyTorch peers**: the same fine-tuned checkpoint served with transformers + PyTorch behind a plain synchronous
   gRPC server in its own process: FP32 with one model call per request, FP32 with a simple micro-batcher, and the
   best PyTorch CPU setting measured in-process (fp32 with tuned threads, bf16 autocast, torch.ao dynamic int8 of
   the Linear layers), served batched;
2. **the bare-runtime limit**: the same ONNX model our service serves, called in-process with ONNX Runtime (tokenize,
   pad, run) at its best batch size and thread layout, no server;
3. **our service** (`nlpsuite serve sentiment`, default batching settings) over gRPC.

Servers are driven by a closed-loop grpc.aio load generator in a separate process (one text per request) at each
concurrency; latency is measured at the client. Mean batch size and padding waste come from the servers' Prometheus
batch histograms (padding waste = 1 - real tokens / padded tokens, real tokens estimated from the texts' mean length).
CPU is the server's CPU time over wall time while measuring (cores); the client's own share is listed beside it.
Peak memory is the server process's VmHWM.
"""


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def markdown(result: BenchResult, command: str) -> str:
    m = result.meta
    host = m.host
    lines = ["# Benchmark: our service vs PyTorch serving vs the bare runtime", "", INTRO,
             f"Reproduce: `{command}`", "",
             f"Run: {m.started_at}, {_f(m.wall_s, 0)} s in all{' (--quick)' if m.quick else ''}; host {host['cpu']}, "
             f"{host['cores']} cores, SIMD {host['simd']} (**{host.get('isa', 'ISA unknown')}**: every CPU figure "
             f"below is for it), GPU {host['gpu']}; load average {m.load_avg_start:.2f} at "
             f"the start, {m.load_avg_end:.2f} at the end. Model {m.model}. Texts: {m.texts['mix']} mix, "
             f"{m.texts['texts']['n']} texts of {m.texts['texts']['min']}-{m.texts['texts']['max']} tokens "
             f"(mean {m.texts['texts']['mean']}); probe {m.texts['probe']['n']} texts of "
             f"{m.texts['probe']['min']}-{m.texts['probe']['max']} tokens.", "",
             *([f"**Measured under load:** the load average ({m.load_avg_start:.1f} at the start) was above the "
                f"{host['cores']} cores, so other work shared the CPUs and the absolute figures are low and noisy.", ""]
               if max(m.load_avg_start, m.load_avg_end) > float(host["cores"]) else []),
             f"![throughput and p99 latency against concurrency]({CHART})", "",
             "## Acceptance", "", "| check | value | target | result |", "|---|---:|---|---|"]
    for c in result.checks:
        lines.append(f"| {c.name} | {_f(c.value, 3 if c.value < 100 else 0)} | {c.target} | "
                     f"{'PASS' if c.passed else '**FAIL**'} |")
    lines += ["", "## Servers", "",
              "| server | concurrency | texts/s | p50 ms | p95 ms | p99 ms | mean batch | padding waste | server CPU "
              "(cores) | client CPU (cores) | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result.servers:
        for lv in s.levels:
            lines.append(f"| {s.label} | {lv.concurrency} | {_f(lv.texts_per_s)} | {_f(lv.latency.p50_ms)} | "
                         f"{_f(lv.latency.p95_ms)} | {_f(lv.latency.p99_ms)} | {_f(lv.mean_batch_size)} | "
                         f"{_pct(lv.padding_waste)} | {_f(lv.server_cpu_cores, 2)} | "
                         f"{_f(lv.client_cpu_cores, 2)} | {lv.errors} |")
    lines += ["", "| server | runs as | peak memory (MB) | concurrency 1, ~32-token texts: p50 / p99 ms |",
              "|---|---|---:|---|"]
    for s in result.servers:
        probe = f"{_f(s.probe.p50_ms, 2)} / {_f(s.probe.p99_ms, 2)}" if s.probe else "n/a"
        settings = ", ".join(f"{k} {v}" for k, v in s.settings.items())
        lines.append(f"| {s.label} | {s.variant} on {s.provider}; {settings} | {_f(s.peak_rss_mb, 0)} | {probe} |")
    lines += head_to_head_lines(result)
    b = result.bare
    lines += ["", "## Bare runtime (in-process, no server)", "",
              f"{b.variant} on {b.provider}; peak memory {_f(b.peak_rss_mb, 0)} MB. The best point of this sweep is "
              f"measured again in each head-to-head round; the limit in the ratios is the median of those: "
              f"**{_f(result.bare_limit_texts_per_s)} texts/s**.", "",
              "| batch | ORT threads | concurrent runs | texts/s | CPU (cores) | padding waste |",
              "|---:|---:|---:|---:|---:|---:|"]
    for p in sorted(b.points, key=lambda p: (p.threads, p.concurrent, p.batch)):
        star = " **best**" if p == b.best else ""
        lines.append(f"| {p.batch} | {p.threads} | {p.concurrent} | {_f(p.texts_per_s)}{star} | {_f(p.cpu_cores, 2)} | "
                     f"{_pct(p.padding_waste)} |")
    if b.gemm is not None:
        g = b.gemm
        lines += ["", f"GEMM-only limit ({_isa(result)}), at the best point's layout and batch {g.batch} x {g.tokens} "
                      f"tokens (the texts' mean): the model's weight GEMMs timed alone as {g.weight_gemm} "
                      f"**{_f(g.weight_gops, 0)} GOP/s**, attention's products at MatMul fp32 {_f(g.fp32_gops, 0)} "
                      f"GOP/s; {g.gops_per_text} GOP per text; if the host did nothing else: "
                      f"**{_f(g.limit_texts_per_s)} texts/s**. The bare runtime reaches "
                      f"**{_pct(g.fraction_of_limit)}** of it; GEMMs take **{_pct(g.gemm_share)}** of its kernel "
                      f"time (ONNX Runtime profiler; largest: "
                      + ", ".join(f"{op} {_pct(share)}" for op, share in g.kernel_shares.items()) + ")."]
    lines += ["", "| single-text latency (one call at a time, probe texts) | p50 ms | p99 ms |", "|---|---:|---:|"]
    for threads, lat in sorted(b.single_text.items()):
        lines.append(f"| {threads} ORT thread{'s' if threads > 1 else ''} | {_f(lat.p50_ms, 2)} | {_f(lat.p99_ms, 2)} |")
    t = result.torch_select
    lines += ["", "## PyTorch settings (in-process, same texts; the fastest that agrees with fp32 is served)", "",
              f"Device {t.device}; peak memory {_f(t.peak_rss_mb, 0)} MB.", "",
              "| setting | threads per call | concurrent calls | batch | texts/s | CPU (cores) | labels agree with fp32 |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for c in t.candidates:
        star = " **chosen**" if c == t.best else ""
        lines.append(f"| {c.setting} | {c.threads} | {c.concurrent} | {c.batch} | {_f(c.texts_per_s)}{star} | "
                     f"{_f(c.cpu_cores, 2)} | {_f(c.label_agreement, 3)} |")
    if result.recommend is not None:
        r = result.recommend
        lines += ["", "## Recommend: item embedding cache", "",
                  f"One MovieLens user ({r.history} rated history items), Score with {r.candidates} candidates; "
                  f"embedder {r.embedder} ({r.variant} on {r.provider}), text match only.", "",
                  "| cache | requests | p50 ms | p99 ms |", "|---|---:|---:|---:|",
                  f"| cold (never-seen candidates) | {r.cold.n} | {_f(r.cold.p50_ms, 2)} | {_f(r.cold.p99_ms, 2)} |",
                  f"| warm (the same candidates again) | {r.warm.n} | {_f(r.warm.p50_ms, 2)} | {_f(r.warm.p99_ms, 2)} |",
                  "", f"Warm is **{_f(r.speedup_p50, 1)}x** faster (p50)."]
    lines += ["", "## Ratios", "", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {_f(v, 3)} |" for k, v in result.ratios.items()]
    return "\n".join(lines) + "\n"


def chart(result: BenchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"service": ("tab:green", "o", 3.0), "torch-fp32": ("tab:red", "s", 1.8),
              "torch-fp32-batched": ("tab:orange", "^", 1.8), "torch-best-batched": ("tab:purple", "D", 1.8)}
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(13, 6))
    for s in result.servers:
        color, marker, width = styles.get(s.name, ("tab:gray", "x", 1.5))
        xs = [lv.concurrency for lv in s.levels]
        ax_t.plot(xs, [lv.texts_per_s for lv in s.levels], color=color, marker=marker, lw=width, label=s.label)
        ax_l.plot(xs, [math.nan if lv.latency.p99_ms is None else lv.latency.p99_ms for lv in s.levels], color=color,
                  marker=marker, lw=width, label=s.label)
    ax_t.axhline(result.bare_limit_texts_per_s, color="black", ls="--", lw=1.5,
                 label=f"bare ONNX Runtime limit ({result.bare.variant}, in-process; head-to-head median)")
    single = min((lat for lat in result.bare.single_text.values() if lat.p50_ms is not None),
                 key=lambda lat: lat.p50_ms, default=None)
    if single is not None:
        ax_l.axhline(single.p99_ms, color="black", ls="--", lw=1.5, label="bare runtime, one text per call (p99)")
    levels = sorted({lv.concurrency for s in result.servers for lv in s.levels})
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients (one text per request)")
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_ylabel("throughput (texts/s)")
    top = max([result.bare_limit_texts_per_s] + [lv.texts_per_s for s in result.servers for lv in s.levels])
    ax_t.set_ylim(0, top * 1.1)
    ax_t.set_title("Throughput (higher is better)")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("p99 latency (ms, log scale)")
    ax_l.set_title("p99 latency (lower is better)")
    handles, labels = ax_t.get_legend_handles_labels()
    more = [(h, l) for h, l in zip(*ax_l.get_legend_handles_labels()) if l not in labels]
    fig.legend(handles + [h for h, _ in more], labels + [l for _, l in more], loc="lower center", ncol=3, fontsize=9,
               frameon=False)
    m = result.meta
    fig.suptitle(f"{m.model}: {m.texts['mix']} texts (mean {m.texts['texts']['mean']} tokens) on "
                 f"{m.host['cores']} cores{', GPU ' + str(m.host['gpu']) if m.host['gpu'] != 'none' else ''}",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _isa(result: BenchResult) -> str:
    return str(result.meta.host.get("isa", "ISA unknown"))


def gemm_lines(result: BenchResult) -> list[str]:
    g, isa = result.bare.gemm, _isa(result)
    if g is None:
        return []
    return [f"  GEMM speed at the model's shapes ({g.batch} x {g.tokens} tokens, {g.threads} threads x {g.concurrent} "
            f"runs): {g.weight_gemm} {g.weight_gops:,.0f} GOP/s, MatMul fp32 {g.fp32_gops:,.0f} GOP/s [{isa}]",
            f"  GEMM-only limit {g.limit_texts_per_s:8.1f} texts/s; the bare runtime "
            f"({g.bare_texts_per_s:.1f} texts/s) reaches {g.fraction_of_limit:.0%} of it; GEMMs are {g.gemm_share:.0%} of its kernel time [{isa}]"]


def head_to_head_lines(result: BenchResult) -> list[str]:
    h = result.head_to_head
    labels = {s.name: s.label for s in result.servers}
    names = h.contenders
    lines = ["", "## Head to head (what the ratios come from)", "",
             f"After the sweeps, each contender at saturation again, all in one alternating sequence per round: the "
             f"bare runtime at the sweep's two best points ({'; '.join(h.bare_points)}), then each server at "
             f"concurrency {' and '.join(map(str, h.levels))}; the better point of each counts, so one noisy sweep "
             f"window does not pick where a contender is judged. The bare runtime also times single ~32-token probe "
             f"texts ({h.latency_threads} ORT thread{'s' if h.latency_threads > 1 else ''}), and each round ends with "
             f"the service answering them one at a time. "
             f"A shared host's speed drifts by tens of "
             f"percent within a minute, so each ratio is taken within a round, between windows seconds apart, and the "
             f"checks use its median over the rounds (the latency check: the medians of the two p50s).", "",
             "| round | bare texts/s | " + " | ".join(f"{labels[n]} texts/s (c)" for n in names)
             + " | service / bare | bare single text p50 ms | service c=1 p50 ms |",
             "|---:|---:|" + "---:|" * (len(names) + 3)]
    for i, r in enumerate(h.rounds, 1):
        lines.append(f"| {i} | {_f(r.bare_texts_per_s)} | "
                     + " | ".join(f"{_f(r.servers[n])} ({r.concurrency[n]})" for n in names)
                     + f" | {_f(r.servers['service'] / r.bare_texts_per_s, 3)} | {_f(r.bare_single_text_p50_ms, 2)} | "
                       f"{_f(r.service_c1_p50_ms, 2)} |")
    lines.append(f"| **median** | **{_f(h.bare)}** | " + " | ".join(f"**{_f(h.server(n))}**" for n in names)
                 + f" | **{_f(h.ratio('service'), 3)}** | **{_f(h.bare_single_text_p50_ms, 2)}** | "
                   f"**{_f(h.service_c1_p50_ms, 2)}** |")
    return lines


def console(result: BenchResult) -> str:
    isa = _isa(result)
    lines = ["", f"== servers at saturation (best concurrency), {isa} =="]
    for s in result.servers:
        best = s.best
        lines.append(f"  {s.label:44s} {best.texts_per_s:8.1f} texts/s at c={best.concurrency:<3d} "
                     f"p99 {_f(best.latency.p99_ms):>8s} ms  peak {s.peak_rss_mb:6.0f} MB [{isa}]")
    lines.append(f"  {'bare ONNX Runtime limit (in-process)':44s} {result.bare.best.texts_per_s:8.1f} texts/s "
                 f"(batch {result.bare.best.batch}, {result.bare.best.threads} threads x "
                 f"{result.bare.best.concurrent} runs) [{isa}]")
    h = result.head_to_head
    lines.append(f"== head to head, median of {len(h.rounds)} alternating round{'s' if len(h.rounds) > 1 else ''} "
                 f"(the ratios are medians of each round's ratio), {isa} ==")
    lines.append(f"  {'bare ONNX Runtime limit':44s} {h.bare:8.1f} texts/s; single text p50 "
                 f"{_f(h.bare_single_text_p50_ms, 2)} ms [{isa}]")
    labels = {s.name: s.label for s in result.servers}
    for name in h.contenders:
        c1 = f"; c=1 p50 {_f(h.service_c1_p50_ms, 2)} ms" if name == "service" else ""
        lines.append(f"  {labels[name]:44s} {h.server(name):8.1f} texts/s{c1} [{isa}]")
    lines += gemm_lines(result)
    lines.append(f"== acceptance ({isa}) ==")
    for c in result.checks:
        lines.append(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.value:.3f} (target {c.target}) [{isa}]")
    return "\n".join(lines)


def write_all(result: BenchResult, out: Path, command: str, publish: Path | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON).write_text(result.model_dump_json(indent=1))
    text = markdown(result, command)
    written = [out / JSON]
    for folder in [out] + ([publish] if publish else []):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKDOWN).write_text(text)
        chart(result, folder / CHART)
        written += [folder / MARKDOWN, folder / CHART]
    return written
