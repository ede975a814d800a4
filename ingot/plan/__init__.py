"""The sizing planner: what fits, which parallelism, first-order tok/s, and the build command.

Plain Python over the standard library (plus ingot.config, ingot.errors, the shared KV
formula in ingot.kv_size, the argparse-only `ingot build` parser in ingot.commands.build and
the model registry's list of architectures in ingot.models, not the models themselves): it
imports no torch and no runtime, so `ingot plan` runs anywhere.

    shapes.py      ModelShape: dense, MoE and MLA shapes; parameter and KV arithmetic
    presets.py     published model shapes; --model as preset, config.json or engine dir
    gpus.py        the GPU table        precisions.py  bytes per weight, native or fallback
    memory.py      memory per GPU       perf.py        decode/prefill floors with efficiencies
    planner.py     make_plan: layouts, recommendation
    command.py     the `ingot build` line: only for architectures it builds, only with flags it has
    report.py      text table           cli.py         `ingot plan`
    web.py         page + JSON API      bench_check.py planner vs bench/results
"""

from ingot.plan.planner import make_plan

__all__ = ["make_plan"]
