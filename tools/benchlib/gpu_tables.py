"""The GPU section's tables, printed from its result dict (the same numbers the JSON holds)."""
from __future__ import annotations

import statistics

NAN = float("nan")


def _f(value, spec: str = ".2f", width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def print_header(out: dict) -> None:
    s = out["settings"]
    print(f"\nGPU: Llama-{s['shape']}-shaped, random fp16 weights, {len(s['server_ranges'])} server processes "
          f"(blocks {', '.join(f'{a}:{b}' for a, b in s['server_ranges'])}) on one {out['device_name']}")
    print(f"  server flags: {' '.join(map(str, s['server_flags']))} --quant Q (CLI defaults otherwise; "
          f"CUDA graphs on unless the server turns them off)")
    print(f"  clients: greedy; concurrency: {s['client_processes']} client processes, one connection and one session "
          f"per client, prompts {s['prompt_range'][0]}..{s['prompt_range'][1]} tokens, {s['decode_steps']} decode "
          f"steps per session; per-token times are host clock from sending a step to the next token id on the host")


def print_concurrency(rows: list, anchors: dict | None, title: str = "concurrency through the swarm") -> None:
    repeats = (anchors or {}).get("repeats")
    print(f"\n{title}, and the anchors at the same batch (local HF, same GPU, same prompts "
          f"left-padded; after a full-length warm-up, the fastest of {repeats} timed calls)")
    eager = {r["batch"]: r for r in (anchors or {}).get("eager", [])}
    static = {r["batch"]: r for r in (anchors or {}).get("static", [])}
    floor = (anchors or {}).get("floor")
    swarm = {r["sessions"]: r for r in rows or []}
    print(f"{'batch':>6} | {'swarm tok/s':>11} {'p50 ms med/max':>15} {'max/single':>10} | {'HF eager tok/s':>14} "
          f"{'ms/tok':>7} | {'HF static+compile tok/s':>23} {'ms/tok':>7} | {'floor tok/s':>11} {'ms/step':>7}")
    for b in sorted(set(swarm) | set(eager) | set(static)):
        r, e, c = swarm.get(b, {}), eager.get(b, {}), static.get(b, {})
        p50 = f"{r['p50_ms_median']:.2f}/{r['p50_ms_max']:.2f}" if r else "-"
        print(f"{b:>6} | {_f(r.get('tokens_per_s'), '.1f', 11)} {p50:>15} {_f(r.get('max_p50_over_single'), '.2f', 10)} | "
              f"{_f(e.get('tokens_per_s'), '.1f', 14)} {_f(e.get('ms_per_token'), '.2f', 7)} | "
              f"{_f(c.get('tokens_per_s'), '.1f', 23)} {_f(c.get('ms_per_token'), '.2f', 7)} | "
              f"{_f(floor['tokens_per_s'].get(str(b)) if floor else None, '.0f', 11)} "
              f"{_f(floor['ms_per_step'] if floor else None, '.2f', 7)}")
    for c in static.values():
        if "error" in c:
            print(f"  HF static batch {c['batch']}: {c['error'][:160]}")
    if static:
        compiled = all(c.get("compiled") for c in static.values())
        firsts = ", ".join(f"{c['batch']}: {c['first_call_s']:.1f}s" for c in static.values() if "first_call_s" in c)
        how = ("torch.compile (reduce-overhead, fullgraph) through transformers' compile_config" if compiled
               else "static cache WITHOUT torch.compile (not a CUDA device, or --no-compile)")
        print(f"  HF static: {how}; first (compiling) call per batch {firsts}")
    if floor:
        print(f"  floor: {floor['weight_bytes_per_step'] / 1e9:.2f} GB of weights per step / "
              f"{floor['copy_bandwidth_GBps']:.0f} GB/s device-to-device copy (read+write, {floor['copy_bytes'] >> 20} MiB)")


def print_churn(churn: dict) -> None:
    print(f"\nsession churn: {churn['sessions']} sessions one after another on the same servers "
          f"(measured ones decode {churn['measured_tokens']} tokens from the same prompt, fillers "
          f"{churn['filler_tokens']}); wall {churn['wall_s']:.1f}s")
    print(f"{'session':>8} {'p50 ms/token':>13} {'mean':>8} {'prefill ms':>11} {'open ms':>8}  same tokens as 1st")
    same = churn["same_tokens_as_first"]
    for r in churn["rows"]:
        if r["session"] in churn["measured"]:
            print(f"{r['session']:>8} {r['p50_ms']:>13.2f} {r['mean_ms']:>8.2f} {r['prefill_ms']:>11.2f} "
                  f"{r['open_ms']:>8.2f}  {same.get(str(r['session']), '-')}")
    fill = [r["p50_ms"] for r in churn["rows"] if r["session"] not in churn["measured"]]
    if fill:
        print(f"{'fillers':>8} p50 ms/token median {statistics.median(fill):.2f}, min {min(fill):.2f}, max {max(fill):.2f}")


def print_ttft(ttft: dict) -> None:
    swarm, local = ttft.get("swarm"), ttft.get("local")
    print(f"\ntime to first token, {ttft['prompt_tokens']}-token prompt (median of {ttft['repeats']} after a warm-up): "
          f"swarm {_f(swarm and swarm['ms'], '.2f', 1)} ms, local HF eager generate {_f(local and local['ms'], '.2f', 1)} ms, "
          f"swarm/local {_f(ttft.get('swarm_over_local'), '.2f', 1)}")


def print_quants(rows: list) -> None:
    print("\nper quantization, one session on fresh servers (none: the churn's 1st session) vs local HF eager "
          "generate (batch 1, fastest of the timed calls after a warm-up), p50 per token")
    print(f"{'quant':>6} {'swarm ms/token':>15} {'local HF ms/token':>18} {'swarm/local':>12} "
          f"{'measured steps/s/block':>23}  note")
    for r in rows:
        if "skipped" in r:
            print(f"{r['quant']:>6} {'-':>15} {'-':>18} {'-':>12} {'-':>23}  skipped: {r['skipped'][:80]}")
            continue
        print(f"{r['quant']:>6} {_f(r.get('swarm_ms_per_token'), '.2f', 15)} {_f(r.get('local_ms_per_token'), '.2f', 18)} "
              f"{_f(r.get('swarm_over_local'), '.2f', 12)} {_f(r.get('inference_rps'), '.1f', 23)}  "
              f"{(r.get('local_error') or r.get('error') or '')[:80]}")


def print_gpu(out: dict) -> None:
    print_header(out)
    if "concurrency" in out or "anchors" in out:
        print_concurrency(out.get("concurrency"), out.get("anchors"))
    if "capacity" in out:
        print_concurrency(out["capacity"], out.get("anchors"),
                          "server capacity: the same sessions with headless clients (client processes send fixed "
                          "hidden states and do no GPU work, as clients on other machines would not)")
    if "churn" in out:
        print_churn(out["churn"])
    if "ttft" in out:
        print_ttft(out["ttft"])
    if out.get("quants"):
        print_quants(out["quants"])
    for name, lines in out.get("server_notes", {}).items():
        for line in lines:
            print(f"  {name}: {line}")
    print(f"\nGPU section: {out['elapsed_s']:.0f}s")
