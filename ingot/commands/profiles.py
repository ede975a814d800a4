"""`ingot profiles CHECKPOINT_OR_PRESET`: the build profiles `ingot serve` would choose among on
this machine, with the planner's figures, and which one it chooses and why."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("profiles", help="list the build profiles `ingot serve CHECKPOINT` chooses among here",
                              description="The candidate build profiles for this machine (GPU model and count, "
                                          "or CPU), their memory and the planner's tok/s, and the one chosen.")
    p.add_argument("model", help="checkpoint folder, .gguf file, or preset name (as `ingot build` takes)")
    p.add_argument("--device", default=None, help="plan for this device (default: every GPU present, else cpu)")
    p.add_argument("--profile", default=None, metavar="NAME", help="mark NAME as chosen, as `ingot serve` would")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ingot.deploy import candidate_profiles, choose_profile, detect_machine
    from ingot.deploy.profiles import model_shape

    machine = detect_machine(args.device)
    shape = model_shape(args.model)
    profiles = candidate_profiles(shape, machine)
    print(f"machine: {machine.describe()}")
    print(f"model:   {args.model} ({shape.architecture}, {_size(shape.num_params, 'parameters', 1000)}, "
          f"context {shape.max_position_embeddings:,})")
    print(render(profiles, *choose_profile(profiles, args.profile)))
    if machine.kind == "cpu":
        print("tok/s:  no figure on CPU (the planner models GPUs)")
    return 0


def _size(value: float, unit: str, step: int = 1000) -> str:
    """1.2e9 -> '1.2 G' + unit; in bytes, '1.2 GB'."""
    for prefix in ("", "K", "M", "G", "T"):
        if abs(value) < step or prefix == "T":
            return f"{value:.3g} {prefix}{unit}" if unit != "parameters" else f"{value:.3g}{prefix} {unit}"
        value /= step
    return f"{value:.3g} {unit}"


def render(profiles, chosen, why: str) -> str:
    width = max(len(p.name) for p in profiles)
    lines = ["", f"  {'PROFILE':<{width}}  FITS  MEM/DEVICE     TOK/S  STATUS"]
    for p in profiles:
        mark = "*" if p is chosen else " "
        tok_s = f"{p.tok_s:,.0f}" if p.tok_s is not None else "-"
        lines.append(f"{mark} {p.name:<{width}}  {'yes' if p.fits else 'no':<4}  {_size(p.memory_gb * 1e9, 'B'):>10}  "
                     f"{tok_s:>8}  {p.status}")
    lines += ["", f"chosen: {chosen.name}: {why}", f"builds: ingot build MODEL -o DIR {' '.join(chosen.flags)}"]
    return "\n".join(lines)
