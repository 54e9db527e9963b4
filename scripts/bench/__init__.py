"""`make bench`: Recur measured the way its users would compare it, as side-by-side ratios.

    python -m scripts.bench [--quick] [--gpu] [--only NAME[,NAME]] [--out bench-results]

Each scenario is a module with `run(ctx) -> Result`, `render(data) -> markdown lines` and
`plot(data, path)`; `SCENARIOS` lists them in the order they run. Every scenario writes
`<out>/<name>.json` (machine, versions, settings, rows, targets) and `<out>/<name>.png`, and
`<out>/SUMMARY.md` gathers every JSON file present.
"""

SCENARIOS = {
    "ceiling": "scripts.bench.ceiling",
    "batching": "scripts.bench.batching",
    "peer": "scripts.bench.peer_bench",
    "typing": "scripts.bench.keystrokes",
    "memory": "scripts.bench.memory",
    "training": "scripts.bench.training",
    "export": "scripts.bench.export",
    "metrics": "scripts.bench.metrics_cost",
    "gpu": "scripts.bench.gpu",
}
